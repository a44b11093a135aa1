"""The Node.js client (clients/node) follows docs/FORMAT.md: counted exactly like Python.

Each test runs a script of clients/node/test/ with `node` against the test's own
database, and checks what the Python library, a real Collector and the dashboard's
stats (``read_stats``) make of it. Collectors here run without their monitor, so no
sweep publishes an outbox the Node client left behind: every count below comes from
events the Node client published itself (docs/FORMAT.md §6.2).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId

from mopq import (
    Envelope,
    MessageDead,
    Queue,
    Worker,
    control,
    flush,
    maintenance,
    schema,
    write_intents,
)
from mopq.collectors.counters import TOTAL, counter_id
from mopq.collectors.monitor import Monitor
from mopq.collectors.series import metric
from mopq.collectors.stats import read_stats
from mopq.connection import prepared
from mopq.events import as_document, message_event
from tests.helpers import conserved, drain_log, wait_until

REPO_ROOT = Path(__file__).resolve().parent.parent
CLIENT = REPO_ROOT / "clients" / "node"
NODE = shutil.which("node")
IDENTITY = re.compile(r"^\d+\.\d+\.\d+\.\d+:\d+:\d+:\d+$")
FLOWS = ("done", "expired", "removed", "dead", "pending", "inflight", "delayed")

pytestmark = pytest.mark.skipif(
    NODE is None, reason="`node` (Node.js) is not installed; the Node client's tests need it "
                         "(Debian: apt-get install nodejs npm)")


@pytest.fixture(scope="session")
def node_client() -> Path:
    """clients/node with its pinned packages (`make install` does this; so does this fixture)."""
    if not (CLIENT / "node_modules" / "mongodb" / "package.json").exists():
        npm = shutil.which("npm")
        assert npm, "clients/node/node_modules is missing and npm is not installed (make install)"
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                              cwd=CLIENT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"npm ci in clients/node failed:\n{done.stderr}"
    return CLIENT


def run_node(client: Path, script: str, args: dict[str, Any], *, ok: bool = True,
             timeout: float = 60) -> dict[str, Any]:
    """Run clients/node/test/<script> with one JSON argument; return its last JSON line."""
    done = subprocess.run([NODE, str(client / "test" / script), json.dumps(args)], cwd=REPO_ROOT,
                          env=dict(os.environ), capture_output=True, text=True, timeout=timeout)
    lines = done.stdout.strip().splitlines()
    assert lines, f"{script} printed nothing (exit {done.returncode}):\n{done.stderr}"
    answer = json.loads(lines[-1])
    if ok:
        assert done.returncode == 0 and "error" not in answer, (answer, done.stderr)
        assert answer["flushed"], f"{script} exited with events unpublished"
    return answer


def drain(db) -> None:
    """Apply every event with one collector (no monitor: no sweep runs)."""
    drain_log(db)


def queue_row(db, name: str) -> dict[str, Any]:
    return read_stats(db)["queues"][name]


def total(db, series: str) -> dict[str, Any]:
    return db[schema.COUNTERS].find_one({"_id": counter_id(series, TOTAL, None)}) or {}




# -- (a) Node writes, Python consumes -----------------------------------------------------


def test_messages_node_writes_are_published_by_node_consumed_by_python_and_counted(
        db_name, db, node_client):
    written = run_node(node_client, "produce.js", {"queue": "from_node", "count": 10})
    ids = [ObjectId(i) for i in written["ids"]]
    assert len(set(ids)) == 10
    assert written["again"] == written["deduped"], "a repeated dedupe key wrote a second message"

    # Published by the Node client itself, at once: every message's "written" event is in
    # the log exactly as the Python library would have made it, and every outbox is empty.
    messages = {m["_id"]: m for m in db[schema.MESSAGES].find({"queue": "from_node"})}
    assert set(messages) == set(ids)
    events = {e["_id"]: e for e in db[schema.EVENTS].find()}
    assert set(events) == {f"{i}:w" for i in ids}, "a Node write was not published as written"
    for message in messages.values():
        assert message["outbox"] == []
        expected = as_document(message_event(
            schema.WRITTEN, message, message["created_at"],
            delayed=message["visible_at"] > message["created_at"]))
        assert events[f"{message['_id']}:w"] == expected
    assert sum(e["delayed"] for e in events.values()) == 1

    # The same documents, field for field and type for type, as Python writes them.
    python = Queue("python_shape")
    shapes = [python.write({"n": 0}),
              python.write({"n": 1}, routing_key="welcome", priority=5, activity="signup-py",
                           expire=3600),
              python.write({"n": 2}, dedupe_key="order-2")]
    assert flush(10)
    for node_id, python_id in zip(ids[:3], shapes, strict=True):
        node_doc, python_doc = messages[node_id], db[schema.MESSAGES].find_one({"_id": python_id})
        assert set(node_doc) == set(python_doc)
        assert {k: type(v) for k, v in node_doc.items() if k != "body"} == \
               {k: type(v) for k, v in python_doc.items() if k != "body"}

    # A dedupe key is one key whichever client holds it.
    assert Queue("from_node").write({"n": 2, "python": True}, dedupe_key="order-2") == ids[2]

    handled: list[int] = []
    worker = Worker(["from_node"], lambda m: handled.append(m.body["n"]) or {"by": "python"},
                    heartbeat_interval=0.2, poll_interval=0.1)
    worker.start()
    try:
        wait_until(lambda: db[schema.HISTORY].count_documents({"queue": "from_node"}) == 9,
                   timeout=30, message="the Python worker to finish the 9 visible messages")
    finally:
        assert worker.stop(timeout=30)
    assert sorted(handled) == list(range(9))
    drain(db)

    row = queue_row(db, "from_node")
    assert row["written"] == 10, row
    assert row["done"] == 9 and row["delayed"] == 1, row
    assert row["pending"] == row["inflight"] == row["dead"] == 0, row
    assert conserved(row), row
    assert total(db, "a:batch")["counts"] == {"written": 3, "claimed": 3, "acked": 3}
    assert total(db, "a:signup")["counts"]["written"] == 1


# -- (b) Python writes, Node consumes ------------------------------------------------------


def test_node_consumes_what_python_writes_acks_fails_and_kills_one_counted_exactly(
        db_name, db, node_client):
    queue = Queue("to_node")
    bodies = [{"n": 0, "fail": "always"}, *({"n": n, "fail": "once"} for n in (1, 2, 3)),
              {"n": 4, "extend": True}, *({"n": n} for n in range(5, 10))]
    ids = queue.write_many(bodies)
    assert flush(10)

    answer = run_node(node_client, "consume.js", {"queue": "to_node", "maxAttempts": 2,
                                                  "settle": 10})
    assert answer["settled"] == 10
    actions = {(a["n"], a["attempt"]): a for a in answer["actions"]}
    assert actions[(0, 1)]["action"] == "fail" and actions[(0, 1)]["state"] == "pending"
    assert actions[(0, 2)]["action"] == "fail" and actions[(0, 2)]["state"] == "dead"
    for n in (1, 2, 3):
        assert actions[(n, 1)]["state"] == "pending" and actions[(n, 2)]["action"] == "ack"
    assert actions[(4, 1)]["extendedBy"] > 60
    assert sorted(n for (n, _), a in actions.items() if a["action"] == "ack") == list(range(1, 10))

    dead = db[schema.MESSAGES].find_one({"_id": ids[0]})
    assert dead["state"] == schema.DEAD and dead["last_error"] == "Error: refused 0"
    assert [e["attempt"] for e in dead["errors"]] == [1, 2]
    assert "consume.js" in dead["traceback"]
    with pytest.raises(MessageDead):
        queue.result(ids[0], timeout=1)
    for n, message_id in enumerate(ids[1:], start=1):
        assert queue.result(message_id, timeout=5) == {"by": "node", "n": n}

    drain(db)
    row = queue_row(db, "to_node")
    assert (row["written"], row["done"], row["failed"], row["dead"]) == (10, 9, 5, 1), row
    assert row["pending"] == row["inflight"] == row["delayed"] == 0, row
    assert row["claimed"] == 14, row
    assert conserved(row), row
    assert total(db, "d:to_node:*")["count"] == 9


# -- (c) Node's business events -------------------------------------------------------------


def test_node_emit_is_counted_in_the_business_metric(db_name, db, node_client):
    events = [["order.paid", 12.5, {"region": "cn"}]] * 3 + [
        ["order.paid", 1, {}], ["$bad", 1, {}], ["order.refund", 2, {"region": "eu"}]]
    answer = run_node(node_client, "emit.js", {"events": events})
    assert answer["accepted"] == [True, True, True, True, False, True]

    stored = list(db[schema.EVENTS].find())
    assert len(stored) == 5
    for event in stored:
        assert re.fullmatch(r"[0-9a-f]{32}", event["_id"])
        assert event["partition"] == schema.partition_of(event["_id"])
        assert event["kind"] == schema.BUSINESS and isinstance(event["value"], float)
        assert "republished" not in event

    drain(db)
    paid = total(db, "b:order.paid:*")
    assert (paid["count"], paid["sum"], paid["min"], paid["max"]) == (4, 38.5, 1.0, 12.5)
    cn = total(db, 'b:order.paid:{"region":"cn"}')
    assert (cn["count"], cn["sum"]) == (3, 37.5)
    assert total(db, "b:order.refund:*")["count"] == 1
    now = dt.datetime.now(dt.UTC)
    shown = metric(prepared(db), "order.paid", "m", now - dt.timedelta(minutes=5), now)
    assert (sum(shown["count"]), sum(shown["sum"])) == (4, 38.5)
    assert shown["available_tags"] == {"region": ["cn"]}
    assert read_stats(db)["collector"]["events_total"] == 5


# -- (d) a Node worker: alive while it beats, dead when killed, its message comes back -------


def start_node_worker(client: Path, args: dict[str, Any]) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([NODE, str(client / "test" / "worker.js"), json.dumps(args)],
                               cwd=REPO_ROOT, env=dict(os.environ), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    assert line, f"the Node worker did not start:\n{process.stderr.read()}"
    return process, json.loads(line)["identity"]


def test_a_node_worker_is_alive_while_it_beats_and_dead_once_killed_and_its_message_returns(
        db_name, db, node_client, reap):
    queue = Queue("node_work")
    process, identity = start_node_worker(node_client, {"queues": ["node_work"],
                                                        "maxAttempts": 1})
    reap.append(process)
    assert IDENTITY.match(identity) and identity.endswith(f":{process.pid}")
    beat = db[schema.WORKERS].find_one({"_id": identity})
    assert beat["state"] == "running" and beat["queues"] == ["node_work"]
    wait_until(lambda: db[schema.DOORBELLS].find_one({"_id": identity}), timeout=5,
               message="the Node worker's doorbell")
    bell = db[schema.DOORBELLS].find_one({"_id": identity})
    assert f":{bell['port']}:" in identity and bell["queues"] == ["node_work"]

    monitor = Monitor(prepared(db))
    assert monitor.run_once().states["alive"] == 1, "the monitor took the Node worker for gone"
    assert read_stats(db)["workers"]["alive"] == 1

    done = queue.write({"n": 1})
    failed = queue.write({"n": 2, "fail": True})
    wait_until(lambda: db[schema.HISTORY].find_one({"_id": done}), timeout=10,
               message="the Node worker to acknowledge a Python message")
    wait_until(lambda: (queue.get(failed) or {}).get("state") == schema.DEAD, timeout=10,
               message="the Node worker to fail its only attempt")
    assert db[schema.HISTORY].find_one({"_id": done})["result"] == {"by": "node-worker", "n": 1}

    held = queue.write({"hang": True})
    wait_until(lambda: (queue.get(held) or {}).get("leased_by") == identity, timeout=10,
               message="the Node worker to hold the message")
    wait_until(lambda: [c["message_id"] for c in
                        db[schema.WORKERS].find_one({"_id": identity})["current"]] == [str(held)],
               timeout=5, message="the heartbeat to name the held message")
    wait_until(lambda: queue.get(held)["outbox"] == [], timeout=5,
               message="the claim's events to be published")
    beat = db[schema.WORKERS].find_one({"_id": identity})
    assert (beat["processed"], beat["failed"]) == (1, 1)

    process.send_signal(signal.SIGKILL)
    assert process.wait(10) == -signal.SIGKILL
    result = monitor.run_once()
    assert result.states["dead"] == 1 and result.reclaimed == 1
    assert read_stats(db)["workers"]["dead"] == 1
    back = queue.get(held)
    assert back["state"] == schema.PENDING and back["attempts"] == 1 and "leased_by" not in back

    (again,) = queue.read(visibility_timeout=30)
    assert again.id == held and again.attempts == 2
    again.delete()
    drain(db)
    row = queue_row(db, "node_work")
    assert (row["written"], row["done"], row["failed"], row["dead"]) == (3, 2, 1, 1), row
    assert row["reclaimed"] == 1 and conserved(row), row


def test_a_node_worker_stops_cleanly_on_sigterm(db_name, db, node_client, reap):
    process, identity = start_node_worker(node_client, {"queues": ["calm"]})
    reap.append(process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(15) == 0, process.stderr.read()
    assert json.loads(process.stdout.read().strip().splitlines()[-1])["stopped"]
    beat = db[schema.WORKERS].find_one({"_id": identity})
    assert beat["state"] == "stopped" and beat["stopped_at"] >= beat["started_at"]
    assert db[schema.DOORBELLS].find_one({"_id": identity}) is None
    assert read_stats(db)["workers"]["stopped"] == 1


def test_a_node_worker_honours_quiet_resume_and_stop_at_its_next_beat(db_name, db, node_client,
                                                                     reap, tmp_path):
    """docs/FORMAT.md §7.4: the control an admin sets (mopq.control) comes back with each beat."""
    queue = Queue("ctl")
    gate = tmp_path / "gate"
    process, identity = start_node_worker(node_client, {"queues": ["ctl"], "concurrency": 1})
    reap.append(process)
    assert control.ask(db, identity, control.QUIET, {"name": "ops", "via": "test"})
    wait_until(lambda: db[schema.WORKERS].find_one({"_id": identity})["state"] == "quiet",
               timeout=10, message="the Node worker to report quiet")
    held = queue.write({"gate": str(gate)})
    beat = db[schema.WORKERS].find_one({"_id": identity})["heartbeat_at"]
    for _ in range(5):  # a second of beats: it keeps beating and claims nothing
        beat = wait_until(lambda seen=beat: (lambda t: t if t > seen else None)(
            db[schema.WORKERS].find_one({"_id": identity})["heartbeat_at"]), timeout=5,
            message="another beat")
    assert queue.get(held)["state"] == schema.PENDING

    assert control.ask(db, identity, control.RESUME, {"name": "ops", "via": "test"})
    wait_until(lambda: (queue.get(held) or {}).get("leased_by") == identity, timeout=10,
               message="the resumed Node worker to claim the message")
    # The beat that read "resume" still reported quiet; the next one reports running.
    wait_until(lambda: db[schema.WORKERS].find_one({"_id": identity})["state"] == "running",
               timeout=10, message="the resumed Node worker to report running")
    assert control.ask(db, identity, control.STOP, {"name": "ops", "via": "test"})
    wait_until(lambda: db[schema.WORKERS].find_one({"_id": identity})["state"] == "stopping",
               timeout=10, message="the Node worker to report stopping")
    assert process.poll() is None, "it stopped before its message was done"
    gate.touch()
    assert process.wait(15) == 0, process.stderr.read()
    assert json.loads(process.stdout.read().strip().splitlines()[-1])["processed"] == 1
    assert db[schema.HISTORY].find_one({"_id": held}) is not None
    assert db[schema.WORKERS].find_one({"_id": identity})["state"] == "stopped"


@pytest.mark.parametrize("rings", [True, False], ids=["rings", "polling"])
def test_an_idle_node_worker_sends_a_few_queries_a_second_and_still_picks_work_up(
        db_name, db, node_client, reap, rings):
    process, identity = start_node_worker(node_client, {
        "queues": ["idle_a", "idle_b"], "concurrency": 4, "heartbeatInterval": 5,
        "rings": rings, "countCommands": True})
    reap.append(process)
    time.sleep(4)
    process.send_signal(signal.SIGUSR2)
    idle = json.loads(process.stdout.readline())
    rate = idle["commands"] / idle["seconds"]
    assert rate <= 5, f"an idle Node worker (4 loops, 2 queues) sent {rate:.1f} commands/s"
    written = time.monotonic()
    message_id = Queue("idle_b").write({"n": 7})
    wait_until(lambda: db[schema.HISTORY].find_one({"_id": message_id}), timeout=5,
               message="the idle Node worker to pick the message up")
    assert time.monotonic() - written < (1.0 if rings else 2.5)
    process.send_signal(signal.SIGTERM)
    assert process.wait(15) == 0


def test_a_ring_that_led_to_a_node_claim_is_not_counted_as_one_that_found_nothing(
        db_name, node_client):
    """After 50 rings that find nothing in a second, a Node doorbell ignores the rest of
    that second's rings; the look after handling a rung message (the queue empty again)
    was counted as one, so past 50 messages a second each pickup waited for a poll."""
    answer = run_node(node_client, "ring_claimed.js", {"queue": "rung", "count": 3})
    assert answer["handled"] == 3 and answer["empty"] == 0, answer


# -- leases, expiry and the format version ---------------------------------------------------


def test_node_is_refused_after_its_lease_and_a_pending_message_past_expiry_is_not_delivered(
        db_name, db, node_client):
    answer = run_node(node_client, "lease.js", {"queue": "leases"})
    assert answer["refused"] == ["ack", "fail", "extend"]
    assert answer["claimedAgain"] == [{"id": answer["late"], "attempts": 2}]
    assert db[schema.MESSAGES].count_documents({}) == 0, "finished messages were left behind"
    drain(db)
    row = queue_row(db, "leases")
    assert (row["written"], row["claimed"], row["reclaimed"]) == (2, 2, 1), row
    assert (row["done"], row["expired"]) == (1, 1) and conserved(row), row


def test_node_consumers_in_two_processes_take_turns_in_order_without_losing_a_claim(
        db_name, db, node_client):
    Queue("node-turns").write_many([Envelope({"n": n}, priority=n % 3) for n in range(20)])
    answer = run_node(node_client, "turns.js", {"queue": "node-turns", "count": 20})
    assert answer["got"] == sorted(range(20), key=lambda n: (-(n % 3), n))
    assert answer["claims"] == [10, 10], "a claim command found its message already taken"
    assert answer["candidateReads"] == [0, 0], "a claim cost a candidate read and a claim"
    assert flush(10)
    assert db[schema.MESSAGES].count_documents({}) == 0, "finished messages were left behind"
    drain(db)
    row = queue_row(db, "node-turns")
    assert (row["written"], row["claimed"], row["done"]) == (20, 20, 20) and conserved(row), row


def test_node_refuses_a_database_of_a_newer_format_and_writes_nothing(db_name, db, node_client):
    db[schema.SETTINGS].insert_one({"_id": schema.FORMAT_DOCUMENT,
                                    "version": schema.FORMAT_VERSION + 1})
    answer = run_node(node_client, "produce.js", {"queue": "newer"}, ok=False)
    assert answer["error"] == "FormatMismatch"
    assert f"format {schema.FORMAT_VERSION + 1};" in answer["message"]
    assert db[schema.MESSAGES].count_documents({}) == 0
    assert db[schema.EVENTS].count_documents({}) == 0


def test_node_raises_an_older_format_so_that_older_clients_refuse_the_database(
        db_name, db, node_client):
    db[schema.SETTINGS].insert_one({"_id": schema.FORMAT_DOCUMENT,
                                    "version": schema.FORMAT_VERSION - 1})
    run_node(node_client, "produce.js", {"queue": "older", "count": 1})
    stored = db[schema.SETTINGS].find_one({"_id": schema.FORMAT_DOCUMENT})["version"]
    assert stored == schema.FORMAT_VERSION


def test_node_leaves_what_it_finished_of_a_python_write_intent_to_the_sweep(
        db_name, db, node_client):
    """A large Python batch carries its write intent; Node acks its messages but does not
    delete them (FORMAT §6.4 rule 6); the sweep does, and the counts stay exact."""
    count = write_intents.MIN_MESSAGES
    Queue("batched").write_many([{"n": n} for n in range(count)])
    assert flush(10)
    answer = run_node(node_client, "consume.js", {"queue": "batched", "settle": count})
    assert answer["settled"] == count
    assert db[schema.MESSAGES].count_documents({"state": schema.DONE}) == count
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=maintenance.OUTBOX_GRACE_SECONDS + 1)
    maintenance.sweep(db, later)
    assert db[schema.MESSAGES].count_documents({}) == 0
    assert db[schema.HISTORY].count_documents({}) == count
    drain(db)
    row = queue_row(db, "batched")
    assert (row["written"], row["done"]) == (count, count) and conserved(row), row


def test_python_and_node_writers_share_a_queue_that_a_node_consumer_drains(
        db_name, db, node_client):
    """Both clients write to one queue and a Node consumer drains it: one set of counts."""
    Queue("mixed").write_many([Envelope({"n": n}, priority=n % 3) for n in range(5)])
    run_node(node_client, "produce.js", {"queue": "mixed", "count": 6})
    answer = run_node(node_client, "consume.js", {"queue": "mixed", "settle": 10})
    assert answer["settled"] == 10
    drain(db)
    row = queue_row(db, "mixed")
    assert (row["written"], row["done"], row["delayed"]) == (11, 10, 1) and conserved(row), row
