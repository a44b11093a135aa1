"""The Workers page in Debian's Chromium (Playwright), against a live gunicorn.

What only a browser shows: a worker that starts after the page loaded
appears without a reload, with the message it holds and its progress bar,
which follows the handler's progress reports; an admin's Quiet, Resume and
Stop buttons reach the worker, and a reader's are disabled and refused.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from mopq import Queue, Worker
from tests import test_browser as desktop
from tests.browsers import needs_chromium
from tests.helpers import wait_until

# The desktop browser tests' own: a live gunicorn with an admin and a reader, a window.
ADMIN, READER, visit = desktop.ADMIN, desktop.READER, desktop.visit
server, open_page = desktop.server, desktop.open_page   # fixtures

pytestmark = needs_chromium


class Stepped:
    """A handler that reports progress 0.4, then 0.7, each when the test lets it go on."""

    def __init__(self) -> None:
        self.steps = [threading.Event() for _ in range(2)]

    def __call__(self, message) -> None:
        message.progress(0.4, "four of ten")
        self.steps[0].wait(60)
        message.progress(0.7, "seven of ten")
        self.steps[1].wait(60)

    def finish(self) -> None:
        for step in self.steps:
            step.set()


@pytest.fixture
def stepped() -> Iterator[Stepped]:
    handler = Stepped()
    yield handler
    handler.finish()


def start_worker(handler: Callable, queue: str = "reports") -> Worker:
    worker = Worker(queue, handler, heartbeat_interval=0.2, poll_interval=0.1)
    worker.start()
    return worker


def test_a_worker_started_after_the_page_loaded_appears_with_its_message_and_progress(
        server, open_page, stepped, db):
    watched = open_page(ADMIN)
    visit(watched, server + "/workers")
    page = watched.page
    assert page.is_visible("#workers-empty") and not page.is_visible("#workers-panel")
    page.evaluate("window.__samePage = true")

    held = Queue("reports").write({"report": "march"})
    worker = start_worker(stepped)
    try:
        row = f'#worker-rows tr[data-worker="{worker.identity}"]'
        page.wait_for_selector(row, timeout=15_000)
        assert not page.is_visible("#workers-empty")
        page.wait_for_selector(f'{row} .current a:text-is("{held}")', timeout=15_000)
        bar = f"{row} .current progress"
        page.wait_for_function(f"() => document.querySelector('{bar}')?.value === 0.4",
                               timeout=15_000)
        assert page.text_content(f"{row} .progress-line .note") == "40.0 % · four of ten"
        assert page.text_content(f'{row} td[data-label="State"] .badge') == "alive"
        assert page.text_content(f'{row} td[data-label="Queues"]').startswith("reports")

        stepped.steps[0].set()
        page.wait_for_function(f"() => document.querySelector('{bar}')?.value === 0.7",
                               timeout=15_000)
        assert page.text_content(f"{row} .progress-line .note") == "70.0 % · seven of ten"

        page.click(f'{row} button[data-action="quiet"]')
        page.wait_for_selector("#action-status.ok")
        assert "asked to go quiet" in page.text_content("#action-status")
        page.wait_for_selector(f'{row}[data-reported="quiet"] .badge.state-quiet',
                               timeout=15_000)
        assert "quiet asked by admin" in page.text_content(f"{row} .asked")
        assert worker.state == "quiet"
        page.click(f'{row} button[data-action="resume"]')
        page.wait_for_selector(f'{row}[data-reported="running"] button[data-action="quiet"]',
                               timeout=15_000)

        page.click(f'{row} button[data-action="stop"]')
        page.wait_for_selector("#confirm-dialog[open]")
        page.click("#confirm-ok")
        page.wait_for_selector(f'{row}[data-reported="stopping"] .badge.state-stopping',
                               timeout=15_000)
        assert page.locator(f"{row} button").count() == 0
        stepped.steps[1].set()
        page.wait_for_selector(f'{row} td[data-label="State"] .badge.state-stopped',
                               timeout=15_000)
        assert page.text_content(f'{row} td[data-label="Processed"]') == "1"
        assert page.text_content(f'{row} td[data-label="Working on"]') == "idle"
    finally:
        stepped.finish()
        assert worker.stop(timeout=30)
    assert page.evaluate("window.__samePage") is True, "the page was reloaded"
    actions = [entry["action"] for entry in db["audit"].find().sort("at", 1)]
    assert actions == ["worker.quiet", "worker.resume", "worker.stop"]
    assert watched.csp_violations() == [] and watched.errors == [] and watched.dialogs == []
    visit(watched, server + "/audit")
    page.wait_for_selector("#audit-rows tr")
    newest = page.text_content("#audit-rows tr")
    assert "worker.stop" in newest and f"worker {worker.identity}" in newest


def test_a_reader_sees_workers_live_but_cannot_control_them(server, open_page, stepped, db):
    watched = open_page(READER)
    visit(watched, server + "/workers")
    page = watched.page
    worker = start_worker(stepped)
    try:
        Queue("reports").write({"report": "april"})
        row = f'#worker-rows tr[data-worker="{worker.identity}"]'
        page.wait_for_selector(f"{row} .current progress", timeout=15_000)
        button = page.locator(f'{row} button[data-action="stop"]')
        assert button.is_disabled() and "MOPQ_ADMIN_USERS" in button.get_attribute("title")
        status = page.evaluate("""async (id) => {
          const token = document.querySelector('meta[name="csrf-token"]').content;
          const response = await fetch("/api/workers/" + encodeURIComponent(id) + "/stop", {
            method: "POST", body: "{}",
            headers: {"Content-Type": "application/json", "X-CSRF-Token": token}});
          return response.status;
        }""", worker.identity)
        assert status == 403
        # Chromium logs the refused fetch itself as a failed load; nothing else may be logged.
        watched.errors[:] = [e for e in watched.errors if "status of 403" not in e]
        wait_until(lambda: worker.state == "running", message="the worker still running")
        assert "control" not in db["workers"].find_one({"_id": worker.identity})
    finally:
        stepped.finish()
        assert worker.stop(timeout=30)
    assert watched.csp_violations() == [] and watched.errors == []
