"""The real browser the page tests drive: Debian's Chromium under Playwright.

Shared by tests/test_browser.py (a desktop window) and tests/test_phone.py
(a phone): the launch flags docs/STACK.md explains, a script in every page
that records what the Content-Security-Policy refuses, and pages that record
their console errors, page errors and dialogs.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from mopq.collectors import Collector

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]
# Records what a page says in its console, what it throws and what the CSP refuses.
WATCH_CSP = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", function (event) {
  window.__csp.push(event.violatedDirective + " " + event.blockedURI);
});
"""

needs_chromium = pytest.mark.skipif(shutil.which(CHROMIUM) is None,
                                    reason="Debian's chromium is not installed (make browser)")


@dataclass
class Watched:
    page: Any
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def csp_violations(self) -> list[str]:
        return self.page.evaluate("window.__csp || []")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def collector(engine_uri, db_name) -> Iterator[Collector]:
    running = Collector(engine_uri, db_name, poll_interval=0.05, monitor_interval=0.5).start()
    yield running
    running.stop(5.0)


@pytest.fixture
def page_opener(browser) -> Iterator[Callable[..., Watched]]:
    """``open_(credentials, **context options)``: a watched page in a fresh context."""
    contexts = []

    def open_(credentials: tuple[str, str] | None, **options: Any) -> Watched:
        if credentials:
            options["http_credentials"] = {"username": credentials[0],
                                           "password": credentials[1], "send": "always"}
        context = browser.new_context(**options)
        contexts.append(context)
        context.add_init_script(WATCH_CSP)
        watched = Watched(context.new_page())
        watched.page.on("console", lambda message: message.type == "error"
                        and watched.errors.append(f"console: {message.text}"))
        watched.page.on("pageerror", lambda error: watched.errors.append(f"pageerror: {error}"))

        def on_dialog(dialog: Any) -> None:
            watched.dialogs.append(dialog.message)
            dialog.dismiss()

        watched.page.on("dialog", on_dialog)
        return watched

    yield open_
    for context in contexts:
        context.close()
