"""The pages, through the Flask test client, against the real engine.

Every page answers 200 with data and with an empty database (where it says
what to do), hostile bodies and errors come out escaped, the overview still
renders when the engine is unreachable, and pages need credentials when
credentials are configured.
"""

from __future__ import annotations

import base64

import pytest

from mopq import Queue, flush
from mopq.dashboard import create_app
from tests.dashboard_data import HOSTILE_BODY, HOSTILE_ERROR, populate
from tests.helpers import free_port

PAGES = ["/", "/queues", "/queues/orders", "/failed", "/failed?state=failing", "/search",
         "/workers", "/activities", "/metrics-ui", "/audit", "/schedules"]

EMPTY_STATES = {
    "/": "No queues yet",
    "/queues": "No queues yet",
    "/failed": "No dead messages",
    "/search": "No searchable fields declared yet",
    "/workers": "No workers have registered",
    "/activities": "No activities yet",
    "/metrics-ui": "No business events yet",
    "/audit": "No admin actions yet",
    "/schedules": "No schedules yet",
}


@pytest.fixture
def client(engine_uri, db_name):
    app = create_app({"MOPQ_MONGODB_URI": engine_uri, "MOPQ_DATABASE": db_name})
    return app.test_client()


@pytest.fixture
def traffic(db, engine_uri, db_name):
    return populate(db, engine_uri, db_name)


def page(client, path: str, status: int = 200) -> str:
    response = client.get(path)
    assert response.status_code == status, (path, response.status_code)
    assert "Content-Security-Policy" in response.headers
    return response.get_data(as_text=True)


def test_every_page_shows_its_empty_state_on_an_empty_database(client):
    for path, text in EMPTY_STATES.items():
        html = page(client, path)
        assert text in html, path
        assert "mopq demo" in html or path in ("/search", "/audit", "/schedules"), path
    assert "No queue named orders" in page(client, "/queues/orders", status=404)


def test_every_page_shows_the_data(client, traffic):
    overview = page(client, "/")
    assert "Connected to the engine" in overview
    assert 'id="throughput-chart"' in overview and 'data-queue="orders"' in overview
    assert "1,234,567" not in overview  # bodies are not on the overview
    queues = page(client, "/queues")
    for name in ("orders", "emails", "reports", "thumbs"):
        assert f'data-queue="{name}"' in queues
    assert "no live worker serves this queue" in queues
    detail = page(client, "/queues/orders")
    assert 'id="history-chart"' in detail
    assert page(client, "/queues/orders?resolution=h").count("aria-current=\"true\"") == 1
    failed = page(client, "/failed")
    assert traffic.dead_id in failed and "1 of 1" in failed
    assert traffic.dead_id in page(client, "/failed?queue=orders&error=img")
    assert "Nothing matches these filters" in page(client, "/failed?queue=emails")
    assert "Nothing matches these filters" in page(client, "/failed?error=no-such-error")
    assert "Ignored the queue filter" in page(client, "/failed?queue=bad%20name%24")
    found = page(client, f"/search?id={traffic.pending_id}")
    assert "1 message(s) found" in found and "order_id" in found
    assert "1 message(s) found" in page(client, "/search?q=order_id%3D41&queue=orders")
    assert "is not declared searchable" in page(client, "/search?q=amount%3D12.5")
    assert "0 message(s) found" in page(client, "/search?id=not-an-id")
    workers = page(client, "/workers")
    assert traffic.worker_id in workers and "state-stopped" in workers
    activities = page(client, "/activities")
    assert 'data-activity="nightly-import"' in activities and 'data-total="5"' in activities
    metrics = page(client, "/metrics-ui")
    assert 'data-name="order.paid"' in metrics and 'data-name="signup"' in metrics
    page(client, "/audit")


def test_hostile_body_and_error_are_escaped_on_failed_and_search(client, traffic):
    for path in ("/failed", "/search?q=order_id%3D7", f"/search?id={traffic.dead_id}"):
        html = page(client, path)
        assert HOSTILE_BODY not in html, path
        assert HOSTILE_ERROR not in html, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, path
        assert "&lt;img src=x onerror=alert(1)&gt;" in html, path


def test_overview_renders_a_banner_when_the_engine_is_unreachable(db_name):
    uri = f"mongodb://127.0.0.1:{free_port()}/?serverSelectionTimeoutMS=300"
    app = create_app({"MOPQ_MONGODB_URI": uri, "MOPQ_DATABASE": db_name})
    html = page(app.test_client(), "/")
    assert "The engine is unreachable" in html
    assert 'id="engine-banner" class="banner error" hidden' not in html
    assert "Connected to the engine" not in html


def test_overview_says_when_no_collector_counts_the_waiting_events(client, engine_uri, db_name):
    Queue("orphans", uri=engine_uri, database=db_name).write({"n": 1})
    flush()
    html = page(client, "/")
    assert '<div id="collector-missing" class="banner warn">' in html
    assert "No collector is running" in html
    assert 'id="collector-behind" class="banner warn" hidden' in html


def test_pages_require_credentials_when_users_are_configured(engine_uri, db_name, monkeypatch):
    monkeypatch.setenv("MOPQ_BASIC_AUTH_USERS", "reader:s3cret")
    app = create_app({"MOPQ_MONGODB_URI": engine_uri, "MOPQ_DATABASE": db_name})
    client = app.test_client()
    for path in PAGES:
        assert client.get(path).status_code == 401, path
    good = {"Authorization": "Basic " + base64.b64encode(b"reader:s3cret").decode()}
    bad = {"Authorization": "Basic " + base64.b64encode(b"reader:wrong").decode()}
    assert client.get("/queues", headers=bad).status_code == 401
    html = client.get("/failed", headers=good).get_data(as_text=True)
    assert "reader" in html


def test_admin_buttons_say_how_to_enable_admin(client, traffic):
    html = page(client, "/failed")
    assert 'data-action="retry"' in html
    assert "disabled" in html and "MOPQ_ADMIN_USERS" in html
