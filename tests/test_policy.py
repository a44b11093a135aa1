"""Queue policy stored with the queue, pause and resume, cancel, rate limits (issue 14)."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mopq import InvalidInput, LeaseLost, MessageCancelled, Queue, Worker, flush, policy, rate_limit
from mopq.admin import cancel
from mopq.collectors.stats import read_stats
from tests.handlers import read_records
from tests.helpers import conserved, drain_log, wait_until


def _fail_until_dead(queue: Queue) -> int:
    """Claim and fail the queue's one message until it is dead; the attempts it took."""
    for attempt in range(1, 50):
        message = wait_until(lambda: queue.read(visibility_timeout=5), timeout=10,
                             message="the message back after its backoff")[0]
        if message.fail("no") == "dead":
            return attempt
    raise AssertionError("never dead")


def test_consumers_with_different_code_defaults_follow_the_stored_policy(db):
    patient = Queue("orders", db=db, max_attempts=10)
    hasty = Queue("orders", db=db, max_attempts=1)
    policy.change(db, "orders", {"max_attempts": 3, "backoff_first_seconds": 0,
                                 "backoff_cap_seconds": 0}, who="alice")
    patient.write({"n": 1})
    assert _fail_until_dead(hasty) == 3
    hasty.write({"n": 2})
    assert _fail_until_dead(patient) == 3
    record = policy.read(db, "orders")
    assert record.source("max_attempts") == {"from": "stored", "by": "admin", "who": "alice",
                                             "at": record.set_by["max_attempts"]["at"]}
    assert record.source("visibility_timeout") == {"from": "default"}


def test_without_a_stored_value_each_consumer_keeps_its_own_code(db):
    Queue("orders", db=db, max_attempts=1, backoff=lambda n: 0).write({"n": 1})
    assert _fail_until_dead(Queue("orders", db=db, max_attempts=1)) == 1


def test_code_sets_a_policy_at_creation_but_never_overrides_an_admin(db):
    policy.change(db, "mail", {"max_attempts": 7}, who="alice")
    Queue("mail", db=db, policy={"max_attempts": 2, "visibility_timeout": 4})
    record = policy.read(db, "mail")
    assert record.policy == {"max_attempts": 7, "visibility_timeout": 4.0}
    assert record.set_by["visibility_timeout"]["by"] == "code"
    message = Queue("mail", db=db).write({"x": 1})
    claimed = Queue("mail", db=db).read()[0]
    assert claimed.id == message and claimed.visibility_timeout == 4.0


@pytest.mark.parametrize("values, says", [
    ({"max_attempts": 0}, "max_attempts must be a whole number from 1"),
    ({"visibility_timeout": -1}, "visibility_timeout must be a number"),
    ({"retries": 3}, "Unknown policy field 'retries'"),
    ({"rate_limit_max": 10}, "needs both rate_limit_max and rate_limit_per_seconds"),
])
def test_bad_policies_are_refused_with_what_to_do(db, values, says):
    with pytest.raises(InvalidInput, match=says):
        policy.change(db, "q", values, who="alice")
    assert policy.read(db, "q").policy == {}


def test_pause_stops_claims_keeps_writes_and_resume_restores_them(db):
    queue = Queue("jobs", db=db)
    assert policy.pause(db, "jobs", who="bob", reason="deploy")
    assert not policy.pause(db, "jobs", who="carol")  # already paused: kept as bob's
    written = queue.write({"n": 1})
    time.sleep(policy.CACHE_SECONDS)
    assert queue.read() == [] and queue.read(wait=0.3) == []
    assert policy.read(db, "jobs").paused.who == "bob"
    assert policy.resume(db, "jobs") and not policy.resume(db, "jobs")
    claimed = wait_until(queue.read, timeout=2, message="a claim after resume")
    assert claimed[0].id == written


def test_pause_stops_a_running_worker_within_a_second_and_resume_restarts_it(db):
    handled: list[float] = []
    worker = Worker("jobs", lambda m: handled.append(time.monotonic()), poll_interval=0.2)
    worker.start()
    try:
        queue = Queue("jobs", db=db)
        queue.write({"n": 0})
        wait_until(lambda: handled, message="the first message handled")
        policy.pause(db, "jobs", who="bob")
        paused_at = time.monotonic()
        time.sleep(1.0)
        queue.write_many([{"n": i} for i in range(5)])
        time.sleep(1.0)
        assert len(handled) == 1, "a message was handled while the queue was paused"
        assert Queue("jobs", db=db).count("pending") == 5
        policy.resume(db, "jobs")
        wait_until(lambda: len(handled) == 6, timeout=5, message="all handled after resume")
        assert paused_at < handled[1]
    finally:
        worker.stop()


def test_cancelling_pending_and_delayed_messages_removes_them_counted_as_cancelled(db):
    queue = Queue("mail", db=db)
    now_id = queue.write({"n": 1})
    later_id = queue.write({"n": 2}, delay=60)
    kept = queue.write({"n": 3})
    result = cancel(db, [now_id, later_id], reason="sent by mistake", who="alice")
    assert sorted(result["cancelled"]) == sorted([str(now_id), str(later_id)])
    assert cancel(db, [now_id], reason="again", who="alice") == {
        "cancelled": [], "not_cancelled": [str(now_id)]}
    assert [m.id for m in queue.read(limit=10)] == [kept]
    with pytest.raises(MessageCancelled, match="sent by mistake"):
        queue.result(now_id, timeout=1)
    drain_log(db)
    row = read_stats(db)["queues"]["mail"]
    assert (row["cancelled"], row["removed"], row["written"]) == (2, 2, 3)
    assert conserved(row)


