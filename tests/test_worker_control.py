"""Worker control (mopq.control): stop, quiet and resume, asked through the worker's document.

A Worker in a thread and a real ``mopq worker`` process, against the real
engine; requests made with the library (``control.ask``) and with the
``mopq workers`` command. The worker must see each request at its next beat.
"""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from mopq import Queue, Worker, control, schema
from mopq.cli import main
from mopq.collectors.stats import serving_workers, worker_rows
from mopq.errors import InvalidInput
from tests.handlers import read_records
from tests.helpers import wait_until
from tests.test_worker import finished, heartbeat, output_of, start_worker_process

ADMIN = {"name": "ops", "via": "test"}


def beats_after(db, identity: str, count: int) -> dt.datetime:
    """Wait for ``count`` more heartbeats of the worker; return the last one's time."""
    last = heartbeat(db, identity)["heartbeat_at"]
    for _ in range(count):
        last = wait_until(lambda seen=last: (lambda t: t if t > seen else None)(
            heartbeat(db, identity)["heartbeat_at"]), timeout=10, message="another heartbeat")
    return last


def test_a_quiet_worker_takes_nothing_keeps_beating_and_resumes(db):
    queue = Queue("jobs")
    handled: list[int] = []
    worker = Worker("jobs", lambda m: handled.append(m.body["n"]), concurrency=2,
                    heartbeat_interval=0.1, poll_interval=0.1)
    worker.start()
    try:
        first = queue.write({"n": 1})
        wait_until(lambda: finished(db, [first]), timeout=10, message="the first message")

        assert control.ask(db, worker.identity, control.QUIET, ADMIN) is True
        wait_until(lambda: heartbeat(db, worker.identity)["state"] == "quiet", timeout=5,
                   message="the worker to report quiet")
        assert worker.state == "quiet"
        waiting = queue.write({"n": 2})
        beats_after(db, worker.identity, 5)  # half a second of beats and polls
        assert queue.get(waiting)["state"] == schema.PENDING and handled == [1]
        assert "jobs" not in serving_workers(db, dt.datetime.now(dt.UTC))
        row = next(r for r in worker_rows(db) if r["id"] == worker.identity)
        assert row["state"] == "alive" and row["reported_state"] == "quiet"
        assert row["control"]["command"] == "quiet" and row["control"]["by"] == ADMIN
        assert control.ask(db, worker.identity, control.QUIET, ADMIN) is False  # stands already

        assert control.ask(db, worker.identity, control.RESUME, ADMIN) is True
        wait_until(lambda: finished(db, [waiting]), timeout=10,
                   message="the waiting message handled after resume")
        wait_until(lambda: heartbeat(db, worker.identity)["state"] == "running", timeout=5,
                   message="the worker to report running")
        assert serving_workers(db, dt.datetime.now(dt.UTC))["jobs"] == 1
        assert control.ask(db, worker.identity, control.RESUME, ADMIN) is False
    finally:
        assert worker.stop(timeout=30)
    assert handled == [1, 2]


def test_a_stop_request_stops_a_worker_after_its_message_and_is_final(db):
    queue = Queue("jobs")
    release = threading.Event()
    held = queue.write({"n": 1})
    worker = Worker("jobs", lambda m: release.wait(30), heartbeat_interval=0.1,
                    poll_interval=0.1)
    thread = worker.start()
    try:
        wait_until(lambda: heartbeat(db, worker.identity)["current"], timeout=10,
                   message="the worker to hold the message")
        assert control.ask(db, worker.identity, control.STOP, ADMIN) is True
        wait_until(lambda: heartbeat(db, worker.identity)["state"] == "stopping", timeout=5,
                   message="the worker to report stopping")
        later = queue.write({"n": 2})
        assert control.ask(db, worker.identity, control.STOP, {"name": "other"}) is False
        assert heartbeat(db, worker.identity)["control"]["by"] == ADMIN  # the first asker
        for command in (control.QUIET, control.RESUME):
            with pytest.raises(control.ControlRefused, match="cannot be undone"):
                control.ask(db, worker.identity, command, ADMIN)
        assert thread.is_alive() and queue.get(held)["state"] == schema.INFLIGHT
    finally:
        release.set()
    thread.join(20)
    assert not thread.is_alive() and worker.state == "stopped"
    assert finished(db, [held]) and queue.get(later)["state"] == schema.PENDING
    with pytest.raises(control.ControlRefused, match="has stopped"):
        control.ask(db, worker.identity, control.STOP, ADMIN)


