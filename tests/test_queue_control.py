"""Operating a queue over HTTP: policy, pause/resume, cancel, browse, move (issue 14)."""

from __future__ import annotations

import threading
import time

import pytest

from mopq import LeaseLost, Queue, flush, policy, schema
from mopq.cli import main as mopq_main
from mopq.collectors.stats import read_stats
from mopq.dashboard import create_app
from tests.helpers import conserved, drain_log

ADMIN_TOKEN = "admin-secret-token-for-tests"
READ_TOKEN = "read-secret-token-for-tests"
CONSUMER_TOKEN = "consumer-secret-token-0123"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
READER = {"Authorization": f"Bearer {READ_TOKEN}"}
CONSUMER = {"Authorization": f"Bearer {CONSUMER_TOKEN}"}


@pytest.fixture
def app(engine_uri, db_name, monkeypatch):
    for name in ("MOPQ_BASIC_AUTH_USERS", "MOPQ_ADMIN_USERS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MOPQ_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv("MOPQ_READ_TOKEN", READ_TOKEN)
    monkeypatch.setenv("MOPQ_CONSUMER_TOKENS", f"worker={CONSUMER_TOKEN}")
    return create_app({"MOPQ_MONGODB_URI": engine_uri, "MOPQ_DATABASE": db_name,
                       "TESTING": True})


@pytest.fixture
def client(app):
    return app.test_client()


def _call(client, method, url, body=None, headers=ADMIN, status=200):
    response = client.open(url, method=method, json=body, headers=headers)
    assert response.status_code == status, (url, response.status_code, response.get_data())
    return response.get_json()


def _audited(client, action):
    entries = _call(client, "GET", "/api/audit", headers=READER)["items"]
    return [entry for entry in entries if entry["action"] == action]


@pytest.mark.parametrize("method, url, body", [
    ("PUT", "/api/queues/q/policy", {"max_attempts": 2}),
    ("POST", "/api/queues/q/pause", {}),
    ("POST", "/api/queues/q/resume", {}),
    ("POST", "/api/queues/q/cancel", {"ids": ["65f0c0ffee00000000000001"], "reason": "x"}),
    ("POST", "/api/queues/q/messages/65f0c0ffee00000000000001/front", {}),
    ("POST", "/api/queues/q/messages/65f0c0ffee00000000000001/move", {"to": "r"}),
])
def test_each_action_needs_admin_rights(client, db, method, url, body):
    for headers, status in ((READER, 403), (CONSUMER, 401), ({}, 401)):
        _call(client, method, url, body, headers=headers, status=status)
    assert policy.read(db, "q") == policy.QueueRecord("q")
    assert db[schema.AUDIT].count_documents({}) == 0


def test_an_admin_edits_the_policy_and_the_page_data_says_where_each_value_comes_from(
        client, db):
    Queue("q", db=db, policy={"visibility_timeout": 12})
    _call(client, "PUT", "/api/queues/q/policy", {"max_attempts": 2, "rate_limit_max": 10,
                                                  "rate_limit_per_seconds": 1})
    view = _call(client, "GET", "/api/queues/q/policy", headers=READER)
    fields = view["fields"]
    assert fields["max_attempts"]["value"] == 2 and fields["max_attempts"]["by"] == "admin"
    assert fields["max_attempts"]["who"] == "admin-token"
    assert fields["visibility_timeout"] == {**fields["visibility_timeout"], "value": 12,
                                            "from": "stored", "by": "code"}
    assert fields["backoff_factor"]["from"] == "default"
    assert view["rate_limit"]["last_minute"] == {"granted": 0, "waited": 0}
    _call(client, "PUT", "/api/queues/q/policy", {"max_attempts": None})
    assert policy.read(db, "q").policy.get("max_attempts") is None
    refused = _call(client, "PUT", "/api/queues/q/policy", {"rate_limit_max": None},
                    status=409)
    assert "both rate_limit_max and rate_limit_per_seconds" in refused["error"]
    assert _call(client, "PUT", "/api/queues/q/policy", {"max_attempts": 0},
                 status=400)["parameter"] == "max_attempts"
    assert [entry["target"]["policy"] for entry in _audited(client, "queue.policy")] == [
        {"max_attempts": None},
        {"max_attempts": 2, "rate_limit_max": 10, "rate_limit_per_seconds": 1}]


def test_pause_stops_http_claims_within_a_second_and_resume_wakes_a_long_poll(client, db):
    Queue("jobs", db=db).write({"n": 1})
    assert _call(client, "POST", "/api/queues/jobs/pause", {"reason": "deploy"})["count"] == 1
    assert _call(client, "POST", "/api/queues/jobs/pause", None)["count"] == 0
    time.sleep(policy.CACHE_SECONDS)
    assert _call(client, "POST", "/api/queues/jobs/claims", {"wait": 0}, headers=CONSUMER,
                 )["messages"] == []
    assert _call(client, "GET", "/api/queues/jobs/policy", headers=READER)["paused"][
        "reason"] == "deploy"
    answered: list[float] = []

    def long_poll():
        found = _call(client, "POST", "/api/queues/jobs/claims", {"wait": 10},
                      headers=CONSUMER)["messages"]
        answered.append(time.monotonic() if found else -1)

    poller = threading.Thread(target=long_poll)
    poller.start()
    time.sleep(1.0)
    resumed_at = time.monotonic()
    _call(client, "POST", "/api/queues/jobs/resume")
    poller.join(15)
    assert answered and 0 < answered[0] - resumed_at < 2.5, answered  # the long poll got it
    assert [entry["target"] for entry in _audited(client, "queue.pause")][-1] == {
        "queue": "jobs", "reason": "deploy"}


def test_cancel_over_http_refuses_the_holders_ack_and_counts_cancelled(client, db):
    queue = Queue("mail", db=db)
    held_id, waiting_id = queue.write({"n": 1}), queue.write({"n": 2})
    held = queue.read()[0]
    assert held.id == held_id
    answer = _call(client, "POST", "/api/queues/mail/cancel",
                   {"ids": [str(held_id), str(waiting_id), "65f0c0ffee00000000000001"],
                    "reason": "customer asked"})
    assert answer["count"] == 2
    with pytest.raises(LeaseLost, match="customer asked"):
        held.delete()
    drain_log(db)
    row = read_stats(db)["queues"]["mail"]
    assert (row["cancelled"], row["done"], row["pending"]) == (2, 0, 0) and conserved(row)
    found = _call(client, "GET", f"/api/messages/{held_id}", headers=READER)
    assert found["state"] == "cancelled" and found["cancelled"]["reason"] == "customer asked"


def test_browse_pages_states_routing_keys_and_inflight_holders(client, db):
    queue = Queue("b", db=db)
    ids = queue.write_many([{"n": i, "text": "x" * 500} for i in range(5)], routing_key="eu")
    queue.write({"n": 99}, routing_key="us")
    queue.write({"n": 100}, delay=60)
    held = Queue("b", db=db, worker="10.0.0.1:1:2:3").read(routing_key="eu")[0]
    first = _call(client, "GET", "/api/queues/b/browse?state=pending&routing_key=eu&limit=2",
                  headers=READER)
    assert [row["id"] for row in first["items"]] == [str(i) for i in ids[1:3]]
    assert len(first["items"][0]["preview"]) <= 160 and first["next"] == str(ids[2])
    second = _call(client, "GET", f"/api/queues/b/browse?state=pending&routing_key=eu&limit=2"
                                  f"&after={first['next']}", headers=READER)
    assert [row["id"] for row in second["items"]] == [str(i) for i in ids[3:5]]
    assert second["next"] is None
    inflight = _call(client, "GET", "/api/queues/b/browse?state=inflight", headers=READER)
    assert inflight["items"][0]["worker"] == "10.0.0.1:1:2:3"
    assert inflight["items"][0]["id"] == str(held.id) and inflight["items"][0]["lease_ends_at"]
    delayed = _call(client, "GET", "/api/queues/b/browse?state=delayed", headers=READER)
    assert [row["preview"] for row in delayed["items"]] == ["n: 100"]
    assert _call(client, "GET", "/api/queues/b/browse?state=done", headers=READER,
                 status=400)["parameter"] == "state"


def test_move_to_front_and_to_another_queue_keep_counts_conserved(client, db):
    queue = Queue("a", db=db)
    ids = queue.write_many([{"n": i} for i in range(3)])
    _call(client, "POST", f"/api/queues/a/messages/{ids[2]}/front")
    assert Queue("a", db=db).read()[0].id == ids[2]
    _call(client, "POST", f"/api/queues/a/messages/{ids[1]}/move", {"to": "z"})
    assert Queue("z", db=db).read()[0].id == ids[1]
    assert _call(client, "POST", f"/api/queues/a/messages/{ids[1]}/move", {"to": "z"},
                 status=404)["parameter"] == "message_id"
    assert _call(client, "POST", f"/api/queues/a/messages/{ids[0]}/move", {"to": "a"},
                 status=409)["parameter"] == "to"
    drain_log(db)
    queues = read_stats(db)["queues"]
    assert (queues["a"]["written"], queues["a"]["removed"], queues["a"]["pending"]) == (3, 1, 1)
    assert (queues["z"]["written"], queues["z"]["inflight"]) == (1, 1)
    assert conserved(queues["a"]) and conserved(queues["z"])
    assert _audited(client, "message.move")[0]["target"] == {"queue": "a", "ids": [str(ids[1])],
                                                             "to": "z"}


def test_the_cli_pauses_sets_policy_cancels_and_browses(db, capsys):
    queue = Queue("cli", db=db)
    written = queue.write({"n": 1})
    assert mopq_main(["queue", "pause", "cli", "--reason", "maintenance"]) == 0
    assert "paused" in capsys.readouterr().out
    assert mopq_main(["queue", "pause", "cli"]) == 1
    assert "already paused" in capsys.readouterr().out
    assert mopq_main(["queue", "policy", "cli", "--set", "max_attempts=3"]) == 0
    shown = capsys.readouterr().out
    assert "max_attempts" in shown and "3" in shown and "stored by admin" in shown
    assert mopq_main(["queue", "browse", "cli"]) == 0
    assert str(written) in capsys.readouterr().out
    assert mopq_main(["queue", "cancel", "cli", str(written), "--reason", "wrong"]) == 0
    assert "1 cancelled" in capsys.readouterr().out
    assert mopq_main(["queue", "cancel", "cli", str(written), "--reason", "wrong"]) == 1
    assert "not cancelled" in capsys.readouterr().out
    assert mopq_main(["queue", "resume", "cli"]) == 0
    assert policy.read(db, "cli").paused is None and policy.read(db, "cli").policy == {
        "max_attempts": 3}
    assert flush(10)