def test_a_revoked_inflight_message_is_refused_to_its_holder_and_counted_cancelled(db):
    queue = Queue("reports", db=db)
    written = queue.write({"report": 1})
    held = queue.read(visibility_timeout=30)[0]
    assert not held.cancelled
    assert cancel(db, [written], reason="customer left", who="alice")["cancelled"] == [
        str(written)]
    assert held.cancelled
    with pytest.raises(MessageCancelled, match="alice cancelled it \\(customer left\\)"):
        held.progress(0.5)
    with pytest.raises(LeaseLost):
        held.delete(result={"rows": 3})
    with pytest.raises(MessageCancelled):
        queue.held(written, held.lease_token)
    assert queue.read() == []
    drain_log(db)
    row = read_stats(db)["queues"]["reports"]
    assert (row["done"], row["cancelled"], row["removed"], row["inflight"]) == (0, 1, 1, 0)
    assert conserved(row)


def test_a_cancel_needs_a_reason(db):
    written = Queue("q", db=db).write({})
    with pytest.raises(InvalidInput, match="needs a reason"):
        cancel(db, [written], reason=" ", who="alice")


def test_the_rate_limit_holds_across_threads_of_many_queue_objects(db):
    policy.change(db, "api", {"rate_limit_max": 5, "rate_limit_per_seconds": 0.5}, who="ops")
    Queue("api", db=db).write_many([{"n": i} for i in range(200)])
    claimed: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + 3.0

    def consume():
        queue = Queue("api", db=db)
        while time.monotonic() < stop:
            for message in queue.read(wait=0.2):
                with lock:
                    claimed.append(message.claimed_at.timestamp())
                message.delete()

    threads = [threading.Thread(target=consume) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    by_window: dict[int, int] = {}
    for at in claimed:
        by_window[int(at // 0.5)] = by_window.get(int(at // 0.5), 0) + 1
    assert max(by_window.values()) <= 5, by_window
    spanned = max(by_window) - min(by_window) + 1  # windows from the first claim to the last
    assert len(claimed) <= 5 * spanned and len(claimed) >= 20, (len(claimed), spanned)
    waits = rate_limit.waits(db, "api", since=dt.datetime.fromtimestamp(0, dt.UTC))
    assert waits["granted"] >= len(claimed) and waits["waited"] > 0


def test_the_rate_limit_holds_within_ten_percent_over_30_s_with_4_worker_processes(
        db, tmp_path: Path, reap):
    rate = 20
    policy.change(db, "limited", {"rate_limit_max": rate, "rate_limit_per_seconds": 1},
                  who="ops")
    Queue("limited", db=db).write_many([{"n": i} for i in range(2000)])
    env = {**os.environ, "MOPQ_TEST_RECORD_DIR": str(tmp_path)}
    for _ in range(4):
        reap.append(subprocess.Popen(
            [sys.executable, "-m", "mopq", "worker", "--queue", "limited", "--handler",
             "tests.handlers:record", "--concurrency", "2"], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    wait_until(lambda: len(read_records(tmp_path)) == 4, timeout=30,
               message="all 4 workers handling messages")
    start = time.time() + 1.0
    deadline = time.monotonic() + 35
    wait_until(lambda: time.monotonic() >= deadline or
               max((a for r in read_records(tmp_path).values() for _, _, a in r),
                   default=0) > start + 30.5, timeout=40, message="30 s of claims")
    times = [at for records in read_records(tmp_path).values() for _, _, at in records]
    within = [at for at in times if start <= at < start + 30]
    assert abs(len(within) - rate * 30) <= rate * 30 * 0.10, len(within)
    assert len(read_records(tmp_path)) == 4


def test_retention_follows_each_queues_policy_in_batches_with_two_collectors(db, monkeypatch):
    from mopq import history, schema
    from mopq.collectors import Collector

    monkeypatch.setattr(history, "RETENTION_BATCH", 2)
    policy.change(db, "short", {"keep_finished_seconds": 3600, "keep_dead_seconds": 3600},
                  who="ops")
    for name in ("short", "long"):
        queue = Queue(name, db=db, max_attempts=1)
        queue.write_many([{"n": n} for n in range(8)])
        for message in queue.read(limit=5):
            message.delete()
        for message in queue.read(limit=3):
            message.fail("old failure")
    assert flush(10)
    two_hours_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    db[schema.HISTORY].update_many({}, {"$set": {"done_at": two_hours_ago}})
    db[schema.MESSAGES].update_many({"state": "dead"}, {"$set": {"dead_at": two_hours_ago}})
    collectors = [Collector(db=db, monitor_interval=0.2) for _ in range(2)]
    for collector in collectors:
        collector.start()
    try:
        wait_until(lambda: db[schema.HISTORY].count_documents({"queue": "short"}) == 0 and
                   db[schema.MESSAGES].count_documents({"queue": "short"}) == 0, timeout=30,
                   message="short's finished and dead messages trimmed, batch by batch")
        wait_until(lambda: read_stats(db)["queues"]["short"]["removed"] == 3, timeout=30,
                   message="the dead removals counted")
    finally:
        for collector in collectors:
            collector.stop()
    assert db[schema.HISTORY].count_documents({"queue": "long"}) == 5  # a day by default
    assert db[schema.MESSAGES].count_documents({"queue": "long", "state": "dead"}) == 3
    drain_log(db)
    stats = read_stats(db)["queues"]
    assert (stats["short"]["removed"], stats["long"]["removed"]) == (3, 0)
    assert conserved(stats["short"]) and conserved(stats["long"])
