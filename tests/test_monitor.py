"""The monitor tells alive, stale, dead, zombie and stopped workers apart and cleans up."""

from __future__ import annotations

import datetime as dt
import os
import socket
import threading

from collectors.monitor import Monitor, Thresholds
from collectors.stats import read_stats
from mopq import Queue, Worker
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


def test_a_worker_whose_process_is_gone_is_a_zombie_and_loses_its_messages(db_name, db):
    queue = Queue("ghosts")
    queue.write({"n": 1})
    identity = "10.0.0.1:0:1:999999"
    [message] = Queue("ghosts", worker=identity).read(visibility_timeout=300)
    db.workers.insert_one(_worker_doc(identity, 0.1, hostname=socket.gethostname(),
                                      pid=2**22 + 12345))
    result = Monitor(get_database(), THRESHOLDS).run_once()
    assert result.states["zombie"] == 1 and result.reclaimed == 1
    assert "no longer exists" in db.workers.find_one({"_id": identity})["zombie_reason"]
    assert db.messages.find_one({"_id": message.id})["state"] == "pending"


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
    db.workers.insert_one(_worker_doc("10.0.0.1:0:1:7", 0.1, hostname=socket.gethostname(),
                                      pid=os.getpid()))
    assert Monitor(get_database(), THRESHOLDS).run_once().states["alive"] == 1
