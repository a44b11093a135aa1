"""The Activities page in Debian's Chromium against a live gunicorn: the chain of steps,
stuck instances first, figures that follow the pushes without a reload, one instance's
page, and no console error or CSP violation (what only a browser shows).
"""

from __future__ import annotations

from pathlib import Path

from tests.activity_flows import FAST, order
from tests.browsers import needs_chromium
from tests.live_server import live_dashboard

pytestmark = needs_chromium
RESERVE_DONE = ("() => document.querySelector('section.definition li[data-step=\"reserve\"] "
                "dd[data-field=\"done\"]').textContent")


def test_the_activities_page_shows_chains_stuck_first_and_follows_pushes(
        engine_uri, db_name, db, tmp_path: Path, collector, page_opener):
    flow = order()
    db["switches"].insert_one({"_id": "bank-down"})
    flow.start("fine", {"n": 1})
    flow.start("blocked", {"n": 1, "fail_ship": True, "fail_refund": True})
    worker = flow.worker(**FAST)
    worker.start()
    try:
        assert flow.wait("blocked", 60)["status"] == "stuck"
        assert flow.wait("fine", 60)["status"] == "completed"
        with live_dashboard(engine_uri, db_name, tmp_path) as url:
            watched = page_opener(None, viewport={"width": 1280, "height": 900})
            page = watched.page
            page.goto(url + "/activities")
            page.wait_for_selector('#live-state[data-state="connected"]', timeout=15_000)
            page.wait_for_function(RESERVE_DONE + " === '2'", timeout=15_000)
            steps = page.locator("section.definition li.step strong").all_text_contents()
            assert steps == ["reserve", "charge", "ship"]
            statuses = page.locator("#instance-rows tr").evaluate_all(
                "rows => rows.map(row => row.dataset.status)")
            assert statuses == ["stuck", "completed"]
            flow.start("later", {"n": 1})  # counted while the page is open: no reload
            assert flow.wait("later", 60)["status"] == "completed"
            page.wait_for_function(RESERVE_DONE + " === '3'", timeout=20_000)
            page.wait_for_function("() => document.querySelectorAll('#instance-rows tr')"
                                   ".length === 3", timeout=20_000)
            assert page.locator("#instance-rows tr").first.get_attribute("data-status") == \
                "stuck"
            page.locator('#instance-rows tr[data-status="stuck"] a').click()
            page.wait_for_selector('#instance[data-status="stuck"]')
            assert page.locator("li.instance-step").evaluate_all(
                "items => items.map(item => item.dataset.status)") == ["done", "done", "dead"]
            assert "the bank refuses the refund" in page.text_content("main")
            assert watched.csp_violations() == [] and watched.errors == []
            assert watched.dialogs == []
    finally:
        worker.stop(timeout=10)
