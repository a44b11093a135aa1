"""The queue over HTTP: write, claim, acknowledge, fail, extend, emit, look — as the talk
classifies them, with producer and consumer tokens, against the real engine.

Through Flask's test client (the whole app); counts are read after a real
collector drained the business log, so "counted exactly like the Python
library" is checked on the same figures the dashboard shows.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
from bson import ObjectId

from mopq import Queue, flush, schema
from mopq.collectors.stats import read_stats
from mopq.dashboard import create_app
from tests.helpers import conserved, drain_log, wait_until

PRODUCER = "producer-token-0123456789"
CONSUMER = "consumer-token-0123456789"
LIMITED = "limited-token-0123456789"
AS_PRODUCER = {"Authorization": f"Bearer {PRODUCER}"}
AS_CONSUMER = {"Authorization": f"Bearer {CONSUMER}"}
ENV = ("MOPQ_ADMIN_TOKEN", "MOPQ_READ_TOKEN", "MOPQ_BASIC_AUTH_USERS", "MOPQ_ADMIN_USERS",
       "MOPQ_PRODUCER_TOKENS", "MOPQ_CONSUMER_TOKENS")


@pytest.fixture
def client(engine_uri, db_name, monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MOPQ_PRODUCER_TOKENS", f"shop={PRODUCER},side={LIMITED}@side")
    monkeypatch.setenv("MOPQ_CONSUMER_TOKENS", f"shipper={CONSUMER}")
    monkeypatch.setenv("MOPQ_ADMIN_TOKEN", "admin-token-0123456789")
    monkeypatch.setenv("MOPQ_READ_TOKEN", "read-token-0123456789")
    app = create_app({"MOPQ_MONGODB_URI": engine_uri, "MOPQ_DATABASE": db_name,
                      "TESTING": True})
    yield app.test_client()
    assert flush(20)


def _counts(db, queue: str) -> dict:
    drain_log(db)
    return read_stats(db)["queues"][queue]


def _claim(client, queue: str = "orders", **body) -> list[dict]:
    answer = client.post(f"/api/queues/{queue}/claims", json=body, headers=AS_CONSUMER)
    assert answer.status_code == 200, answer.get_json()
    return answer.get_json()["messages"]


def test_write_claim_ack_fail_and_extend_are_counted_like_the_library(client, db):
    one = client.post("/api/queues/orders/messages", json={"body": {"n": 1}, "priority": 3},
                      headers=AS_PRODUCER)
    assert one.status_code == 201
    many = client.post("/api/queues/orders/messages",
                       json={"messages": [{"body": {"n": 2}}, {"body": {"n": 3}, "delay": 600}]},
                       headers=AS_PRODUCER)
    assert many.status_code == 201 and len(many.get_json()["ids"]) == 2
    first, second = _claim(client, limit=5, visibility_timeout=30)
    assert first["body"] == {"n": 1} and first["attempts"] == 1  # priority first
    renewed = client.post(f"/api/queues/orders/messages/{first['id']}/lease"
                          f"?lease={first['lease']}", json={"extend_by": 120, "progress": 0.5},
                          headers=AS_CONSUMER)
    assert renewed.status_code == 200
    assert renewed.get_json()["lease_expires_at"] > first["lease_expires_at"]
    done = client.delete(f"/api/queues/orders/messages/{first['id']}?lease={first['lease']}",
                         headers=AS_CONSUMER)
    assert done.status_code == 200 and done.get_json()["state"] == "done"
    failed = client.post(f"/api/queues/orders/messages/{second['id']}/failures"
                         f"?lease={second['lease']}", json={"reason": "no stock"},
                         headers=AS_CONSUMER)
    assert failed.status_code == 200 and failed.get_json()["state"] == "pending"
    row = _counts(db, "orders")
    assert (row["written"], row["done"], row["failed"], row["delayed"]) == (3, 1, 1, 2)
    assert conserved(row)


def test_the_same_put_writes_once_even_after_the_message_is_done(client, db):
    body = {"body": {"order": 42}}
    first = client.put("/api/queues/orders/messages/order-42", json=body, headers=AS_PRODUCER)
    again = client.put("/api/queues/orders/messages/order-42", json=body, headers=AS_PRODUCER)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.get_json()["id"] == again.get_json()["id"]
    [claimed] = _claim(client)
    client.delete(f"/api/queues/orders/messages/{claimed['id']}?lease={claimed['lease']}",
                  headers=AS_CONSUMER)
    assert flush(10)
    assert db[schema.HISTORY].find_one({"queue": "orders"}) is not None  # done, in history
    later = client.put("/api/queues/orders/messages/order-42", json=body, headers=AS_PRODUCER)
    assert later.status_code == 200 and later.get_json()["id"] == first.get_json()["id"]
    assert _counts(db, "orders")["written"] == 1


def test_a_repeated_ack_answers_the_same_and_a_stale_lease_changes_nothing(client, db):
    client.post("/api/queues/orders/messages", json={"body": {"n": 1}}, headers=AS_PRODUCER)
    [claimed] = _claim(client, visibility_timeout=0.3)
    url = f"/api/queues/orders/messages/{claimed['id']}"
    time.sleep(0.4)  # the lease runs out
    [again] = _claim(client, visibility_timeout=30)
    assert again["id"] == claimed["id"] and again["lease"] != claimed["lease"]
    stale = client.delete(f"{url}?lease={claimed['lease']}", headers=AS_CONSUMER)
    assert stale.status_code == 409 and stale.get_json()["parameter"] == "lease"
    assert db.messages.find_one({"_id": ObjectId(claimed["id"])})["lease_token"] == \
        again["lease"]
    ok = client.delete(f"{url}?lease={again['lease']}", headers=AS_CONSUMER)
    repeat = client.delete(f"{url}?lease={again['lease']}", headers=AS_CONSUMER)
    assert ok.status_code == repeat.status_code == 200
    assert ok.get_json() == repeat.get_json()
    assert flush(10)
    assert client.delete(f"{url}?lease={again['lease']}", headers=AS_CONSUMER).status_code == 200
    assert client.delete(f"{url}?lease={claimed['lease']}", headers=AS_CONSUMER).status_code == 409
    missing = client.delete("/api/queues/orders/messages/65f0c0ffee00000000000001"
                            "?lease=0123456789abcdef", headers=AS_CONSUMER)
    assert missing.status_code == 404
    assert _counts(db, "orders")["done"] == 1


def test_acknowledgements_in_one_request_answer_each_as_its_delete_would(client, db):
    client.post("/api/queues/orders/messages",
                json={"messages": [{"body": {"n": n}} for n in range(3)]}, headers=AS_PRODUCER)
    [lapsed] = _claim(client, visibility_timeout=0.3)
    first, second = _claim(client, limit=2, visibility_timeout=30)
    [again] = wait_until(lambda: _claim(client, visibility_timeout=30),
                         message="the lapsed message to be claimed again")
    assert again["id"] == lapsed["id"]
    missing = "65f0c0ffee00000000000001"
    body = {"messages": [{"id": first["id"], "lease": first["lease"], "result": {"ok": 1}},
                         {"id": lapsed["id"], "lease": lapsed["lease"]},
                         {"id": missing, "lease": "0123456789abcdef"},
                         {"id": second["id"], "lease": second["lease"]}]}
    url = "/api/queues/orders/acknowledgements"
    answer = client.post(url, json=body, headers=AS_CONSUMER)
    assert answer.status_code == 200, answer.get_json()
    def outcomes(answer):
        return [(m["id"], m.get("state"), m.get("status")) for m in answer.get_json()["messages"]]

    assert outcomes(answer) == [(first["id"], "done", None), (lapsed["id"], None, 409),
                                (missing, None, 404), (second["id"], "done", None)]
    assert outcomes(client.post(url, json=body, headers=AS_CONSUMER)) == outcomes(answer)
    assert db.messages.find_one({"_id": ObjectId(lapsed["id"])})["lease_token"] == \
        again["lease"]
    assert client.post(url, json=body, headers=AS_PRODUCER).status_code == 403
    assert flush(10)
    assert client.get(f"/api/queues/orders/messages/{first['id']}",
                      headers=AS_CONSUMER).get_json()["result"] == {"ok": 1}
    assert _counts(db, "orders")["done"] == 2


WRITER = """
import sys, time
from mopq import Queue
Queue("orders").write({"n": 1})
print(time.time(), flush=True)
"""


def test_a_long_poll_returns_within_100_ms_of_a_write_and_times_out_cleanly(client, db):
    started = time.monotonic()
    assert _claim(client, wait=0.5) == []
    assert 0.5 <= time.monotonic() - started < 1.5
    delays = []
    for _ in range(3):
        got: list = []

        def claim(into: list = got) -> None:
            into.append((_claim(client, wait=10), time.time()))

        poller = threading.Thread(target=claim)
        poller.start()
        deadline = time.monotonic() + 10
        while not db.doorbells.find_one({"queues": "orders"}):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        written = float(subprocess.run([sys.executable, "-c", WRITER], capture_output=True,
                                       text=True, check=True, env=dict(os.environ)).stdout)
        poller.join(15)
        [(messages, returned)] = got
        assert len(messages) == 1
        delays.append(returned - written)
    assert sorted(delays)[1] < 0.1, delays


def test_the_outcome_can_be_waited_for(client, db):
    written = client.post("/api/queues/orders/messages", json={"body": {"a": 1}},
                          headers=AS_PRODUCER).get_json()["id"]
    answers: list = []

    def look() -> None:
        answers.append(client.get(f"/api/queues/orders/messages/{written}?wait=10",
                                  headers=AS_PRODUCER))

    looker = threading.Thread(target=look)
    looker.start()
    [message] = Queue("orders").read()
    message.delete(result={"shipped": True})
    looker.join(15)
    [answer] = answers
    assert answer.status_code == 200
    assert answer.get_json()["state"] == "done" and answer.get_json()["result"] == {
        "shipped": True}


def test_an_http_consumer_acknowledges_with_a_result_the_producer_reads(client, db):
    written = Queue("orders").write({"a": 1})
    [claimed] = _claim(client)
    url = f"/api/queues/orders/messages/{claimed['id']}?lease={claimed['lease']}"
    too_big = client.delete(url, json={"result": "x" * 70_000}, headers=AS_CONSUMER)
    assert too_big.status_code in (400, 413)
    lone = client.delete(url, json={"result": {"note": "\udc00"}}, headers=AS_CONSUMER)
    assert lone.status_code == 400 and "surrogate" in lone.get_json()["error"]
    assert Queue("orders").get(claimed["id"])["state"] == "inflight"  # refused, nothing changed
    answer = client.delete(url, json={"result": {"parcel": "P-7"}}, headers=AS_CONSUMER)
    assert answer.status_code == 200, answer.get_json()
    assert written.result(timeout=10) == {"parcel": "P-7"}
    outcome = client.get(f"/api/queues/orders/messages/{claimed['id']}", headers=AS_PRODUCER)
    assert outcome.get_json()["result"] == {"parcel": "P-7"}
    assert client.delete(url, headers=AS_CONSUMER).status_code == 200  # a repeat, no body


def test_events_over_http_are_counted(client, db):
    one = client.post("/api/events", json={"name": "order.paid", "value": 5,
                                           "tags": {"region": "eu"}}, headers=AS_PRODUCER)
    many = client.post("/api/events", json={"events": [{"name": "order.paid", "value": 1}] * 3},
                       headers=AS_PRODUCER)
    assert (one.status_code, many.status_code) == (202, 202)
    lone = client.post("/api/events", json={"name": "order.paid", "tags": {"r": "\ud800"}},
                       headers=AS_PRODUCER)
    assert lone.status_code == 400 and lone.get_json()["parameter"] == "body"
    client.post("/api/queues/orders/messages", json={"body": {}}, headers=AS_PRODUCER)
    _counts(db, "orders")  # drains the business log
    total = db.counters.find_one({"_id": "b:order.paid:*|total|-"})
    assert (total["count"], total["sum"]) == (4, 8)


@pytest.mark.parametrize(("method", "url", "headers", "status"), [
    ("post", "/api/queues/orders/claims", AS_PRODUCER, 403),      # a producer cannot consume
    ("post", "/api/queues/orders/messages", AS_CONSUMER, 403),    # a consumer cannot write
    ("post", "/api/events", AS_CONSUMER, 403),
    ("post", "/api/queues/orders/messages", {}, 401),
    ("post", "/api/queues/orders/messages", {"Authorization": f"Bearer {LIMITED}"}, 403),
    ("get", "/api/stats", AS_PRODUCER, 403),                       # nor read the dashboard
    ("post", "/api/failed/retry", AS_CONSUMER, 401),               # nor act as an admin
    ("post", "/api/queues/orders/messages",
     {"Authorization": "Bearer admin-token-0123456789"}, 403),     # nor does an admin write
])
def test_credentials_do_only_their_own_work(client, db, method, url, headers, status):
    answer = getattr(client, method)(url, json={"body": {"n": 1}, "all_matching": True}
                                     if "retry" in url else {"body": {"n": 1}},
                                     headers=headers)
    assert answer.status_code == status, answer.get_json()
    assert db.messages.count_documents({}) == 0


def test_a_limited_token_writes_to_its_queue_only(client, db):
    limited = {"Authorization": f"Bearer {LIMITED}"}
    assert client.post("/api/queues/side/messages", json={"body": {}},
                       headers=limited).status_code == 201
    refused = client.post("/api/queues/orders/messages", json={"body": {}}, headers=limited)
    assert refused.status_code == 403 and "may: side" in refused.get_json()["error"]


@pytest.mark.parametrize("body", [
    {"body": {"$where": "1"}}, {"body": "text"}, {"body": {"n": 1}, "delay": -1},
    {"body": {"n": 1}, "priority": "high"}, {"body": {"n": 2**64}},
    {"messages": [{"body": {"ok": 1}}, {"body": {"$gt": 1}}]}, {"messages": []},
    {"body": {"n": 1}, "extra": True}, {"body": {"text": "\ud800"}},
    {"body": {"n": 1}, "routing_key": "r\udfff"},
])
def test_bad_writes_get_400_and_write_nothing(client, db, body):
    answer = client.post("/api/queues/orders/messages", json=body, headers=AS_PRODUCER)
    assert answer.status_code == 400, answer.get_json()
    assert answer.get_json()["parameter"]
    assert db.messages.count_documents({}) == 0


def test_the_engine_down_is_a_503(engine_uri, db_name, monkeypatch):
    monkeypatch.setenv("MOPQ_PRODUCER_TOKENS", f"shop={PRODUCER}")
    monkeypatch.setenv("MOPQ_CONSUMER_TOKENS", f"shipper={CONSUMER}")
    app = create_app({"MOPQ_MONGODB_URI": "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=200",
                      "MOPQ_DATABASE": db_name, "TESTING": True})
    client = app.test_client()
    for method, url, headers in (("post", "/api/queues/q/messages", AS_PRODUCER),
                                 ("post", "/api/queues/q/claims", AS_CONSUMER)):
        answer = getattr(client, method)(url, json={"body": {}} if "messages" in url else {},
                                         headers=headers)
        assert answer.status_code == 503, answer.get_json()
        assert answer.headers["Retry-After"]