def test_requests_for_unknown_or_malformed_workers_are_refused(db):
    with pytest.raises(control.UnknownWorker):
        control.ask(db, "10.0.0.5:5672:1700000000:4242", control.STOP, ADMIN)
    for bad in ("nobody", {"$ne": ""}, "1.2.3.4:5:6:7:8"):
        with pytest.raises(InvalidInput):
            control.ask(db, bad, control.STOP, ADMIN)
    db[schema.WORKERS].insert_one({"_id": "10.0.0.5:5672:1700000000:4242", "state": "running"})
    with pytest.raises(InvalidInput, match="command must be one of"):
        control.ask(db, "10.0.0.5:5672:1700000000:4242", "pause", ADMIN)
    assert "control" not in db[schema.WORKERS].find_one({})


# -- a real `mopq worker`, controlled with `mopq workers` -------------------------------------


def test_mopq_workers_command_quiets_resumes_and_stops_a_worker_process_gracefully(
        db, tmp_path, reap, capsys):
    queue = Queue("jobs")
    gate = tmp_path / "gate"
    slow = queue.write({"gate": str(gate)})
    process = start_worker_process(tmp_path, "worker", "--queue", "jobs",
                                   "--handler", "tests.handlers:gated",
                                   "--heartbeat-interval", "0.2", "--poll-interval", "0.1")
    reap.append(process)
    wait_until(lambda: queue.get(slow)["state"] == schema.INFLIGHT, timeout=30,
               message="the slow message claimed")
    identity = queue.get(slow)["leased_by"]
    wait_until(lambda: heartbeat(db, identity)["current"], timeout=10,
               message="the heartbeat to name the held message")

    assert main(["workers", "list"]) == 0
    listed = capsys.readouterr().out
    assert identity in listed and f"handling {slow} of jobs" in listed
    assert "queues=jobs" in listed and "running" in listed

    assert main(["workers", "quiet", identity]) == 0
    assert f"{identity} asked to stop taking new messages" in capsys.readouterr().out
    wait_until(lambda: heartbeat(db, identity)["state"] == "quiet", timeout=10,
               message="the worker process to report quiet")
    assert main(["workers", "list"]) == 0
    assert "asked: quiet by " in capsys.readouterr().out
    assert main(["workers", "resume", identity]) == 0
    wait_until(lambda: heartbeat(db, identity)["state"] == "running", timeout=10,
               message="the worker process to report running again")

    assert main(["workers", "stop", identity]) == 0
    assert "asked to stop gracefully" in capsys.readouterr().out
    wait_until(lambda: heartbeat(db, identity)["state"] == "stopping", timeout=10,
               message="the worker process to report stopping")
    later = queue.write({"n": 2})
    beats_after(db, identity, 3)
    assert process.poll() is None, "the worker exited before its handler finished"
    assert main(["workers", "resume", identity]) == 1
    assert "a stop cannot be undone" in capsys.readouterr().err

    gate.touch()
    assert process.wait(30) == 0, output_of(tmp_path, "worker")
    assert "asked by " in output_of(tmp_path, "worker")
    assert finished(db, [slow]), "the held message was not acknowledged before the exit"
    untouched = queue.get(later)
    assert untouched["state"] == schema.PENDING and untouched["attempts"] == 0
    document = heartbeat(db, identity)
    assert document["state"] == "stopped" and document["processed"] == 1
    assert document["control"]["command"] == "stop" and document["control"]["by"]["via"] == "cli"
    assert [mid for mid, _, _ in read_records(tmp_path / "records")[process.pid]] == [str(slow)]

    assert main(["workers", "list"]) == 0
    assert "no worker is registered that has not stopped" in capsys.readouterr().out
    assert main(["workers", "list", "--all"]) == 0
    assert identity in capsys.readouterr().out
    assert main(["workers", "stop", identity, "10.0.0.5:1:2:3"]) == 1
    refused = capsys.readouterr().err
    assert "has stopped" in refused and "no worker 10.0.0.5:1:2:3 is registered" in refused
    assert main(["workers", "quiet", "not-a-worker"]) == 2
    assert "ip:port:start_time:pid" in capsys.readouterr().err
