"""The monitor tells alive, stale, dead, zombie and stopped workers apart and cleans up."""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import psutil
import pytest

from mopq import Queue, Worker
from mopq.collectors.monitor import Monitor, Thresholds
from mopq.collectors.stats import read_stats
from mopq.connection import get_database
from tests.helpers import wait_until

THRESHOLDS = Thresholds(stale=2, dead=10, zombie=1, no_progress=600, forget=3600)


def _worker_doc(identity: str, beat_age: float, **extra) -> dict:
    now = dt.datetime.now(dt.UTC)
    return {"_id": identity, "hostname": "elsewhere", "pid": 1, "state": "running",
            "queues": ["q"], "started_at": now - dt.timedelta(hours=1),
            "heartbeat_at": now - dt.timedelta(seconds=beat_age), "current": [], **extra}


def test_workers_are_classified_by_their_heartbeats(db_name, db):
    db.workers.insert_many([
        _worker_doc("10.0.0.1:0:1:1", 0.5),
        _worker_doc("10.0.0.1:0:1:2", 5),
        _worker_doc("10.0.0.1:0:1:3", 30),
        _worker_doc("10.0.0.1:0:1:4", 30, state="stopped"),
    ])
    result = Monitor(get_database(), THRESHOLDS).run_once()
    assert result.states == {"alive": 1, "stale": 1, "dead": 1, "zombie": 0, "stopped": 1}


@pytest.mark.parametrize("beat_age", [0.1, 5, 30])
def test_a_worker_whose_process_is_gone_is_dead_at_once(db_name, db, beat_age):
    """Whatever its last beat's age (it used to show as stale for 15 to 60 s)."""
    queue = Queue("ghosts")
    queue.write({"n": 1})
    identity = f"10.0.0.1:0:1:{2**22 + 12345}"
    [message] = Queue("ghosts", worker=identity).read(visibility_timeout=300)
    db.workers.insert_one(_worker_doc(identity, beat_age, hostname=socket.gethostname(),
                                      pid=2**22 + 12345))
    result = Monitor(get_database(), THRESHOLDS).run_once()
    assert result.states["dead"] == 1 and result.reclaimed == 1
    assert "no longer exists" in db.workers.find_one({"_id": identity})["gone_reason"]
    assert db.messages.find_one({"_id": message.id})["state"] == "pending"
    assert read_stats(get_database())["workers"]["dead"] == 1


def test_a_reused_pid_is_another_process(db_name, db):
    identity = f"10.0.0.1:0:{int(time.time()) - 86400}:{os.getpid()}"  # our pid, a day older
    db.workers.insert_one(_worker_doc(identity, 0.1, hostname=socket.gethostname()))
    assert Monitor(get_database(), THRESHOLDS).run_once().states["dead"] == 1
    assert "is another one now" in db.workers.find_one({"_id": identity})["gone_reason"]


def test_same_hostname_other_address_is_not_judged_by_our_pids(db_name, db):
    identity = f"10.9.9.9:0:1:{2**22 + 12345}"
    db.workers.insert_one(_worker_doc(identity, 0.1, hostname=socket.gethostname(),
                                      ip="10.9.9.9"))
    assert Monitor(get_database(), THRESHOLDS).run_once().states["alive"] == 1


WORKER_SCRIPT = """
import sys, threading
from mopq import Worker
worker = Worker(["held"], lambda message: threading.Event().wait(600), visibility_timeout=300,
                heartbeat_interval=0.2)
worker.start()
print(worker.identity, flush=True)
threading.Event().wait(600)
"""


def _holding_worker(db) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-c", WORKER_SCRIPT], stdout=subprocess.PIPE,
                               text=True)
    identity = process.stdout.readline().strip()
    wait_until(lambda: db.messages.find_one({"state": "inflight", "leased_by": identity}),
               timeout=20, message="the worker to hold the message")
    return process, identity


def test_a_killed_worker_process_is_dead_and_its_message_back_at_once(db_name, db):
    Queue("held").write({"n": 1})
    process, identity = _holding_worker(db)
    process.kill()
    process.wait(10)
    monitor = Monitor(get_database(), THRESHOLDS)
    result = monitor.run_once()  # within a second of the kill: no heartbeat was missed yet
    assert result.states["dead"] == 1 and result.reclaimed == 1, result
    assert db.messages.find_one({"queue": "held"})["state"] == "pending"


def test_a_paused_worker_process_stays_stale_not_dead(db_name, db):
    Queue("held").write({"n": 1})
    process, identity = _holding_worker(db)
    process.send_signal(signal.SIGSTOP)
    try:
        stale = Thresholds(stale=0.5, dead=600, zombie=600, no_progress=600, forget=3600)
        monitor = Monitor(get_database(), stale)
        wait_until(lambda: monitor.run_once().states["stale"] == 1, timeout=10,
                   message="the paused worker to go stale")
        assert db.workers.find_one({"_id": identity}).get("gone_reason") is None
        assert db.messages.find_one({"queue": "held"})["state"] == "inflight"
    finally:
        process.kill()
        process.wait(10)


def test_a_beating_worker_stuck_past_its_lease_is_a_zombie(db_name, db, monkeypatch):
    monkeypatch.setenv("MOPQ_WORKER_ZOMBIE_SECONDS", "1")
    release = threading.Event()
    Queue("stuck").write({"n": 1})
    worker = Worker(["stuck"], lambda message: release.wait(30), visibility_timeout=1,
                    heartbeat_interval=0.2)
    worker.start()
    try:
        monitor = Monitor(get_database())
        wait_until(lambda: monitor.run_once().states["zombie"] == 1, timeout=20, interval=0.3,
                   message="the stuck worker to be called a zombie")
        document = db.workers.find_one({"_id": worker.identity})
        assert "holding message" in document["zombie_reason"]
        assert read_stats(get_database())["workers"]["zombie"] == 1
    finally:
        release.set()
        worker.stop()


def test_long_dead_workers_are_forgotten(db_name, db):
    db.workers.insert_many([_worker_doc("10.0.0.1:0:1:5", 7200),
                            _worker_doc("10.0.0.1:0:1:6", 60)])
    result = Monitor(get_database(), THRESHOLDS).run_once()
    assert result.forgotten == 1
    assert [w["_id"] for w in db.workers.find()] == ["10.0.0.1:0:1:6"]


def test_own_live_process_is_not_a_zombie(db_name, db):
    started = int(psutil.Process().create_time())
    db.workers.insert_one(_worker_doc(f"10.0.0.1:0:{started}:{os.getpid()}", 0.1,
                                      hostname=socket.gethostname(), pid=os.getpid()))
    assert Monitor(get_database(), THRESHOLDS).run_once().states["alive"] == 1
