"""The JSON API through Flask's test client, against the real engine.

Data is written with mopq itself (Queue, emit, Worker) and counted by a real
Collector drained synchronously, so every answer here is what a deployment
would give. Bad input must get a 400 JSON answer naming the parameter and
change nothing; an unreachable engine must give 503 JSON; admin actions must
follow the auth rules and land in the audit log.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as futures_wait

import pytest
from bson import ObjectId
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from prometheus_client.parser import text_string_to_metric_families

from mopq import Queue, Worker, emit, flush, schema
from mopq import connection as mopq_connection
from mopq.collectors import Collector
from mopq.collectors.stats import read_stats
from mopq.dashboard import auth, create_app
from mopq.dashboard.stats_cache import STALE_LIMIT_SECONDS, StatsCache
from mopq.search import declare_search_field
from tests.helpers import free_port, wait_until
from tests.live_server import live_dashboard

AUTH_ENV = ("MOPQ_ADMIN_TOKEN", "MOPQ_READ_TOKEN", "MOPQ_BASIC_AUTH_USERS", "MOPQ_ADMIN_USERS")
ADMIN_TOKEN = "admin-secret-token"
READ_TOKEN = "read-secret-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
READER = {"Authorization": f"Bearer {READ_TOKEN}"}
CSRF = "csrf-token-value-123"


def _basic(user: str, password: str) -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


@pytest.fixture
def make_app(engine_uri, db_name, monkeypatch):
    """Build the app with exactly the given auth settings (the rest unset)."""

    def build(uri: str | None = None, **auth: str):
        for name in AUTH_ENV:
            monkeypatch.delenv(name, raising=False)
        for name, value in auth.items():
            monkeypatch.setenv(name, value)
        app = create_app({"MOPQ_MONGODB_URI": uri or engine_uri, "MOPQ_DATABASE": db_name,
                          "TESTING": True})
        return app

    return build


@pytest.fixture
def app(make_app):
    """Read by token, admin by token or as the basic-auth user ``ops``."""
    return make_app(MOPQ_ADMIN_TOKEN=ADMIN_TOKEN, MOPQ_ADMIN_USERS="ops:ops-password",
                    MOPQ_READ_TOKEN=READ_TOKEN)


@pytest.fixture
def client(app):
    """Sends the read token unless a request gives other credentials."""
    reader = app.test_client()
    reader.environ_base["HTTP_AUTHORIZATION"] = READER["Authorization"]
    return reader


@pytest.fixture
def anonymous(app):
    return app.test_client()


@pytest.fixture
def drain(db):
    """Publish buffered events and apply them all with one collector (held for the test).

    At the end of the test it waits for this process's publishers, so no event is
    still being written when the test's database is dropped.
    """
    collector = Collector(monitor=False)

    def run() -> None:
        assert flush(20)
        collector.partitions.rebalance({})
        while collector.step().applied:
            pass
        assert db[schema.EVENTS].count_documents({}) == 0

    yield run
    assert flush(20), "events still unpublished at the end of the test"


@pytest.fixture
def data(drain):
    """A little of everything: acked, dead, failing, pending, delayed; events; an activity."""
    declare_search_field("orders", "order_id")  # first, as a service would (mopq.search)
    orders = Queue("orders", max_attempts=1)
    ids = orders.write_many([{"order_id": i, "sku": f"s{i}"} for i in range(10)],
                            activity="batch-1")
    text_id = orders.write({"order_id": "77", "note": "<script>alert(1)</script>"})
    for message in orders.read(limit=3):
        message.delete()
    dead = []
    for message in orders.read(limit=2):
        message.fail("ValueError: boom in the handler")
        dead.append(message.id)
    mail = Queue("mail", max_attempts=5, backoff=lambda attempts: 600)
    mail.write({"to": "a@example.com"})
    mail.write({"to": "later@example.com"}, delay=600)
    failing = mail.read(limit=1)[0]
    failing.fail("SMTP timeout")
    emit("order.paid", 12.5, tags={"region": "cn"})
    emit("order.paid", 7.5, tags={"region": "us"})
    drain()
    return {"ids": ids, "text_id": text_id, "dead": dead, "failing": failing.id}


def _get(client, url, status=200, headers=None):
    response = client.get(url, headers=headers)
    assert response.status_code == status, (url, response.status_code, response.get_data())
    assert response.mimetype == "application/json", (url, response.mimetype)
    return response.get_json()


def _post(client, url, body=None, status=200, headers=None, **kwargs):
    if body is not None:
        kwargs["json"] = body
    response = client.post(url, headers=headers, **kwargs)
    assert response.status_code == status, (url, response.status_code, response.get_data())
    assert response.mimetype == "application/json"
    return response.get_json()


def _iso(value: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(value)
    assert parsed.utcoffset() == dt.timedelta(0), value
    return parsed


def _snapshot(db):
    """Everything an admin action could change."""
    return (sorted((str(d["_id"]), d["state"], d.get("attempts"))
                   for d in db[schema.MESSAGES].find({}, {"state": 1, "attempts": 1})),
            db[schema.AUDIT].count_documents({}))


# -- read endpoints: happy paths ------------------------------------------------------------

def test_stats_has_the_design_shape(client, data):
    stats = _get(client, "/api/stats")
    orders = stats["queues"]["orders"]
    for field in ("pending", "inflight", "delayed", "written", "done", "failed", "dead",
                  "expired", "removed", "oldest_pending_age_seconds"):
        assert field in orders
    assert (orders["written"], orders["done"], orders["dead"], orders["failed"]) == (11, 3, 2, 2)
    assert orders["pending"] == 6
    assert stats["queues"]["mail"]["delayed"] == 2
    assert set(stats["workers"]) >= {"alive", "stale", "dead", "zombie"}
    assert stats["collector"]["events_total"] > 0
    assert isinstance(stats["collector"]["lag_seconds"], float | int)
    _iso(stats["generated_at"])


def test_queue_list_detail_and_history(client, data):
    page = _get(client, "/api/queues")
    assert page["total"] == 2 and [row["name"] for row in page["items"]] == ["mail", "orders"]
    orders = page["items"][1]
    assert orders["done"] == 3 and orders["workers"] == 0
    assert "no live worker" in orders["warnings"][0]
    one = _get(client, "/api/queues?page=2&per_page=1")
    assert one["total"] == 2 and [row["name"] for row in one["items"]] == ["orders"]
    assert _get(client, "/api/queues?page=3&per_page=1")["items"] == []

    for resolution in ("s", "m", "h"):
        detail = _get(client, f"/api/queues/orders?resolution={resolution}&since=-1h")
        assert detail["queue"]["name"] == "orders"
        history = detail["history"]
        assert history["resolution"] == resolution
        assert sum(history["counts"]["written"]) == 11
        assert sum(history["counts"]["acked"]) == 3
        assert len(history["t"]) == len(history["counts"]["written"]) >= 1
        for stamp in history["t"]:
            _iso(stamp)
    now = dt.datetime.now(dt.UTC)
    since = (now - dt.timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    until = (now + dt.timedelta(minutes=1)).isoformat()
    detail = _get(client, f"/api/queues/orders?since={since}&until={until.replace('+', '%2B')}")
    assert sum(detail["history"]["counts"]["written"]) == 11
    missing = _get(client, "/api/queues/nosuchqueue", 404)
    assert missing["parameter"] == "name" and "nosuchqueue" in missing["error"]


def test_throughput(client, data):
    series = _get(client, "/api/throughput?seconds=120")
    assert len(series["t"]) == len(series["written"]) == len(series["acked"]) == 120
    assert sum(series["written"]) == 13 and sum(series["acked"]) == 3
    assert sum(series["failed"]) == 3
    only_mail = _get(client, "/api/throughput?queue=mail")
    assert len(only_mail["t"]) == 300 and sum(only_mail["written"]) == 2


def test_failed_dead_and_failing_with_filters_and_pages(client, data):
    dead = _get(client, "/api/failed")
    assert dead["total"] == 2
    assert {item["id"] for item in dead["items"]} == {str(i) for i in data["dead"]}
    assert all(item["state"] == "dead" and "boom" in item["last_error"] for item in dead["items"])
    assert _get(client, "/api/failed?error=BOOM")["total"] == 2
    assert _get(client, "/api/failed?error=no%20such%20text")["total"] == 0
    assert _get(client, "/api/failed?queue=mail")["total"] == 0
    second = _get(client, "/api/failed?page=2&per_page=1")
    assert second["total"] == 2 and len(second["items"]) == 1
    failing = _get(client, "/api/failed?state=failing")
    assert [item["id"] for item in failing["items"]] == [str(data["failing"])]
    assert failing["items"][0]["last_error"] == "SMTP timeout"


def test_message_by_id(client, data):
    shown = _get(client, f"/api/messages/{data['text_id']}")
    assert shown["body"] == {"order_id": "77", "note": "<script>alert(1)</script>"}
    assert shown["queue"] == "orders" and shown["id"] == str(data["text_id"])
    _iso(shown["created_at"])
    dead = _get(client, f"/api/messages/{data['dead'][0]}")
    assert dead["state"] == "dead" and _iso(dead["errors"][0]["at"])
    missing = _get(client, f"/api/messages/{ObjectId()}", 404)
    assert "error" in missing


def test_search_by_id_and_declared_field(client, data):
    by_id = _get(client, f"/api/search?q={data['ids'][4]}")
    assert [item["id"] for item in by_id["items"]] == [str(data["ids"][4])]
    assert _get(client, f"/api/search?q={data['ids'][4]}&queue=mail")["items"] == []
    by_number = _get(client, "/api/search?q=order_id=4")
    assert [item["body"]["order_id"] for item in by_number["items"]] == [4]
    assert by_number["values"] == [4, "4"] and by_number["queues"] == ["orders"]
    by_string = _get(client, "/api/search?q=order_id=77&queue=orders")
    assert [item["id"] for item in by_string["items"]] == [str(data["text_id"])]
    assert _get(client, "/api/search?q=order_id=12345")["items"] == []
    assert _get(client, "/api/search/fields") == {"fields": {"orders": ["order_id"]}}


def test_workers(client, data, db):
    worker = Worker(["mail"], lambda message: None, heartbeat_interval=0.2, poll_interval=0.1)
    worker.start()
    try:
        row = wait_until(lambda: next((w for w in _get(client, "/api/workers")["items"]
                                       if w["id"] == worker.identity), None),
                         message="the worker in /api/workers")
        assert row["state"] == "alive" and row["queues"] == ["mail"]
        _iso(row["heartbeat_at"])
        assert _get(client, "/api/stats")["workers"]["alive"] == 1
    finally:
        worker.stop()
    assert _get(client, "/api/workers?per_page=1")["total"] == 1


def test_activities(client, data):
    page = _get(client, "/api/activities")
    assert page["total"] == 1
    activity = page["items"][0]
    assert activity["activity"] == "batch-1" and activity["total"] == 10
    assert activity["done"] == 3 and activity["failed"] == 2 and activity["left"] == 5


def test_metrics_names_series_and_tags(client, data):
    assert _get(client, "/api/metrics")["items"] == ["order.paid"]
    series = _get(client, "/api/metrics/order.paid?resolution=m&since=-2h")
    assert sum(series["count"]) == 2 and sum(series["sum"]) == 20.0
    assert series["available_tags"] == {"region": ["cn", "us"]}
    cn = _get(client, "/api/metrics/order.paid?tags=region:cn&resolution=h&since=-90d")
    assert sum(cn["count"]) == 1 and sum(cn["sum"]) == 12.5 and cn["tags"] == {"region": ["cn"]}
    assert _get(client, "/api/metrics/order.paid?tags=region:mars")["count"] == []
    assert _get(client, "/api/metrics/no.such.event", 404)["parameter"] == "name"


# -- bad input: 400 JSON, nothing changed ---------------------------------------------------

BAD_QUERIES = [
    ("/api/queues?page=0", "page"),
    ("/api/queues?page=abc", "page"),
    ("/api/queues?page=10001", "page"),
    ("/api/queues?page=1.5", "page"),
    ("/api/queues?per_page=0", "per_page"),
    ("/api/queues?per_page=201", "per_page"),
    ("/api/queues?page=1&page=2", "page"),
    ("/api/workers?sort=id", "sort"),
    ("/api/stats?x=1", "x"),
    ("/api/throughput?seconds=9", "seconds"),
    ("/api/throughput?seconds=3601", "seconds"),
    ("/api/throughput?seconds=ten", "seconds"),
    ("/api/queues/orders?resolution=d", "resolution"),
    ("/api/queues/orders?since=yesterday", "since"),
    ("/api/queues/orders?until=2026-13-01T00:00:00", "until"),
    ("/api/metrics/order.paid?tags=region", "tags"),
    ("/api/metrics/order.paid?tags=$where:1", "tags"),
    ("/api/metrics/order.paid?tags=a.b:1", "tags"),
    ("/api/metrics/order.paid?tags=" + ",".join(f"k{i}:v" for i in range(17)), "tags"),
    ("/api/failed?queue=a$b", "queue"),
    ("/api/failed?queue=" + "q" * 121, "queue"),
    ("/api/failed?state=all", "state"),
    ("/api/failed?error=" + "e" * 201, "error"),
    ("/api/messages/not-an-id", "message_id"),
    ("/api/messages/" + "g" * 24, "message_id"),
    ("/api/metrics/order.paid?since=-1234567s", "since"),
    ("/api/metrics/order.paid?until=2026-01-01T00:00:00", "until"),  # no time zone
    ("/api/metrics/order.paid?until=2026-02-30T00:00:00Z", "until"),
    ("/api/search?id=xyz", "id"),
    ("/api/search", "q"),
    ("/api/search?q=order_id", "q"),
    ("/api/search?q==4", "q"),
    ("/api/search?q=order_id=", "q"),
    ("/api/search?q=$where=1", "q"),
    ("/api/search?id=65f0c0ffee00000000000001&q=order_id=1", "id"),  # id is q now
    ("/api/audit?per_page=500", "per_page"),
    ("/api/metrics/a$b", "name"),
    # operator-shaped keys and values
    ("/api/failed?queue[$ne]=x", "queue[$ne]"),
    ("/api/failed?state[$in]=dead", "state[$in]"),
    ("/api/queues/orders?since[$gt]=", "since[$gt]"),
    ("/api/failed?queue.name=x", "queue.name"),
    ('/api/failed?queue={"$gt":""}', "queue"),
    ('/api/failed?error={"$ne":null}', "error"),
    ("/api/failed?queue=$ne", "queue"),
    ("/api/failed?state=$where", "state"),
    ("/api/throughput?seconds[$gt]=1", "seconds[$gt]"),
]


def test_ranges_wider_than_kept_are_narrowed_and_say_so(client, data):
    """The schema cannot say "at most an hour before until", so such a range is not
    refused (schemathesis would call that a disagreement): it is narrowed, and said."""
    for url, widest in (("/api/queues/orders?resolution=s&since=-2h", 3600),
                        ("/api/queues/orders?resolution=m&since=-3d", 2 * 86400),
                        ("/api/metrics/order.paid?resolution=h&since=-91d", 90 * 86400),
                        ("/api/metrics/order.paid?resolution=m&since=-999999w", 2 * 86400)):
        answer = _get(client, url)
        answer = answer.get("history", answer)
        since, until = (dt.datetime.fromisoformat(answer[k]) for k in ("since", "until"))
        assert (until - since).total_seconds() == widest, url
    empty = _get(client, "/api/queues/orders?since=now&until=-1h")["history"]
    assert empty["since"] == empty["until"] and empty["t"] == []
    absolute = _get(client, "/api/metrics/order.paid?resolution=h&since=2026-01-01T00:00:00%2B08:00"
                            "&until=2026-01-01T05:00:00Z")
    assert absolute["since"].startswith("2025-12-31T16:00:00")


def test_a_tag_named_twice_matches_either_value(client, drain):
    for region, value in (("cn", 1), ("eu", 2), ("us", 4)):
        emit("sale", value, tags={"region": region})
    drain()
    both = _get(client, "/api/metrics/sale?tags=region:cn,region:eu&resolution=h")
    assert sum(both["sum"]) == 3 and both["tags"] == {"region": ["cn", "eu"]}
    assert sum(_get(client, "/api/metrics/sale?resolution=h")["sum"]) == 7


def test_search_of_an_undeclared_field_is_not_found(client, data, db):
    for url in ("/api/search?q=sku=s1", "/api/search?q=order_id=1&queue=mail"):
        answer = _get(client, url, 404)
        assert answer["parameter"] == "q" and "declare_search_field" in answer["error"]


@pytest.mark.parametrize(("url", "parameter"), BAD_QUERIES)
def test_bad_query_parameters_get_400_json(client, data, db, url, parameter):
    before = _snapshot(db)
    answer = _get(client, url, 400)
    assert answer["parameter"] == parameter, answer
    assert isinstance(answer["error"], str) and len(answer["error"]) > 10
    assert _snapshot(db) == before


BAD_BODIES = [
    ("/api/failed/retry", {"ids": {"$ne": None}}, "ids"),
    ("/api/failed/retry", {"ids": [{"$gt": ""}]}, "ids"),
    ("/api/failed/retry", {"ids": ["not-an-id"]}, "ids"),
    ("/api/failed/retry", {"ids": []}, "ids"),
    ("/api/failed/retry", {"ids": "65f0c0ffee00000000000001"}, "ids"),
    ("/api/failed/retry", {"ids": ["65f0c0ffee00000000000001"] * 1001}, "ids"),
    ("/api/failed/retry", {"all_matching": True, "queue": {"$gt": ""}}, "queue"),
    ("/api/failed/retry", {"all_matching": {"$ne": False}}, "all_matching"),
    ("/api/failed/retry", {"all_matching": "true"}, "all_matching"),
    ("/api/failed/retry", {"all_matching": True, "queue": "a$b"}, "queue"),
    ("/api/failed/retry", {"all_matching": True, "error": ["x"]}, "error"),
    ("/api/failed/retry", {"all_matching": True, "error": {"$regex": ".*"}}, "error"),
    ("/api/failed/delete", {"$where": "1"}, "$where"),
    ("/api/failed/delete", {"all_matching": True, "state": "failing"}, "state"),
    ("/api/failed/delete", {"all_matching": True, "sort": "x"}, "sort"),
    ("/api/failed/delete", {"ids": ["65f0c0ffee00000000000001"], "all_matching": True},
     "all_matching"),
    ("/api/failed/delete", [{"ids": []}], "body"),
    ("/api/failed/delete", {}, "all_matching"),
    ("/api/queues/orders/purge", {}, "confirm"),
    ("/api/queues/orders/purge", {"confirm": None}, "confirm"),
    # Acting on every queue is asked for by leaving queue out, never by a null.
    ("/api/failed/retry", {"all_matching": True, "queue": None}, "queue"),
    ("/api/failed/delete", {"all_matching": True, "error": None}, "error"),
    ("/api/failed/delete", {"ids": ["65f0c0ffee00000000000001"], "state": None}, "state"),
    ("/api/queues/orders/purge", {"confirm": {"$ne": ""}}, "confirm"),
    ("/api/queues/orders/purge", {"confirm": "orders", "force": True}, "force"),
]


@pytest.mark.parametrize(("url", "body", "parameter"), BAD_BODIES)
def test_bad_admin_bodies_get_400_and_change_nothing(client, data, db, url, body, parameter):
    before = _snapshot(db)
    answer = _post(client, url, body, 400, headers=ADMIN)
    assert answer["parameter"] == parameter, answer
    assert _snapshot(db) == before


def test_bodies_that_are_not_json_objects(client, data, db):
    before = _snapshot(db)
    for kwargs in ({"data": "ids=1", "content_type": "application/x-www-form-urlencoded"},
                   {"data": "{not json", "content_type": "application/json"},
                   {"data": "", "content_type": "application/json"},
                   {"data": '"just a string"', "content_type": "application/json"}):
        answer = _post(client, "/api/failed/retry", status=400, headers=ADMIN, **kwargs)
        assert answer["error"]
    answer = _post(client, "/api/failed/retry?ids=1", {"ids": [str(data["dead"][0])]}, 400,
                   headers=ADMIN)
    assert answer["parameter"] == "ids"
    big = {"ids": ["x" * 1024 * 1024]}
    assert "too large" in _post(client, "/api/failed/retry", big, 413, headers=ADMIN)["error"]
    over_admin_limit = {"ids": ["65f0c0ffee00000000000001"] * 4000}  # 100 KB, under 1 MiB
    answer = _post(client, "/api/failed/retry", over_admin_limit, 413, headers=ADMIN)
    assert "too large" in answer["error"] and answer["parameter"] == "body"
    assert _snapshot(db) == before


@pytest.mark.parametrize("levels", [17, 1000, 50_000])
def test_deeply_nested_bodies_get_400_not_500(client, data, db, levels):
    """About a thousand levels (10 KB) made Python's JSON parser raise RecursionError."""
    before = _snapshot(db)
    nested = '{"ids": ' + "[" * levels + "]" * levels + "}"
    for url in ("/api/failed/retry", "/api/queues/orders/purge"):
        answer = _post(client, url, status=400 if len(nested) < 64 * 1024 else 413,
                       headers=ADMIN, data=nested, content_type="application/json")
        assert answer["parameter"] == "body", answer
        assert ("levels deep" in answer["error"]) == (len(nested) < 64 * 1024), answer
    brackets_in_strings = '{"confirm": "' + "[" * 5000 + '"}'
    answer = _post(client, "/api/queues/orders/purge", status=409, headers=ADMIN,
                   data=brackets_in_strings, content_type="application/json")
    assert answer["parameter"] == "confirm"
    assert _snapshot(db) == before


