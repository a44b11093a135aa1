"""The dashboard in Debian's Chromium (Playwright), against a live gunicorn.

What only a browser shows: the overview chart follows the /live pushes
without a reload, the Failed page's retry really moves a message back,
hostile bodies render as text (no dialog ever opens), admin actions are
refused to readers and strangers, and no page logs an error or trips the
Content-Security-Policy.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from bson import ObjectId

from mopq import Queue, emit, flush, schema
from tests.browsers import Watched, needs_chromium
from tests.dashboard_data import HOSTILE_BODY, HOSTILE_ERROR, make_dead, populate
from tests.helpers import free_port, wait_until
from tests.live_server import live_dashboard

ADMIN = ("admin", "secret")
READER = ("reader", "readpw")
AUTH = {"MOPQ_ADMIN_USERS": ":".join(ADMIN), "MOPQ_BASIC_AUTH_USERS": ":".join(READER)}
PAGES = ["/", "/queues", "/queues/orders", "/queues/orders?resolution=h", "/failed",
         "/failed?state=failing", "/search", "/search?q=order_id%3D41", "/workers",
         "/activities", "/metrics-ui", "/audit", "/schedules"]

pytestmark = needs_chromium


@pytest.fixture
def server(engine_uri, db_name, tmp_path: Path, collector) -> Iterator[str]:
    with live_dashboard(engine_uri, db_name, tmp_path, **AUTH) as url:
        yield url


@pytest.fixture
def open_page(page_opener) -> Callable[..., Watched]:
    return lambda credentials: page_opener(credentials, viewport={"width": 1280, "height": 900})


def visit(watched: Watched, url: str) -> None:
    """Load a page and wait until its live connection is up."""
    response = watched.page.goto(url)
    assert response is not None and response.status == 200, (url, response and response.status)
    watched.page.wait_for_selector('#live-state[data-state="connected"]', timeout=15_000)


def state_of(db, message_id: str) -> str | None:
    document = db[schema.MESSAGES].find_one({"_id": ObjectId(message_id)}, {"state": 1})
    return document and document["state"]


CHART_TOTALS = """() => {
  const data = document.getElementById("throughput-chart").data;
  if (!data) return null;
  return data.map(trace => trace.y.reduce((a, b) => a + b, 0));
}"""


def test_overview_chart_follows_pushes_without_reload(server, open_page, engine_uri, db_name):
    watched = open_page(ADMIN)
    visit(watched, server + "/")
    page = watched.page
    page.wait_for_function(CHART_TOTALS)
    assert page.evaluate(CHART_TOTALS) == [0, 0, 0]
    page.evaluate("window.__samePage = true")

    queue = Queue("clicks", uri=engine_uri, database=db_name)
    queue.write_many([{"n": n} for n in range(7)])
    acked = []

    def ack_some() -> bool:
        for message in queue.read(visibility_timeout=30, limit=10):
            message.delete()
            acked.append(message.id)
        return len(acked) == 7

    wait_until(ack_some, message="7 messages acknowledged")
    page.wait_for_function(f"() => {{ const t = ({CHART_TOTALS})(); "
                           "return t && t[0] === 7 && t[1] === 7; }", timeout=20_000)
    page.wait_for_function("() => document.getElementById('total-done').textContent === '7'")
    assert page.text_content("#total-written") == "7"
    assert page.text_content('#backlog-rows tr[data-queue="clicks"] td:nth-child(2)') == "0"
    assert page.evaluate("window.__samePage") is True, "the page was reloaded"
    assert watched.errors == []


def test_retry_from_the_failed_page_moves_a_dead_message_back(server, open_page, db,
                                                               engine_uri, db_name):
    dead_id = make_dead(engine_uri, db_name, "payments", {"amount": 5}, "card declined")
    assert state_of(db, dead_id) == schema.DEAD
    watched = open_page(ADMIN)
    visit(watched, server + "/failed")
    page = watched.page
    page.click(f'article[data-id="{dead_id}"] button[data-action="retry"]')
    page.wait_for_selector("#action-status.ok")
    assert page.text_content("#action-status").startswith("1 message(s) back to pending")
    wait_until(lambda: state_of(db, dead_id) == schema.PENDING, message="the retry in MongoDB")
    assert db[schema.MESSAGES].find_one({"_id": ObjectId(dead_id)})["attempts"] == 0

    visit(watched, server + "/audit")
    page.wait_for_selector("#audit-rows tr")
    row = page.text_content("#audit-rows tr")
    assert "retry" in row and "admin" in row and "1 selected id(s)" in row
    assert watched.errors == [] and watched.dialogs == []


def test_bulk_retry_and_purge_ask_first_then_act(server, open_page, db, engine_uri, db_name):
    timeouts = [make_dead(engine_uri, db_name, "payments", {"n": n}, "gateway timeout")
                for n in range(2)]
    declined = make_dead(engine_uri, db_name, "payments", {"n": 9}, "card declined")
    watched = open_page(ADMIN)
    page = watched.page
    visit(watched, server + "/failed?error=timeout")
    assert page.locator("article.message").count() == 2
    page.click('button[data-action="retry-all"]')
    page.wait_for_selector("#confirm-dialog[open]")
    assert "2 dead message(s) with error containing" in page.text_content("#confirm-title")
    page.click("#confirm-ok")
    page.wait_for_selector("#action-status.ok")
    wait_until(lambda: [state_of(db, i) for i in timeouts] == [schema.PENDING] * 2,
               message="both matching messages retried")
    assert state_of(db, declined) == schema.DEAD

    Queue("doomed", uri=engine_uri, database=db_name).write_many([{"n": n} for n in range(3)])
    visit(watched, server + "/queues/doomed")
    page.click('button[data-action="purge"]')
    page.wait_for_selector("#confirm-dialog[open]")
    assert page.is_disabled("#confirm-ok")
    page.fill("#confirm-typed", "doome")
    assert page.is_disabled("#confirm-ok")
    page.fill("#confirm-typed", "doomed")
    page.click("#confirm-ok")
    page.wait_for_selector("#action-status.ok")
    assert page.text_content("#action-status") == "Purged: 3 message(s) removed."
    assert db[schema.MESSAGES].count_documents(
        {"queue": "doomed", "state": {"$in": [schema.PENDING, schema.DEAD]}}) == 0
    assert watched.errors == [] and watched.dialogs == []


def test_hostile_body_error_and_tag_render_as_text(server, open_page, engine_uri, db_name):
    dead_id = make_dead(engine_uri, db_name, "orders", {"note": HOSTILE_BODY}, HOSTILE_ERROR)
    emit("order.paid", value=3, tags={"region": HOSTILE_ERROR}, uri=engine_uri,
         database=db_name)
    flush()
    watched = open_page(ADMIN)
    page = watched.page
    for path in ("/failed", f"/search?id={dead_id}"):
        visit(watched, server + path)
        assert HOSTILE_BODY in page.text_content("pre.body")
        assert HOSTILE_ERROR in page.text_content(".error-text")
        assert page.locator("main img").count() == 0
        assert page.locator("main script").count() == 0

    wait_until(lambda: "order.paid" in (watched.page.context.request.get(
        server + "/api/metrics").json().get("items") or []), message="the event counted")
    visit(watched, server + "/metrics-ui")
    option = page.locator("section.metric .tag-filter option").nth(1)
    option.wait_for(state="attached")
    assert option.text_content() == f"region:{HOSTILE_ERROR}"
    assert page.locator("main img").count() == 0
    assert watched.dialogs == []
    assert watched.errors == []


def test_admin_actions_are_refused_without_admin_credentials(server, open_page, db,
                                                             engine_uri, db_name):
    dead_id = make_dead(engine_uri, db_name, "payments", {"amount": 5}, "card declined")
    reader = open_page(READER)
    visit(reader, server + "/failed")
    button = reader.page.locator(f'article[data-id="{dead_id}"] button[data-action="retry"]')
    assert button.is_disabled()
    assert "MOPQ_ADMIN_USERS" in button.get_attribute("title")
    status = reader.page.evaluate("""async (id) => {
      const token = document.querySelector('meta[name="csrf-token"]').content;
      const response = await fetch("/api/failed/retry", {method: "POST",
        headers: {"Content-Type": "application/json", "X-CSRF-Token": token},
        body: JSON.stringify({ids: [id]})});
      return response.status;
    }""", dead_id)
    assert status == 403

    # A browser without credentials gets the challenge (Chromium would prompt for them).
    stranger = open_page(None).page.context.request
    assert stranger.get(server + "/failed").status == 401
    assert stranger.post(server + "/api/failed/retry", data={"ids": [dead_id]}).status == 401
    assert state_of(db, dead_id) == schema.DEAD


def test_no_page_logs_errors_or_trips_the_csp(server, open_page, db, engine_uri, db_name):
    populate(db, engine_uri, db_name)
    watched = open_page(ADMIN)
    page = watched.page
    for path in PAGES:
        visit(watched, server + path)
        if path == "/metrics-ui":
            page.wait_for_function("() => [...document.querySelectorAll('.metric-summary')]"
                                   ".every(node => node.textContent.length > 0)")
            summaries = page.locator(".metric-summary").all_text_contents()
            assert len(summaries) == 3 and all("event(s)" in s for s in summaries), summaries
            slashed = page.locator('section.metric[data-name="http/requests"] .metric-summary')
            assert slashed.text_content().startswith("1 event(s), sum 3")
        elif path == "/audit":
            page.wait_for_function("() => document.getElementById('audit-status')"
                                   ".textContent === ''")
        elif path == "/schedules":
            page.wait_for_selector('tr[data-schedule="hourly-digest"]')
        elif path.startswith("/queues/"):
            page.wait_for_selector("#history-chart .main-svg")
        elif path == "/":
            page.wait_for_selector("#throughput-chart .main-svg")
        elif path == "/activities":
            width = page.evaluate("document.querySelector('.bar .done').style.width")
            assert width.endswith("%")
        assert watched.csp_violations() == [], path
        assert watched.errors == [], path
    assert watched.dialogs == []


FOREIGN_PAGE = """<!doctype html><html><body>
<script src="{dashboard}/vendor/socket.io.min.js"></script>
<script>
window.__live = {{connected: false, refused: null, pushes: 0}};
const socket = io("{dashboard}/live", {{transports: ["websocket"], reconnection: false}});
socket.on("connect", () => {{ window.__live.connected = true; }});
socket.on("connect_error", (error) => {{ window.__live.refused = String(error.message); }});
socket.on("stats", () => {{ window.__live.pushes += 1; }});
</script></body></html>"""


@contextmanager
def page_server(html: str, port: int) -> Iterator[str]:
    """A page served from another origin (another loopback port) than the dashboard's."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            body = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_page_of_another_origin_cannot_open_the_live_socket(open_page, engine_uri, db_name,
                                                              tmp_path, collector):
    """Cross-site WebSocket hijacking: with reading open, a page on another port of
    localhost joined /live and received every push. Only configured origins may."""
    allowed_port, foreign_port = free_port(), free_port()
    with live_dashboard(engine_uri, db_name, tmp_path,
                        MOPQ_ALLOWED_ORIGINS=f"http://127.0.0.1:{allowed_port}") as dashboard:
        html = FOREIGN_PAGE.format(dashboard=dashboard)
        Queue("visible", uri=engine_uri, database=db_name).write({"n": 1})
        with page_server(html, foreign_port) as foreign, \
                page_server(html, allowed_port) as allowed:
            # The control: an origin the operator listed connects and gets pushes, so the
            # refusal below is the origin check and not a broken page.
            page = open_page(None).page
            page.goto(allowed)
            page.wait_for_function("() => window.__live.connected && window.__live.pushes > 0",
                                   timeout=15_000)
            hostile = open_page(None).page
            hostile.goto(foreign)
            hostile.wait_for_function("() => window.__live.refused !== null", timeout=15_000)
            assert hostile.evaluate("window.__live.connected") is False
            assert hostile.evaluate("window.__live.pushes") == 0
