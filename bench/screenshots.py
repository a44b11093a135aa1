"""Screenshots of every dashboard page with demo traffic, into docs/screenshots/.

Each page is taken twice: on a desktop (1280 px wide, ``<page>.png``) and on a
phone (390 px, ``<page>-phone.png``): those listed here, and any other page
the navigation links to.

Why a script: the README shows what the dashboard looks like, and those
pictures should come from the real thing — the embedded engine (or
``MOPQ_MONGODB_URI``), ``mopq demo``'s traffic, gunicorn and Debian's
Chromium — and be easy to take again after a change::

    .venv/bin/python bench/screenshots.py            # about a minute and a half
    .venv/bin/python bench/screenshots.py --warmup 90 --out /tmp/shots
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright  # noqa: E402

from mopq import Queue  # noqa: E402
from mopq.dashboard.demo import Demo  # noqa: E402
from mopq.engine import engine_unless_configured  # noqa: E402
from tests.browsers import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.live_server import live_dashboard  # noqa: E402

ADMIN = ("admin", "secret")
PAGES = [("overview", "/"), ("queues", "/queues"), ("queue", "/queues/orders"),
         ("failed", "/failed"), ("search", "/search?q=order_id%3D{order_id}"),
         ("workers", "/workers"), ("activities", "/activities"),
         ("metrics", "/metrics-ui"), ("audit", "/audit")]


PHONE = {"width": 390, "height": 844}


def take(page, url: str, path: str, file: Path) -> None:
    page.goto(url + path)
    page.wait_for_selector('#live-state[data-state="connected"]')
    page.wait_for_load_state("networkidle")
    page.wait_for_function("() => [...document.querySelectorAll('main .chart')]"
                           ".every(node => node.querySelector('.main-svg')) && "
                           "![...document.querySelectorAll('main [role=status]')]"
                           ".some(node => node.textContent.startsWith('Loading'))")
    page.wait_for_timeout(1500)  # a push or two, for the live figures
    page.screenshot(path=str(file), full_page=True)
    print(f"screenshots: {file}", flush=True)


def every_page(page) -> list[tuple[str, str]]:
    """PAGES, then each page the navigation links to that PAGES leaves out."""
    listed = {path.split("?")[0] for _, path in PAGES}
    linked = page.evaluate("() => [...document.querySelectorAll('header nav a')]"
                           ".map(link => link.pathname)")
    return PAGES + [(path.strip("/"), path) for path in dict.fromkeys(linked)
                    if path not in listed]


def shoot(url: str, out: Path, order_id: int) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=CHROMIUM_ARGS)
        credentials = {"username": ADMIN[0], "password": ADMIN[1], "send": "always"}
        context = browser.new_context(viewport={"width": 1280, "height": 860},
                                      device_scale_factor=1, http_credentials=credentials)
        page = context.new_page()
        page.goto(url + "/login?next=/failed")  # challenged, the browser signs in as admin
        retry = page.locator('button[data-action="retry"]').first
        if retry.count():
            retry.click()  # so the audit page has an entry
            page.wait_for_selector("#action-status.ok, #action-status.error")
        pages = every_page(page)
        for name, path in pages:
            take(page, url, path.format(order_id=order_id), out / f"{name}.png")
        # The same pages on a phone (390 px wide, as an iPhone 12-15 shows them).
        phone = browser.new_context(viewport=PHONE, screen=PHONE, device_scale_factor=1,
                                    is_mobile=True, has_touch=True,
                                    http_credentials=credentials)
        small = phone.new_page()
        small.goto(url + "/login?next=/")
        for name, path in pages:
            take(small, url, path.format(order_id=order_id), out / f"{name}-phone.png")
        browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=float, default=45.0,
                        help="seconds of demo traffic before the first picture")
    parser.add_argument("--rate", type=float, default=25.0, help="demo messages per second")
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    with engine_unless_configured() as (uri, _):
        database = f"mopq_screenshots_{int(time.time())}"
        demo = Demo(uri, database, rate=args.rate, seed=7)
        try:
            demo.start()
            # A queue nobody serves, so the Queues page shows its warning.
            Queue("invoices", uri=uri, database=database).write_many(
                [{"invoice": n} for n in range(12)])
            time.sleep(args.warmup)
            with tempfile.TemporaryDirectory() as logs, \
                    live_dashboard(uri, database, Path(logs),
                                   MOPQ_ADMIN_USERS=":".join(ADMIN)) as url:
                dead = demo.db["messages"].find_one({"queue": "orders", "state": "dead"}) or {}
                shoot(url, out, (dead.get("body") or {}).get("order_id", 1000))
        finally:
            demo.stop()
            demo.db.client.drop_database(database)
    return 0


if __name__ == "__main__":
    sys.exit(main())