def test_purge_confirmation_of_another_name_is_a_conflict(client, data, db):
    before = _snapshot(db)
    answer = _post(client, "/api/queues/orders/purge", {"confirm": "mail"}, 409, headers=ADMIN)
    assert answer["parameter"] == "confirm" and '"orders"' in answer["error"]
    assert _snapshot(db) == before


def test_unknown_api_paths_and_methods_answer_json(client, data):
    assert "error" in _get(client, "/api/nothing-here", 404)
    response = client.delete("/api/stats")
    assert response.status_code == 405 and response.get_json()["error"]
    assert "GET" in response.headers["Allow"]


# -- engine unreachable: 503 JSON -----------------------------------------------------------

def test_engine_unreachable_answers_503_json(make_app, monkeypatch):
    # mopq.connection passes serverSelectionTimeoutMS=5000 as a keyword, which wins over
    # the URI's option; shorten it so each refused request takes 0.3 s, not 5 s.
    monkeypatch.setattr(mopq_connection, "SERVER_SELECTION_TIMEOUT_MS", 300)
    uri = f"mongodb://127.0.0.1:{free_port()}/?serverSelectionTimeoutMS=300"
    client = make_app(uri, MOPQ_ADMIN_TOKEN=ADMIN_TOKEN).test_client()
    for url in ("/api/stats", "/api/queues", "/api/queues/orders", "/api/failed",
                f"/api/messages/{ObjectId()}", "/api/search?q=order_id=1", "/api/workers",
                "/api/activities", "/api/metrics", "/api/metrics/order.paid", "/api/audit",
                "/api/throughput", "/metrics"):
        answer = _get(client, url, 503, headers=ADMIN)
        assert answer["error"] == "the engine is unreachable", url
        assert "Traceback" not in json.dumps(answer)
    answer = _post(client, "/api/failed/retry", {"all_matching": True}, 503, headers=ADMIN)
    assert answer["error"] == "the engine is unreachable"
    answer = _post(client, "/api/queues/orders/purge", {"confirm": "orders"}, 503, headers=ADMIN)
    assert answer["error"] == "the engine is unreachable"
    assert _get(client, "/healthz", 503)["status"] == "unavailable"
    # Validation still answers first: bad input is a 400 even with the engine down.
    assert _get(client, "/api/queues?page=0", 400, headers=ADMIN)["parameter"] == "page"


