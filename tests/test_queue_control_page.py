"""The queue page's operating panels in Chromium: policy, pause, browse, cancel (issue 14)."""

from __future__ import annotations

from mopq import Queue, policy, schema
from tests import test_browser as desktop
from tests.browsers import Watched, needs_chromium
from tests.helpers import wait_until

# The desktop browser tests' own: a live gunicorn with an admin and a reader, a window.
ADMIN, READER = desktop.ADMIN, desktop.READER
server, open_page = desktop.server, desktop.open_page   # fixtures

pytestmark = needs_chromium


def _visit(watched: Watched, url: str) -> None:
    response = watched.page.goto(url)
    assert response is not None and response.status == 200
    watched.page.wait_for_selector("#policy-table tbody tr")


def test_an_admin_pauses_edits_the_policy_browses_and_cancels_from_the_page(
        server, open_page, db, engine_uri, db_name):
    queue = Queue("orders", uri=engine_uri, database=db_name)
    ids = queue.write_many([{"order_id": n} for n in range(3)], routing_key="eu")
    watched = open_page(ADMIN)
    page = watched.page
    _visit(watched, server + "/queues/orders")

    page.click('button[data-action="pause"]')
    page.wait_for_selector("#paused-badge:not([hidden])")
    assert "paused by admin" in page.text_content("#paused-badge")
    assert policy.read(db, "orders").paused.who == "admin"

    page.fill('#policy-table input[name="max_attempts"]', "2")
    page.click('button[data-action="save-policy"]')
    wait_until(lambda: policy.read(db, "orders").policy.get("max_attempts") == 2,
               message="the policy stored")
    page.wait_for_function("() => [...document.querySelectorAll('#policy-table tr')]"
                           ".some(r => r.textContent.includes('stored by admin admin'))")

    page.wait_for_selector(f'#browse-table a[href="#{ids[0]}"]')
    assert page.locator("#browse-table tbody tr").count() == 3
    page.click(f'#browse-table a[href="#{ids[0]}"]')
    page.wait_for_selector("#browse-document:not([hidden])")
    assert '"order_id": 0' in page.text_content("#browse-document")

    row = page.locator("#browse-table tbody tr", has=page.locator(f'a[href="#{ids[1]}"]'))
    row.locator("button", has_text="Cancel").click()
    page.wait_for_selector("#action-status.error")
    assert "cancel reason first" in page.text_content("#action-status")
    page.fill("#cancel-reason", "duplicate order")
    row.locator("button", has_text="Cancel").click()
    page.wait_for_selector("#confirm-dialog[open]")
    page.click("#confirm-ok")
    page.wait_for_selector("#action-status.ok")
    wait_until(lambda: db[schema.HISTORY].find_one({"_id": ids[1]}) is not None,
               message="the cancelled message in history")
    page.wait_for_function("() => document.querySelectorAll('#browse-table tbody tr')"
                           ".length === 2")

    last = page.locator("#browse-table tbody tr", has=page.locator(f'a[href="#{ids[2]}"]'))
    last.locator("button", has_text="To front").click()
    page.wait_for_function(f"() => document.getElementById('action-status').textContent"
                           f" === '{ids[2]} is next.'")
    front = db[schema.MESSAGES].find_one({"_id": ids[2]})
    assert front["priority"] > db[schema.MESSAGES].find_one({"_id": ids[0]})["priority"]
    page.fill("#move-target", "orders-later")
    first = page.locator("#browse-table tbody tr", has=page.locator(f'a[href="#{ids[0]}"]'))
    first.locator("button", has_text="Move").click()
    wait_until(lambda: db[schema.MESSAGES].find_one({"_id": ids[0]})["queue"] == "orders-later",
               message="the message moved to orders-later")
    page.wait_for_function("() => document.querySelectorAll('#browse-table tbody tr a')"
                           ".length === 1")

    page.click('button[data-action="resume"]')
    page.wait_for_selector("#paused-badge[hidden]", state="attached")
    assert policy.read(db, "orders").paused is None
    actions = [entry["action"] for entry in db[schema.AUDIT].find({}, {"action": 1})]
    assert sorted(actions) == sorted(["queue.pause", "queue.policy", "message.cancel",
                                      "message.front", "message.move", "queue.resume"])
    assert watched.errors == [] and watched.dialogs == []


def test_a_reader_sees_the_policy_and_messages_but_no_actions(server, open_page, engine_uri,
                                                              db_name, db):
    Queue("orders", uri=engine_uri, database=db_name).write({"order_id": 1})
    policy.pause(db, "orders", who="ops", reason="migration")
    watched = open_page(READER)
    page = watched.page
    _visit(watched, server + "/queues/orders")
    page.wait_for_selector("#paused-badge:not([hidden])")
    assert "migration" in page.text_content("#paused-badge")
    assert page.is_disabled('button[data-action="resume"]')
    assert page.locator("#policy-table input").count() == 0
    page.wait_for_selector("#browse-table tbody tr a")
    assert page.locator("#browse-table button").count() == 0
    assert page.goto(server + "/queues").status == 200  # the list shows the pause at a glance
    assert "paused by ops" in page.text_content('tr[data-queue="orders"]')
    assert watched.errors == []
