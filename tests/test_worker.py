"""The Worker: acks, failures with tracebacks, heartbeats, signals, crashes, `mopq worker`."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from bson import ObjectId

from mopq import Queue, Worker, flush, schema
from mopq.engine import Engine
from mopq.hosts import host_ip
from tests.handlers import read_records
from tests.helpers import free_port, wait_until

REPO_ROOT = Path(__file__).resolve().parent.parent
IDENTITY = re.compile(r"^\d+\.\d+\.\d+\.\d+:\d+:\d+:\d+$")
UNFINISHED = [schema.PENDING, schema.INFLIGHT, schema.DEAD]


def finished(db, ids) -> bool:
    """Every message acknowledged (done, or already deleted once its events were published)."""
    return db[schema.MESSAGES].count_documents(
        {"_id": {"$in": list(ids)}, "state": {"$ne": schema.DONE}}) == 0


def heartbeat(db, worker_id):
    return db[schema.WORKERS].find_one({"_id": worker_id})


def heartbeat_of_pid(db, pid):
    return db[schema.WORKERS].find_one({"pid": pid})


def start_worker_process(tmp_path: Path, name: str, *args: str) -> subprocess.Popen:
    """`mopq worker ...` in a process of its own; its output goes to tmp_path/<name>.log."""
    log_file = open(tmp_path / f"{name}.log", "w")
    env = {**os.environ, "MOPQ_TEST_RECORD_DIR": str(tmp_path / "records")}
    (tmp_path / "records").mkdir(exist_ok=True)
    process = subprocess.Popen([sys.executable, "-m", "mopq", "worker", *args], cwd=REPO_ROOT,
                               env=env, stdout=log_file, stderr=subprocess.STDOUT, text=True)
    log_file.close()
    return process


def output_of(tmp_path: Path, name: str) -> str:
    return (tmp_path / f"{name}.log").read_text()




# -- a worker in a thread --------------------------------------------------------------


def test_worker_in_a_thread_handles_messages_of_every_queue_acks_them_and_counts_them(db):
    emails, sms = Queue("emails"), Queue("sms")
    ids = emails.write_many([{"n": n} for n in range(5)]) + sms.write_many([{"n": 10}, {"n": 11}])
    handled = []
    worker = Worker(["emails", "sms"], lambda m: handled.append((m.queue.name, m.body["n"])),
                    heartbeat_interval=0.2, poll_interval=0.1)
    worker.start()
    try:
        wait_until(lambda: finished(db, ids), timeout=20, message="every message acknowledged")
        wait_until(lambda: (heartbeat(db, worker.identity) or {}).get("processed") == 7,
                   timeout=10, message="processed = 7 in the heartbeat")
    finally:
        assert worker.stop(timeout=30)
    assert sorted(handled) == [("emails", n) for n in range(5)] + [("sms", 10), ("sms", 11)]
    assert emails.count() == 0 and sms.count() == 0
    document = heartbeat(db, worker.identity)
    assert document["state"] == "stopped"
    assert document["processed"] == 7 and document["failed"] == 0
    assert document["current"] == []
    assert document["stopped_at"] >= document["started_at"]
    assert sorted(document["queues"]) == ["emails", "sms"]
    assert worker.processed == 7


def test_handler_exception_is_a_failed_attempt_with_its_traceback_then_dead(db):
    queue = Queue("jobs")
    message_id = queue.write({"to": "nobody"})

    def send_mail(message):
        raise ValueError(f"bad address {message.body['to']}")

    worker = Worker("jobs", send_mail, max_attempts=3, backoff=lambda attempts: 0.0,
                    heartbeat_interval=0.2, poll_interval=0.1)
    worker.start()
    try:
        wait_until(lambda: queue.get(message_id)["state"] == schema.DEAD, timeout=20,
                   message="the message to be dead")
        wait_until(lambda: (heartbeat(db, worker.identity) or {}).get("failed") == 3,
                   timeout=10, message="failed = 3 in the heartbeat")
    finally:
        assert worker.stop(timeout=30)
    document = queue.get(message_id)
    assert document["attempts"] == 3
    assert document["last_error"] == "ValueError: bad address nobody"
    assert "Traceback (most recent call last)" in document["traceback"]
    assert "in send_mail" in document["traceback"]
    assert "ValueError: bad address nobody" in document["traceback"]
    assert [error["attempt"] for error in document["errors"]] == [1, 2, 3]
    assert all("in send_mail" in error["traceback"] for error in document["errors"])
    assert all(error["worker"] == worker.identity for error in document["errors"])
    state = heartbeat(db, worker.identity)
    assert state["processed"] == 0 and state["failed"] == 3


def test_heartbeat_names_the_worker_shows_the_current_message_and_advances(db):
    queue = Queue("slow")
    release = threading.Event()
    message_id = queue.write({"n": 1})
    worker = Worker(["slow"], lambda m: release.wait(30), concurrency=2,
                    heartbeat_interval=0.2, poll_interval=0.1)
    assert IDENTITY.match(worker.identity), worker.identity
    ip, port, start_time, pid = worker.identity.split(":")
    assert ip == host_ip()
    assert int(pid) == os.getpid()
    assert int(start_time) == int(psutil.Process().create_time())
    worker.start()
    try:
        first = wait_until(lambda: heartbeat(db, worker.identity), message="a heartbeat")
        assert first["state"] == "running"
        assert first["pid"] == os.getpid() and first["ip"] == ip and first["port"] == int(port)
        assert first["hostname"] == socket.gethostname()
        assert first["queues"] == ["slow"] and first["concurrency"] == 2
        assert first["processed"] == 0 and first["failed"] == 0
        assert first["stopped_at"] is None
        assert first["started_at"] <= first["heartbeat_at"]
        wait_until(lambda: heartbeat(db, worker.identity)["heartbeat_at"] > first["heartbeat_at"],
                   timeout=5, message="heartbeat_at to advance")
        busy = wait_until(lambda: (lambda d: d if d["current"] else None)(
            heartbeat(db, worker.identity)), timeout=5, message="the current message")
        assert [(c["message_id"], c["queue"]) for c in busy["current"]] == [
            (str(message_id), "slow")]
        assert queue.get(message_id)["leased_by"] == worker.identity
    finally:
        release.set()
        assert worker.stop(timeout=30)
    assert heartbeat(db, worker.identity)["processed"] == 1


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("0.0.0.0", 0))
        return probe.getsockname()[1]


def test_identity_port_is_the_given_port_else_the_doorbells(db):
    """Writers ring a worker on the port its identity ip:port:start_time:pid names."""
    given = _free_udp_port()
    worker = Worker("q", print, port=given)
    assert worker.identity.split(":")[1] == str(given) == str(worker.doorbell.port)
    udp = {c.laddr.port for c in psutil.Process().net_connections(kind="udp") if c.laddr}
    assert given in udp
    worker.doorbell.listen(["q"])  # as a waiting worker does; rings for other queues are dropped
    before = worker.doorbell.rings(["q"])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ringer:
        ringer.sendto(db.name.encode() + b"\x00q", ("127.0.0.1", given))
    assert worker.doorbell.wait(["q"], before, 5)


def test_without_rings_the_identity_port_is_the_listening_port(db, monkeypatch):
    monkeypatch.setenv("MOPQ_RINGS", "0")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        worker = Worker("q", print)
    assert worker.doorbell is None and worker.port == port
    assert worker.identity.split(":")[1] == str(port)


def test_stop_before_any_message_records_stopped_and_run_is_once_only(db):
    worker = Worker("idle", print, heartbeat_interval=0.2, poll_interval=0.1)
    thread = worker.start()
    wait_until(lambda: heartbeat(db, worker.identity), message="a heartbeat")
    assert worker.stop(timeout=10)
    thread.join(5)
    assert not thread.is_alive()
    assert heartbeat(db, worker.identity)["state"] == "stopped"
    with pytest.raises(RuntimeError):
        worker.run()


@pytest.mark.skipif(shutil.which("java") is None, reason="Java is not installed")
def test_worker_keeps_going_through_an_engine_outage(caplog):
    port = free_port()
    engine = Engine(port=port)
    uri = engine.start()
    handled = []
    try:
        queue = Queue("jobs", uri=uri, database="outage")
        worker = Worker("jobs", lambda m: handled.append(m.body["n"]), uri=uri,
                        database="outage", heartbeat_interval=0.2, poll_interval=0.1)
        thread = worker.start()
        queue.write({"n": 1})
        wait_until(lambda: handled == [1], timeout=10, message="the first message")
        engine.stop()
        outage_started = time.monotonic()
        caplog.set_level("WARNING", logger="mopq.worker")
        wait_until(lambda: any("cannot claim" in r.getMessage() for r in caplog.records),
                   timeout=30, message="the worker to notice the outage")
        engine = Engine(port=port)
        assert engine.start() == uri
        outage = time.monotonic() - outage_started
        claims_failed = sum("cannot claim" in r.getMessage() for r in caplog.records)
        # Each failed claim waits at least 0.5 s, doubling: no busy loop while down.
        assert claims_failed <= outage / 0.5 + 1, (claims_failed, outage)
        assert thread.is_alive()
        # The memory engine came back empty: the next beat registers the worker again.
        wait_until(lambda: engine_db(uri)[schema.WORKERS].find_one({"_id": worker.identity}),
                   timeout=30, message="the heartbeat after the outage")
        Queue("jobs", uri=uri, database="outage").write({"n": 2})
        wait_until(lambda: handled == [1, 2], timeout=30, message="a message after the outage")
        assert worker.stop(timeout=30)
        assert engine_db(uri)[schema.WORKERS].find_one(
            {"_id": worker.identity})["state"] == "stopped"
        # Its events must be out before this engine goes for good, or this process's
        # publisher retries them forever and every later flush() waits for it.
        assert flush(10)
    finally:
        engine.stop()


def engine_db(uri):
    from mopq.connection import get_database
    return get_database(uri, "outage")


# -- `mopq worker` -------------------------------------------------------------------


def test_mopq_worker_command_handles_messages_and_sigterm_lets_the_running_one_finish(
        db, tmp_path, reap):
    queue = Queue("jobs")
    gate = tmp_path / "gate"
    quick = queue.write_many([{"n": 1}, {"n": 2}])
    slow = queue.write({"gate": str(gate)})
    later = queue.write({"n": 4}, priority=-1)
    process = start_worker_process(tmp_path, "worker", "--queue", "jobs",
                                   "--handler", "tests.handlers:gated",
                                   "--heartbeat-interval", "0.2", "--poll-interval", "0.1")
    reap.append(process)
    wait_until(lambda: finished(db, quick), timeout=30, message="the quick messages acked")
    wait_until(lambda: queue.get(slow)["state"] == schema.INFLIGHT, timeout=10,
               message="the slow message claimed")
    identity = queue.get(slow)["leased_by"]
    assert IDENTITY.match(identity) and identity.endswith(f":{process.pid}")

    process.send_signal(signal.SIGTERM)
    wait_until(lambda: heartbeat(db, identity)["state"] == "stopping", timeout=10,
               message="the worker to say it is stopping")
    assert process.poll() is None, "the worker exited before its handler finished"
    assert queue.get(slow)["state"] == schema.INFLIGHT
    assert [c["message_id"] for c in heartbeat(db, identity)["current"]] == [str(slow)]

    gate.touch()
    assert process.wait(30) == 0, output_of(tmp_path, "worker")
    assert finished(db, [slow]), "the running message was not acknowledged before exit"
    untouched = queue.get(later)
    assert untouched["state"] == schema.PENDING and untouched["attempts"] == 0
    document = heartbeat(db, identity)
    assert document["state"] == "stopped" and document["processed"] == 3
    assert document["current"] == [] and document["stopped_at"] is not None
    handled = read_records(tmp_path / "records")[process.pid]
    assert [mid for mid, _, _ in handled] == [str(i) for i in [*quick, slow]]


def test_mopq_worker_exits_at_once_on_a_second_signal(db, tmp_path, reap):
    queue = Queue("jobs")
    held = queue.write({"gate": str(tmp_path / "never")})
    process = start_worker_process(tmp_path, "worker", "--queue", "jobs",
                                   "--handler", "tests.handlers:gated",
                                   "--heartbeat-interval", "0.2", "--poll-interval", "0.1")
    reap.append(process)
    wait_until(lambda: queue.get(held)["state"] == schema.INFLIGHT, timeout=30,
               message="the message claimed")
    identity = queue.get(held)["leased_by"]
    process.send_signal(signal.SIGINT)
    wait_until(lambda: heartbeat(db, identity)["state"] == "stopping", timeout=10,
               message="the worker to say it is stopping")
    assert process.poll() is None
    process.send_signal(signal.SIGINT)
    assert process.wait(10) == 128 + signal.SIGINT
    assert queue.get(held)["state"] == schema.INFLIGHT  # comes back when its lease expires
    assert heartbeat(db, identity)["state"] == "stopping"


@pytest.mark.parametrize(("handler", "complaint"), [
    ("tests.handlers", "not of the form"),
    (":record", "not of the form"),
    ("tests.no_such_module:record", "cannot import module 'tests.no_such_module'"),
    ("tests.handlers:no_such_function", "has no attribute 'no_such_function'"),
    ("tests.handlers:NOT_CALLABLE", "not a function"),
])
def test_mopq_worker_refuses_a_bad_handler_with_exit_code_2(handler, complaint, monkeypatch):
    # Nothing listens there: the handler must be refused before any connection is tried.
    monkeypatch.setenv("MOPQ_MONGODB_URI", f"mongodb://127.0.0.1:{free_port()}/")
    result = subprocess.run([sys.executable, "-m", "mopq", "worker", "--queue", "jobs",
                             "--handler", handler], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert complaint in lines[0]
    assert "package.module:function" in lines[0]
    assert repr(handler) in lines[0]


def test_worker_killed_mid_message_gives_it_back_after_the_lease_and_nothing_is_lost(
        db, tmp_path, reap):
    queue = Queue("crash")
    gate = tmp_path / "gate"
    blocked = queue.write({"gate": str(gate)}, priority=1)
    others = queue.write_many([{"n": n} for n in range(4)])
    everything = {str(i) for i in [blocked, *others]}
    first = start_worker_process(tmp_path, "first", "--queue", "crash",
                                 "--handler", "tests.handlers:gated",
                                 "--visibility-timeout", "2", "--poll-interval", "0.1")
    reap.append(first)
    wait_until(lambda: queue.get(blocked)["state"] == schema.INFLIGHT, timeout=30,
               message="the first worker to hold the message")
    held = queue.get(blocked)
    assert held["leased_by"].endswith(f":{first.pid}")
    first.send_signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL
    after_kill = queue.get(blocked)
    assert after_kill["state"] == schema.INFLIGHT and after_kill["attempts"] == 1

    gate.touch()
    second = start_worker_process(tmp_path, "second", "--queue", "crash",
                                  "--handler", "tests.handlers:gated",
                                  "--heartbeat-interval", "0.2", "--poll-interval", "0.1")
    reap.append(second)
    ids = [ObjectId(i) for i in everything]
    wait_until(lambda: finished(db, ids), timeout=30, message="every message acknowledged")
    second.send_signal(signal.SIGTERM)
    assert second.wait(30) == 0, output_of(tmp_path, "second")

    records = read_records(tmp_path / "records")
    assert first.pid not in records, "the killed worker recorded a message it never finished"
    handled = records[second.pid]
    assert sorted(mid for mid, _, _ in handled) == sorted(everything)
    (attempts, claimed_at), = [(a, at) for mid, a, at in handled if mid == str(blocked)]
    assert attempts == 2
    assert claimed_at >= held["visible_at"].timestamp() - 0.01, "claimed before the lease ended"
    assert db[schema.MESSAGES].count_documents({"queue": "crash",
                                                "state": {"$in": UNFINISHED}}) == 0
    survivor = heartbeat_of_pid(db, second.pid)
    assert survivor["processed"] == 5 and survivor["failed"] == 0
    assert survivor["state"] == "stopped"
    assert heartbeat_of_pid(db, first.pid)["state"] != "stopped"


# -- claiming ahead and acknowledging in bulk (issue 16, item 5) ----------------------


def test_messages_claimed_ahead_go_back_at_once_when_the_worker_stops(db):
    queue = Queue("ahead")
    ids = queue.write_many([{"n": n} for n in range(40)])
    gate, blocked = threading.Event(), threading.Event()
    first_handled: list[int] = []

    def first_handler(message):
        first_handled.append(message.body["n"])
        if len(first_handled) == 4:  # by now it claims several at once: hold them
            blocked.set()
            assert gate.wait(30)

    first = Worker("ahead", first_handler, visibility_timeout=120, poll_interval=0.1)
    first.start()
    assert blocked.wait(30), "the first worker never reached its fourth message"
    held = db[schema.MESSAGES].count_documents({"queue": "ahead", "state": schema.INFLIGHT,
                                                "leased_by": first.identity})
    assert held > 1, "the worker holds only the message it handles: it claimed none ahead"
    first.stop(wait=False)
    gate.set()
    assert first.stop(timeout=30)

    second_handled: dict[int, int] = {}
    second = Worker("ahead", lambda m: second_handled.__setitem__(m.body["n"], m.attempts),
                    visibility_timeout=120, poll_interval=0.1)
    second.start()
    try:
        # Well within the first worker's 120 s leases: what it held came back at once.
        wait_until(lambda: finished(db, ids), timeout=30, message="every message acknowledged")
    finally:
        second.stop(timeout=30)
    assert sorted(first_handled + list(second_handled)) == list(range(40))
    assert set(second_handled.values()) == {1}, "a message given back kept its unused attempt"
    assert first.processed == len(first_handled) and second.processed == len(second_handled)


def test_an_acknowledgement_in_bulk_with_one_lost_lease_reports_it_and_acks_the_others(db):
    from mopq.errors import LeaseLost
    from mopq.message import acknowledge_all

    queue = Queue("bulkack")
    queue.write_many([{"n": n} for n in range(3)])
    first, third = queue.read(limit=2, visibility_timeout=60)
    [second] = queue.read(visibility_timeout=0.3)
    other = Queue("bulkack")
    wait_until(lambda: other.read(visibility_timeout=60), timeout=10,
               message="another consumer to take the message whose lease ran out")
    first.result = {"ok": 1}

    outcome = acknowledge_all([first, second, third])

    assert outcome[0] is None and outcome[2] is None
    assert isinstance(outcome[1], LeaseLost) and second.lease_token in str(outcome[1])
    flush()
    assert queue.result(first.id, timeout=5) == {"ok": 1}
    assert queue.result(third.id, timeout=5) is None
    taken_over = queue.get(second.id)
    assert taken_over["state"] == schema.INFLIGHT and taken_over["lease_token"] != \
        second.lease_token
    acked = db[schema.EVENTS].distinct("message", {"kind": schema.ACKED})
    assert sorted(acked) == sorted([str(first.id), str(third.id)])


def test_a_drain_by_a_worker_claiming_ahead_is_counted_exactly(db):
    from mopq.collectors.stats import read_stats
    from tests.helpers import drain_log

    queue = Queue("counted")
    ids = queue.write_many([{"n": n} for n in range(300)])
    worker = Worker("counted", lambda m: None, poll_interval=0.1)
    worker.start()
    try:
        wait_until(lambda: worker.processed == 300, timeout=60, message="300 acknowledged")
    finally:
        worker.stop(timeout=30)
    assert finished(db, ids)
    drain_log(db)
    row = read_stats(db)["queues"]["counted"]
    assert (row["written"], row["done"], row["claimed"], row["pending"], row["inflight"]) == \
        (300, 300, 300, 0, 0)
    assert db[schema.HISTORY].count_documents({"queue": "counted"}) == 300
    assert heartbeat(db, worker.identity)["processed"] == 300