# -- auth -----------------------------------------------------------------------------------

def test_admin_refused_when_nothing_is_configured(make_app, data, db):
    client = make_app().test_client()
    before = _snapshot(db)
    answer = _post(client, "/api/failed/retry", {"all_matching": True}, 403)
    assert "MOPQ_ADMIN_TOKEN" in answer["error"] and "MOPQ_ADMIN_USERS" in answer["error"]
    assert _get(client, "/api/stats")["queues"]  # reading stays open
    assert _snapshot(db) == before


def test_admin_needs_admin_credentials(client, anonymous, data, db):
    before = _snapshot(db)
    body = {"ids": [str(i) for i in data["dead"]]}
    response = anonymous.post("/api/failed/retry", json=body)
    assert response.status_code == 401 and response.headers["WWW-Authenticate"]
    assert _get(anonymous, "/api/stats", 401)["error"]  # reading is restricted too now
    assert _get(client, "/api/stats", headers=READER)["queues"]
    assert "may read but not act" in _post(client, "/api/failed/retry", body, 403,
                                           headers=READER)["error"]
    _post(client, "/api/failed/retry", body, 401,
          headers={"Authorization": "Bearer wrong-token"})
    _post(client, "/api/failed/retry", body, 401, headers=_basic("ops", "wrong"))
    assert _snapshot(db) == before


