"""Worker control through the JSON API (dashboard.workers_api), Flask's test client, real engine.

A real Worker runs in a thread and must do what each request asks at its
next beat; each request needs admin credentials (and the CSRF token with
basic auth), lands in the audit log, and bad input changes nothing.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator

import pytest

from mopq import Queue, Worker, schema
from tests import test_api as api_tests
from tests.helpers import wait_until

# The JSON API tests' own: read by token, admin by token or as the basic-auth user ops.
ADMIN, READER, _get, _post = api_tests.ADMIN, api_tests.READER, api_tests._get, api_tests._post
app, make_app = api_tests.app, api_tests.make_app   # fixtures
OPS = api_tests._basic("ops", "ops-password")
UNKNOWN = "10.0.0.5:5672:1700000000:4242"


@pytest.fixture
def client(app):
    """Sends no credentials unless a request gives some."""
    return app.test_client()


@pytest.fixture
def worker(db) -> Iterator[Worker]:
    """A Worker of queue "jobs" in a thread whose handler holds each message until released."""
    release = threading.Event()

    def handler(message) -> None:
        message.progress(0.4, "four of ten")
        release.wait(30)

    running = Worker("jobs", handler, heartbeat_interval=0.1, poll_interval=0.1)
    running.release = release
    running.start()
    wait_until(lambda: db[schema.WORKERS].find_one({"_id": running.identity}),
               message="the first heartbeat")
    yield running
    release.set()
    running.stop(timeout=30)


def reported(client, identity: str) -> dict | None:
    rows = _get(client, "/api/workers", headers=READER)["items"]
    return next((row for row in rows if row["id"] == identity), None)


def audit_log(client) -> list[dict]:
    return _get(client, "/api/audit", headers=READER)["items"]


def test_each_action_is_done_by_the_worker_at_its_next_beat_and_audited(client, worker, db):
    url = f"/api/workers/{worker.identity}"
    assert _post(client, url + "/quiet", headers=ADMIN)["count"] == 1
    wait_until(lambda: reported(client, worker.identity)["reported_state"] == "quiet",
               timeout=5, message="the worker to report quiet")
    row = reported(client, worker.identity)
    assert row["state"] == "alive" and row["control"]["command"] == "quiet"
    assert row["control"]["by"] == {"name": "admin-token", "via": "token"}
    held = Queue("jobs").write({"n": 1})
    assert worker.state == "quiet" and Queue("jobs").get(held)["state"] == schema.PENDING
    assert _post(client, url + "/quiet", {}, headers=ADMIN)["count"] == 0

    assert _post(client, url + "/resume", {}, headers=ADMIN)["count"] == 1
    wait_until(lambda: [c["message_id"] for c in reported(client, worker.identity)["current"]]
               == [str(held)], timeout=10, message="the resumed worker to take the message")
    assert reported(client, worker.identity)["reported_state"] == "running"

    assert _post(client, url + "/stop", headers=ADMIN)["count"] == 1
    wait_until(lambda: reported(client, worker.identity)["reported_state"] == "stopping",
               timeout=5, message="the worker to report stopping")
    refused = _post(client, url + "/resume", headers=ADMIN, status=409)
    assert "cannot be undone" in refused["error"] and refused["parameter"] == "worker_id"
    worker.release.set()
    wait_until(lambda: reported(client, worker.identity)["state"] == "stopped", timeout=10,
               message="the worker to stop once its message is done")
    assert worker.processed == 1
    assert "has stopped" in _post(client, url + "/stop", headers=ADMIN, status=409)["error"]

    log = audit_log(client)
    assert [(e["action"], e["count"], e["status"]) for e in reversed(log)] == [
        ("worker.quiet", 1, "done"), ("worker.quiet", 0, "done"), ("worker.resume", 1, "done"),
        ("worker.stop", 1, "done")]
    assert all(e["target"] == {"worker": worker.identity} for e in log)
    assert all(e["who"] == {"name": "admin-token", "via": "token"} for e in log)


def test_the_workers_list_shows_each_current_message_with_its_progress(client, worker, db):
    held = Queue("jobs").write({"n": 1})
    row = wait_until(lambda: (lambda r: r if r["current"] and r["current"][0]["progress"]
                              else None)(reported(client, worker.identity)),
                     timeout=10, message="the held message with its progress")
    (current,) = row["current"]
    assert current["message_id"] == str(held) and current["queue"] == "jobs"
    assert current["progress"]["fraction"] == 0.4 and current["progress"]["note"] == "four of ten"


def _page_token(client, headers) -> str:
    page = client.get("/workers", headers=headers).get_data(as_text=True)
    return re.search(r'<meta name="csrf-token" content="([^"]+)"', page).group(1)


@pytest.mark.parametrize("command", ["stop", "quiet", "resume"])
def test_actions_need_admin_rights_and_the_csrf_token(client, worker, db, command):
    url = f"/api/workers/{worker.identity}/{command}"
    if command == "resume":  # a resume changes something only after a quiet
        db[schema.WORKERS].update_one({"_id": worker.identity},
                                      {"$set": {"control": {"command": "quiet"}}})
    before = db[schema.WORKERS].find_one({"_id": worker.identity})["control"] \
        if command == "resume" else None
    assert _post(client, url, headers=READER, status=403)["error"].endswith(
        "admin credentials are needed.")
    _post(client, url, status=401)
    assert "CSRF" in _post(client, url, headers=OPS, status=403)["error"]
    token = _page_token(client, OPS)
    _post(client, url, headers={**OPS, "X-CSRF-Token": token, "Sec-Fetch-Site": "cross-site"},
          status=403)
    assert db[schema.WORKERS].find_one({"_id": worker.identity}).get("control") == before
    assert audit_log(client) == []

    answer = _post(client, url, headers={**OPS, "X-CSRF-Token": token,
                                         "Sec-Fetch-Site": "same-origin"})
    assert answer["count"] == 1
    asked = db[schema.WORKERS].find_one({"_id": worker.identity})["control"]
    assert asked["command"] == command and asked["by"] == {"name": "ops", "via": "basic"}
    (entry,) = audit_log(client)
    assert entry["action"] == f"worker.{command}" and entry["id"] == answer["audit_id"]
    assert entry["who"] == {"name": "ops", "via": "basic"}


def test_bad_ids_and_bodies_are_refused_and_unknown_workers_are_404(client, worker, db):
    for bad in ("nobody", "1.2.3.4:5:6:7:8", "%24ne", "10.0.0.5:5672:1700000000:4242x"):
        answer = _post(client, f"/api/workers/{bad}/stop", headers=ADMIN, status=400)
        assert answer["parameter"] == "worker_id", answer
    answer = _post(client, f"/api/workers/{worker.identity}/stop", {"force": True},
                   headers=ADMIN, status=400)
    assert answer["parameter"] == "force"
    _post(client, f"/api/workers/{worker.identity}/stop", headers=ADMIN, status=400,
          data="[]", content_type="application/json")
    answer = _post(client, f"/api/workers/{UNKNOWN}/quiet", headers=ADMIN, status=404)
    assert answer["parameter"] == "worker_id"
    assert client.get(f"/api/workers/{worker.identity}/stop", headers=ADMIN).status_code == 405
    assert "control" not in db[schema.WORKERS].find_one({"_id": worker.identity})
    assert worker.state == "running" and audit_log(client) == []


def test_openapi_declares_each_action_once_for_admins(client):
    paths = _get(client, "/openapi.json", headers=READER)["paths"]
    for command in ("stop", "quiet", "resume"):
        operation = paths[f"/api/workers/{{worker_id}}/{command}"]["post"]
        assert operation["x-access"] == "admin" and operation["x-idempotent"] is True
        assert {"200", "400", "401", "403", "404", "409"} <= set(operation["responses"])
        (parameter,) = [p for p in operation["parameters"] if p["in"] == "path"]
        assert parameter["name"] == "worker_id" and parameter["required"]
        assert operation["requestBody"]["required"] is False
