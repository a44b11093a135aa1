"""``mopq demo``'s suggestions, followed as a newcomer follows them.

The demo prints a Search hint ("try order_id=1000 on the Search page"); typed
into the Search page of a live dashboard in Chromium it must find that order,
also once the order is finished and kept only in history. And a demo must
start whatever else runs on the machine: its workers took fixed port
numbers, so a second demo failed with "address already in use". Its
activity sequence must make the Activities page show something live.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from mopq import schema
from mopq.activities import instances
from mopq.dashboard.demo import ACTIVITY, Demo
from tests.browsers import needs_chromium
from tests.helpers import wait_until
from tests.live_server import live_dashboard

HINT = re.compile(r"try (\S+)=(\S+) on the Search page")


def hinted(lines: list[str]) -> tuple[str, str]:
    """The field and value the demo's Search hint names."""
    found = [match.groups() for match in map(HINT.search, lines) if match]
    assert found, lines
    return found[0]


@needs_chromium
def test_the_demos_search_hint_finds_its_order_once_finished(browser, page_opener, db, engine_uri,
                                                             db_name, tmp_path: Path):
    lines: list[str] = []
    demo = Demo(engine_uri, db_name, rate=10, seed=7, say=lines.append)
    demo.start()
    try:
        field, value = hinted(lines)
        typed = json.loads(value) if value.isdigit() else value
        where = {"queue": "orders", f"body.{field}": typed}
        # Until the order has its outcome: done (so kept only in history) or dead.
        wait_until(lambda: db[schema.HISTORY].find_one(where) and
                   not db[schema.MESSAGES].find_one(where) or
                   db[schema.MESSAGES].find_one({**where, "state": schema.DEAD}),
                   timeout=60, message=f"order {field}={value} to finish")
        with live_dashboard(engine_uri, db_name, tmp_path) as url:
            watched = page_opener(None, viewport={"width": 1280, "height": 900})
            page = watched.page
            page.goto(url + "/search")
            page.fill('input[name="q"]', f"{field}={value}")
            with page.expect_navigation():
                page.click('form:has(input[name="q"]) button[type="submit"]')
            assert "1 message(s) found" in page.text_content("main"), page.text_content("main")
            row = page.text_content("#results tbody tr")
            assert f'"{field}": {value}' in row, row
            assert page.locator("#results tbody tr .badge").text_content() in ("done", "dead")
            assert watched.errors == []
    finally:
        demo.stop()


def test_two_demos_run_side_by_side(engine_uri, db_name):
    """Two databases, one machine (and one process): both demos start, each worker its own."""
    demos = [Demo(engine_uri, f"{db_name}_{n}", rate=1, say=lambda line: None) for n in (1, 2)]
    try:
        for demo in demos:
            demo.start()
        identities = [worker.identity for demo in demos for worker in demo.workers]
        assert len(identities) == 8 and len(set(identities)) == 8, identities
    finally:
        for demo in demos:
            demo.stop()
            demo.db.client.drop_database(demo.database)


def test_the_demo_runs_an_activity_that_completes_and_one_that_is_compensated(engine_uri,
                                                                            db_name):
    """What the Activities page reads: the definition's chain, and instances that end both ways."""
    demo = Demo(engine_uri, f"{db_name}_fulfil", rate=40, seed=3, say=lambda line: None)
    demo.start()
    try:
        def ended() -> dict[str, int]:
            return instances.counts(demo.db).get(ACTIVITY, {})

        wait_until(lambda: ended().get("completed", 0) >= 1 and
                   ended().get("compensated", 0) >= 1, timeout=90,
                   message=f"a fulfilment completed and one compensated ({ended()})")
        steps = demo.db[schema.ACTIVITIES].find_one({"_id": ACTIVITY})["steps"]
        assert [(step["name"], step["fan_out"]) for step in steps] == [
            ("reserve", False), ("pack", True), ("charge", False), ("ship", False)]
        listed = {row["status"]: row for row in instances.listing(demo.db, ACTIVITY)}
        completed = demo.fulfilment.instance(listed["completed"]["key"])
        packed = completed["steps"][1]["children"]
        assert packed["total"] >= 1 and packed["finished"] == packed["total"]
        assert completed["result"]["tracking"].startswith("TRK")
        undone = demo.fulfilment.instance(listed["compensated"]["key"])
        assert undone["failed_step"] == "charge"
        assert [step["compensation"]["status"] for step in undone["steps"][:2]] == \
            ["done", "done"]
    finally:
        demo.stop()
        demo.db.client.drop_database(demo.database)