def _page_token(client, headers) -> str:
    """The CSRF token a page hands its scripts (the cookie is set on the same answer)."""
    page = client.get("/", headers=headers).get_data(as_text=True)
    return re.search(r'<meta name="csrf-token" content="([^"]+)"', page).group(1)


def test_basic_auth_admin_needs_the_csrf_token(anonymous, data, db):
    client = anonymous
    before = _snapshot(db)
    ops = _basic("ops", "ops-password")
    body = {"ids": [str(data["dead"][0])]}
    assert "CSRF" in _post(client, "/api/failed/retry", body, 403, headers=ops)["error"]
    # An equal cookie and header that the server did not sign are refused.
    client.set_cookie("mopq_csrf", CSRF)
    answer = _post(client, "/api/failed/retry", body, 403,
                   headers={**ops, "X-CSRF-Token": CSRF, "Sec-Fetch-Site": "same-origin"})
    assert "not one this dashboard made" in answer["error"]
    token = _page_token(client, ops)
    assert client.get_cookie("mopq_csrf").value == token
    _post(client, "/api/failed/retry", body, 403, headers=ops)
    _post(client, "/api/failed/retry", body, 403, headers={**ops, "X-CSRF-Token": "other"})
    _post(client, "/api/failed/retry", body, 403,
          headers={**ops, "X-CSRF-Token": token, "Sec-Fetch-Site": "cross-site"})
    # Without Sec-Fetch-Site (older browsers), the Origin must be the dashboard's own.
    answer = _post(client, "/api/failed/retry", body, 403,
                   headers={**ops, "X-CSRF-Token": token, "Origin": "http://evil.example"})
    assert "evil.example" in answer["error"]
    _post(client, "/api/failed/retry", body, 403,
          headers={**ops, "X-CSRF-Token": token, "Referer": "http://localhost.evil/x"})
    assert _snapshot(db) == before
    answer = _post(client, "/api/failed/retry", body,
                   headers={**ops, "X-CSRF-Token": token, "Origin": "http://localhost"})
    assert answer["count"] == 1
    entry = _get(client, "/api/audit", headers=ops)["items"][0]
    assert entry["who"] == {"name": "ops", "via": "basic"} and entry["count"] == 1


def test_csrf_tokens_are_per_user_and_expire(make_app, data, db):
    app = make_app(MOPQ_ADMIN_USERS="ops:ops-password,ann:ann-password")
    ops, ann = _basic("ops", "ops-password"), _basic("ann", "ann-password")
    body = {"ids": [str(data["dead"][0])]}
    before = _snapshot(db)
    client = app.test_client()
    token = _page_token(client, ann)
    answer = _post(client, "/api/failed/retry", body, 403,
                   headers={**ops, "X-CSRF-Token": token, "Sec-Fetch-Site": "same-origin"})
    assert "another user" in answer["error"]

    class MadeYesterday(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - auth.CSRF_MAX_AGE_SECONDS - 60

    secret = app.extensions["mopq_csrf_signer"].secret_keys[-1]
    old = URLSafeTimedSerializer(secret, salt=auth.CSRF_SALT, signer=MadeYesterday).dumps(
        {"u": "ops", "n": "x"})
    client.set_cookie("mopq_csrf", old)
    answer = _post(client, "/api/failed/retry", body, 403,
                   headers={**ops, "X-CSRF-Token": old, "Sec-Fetch-Site": "same-origin"})
    assert "expired" in answer["error"]
    assert _snapshot(db) == before
    fresh = _page_token(client, ops)  # a page load replaces the expired cookie
    assert fresh != old and client.get_cookie("mopq_csrf").value == fresh


def test_csrf_cookie_is_secure_only_behind_a_trusted_tls_proxy(make_app, data):
    forwarded = {**_basic("ops", "ops-password"), "X-Forwarded-Proto": "https",
                 "X-Forwarded-Host": "ops.example.com"}
    plain = make_app(MOPQ_ADMIN_USERS="ops:ops-password").test_client()
    cookie = plain.get("/", headers={**forwarded, "X-Forwarded-Host": "localhost"}).headers[
        "Set-Cookie"]
    assert "mopq_csrf=" in cookie and "Secure" not in cookie
    # Without the setting, a forwarded host is not trusted either: Host decides.
    assert plain.get("/", headers=forwarded).status_code == 200

    app = make_app(MOPQ_ADMIN_USERS="ops:ops-password", MOPQ_TRUSTED_PROXIES="1",
                   MOPQ_ALLOWED_HOSTS="ops.example.com")
    proxied = app.test_client()
    response = proxied.get("/", headers=forwarded)
    assert response.status_code == 200
    assert "Secure" in response.headers["Set-Cookie"]
    assert "wss://ops.example.com" in response.headers["Content-Security-Policy"]
    # Behind the proxy, the forwarded host is the one checked.
    assert proxied.get("/", headers={**forwarded, "X-Forwarded-Host": "evil.example"}
                       ).status_code == 400


def test_stats_are_read_once_per_interval_however_many_readers_ask(engine_uri, db_name, data):
    """Fifty readers in one process cost one stats read, not fifty (dashboard/stats_cache.py)."""
    app = create_app({"MOPQ_MONGODB_URI": engine_uri, "MOPQ_DATABASE": db_name, "TESTING": True,
                      "MOPQ_STATS_MAX_AGE": 60.0})
    urls = ["/api/stats", "/metrics", "/api/queues", "/api/queues/orders"] * 12

    def fetch(url: str) -> int:
        return app.test_client().get(url).status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        assert set(pool.map(fetch, urls)) == {200}
    assert app.extensions["mopq_stats"].reads == 1
    pending = _get(app.test_client(), "/api/stats")["queues"]["orders"]["pending"]
    Queue("orders").write({"order_id": 1000})
    assert _get(app.test_client(), "/api/stats")["queues"]["orders"]["pending"] == pending

    app.extensions["mopq_stats"].max_age_seconds = 0.2
    assert wait_until(lambda: _get(app.test_client(), "/api/stats")["queues"]["orders"]["pending"]
                      == pending + 1, timeout=5)


def test_a_reader_that_waited_behind_a_read_takes_its_answer_however_long_it_waited(db):
    """On a busy host a waiter can get the lock well after the read it waited for ended."""
    cache = StatsCache(60.0)
    answers: list[dict] = []
    with cache._lock:  # this thread is the one reading; the other waits behind it
        waiter = threading.Thread(target=lambda: answers.append(cache.get(db)))
        waiter.start()
        wait_until(lambda: waiter.is_alive(), timeout=5)
        read = cache._read(db)
        time.sleep(0.2)  # the waiter is scheduled late: longer than CHECK_SECONDS
    waiter.join(10)
    assert answers == [read] and answers[0] is read
    assert cache.reads == 1


def test_a_count_applied_shows_in_stats_at_once_even_with_a_long_max_age(engine_uri, db_name,
                                                                         data, drain):
    """Issue 16: seeing is fast. The cache keeps an answer only while nothing was counted."""
    app = create_app({"MOPQ_MONGODB_URI": engine_uri, "MOPQ_DATABASE": db_name, "TESTING": True,
                      "MOPQ_STATS_MAX_AGE": 60.0})
    client = app.test_client()
    done = _get(client, "/api/stats")["queues"]["orders"]["done"]
    for message in Queue("orders").read(limit=1):
        message.delete()
    drain()
    counted = time.monotonic()
    wait_until(lambda: _get(client, "/api/stats")["queues"]["orders"]["done"] == done + 1,
               timeout=5, interval=0.01, message="the acknowledgement in /api/stats")
    assert time.monotonic() - counted < 1.0
    reads = app.extensions["mopq_stats"].reads
    for _ in range(20):  # nothing counted since: no new full read, however often asked
        _get(client, "/api/stats")
    assert app.extensions["mopq_stats"].reads == reads


def test_readers_keep_the_previous_stats_while_one_reads_anew(db, data):
    """Once a second one read is slow; the other readers must not all queue behind it."""
    gate = threading.Event()
    gate.set()

    def slow_read(database):
        assert gate.wait(timeout=10)
        return read_stats(database)

    cache = StatsCache(60.0, reader=slow_read)
    first = cache.get(db)
    cache.max_age_seconds = 0.0  # expired from now on, within the stale limit
    gate.clear()
    with ThreadPoolExecutor(max_workers=2) as pool:
        refreshing = pool.submit(cache.get, db)
        assert wait_until(lambda: cache._lock.locked(), timeout=5)
        assert cache.get(db) is first  # answered at once, from the previous read
        gate.set()
        assert refreshing.result(timeout=10) is not first
        assert cache.reads == 2

        cache.max_age_seconds = 60.0
        cache._read_at -= 60.0 + STALE_LIMIT_SECONDS + 1  # too old to serve: readers wait
        gate.clear()
        waiting = [pool.submit(cache.get, db) for _ in range(2)]
        assert not futures_wait(waiting, timeout=0.3).done
        gate.set()
        assert all(f.result(timeout=10) is not first for f in waiting)
    assert cache.reads == 3


def test_an_admin_action_shows_in_stats_at_once(make_app, data):
    app = make_app(MOPQ_ADMIN_TOKEN=ADMIN_TOKEN)
    app.extensions["mopq_stats"].max_age_seconds = 60.0
    client = app.test_client()
    assert _get(client, "/api/stats", headers=ADMIN)["queues"]["orders"]["dead"] == 2
    assert _post(client, "/api/failed/retry", {"all_matching": True}, headers=ADMIN)["count"] == 2
    assert _get(client, "/api/stats", headers=ADMIN)["queues"]["orders"]["dead"] == 0

# -- admin actions and the audit log --------------------------------------------------------

def test_retry_moves_dead_messages_back_to_pending(client, data, db, drain):
    first, second = data["dead"]
    answer = _post(client, "/api/failed/retry", {"ids": [str(first)]}, headers=ADMIN)
    assert answer["count"] == 1
    document = db[schema.MESSAGES].find_one({"_id": first})
    assert document["state"] == "pending" and document["attempts"] == 0
    assert db[schema.MESSAGES].find_one({"_id": second})["state"] == "dead"
    # Retrying it again changes nothing: it is no longer dead.
    assert _post(client, "/api/failed/retry", {"ids": [str(first)]}, headers=ADMIN)["count"] == 0
    # All matching, filtered by queue and error text.
    none = {"all_matching": True, "queue": "orders", "error": "not this error"}
    assert _post(client, "/api/failed/retry", none, headers=ADMIN)["count"] == 0
    matching = {"all_matching": True, "queue": "orders", "error": "BOOM"}
    assert _post(client, "/api/failed/retry", matching, headers=ADMIN)["count"] == 1
    assert db[schema.MESSAGES].find_one({"_id": second})["state"] == "pending"
    assert _get(client, "/api/failed")["total"] == 0
    drain()
    assert _get(client, "/api/stats")["queues"]["orders"]["retried"] == 2

    log = _get(client, "/api/audit")
    assert log["total"] == 4
    newest = log["items"][0]
    assert newest["action"] == "retry" and newest["count"] == 1 and newest["status"] == "done"
    assert newest["who"] == {"name": "admin-token", "via": "token"}
    assert newest["target"] == {"all_matching": True, "queue": "orders", "error": "BOOM",
                                "state": "dead"}
    assert newest["remote_addr"] == "127.0.0.1"
    _iso(newest["at"])
    oldest = log["items"][-1]
    assert oldest["target"] == {"ids": [str(first)]} and oldest["count"] == 1
    assert [entry["count"] for entry in log["items"]] == [1, 0, 0, 1]


def test_delete_removes_dead_messages(client, data, db, drain):
    ids = [str(i) for i in data["dead"]]
    assert _post(client, "/api/failed/delete", {"ids": ids}, headers=ADMIN)["count"] == 2
    assert db[schema.MESSAGES].count_documents({"_id": {"$in": data["dead"]},
                                                "state": "dead"}) == 0
    assert _get(client, "/api/failed")["total"] == 0
    drain()
    orders = _get(client, "/api/stats")["queues"]["orders"]
    assert orders["removed"] == 2 and orders["dead"] == 0
    entry = _get(client, "/api/audit")["items"][0]
    assert (entry["action"], entry["count"], entry["target"]) == ("delete", 2, {"ids": ids})


def test_purge_needs_confirmation_and_empties_the_queue(client, data, db):
    stats = _get(client, "/api/stats")["queues"]["orders"]
    expected = stats["pending"] + stats["delayed"] + stats["dead"]
    _post(client, "/api/queues/orders/purge", {"confirm": "order"}, 409, headers=ADMIN)
    answer = _post(client, "/api/queues/orders/purge", {"confirm": "orders"}, headers=ADMIN)
    assert answer["count"] == expected == 8
    assert db[schema.MESSAGES].count_documents({"queue": "orders",
                                                "state": {"$in": ["pending", "dead"]}}) == 0
    assert db[schema.MESSAGES].count_documents({"queue": "mail", "state": "pending"}) == 2
    entry = _get(client, "/api/audit")["items"][0]
    assert (entry["action"], entry["count"], entry["target"]) == ("purge", 8, {"queue": "orders"})
    assert _get(client, "/api/audit")["total"] == 1


def test_audit_pages_newest_first(client, data, db):
    for _ in range(3):
        _post(client, "/api/failed/delete", {"ids": [str(ObjectId())]}, headers=ADMIN)
    _post(client, "/api/queues/mail/purge", {"confirm": "mail"}, headers=ADMIN)
    first = _get(client, "/api/audit?per_page=2")
    assert first["total"] == 4 and [e["action"] for e in first["items"]] == ["purge", "delete"]
    second = _get(client, "/api/audit?per_page=2&page=2")
    assert [e["action"] for e in second["items"]] == ["delete", "delete"]
    stamps = [_iso(e["at"]) for e in first["items"] + second["items"]]
    assert stamps == sorted(stamps, reverse=True)


# -- /metrics and /openapi.json -------------------------------------------------------------

def test_prometheus_metrics_parse_with_escaped_labels(client, anonymous, data, db, drain):
    odd = 'odd "queue"\\with\nnewline'
    Queue(odd).write({"x": 1})
    drain()
    response = client.get("/metrics", headers=READER)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = response.get_data(as_text=True)
    families = {family.name: family for family in text_string_to_metric_families(text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in families.values() for s in family.samples}
    assert families["mopq_queue_pending"].type == "gauge"
    assert families["mopq_queue_written"].type == "counter"
    assert samples[("mopq_queue_written_total", (("queue", "orders"),))] == 11
    assert samples[("mopq_queue_done_total", (("queue", "orders"),))] == 3
    assert samples[("mopq_queue_dead", (("queue", "orders"),))] == 2
    assert samples[("mopq_queue_pending", (("queue", odd),))] == 1
    assert samples[("mopq_workers", (("state", "alive"),))] == 0
    assert samples[("mopq_collector_events_total", ())] > 0
    assert ("mopq_collector_lag_seconds", ()) in samples
    # Each family has exactly one HELP and one TYPE line, before its samples.
    lines = text.splitlines()
    for name in ("mopq_queue_pending", "mopq_queue_written_total", "mopq_workers"):
        assert lines.count(f"# TYPE {name} " + ("counter" if name.endswith("_total")
                                                else "gauge")) == 1
        assert sum(line.startswith(f"# HELP {name} ") for line in lines) == 1
    assert anonymous.get("/metrics").status_code == 401


def _documented_routes(app) -> set[tuple[str, str]]:
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/") or rule.rule in ("/metrics", "/healthz",
                                                          "/openapi.json"):
            path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                routes.add((path, method.lower()))
    return routes


def test_openapi_describes_every_api_route(client, make_app):
    document = _get(client, "/openapi.json")
    assert document["openapi"].startswith("3.")
    described = {(path, method) for path, item in document["paths"].items()
                 for method in item}
    app = make_app(MOPQ_ADMIN_TOKEN=ADMIN_TOKEN)
    registered = _documented_routes(app)
    assert registered - described == set(), "routes missing from /openapi.json"
    assert described - registered == set(), "/openapi.json describes routes that do not exist"
    for path, method in described:
        operation = document["paths"][path][method]
        responses = operation["responses"]
        assert {"200", "201", "202"} & set(responses), (path, method)
        if path.startswith("/api/"):
            assert {"400", "401", "503"} <= set(responses), (path, method)
        if method in ("post", "put"):
            assert "403" in responses and "requestBody" in operation, path
        if operation["tags"] == ["queue"]:  # the talk's classes, on every queue operation
            assert isinstance(operation["x-safe"], bool), (path, method)
            assert isinstance(operation["x-idempotent"], bool), (path, method)
        for parameter in operation.get("parameters", []):
            if parameter["in"] == "path":
                assert f"{{{parameter['name']}}}" in path, (path, parameter)
    for name, response in document["components"]["responses"].items():
        assert response["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Error"}, name


NAMES = ["http/requests", "a//b", "/leading", "trailing/", "with space", "q?x=1", "hash#x",
         "%41", "ünïcode", "a/../b", "a/./b", "back\\slash", "x" * 200]


def test_every_name_emit_accepts_can_be_fetched(client, drain, engine_uri, db_name, tmp_path):
    """emit("http/requests") was listed on the Metrics page, but its chart said "not found"."""
    from urllib.parse import quote

    for value, name in enumerate(NAMES, start=1):
        assert emit(name, value)
    assert not emit(".") and not emit("..")
    drain()
    listed = _get(client, "/api/metrics?per_page=200")["items"]
    assert sorted(listed) == sorted(NAMES)
    for value, name in enumerate(NAMES, start=1):
        answer = _get(client, "/api/metrics/" + quote(name, safe="") + "?resolution=h")
        assert answer["name"] == name and sum(answer["count"]) == 1 and \
            sum(answer["sum"]) == value, name
    with live_dashboard(engine_uri, db_name, tmp_path) as url:
        for name in NAMES:
            request = urllib.request.Request(url + "/api/metrics/" + quote(name, safe=""))
            with urllib.request.urlopen(request, timeout=10) as response:
                assert json.loads(response.read())["name"] == name, name

