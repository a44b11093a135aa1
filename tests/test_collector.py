"""Collectors count exactly: across SIGKILLs, duplicates, several collectors, and retention."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from mopq import Queue, admin, emit, flush, maintenance, schema
from mopq.collectors import Collector
from mopq.collectors.batch import apply_batch
from mopq.collectors.counters import HOUR, MINUTE, SECOND, TOTAL, bucket_start, counter_id
from mopq.collectors.leases import PartitionLeases
from mopq.collectors.monitor import Monitor
from mopq.collectors.stats import read_stats
from mopq.connection import get_database
from tests.helpers import wait_until

FLOWS = ("written", "done", "expired", "removed")
STATES = ("dead", "pending", "inflight", "delayed")


def _mopq_db():
    return get_database()


def _drain(db, collector: Collector) -> None:
    collector.partitions.rebalance({})
    while collector.step().applied:
        pass
    assert db.events.count_documents({}) == 0


def _conserved(queue_row: dict) -> bool:
    return queue_row["written"] == sum(queue_row[f] for f in FLOWS[1:] + STATES)


def _mixed_workload(name: str = "orders") -> dict[str, int]:
    """Every kind of transition; returns what the stats must then say."""
    queue = Queue(name, max_attempts=1)
    queue.write_many([{"n": i} for i in range(60)])
    queue.write({"late": True}, delay=60)
    queue.write({"gone": True}, expire=0.05)
    for message in queue.read(limit=30):
        message.delete()
    for message in queue.read(limit=10):
        message.fail("broken")
    queue.read(limit=5)
    time.sleep(0.1)
    assert maintenance.sweep(queue.db).expired == 1
    removed = queue.write({"x": 1})
    assert admin.remove(queue.db, admin.selection(ids=[removed], states=("pending",))) == 1
    assert flush(20)
    return {"written": 63, "done": 30, "failed": 10, "dead": 10, "inflight": 5,
            "expired": 1, "removed": 1, "delayed": 1, "pending": 15}


def test_stats_after_a_mixed_workload_conserve_every_message(db_name, db):
    expected = _mixed_workload()
    collector = Collector(monitor=False)
    _drain(db, collector)
    row = read_stats(_mopq_db())["queues"]["orders"]
    for field, value in expected.items():
        assert row[field] == value, (field, row)
    assert _conserved(row), row


def test_mopq_stats_json_matches_conservation(db_name, db):
    _mixed_workload("mixed")
    _drain(db, Collector(monitor=False))
    output = subprocess.run([sys.executable, "-m", "mopq", "stats", "--json"],
                            capture_output=True, text=True, timeout=60, check=True).stdout
    stats = json.loads(output)
    row = stats["queues"]["mixed"]
    assert _conserved(row) and row["written"] == 63
    assert stats["collector"]["events_total"] > 0
    assert stats["collector"]["lag_seconds"] == 0
    assert set(stats["workers"]) >= {"alive", "stale", "dead", "zombie"}
    dt.datetime.fromisoformat(stats["generated_at"])


def test_a_batch_applied_twice_counts_once(db_name, db):
    for i in range(50):
        emit("tick", value=i)
    assert flush(10)
    collector = Collector(monitor=False)
    leases = collector.partitions.rebalance({})
    events = list(db.events.find())
    apply_batch(_mopq_db(), collector.id, leases)
    total = db.counters.find_one({"_id": counter_id("b:tick:*", TOTAL, None)})
    assert total["count"] == 50 and total["sum"] == sum(range(50))
    # A relay publishes every event again after they were applied and deleted.
    for event in events:
        event["republished"] = True
    db.events.insert_many(events)
    assert apply_batch(_mopq_db(), collector.id, leases).skipped == 50
    total = db.counters.find_one({"_id": counter_id("b:tick:*", TOTAL, None)})
    assert total["count"] == 50 and total["sum"] == sum(range(50))
    assert db.events.count_documents({}) == 0


@pytest.mark.parametrize("journal_form", ["receipt", "inline ids (before receipts held them)"])
def test_a_journal_left_by_a_crash_is_replayed_exactly_once(db_name, db, journal_form):
    for i in range(40):
        emit("tick", value=1, tags={"shard": str(i % 2)})
    assert flush(10)
    first = Collector(monitor=False, lease_seconds=0.5)
    leases = first.partitions.rebalance({})
    # Crash after the journal and part of the counters were written: simulate by
    # applying the batch's counters for one partition only, keeping the journal.
    events = list(db.events.find())
    partition = events[0]["partition"]
    own = [e for e in events if e["partition"] == partition]
    seq = leases[partition]["seq"] + 1
    ids = [e["_id"] for e in own]
    if journal_form == "receipt":
        db.receipts.insert_one({"_id": "r1", "partition": partition, "seq": seq, "ids": ids,
                                "skip": [], "expires_at": dt.datetime.now(dt.UTC)})
        journal = {"seq": seq, "receipt": "r1"}
    else:
        journal = {"seq": seq, "apply": ids, "skip": []}
    db.leases.update_one({"_id": f"partition:{partition}"}, {"$set": {"journal": journal}})
    from mopq.collectors.batch import expire_receipts
    assert expire_receipts(db) == 0  # "r1" has expired, but the journal still needs it
    from mopq.collectors.batch import _counter_update
    from mopq.collectors.counters import deltas_of
    partial = list(deltas_of(own).items())[:2]
    for cid, delta in partial:
        db.counters.find_one_and_update(*_counter_update(cid, delta, {partition: seq}),
                                        upsert=True)
    time.sleep(0.6)  # the first collector's leases lapse: it is gone
    second = Collector(monitor=False)
    _drain(db, second)
    total = db.counters.find_one({"_id": counter_id("b:tick:*", TOTAL, None)})
    assert total["count"] == 40
    shard = db.counters.find_one({"_id": counter_id('b:tick:{"shard":"0"}', TOTAL, None)})
    assert shard["count"] == 20
    assert db.receipts.count_documents({"ids": {"$in": ids}}) >= 1  # its copies stay skipped


def test_a_batch_finishing_after_a_replay_adds_only_the_missing_shares(db_name, db):
    for _ in range(60):
        emit("split", value=1)
    assert flush(10)
    collector = Collector(monitor=False)
    leases = collector.partitions.rebalance({})
    events = list(db.events.find())
    partition = events[0]["partition"]
    own = [e for e in events if e["partition"] == partition]
    assert len(own) < len(events), "the events should span several partitions"
    # Another collector already replayed this partition's share of the coming batch.
    from mopq.collectors.batch import _counter_update
    from mopq.collectors.counters import deltas_of
    seq = leases[partition]["seq"] + 1
    key = counter_id("b:split:*", TOTAL, None)
    db.counters.find_one_and_update(*_counter_update(key, deltas_of(own)[key], {partition: seq}),
                                    upsert=True)
    apply_batch(_mopq_db(), collector.id, leases)
    assert db.counters.find_one({"_id": key})["count"] == 60


def test_buckets_roll_over_and_retention_removes_old_ones(db_name, db):
    now = dt.datetime.now(dt.UTC)
    long_ago = now - dt.timedelta(hours=3)
    from mopq.events import as_document, business_event
    events = [business_event("sale", 2.0, {}, long_ago), business_event("sale", 3.0, {}, now),
              business_event("sale", 5.0, {}, now - dt.timedelta(seconds=2))]
    db.events.insert_many([as_document(e) for e in events])
    _drain(db, Collector(monitor=False))
    seconds = list(db.counters.find({"series": "b:sale:*", "resolution": SECOND}))
    assert len(seconds) == 3
    hourly = db.counters.find_one(
        {"_id": counter_id("b:sale:*", HOUR, bucket_start(now, HOUR))})
    assert hourly["count"] >= 2 and hourly["max"] == 5.0
    removed = Monitor(_mopq_db()).enforce_retention(now)
    assert removed == 2  # its 1-second buckets: the sale's and the collector's own count
    left = {(d["resolution"], d["bucket"]) for d in db.counters.find({"series": "b:sale:*"})}
    assert (SECOND, bucket_start(long_ago, SECOND)) not in left
    assert (MINUTE, bucket_start(long_ago, MINUTE)) in left
    total = db.counters.find_one({"_id": counter_id("b:sale:*", TOTAL, None)})
    assert total["count"] == 3 and total["sum"] == 10.0 and total["min"] == 2.0


def _collect_command(*extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mopq", "collect", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _quiet_and_counted(db) -> bool:
    return db.events.count_documents({}) == 0 and not db.leases.find_one(
        {"kind": "partition", "journal": {"$ne": None}})


def test_collector_killed_repeatedly_ends_with_exact_counts(db_name, db):
    queue = Queue("kills", max_attempts=1)
    rng = random.Random(7)
    collector = _collect_command("--lease-seconds", "1.5", "--no-monitor")
    kills = mid_batch = 0
    sent = 0

    def working(pid: int) -> bool:
        return db.leases.count_documents({"kind": "partition", "owner": {"$regex": f":{pid}:"}})

    def journaled() -> bool:
        return db.leases.count_documents({"kind": "partition", "journal": {"$ne": None}}) > 0

    try:
        while sent < 20_000:
            for _ in range(2_000):
                emit("pay", value=sent % 7)
                sent += 1
            ids = queue.write_many([{"n": i} for i in range(100)])
            for message in queue.read(limit=50):
                message.delete()
            assert len(ids) == 100 and flush(30)
            pid = collector.pid
            wait_until(lambda: working(pid), timeout=30, message="partitions taken")  # noqa: B023
            if kills % 2:
                time.sleep(rng.uniform(0.05, 0.6))  # any moment
            else:  # while a batch is being applied, if one is caught within 2 s
                deadline = time.monotonic() + 2
                while not journaled() and time.monotonic() < deadline:
                    time.sleep(0.002)
            collector.send_signal(signal.SIGKILL)
            collector.wait()
            kills += 1
            mid_batch += journaled()
            collector = _collect_command("--lease-seconds", "1.5", "--no-monitor")
        assert flush(60)
        wait_until(lambda: _quiet_and_counted(db), timeout=180, interval=0.5,
                   message="the collector to catch up")
    finally:
        collector.send_signal(signal.SIGKILL)
        collector.wait()
    assert kills == 10
    assert mid_batch >= 1, "no kill landed in the middle of a batch"
    total = db.counters.find_one({"_id": counter_id("b:pay:*", TOTAL, None)})
    assert total["count"] == 20_000
    assert total["sum"] == sum(i % 7 for i in range(20_000))
    row = read_stats(_mopq_db())["queues"]["kills"]
    assert row["written"] == 1_000 and row["done"] == 500 and row["pending"] == 500
    events = read_stats(_mopq_db())["collector"]["events_total"]
    assert events == 20_000 + 1_000 + 500 + 500  # written, claimed, acked


def _monitor_passes(db) -> dict[str, int]:
    return dict((db.leases.find_one({"_id": "monitor"}) or {}).get("passes", {}))


def test_three_collectors_share_partitions_and_one_monitor_acts(db_name, db):
    collectors = [_collect_command("--lease-seconds", "3") for _ in range(3)]
    try:
        def spread():
            owners = [lease.get("owner") for lease in db.leases.find({"kind": "partition"})]
            held = [o for o in owners if o]
            return len(held) == schema.PARTITIONS and len(set(held)) == 3
        wait_until(spread, timeout=30, message="the partitions to spread over 3 collectors")
        for i in range(3_000):
            emit("share", value=1, tags={"i": str(i % 3)})
        before = _monitor_passes(db)
        time.sleep(3)
        after = _monitor_passes(db)
        acting = {owner for owner in after if after[owner] != before.get(owner, 0)}
        assert len(acting) == 1, (before, after)
        monitor_owner = db.leases.find_one({"_id": "monitor"})["owner"]
        victim = next(p for p in collectors
                      if monitor_owner.split(":")[1] == str(p.pid))
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        for i in range(3_000):
            emit("share", value=1, tags={"i": str(i % 3)})
        assert flush(30)
        wait_until(lambda: db.leases.find_one({"_id": "monitor"})["owner"] != monitor_owner,
                   timeout=20, message="another collector to take the monitor over")
        wait_until(lambda: _quiet_and_counted(db), timeout=60, message="the log to drain")
        before = _monitor_passes(db)
        time.sleep(3)
        after = _monitor_passes(db)
        acting = {owner for owner in after if after[owner] != before.get(owner, 0)}
        assert len(acting) == 1 and monitor_owner.replace(".", "_") not in acting
        owners = {lease["owner"] for lease in db.leases.find({"kind": "partition"})}
        assert len(owners) == 2
    finally:
        for process in collectors:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait()
    total = db.counters.find_one({"_id": counter_id("b:share:*", TOTAL, None)})
    assert total["count"] == 6_000


def test_counting_goes_on_while_a_monitor_pass_runs(db_name, db):
    """The monitor's passes run in a thread beside the batches. A pass sends tens of
    commands; run between two batches, every count waited behind it. Here a pass is
    held open until the count it must not block has been seen."""
    collector = Collector(monitor_interval=0.1)
    in_pass, release = threading.Event(), threading.Event()
    real_pass = collector.monitor.run_once

    def held_pass():
        in_pass.set()
        release.wait(60)
        return real_pass()

    collector.monitor.run_once = held_pass
    collector.start()
    try:
        assert in_pass.wait(30), "the monitor never ran"
        emit("beside", value=1)
        assert flush(30)

        def counted():
            total = db.counters.find_one({"_id": counter_id("b:beside:*", TOTAL, None)})
            return (total or {}).get("count") == 1
        wait_until(counted, timeout=30, message="the event counted during the monitor's pass")
        assert not release.is_set() and collector.monitor_passes == 0
    finally:
        release.set()
        collector.stop(5)


def test_a_killed_worker_is_marked_dead_and_its_message_comes_back_early(db_name, db,
                                                                       monkeypatch):
    monkeypatch.setenv("MOPQ_WORKER_STALE_SECONDS", "0.6")
    monkeypatch.setenv("MOPQ_WORKER_DEAD_SECONDS", "1.5")
    queue = Queue("slow")
    message_id = queue.write({"n": 1})
    worker = subprocess.Popen(
        [sys.executable, "-m", "mopq", "worker", "--queue", "slow",
         "--handler", "tests.handlers:block_forever", "--visibility-timeout", "120",
         "--heartbeat-interval", "0.3"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: db.messages.find_one({"_id": message_id, "state": "inflight"}),
                   timeout=30, message="the worker to take the message")
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    killed = time.monotonic()
    collector = Collector(monitor_interval=0.2)  # thresholds from the environment
    collector.start()
    try:
        wait_until(lambda: db.messages.find_one({"_id": message_id, "state": "pending"}),
                   timeout=20, message="the message to be reclaimed")
        assert time.monotonic() - killed < 20  # the lease had 120 s left
        wait_until(lambda: read_stats(_mopq_db())["workers"]["dead"] == 1, timeout=10,
                   message="the worker to be counted dead")
        [message] = queue.read()
        assert message.id == message_id and message.attempts == 2
        message.delete()
        assert flush(10)
        wait_until(lambda: read_stats(_mopq_db())["queues"]["slow"]["done"] == 1, timeout=10,
                   message="the ack to be counted")
        assert db.counters.find_one({"_id": counter_id("q:slow", TOTAL, None)})[
            "counts"]["reclaimed"] == 1
    finally:
        collector.stop()


def test_collector_stops_within_a_second(db_name):
    collector = Collector().start()
    time.sleep(0.3)
    started = time.monotonic()
    collector.stop()
    assert time.monotonic() - started < 1.0
    assert not collector.running


@pytest.mark.parametrize("env", [{"MOPQ_WORKER_DEAD_SECONDS": "soon"}])
def test_bad_threshold_settings_are_explained(db_name, env):
    result = subprocess.run([sys.executable, "-m", "mopq", "collect"],
                            env={**os.environ, **env}, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2
    assert "MOPQ_WORKER_DEAD_SECONDS='soon' is not a positive number" in result.stderr


def test_partition_leases_keep_a_fair_share(db_name, db):
    first = PartitionLeases(_mopq_db(), "one")
    assert len(first.rebalance({})) == schema.PARTITIONS
    second = PartitionLeases(_mopq_db(), "two")
    second.rebalance({})
    first.rebalance({})  # sees two collectors: gives half back
    second.rebalance({})
    assert len(first.held) == len(second.held) == schema.PARTITIONS // 2
    assert not set(first.held) & set(second.held)


def test_renewing_the_partitions_held_takes_a_few_commands_and_skips_one_lost(
        engine_uri, db_name, db):
    """A collector renews its leases every second in the loop that applies batches, so
    each command there delays counts: renewing sixteen partitions took seventeen round
    trips; now the whole rebalance takes four. A lease another collector holds now is
    neither renewed nor kept."""
    from pymongo import MongoClient, monitoring

    class Seen(monitoring.CommandListener):
        commands = 0

        def started(self, event):
            Seen.commands += 1

        def succeeded(self, event):
            pass

        def failed(self, event):
            pass

    client = MongoClient(engine_uri, event_listeners=[Seen()])
    try:
        leases = PartitionLeases(client[db_name], "one")
        assert len(leases.rebalance({})) == schema.PARTITIONS
        before = Seen.commands
        assert len(leases.rebalance({})) == schema.PARTITIONS
        assert Seen.commands - before <= 4
        soon = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=5)
        db.leases.update_many({}, {"$set": {"expires_at": soon}})
        db.leases.update_one({"_id": "partition:3"}, {"$set": {"owner": "two"}})
        held = leases.rebalance({})
        assert 3 not in held and len(held) == schema.PARTITIONS - 1
        assert db.leases.find_one({"_id": "partition:3"})["expires_at"] == soon
        assert db.leases.find_one({"_id": "partition:4"})["expires_at"] > soon
    finally:
        client.close()


def test_a_batch_counts_business_values_durations_and_activities_per_bucket():
    """What a dashboard chart reads back: count, sum, min, max, histogram, activity counts."""
    from mopq.collectors.counters import deltas_of, histogram_bin

    at = dt.datetime(2026, 11, 26, 12, 30, 15, 250_000, tzinfo=dt.UTC)
    later = at + dt.timedelta(seconds=1)
    events = [
        {"kind": "business", "name": "order.paid", "value": 12.5, "tags": {"r": "eu", "c": "x"},
         "at": at, "partition": 1},
        {"kind": "business", "name": "order.paid", "value": 2, "tags": {"c": "x", "r": "eu"},
         "at": at, "partition": 2},
        {"kind": "business", "name": "order.paid", "value": 7, "tags": {}, "at": later,
         "partition": 3},
        {"kind": "acked", "queue": "mail", "routing_key": "fast", "activity": "import-1",
         "duration": 0.02, "at": at, "partition": 4},
        {"kind": "acked", "queue": "mail", "routing_key": None, "duration": 3.0, "at": at,
         "partition": 5},
        {"kind": "written", "queue": "mail", "activity": "import-1", "at": later, "partition": 6},
    ]
    deltas = deltas_of(events)

    def delta(series: str, resolution: str = SECOND, when: dt.datetime = at):
        bucket = None if resolution == TOTAL else bucket_start(when, resolution)
        return deltas[counter_id(series, resolution, bucket)]

    everything = delta("b:order.paid:*", TOTAL)
    assert everything.inc["count"] == 3 and everything.inc["sum"] == 21.5
    assert (everything.low, everything.high) == (2, 12.5)
    assert everything.partitions == {1, 2, 3}
    tagged = delta('b:order.paid:{"c":"x","r":"eu"}')
    assert tagged.inc["count"] == 2 and tagged.inc["sum"] == 14.5
    assert (tagged.low, tagged.high) == (2, 12.5)
    assert tagged.identity["tags"] == {"r": "eu", "c": "x"}
    assert delta("b:order.paid:*", MINUTE).inc["count"] == 3
    assert delta("b:order.paid:*", SECOND, later).inc["count"] == 1

    fast = delta("d:mail:fast", HOUR)
    assert fast.inc == {f"hist.{histogram_bin(0.02)}": 1, "count": 1, "sum": 0.02}
    both = delta("d:mail:*")
    assert both.inc["count"] == 2 and both.inc["sum"] == 3.02
    assert both.inc[f"hist.{histogram_bin(3.0)}"] == 1 and both.partitions == {4, 5}
    assert delta("d:mail:", TOTAL).inc["count"] == 1  # no routing key

    assert delta("a:import-1", TOTAL).inc == {"counts.acked": 1, "counts.written": 1}
    assert delta("q:mail", TOTAL).inc == {"counts.acked": 2, "counts.written": 1}
    assert delta("q:*", MINUTE).inc == {"counts.acked": 2, "counts.written": 1}
    assert delta("c:events", TOTAL).inc["count"] == 6
    assert delta("c:events", TOTAL).partitions == {1, 2, 3, 4, 5, 6}


def test_a_receipt_of_a_batch_that_lost_its_lease_skips_nothing(db_name, db):
    """make chaos found it after an engine kill -9: collector A stored a batch's receipt,
    lost the partition's lease before its journal, and left the receipt behind; the event,
    still waiting and flagged republished (its first publish had failed), was then skipped
    by collector B as "already applied" and never counted."""
    assert emit("tick", 1)
    assert flush(10)
    event = db.events.find_one()
    db.events.update_one({"_id": event["_id"]}, {"$set": {"republished": True}})
    partition = event["partition"]
    held_by_a = PartitionLeases(db, "A", seconds=60).rebalance({})
    db.leases.update_one({"_id": f"partition:{partition}"},
                         {"$set": {"expires_at": dt.datetime(2000, 1, 1, tzinfo=dt.UTC)}})
    held_by_b = PartitionLeases(db, "B", seconds=60).rebalance({})
    assert partition in held_by_a and partition in held_by_b

    lost = apply_batch(db, "A", {partition: held_by_a[partition]})
    assert lost.applied == 0 and lost.lost_partitions == (partition,)
    assert db.receipts.count_documents({"committed": False}) == 1  # A's, never committed
    assert db.events.count_documents({}) == 1
    result = apply_batch(db, "B", {partition: held_by_b[partition]})
    assert (result.applied, result.skipped) == (1, 0)
    total = db.counters.find_one({"_id": counter_id("b:tick:*", TOTAL, None)})
    assert total["count"] == 1


def test_a_late_first_publication_after_the_sweep_is_not_counted_twice(db_name, db,
                                                                       monkeypatch):
    """Found writing docs/FORMAT.md: the sweep republished a lagging publisher's outbox, a
    collector applied it, and the publisher's own late copy went out unflagged."""
    import datetime as dt

    from mopq import publisher
    from mopq.clock import utcnow
    from mopq.collectors.counters import totals

    held: list = []
    monkeypatch.setattr(publisher.Publisher, "add_outboxes",
                        lambda self, outboxes: held.extend(outboxes))
    Queue("late", db=db).write({"n": 1})
    maintenance.sweep(db, utcnow() + dt.timedelta(seconds=6))  # republished, flagged
    collector = Collector(db=db, monitor=False)
    collector.partitions.rebalance({})
    while collector.step().applied:
        pass
    assert totals(db, "late") == {"written": 1}
    monkeypatch.setattr(publisher, "utcnow", lambda: utcnow() + dt.timedelta(seconds=6))
    publisher.publish_outboxes(db, held)  # the lagging publisher's own first try, late
    while collector.step().applied:
        pass
    assert totals(db, "late") == {"written": 1}


def test_a_journal_whose_clearing_was_lost_is_not_taken_for_the_next_batch(db_name, db):
    """make chaos found it after an engine kill -9: a batch was applied to its counters
    but the engine lost its last step (clearing the journal, seq + 1) and the collector
    its answer, so the collector still took seq + 1 for its next batch. Its journal write
    failed (a journal was there) and the collector, looking for its own journal by seq,
    found the old one, applied the new batch under marks the counters already held and
    deleted its events uncounted (done 1798 of 1799)."""
    assert emit("tick", 1)
    assert flush(10)
    partition = db.events.find_one()["partition"]
    leases = PartitionLeases(db, "A", seconds=60).rebalance({})
    assert apply_batch(db, "A", {partition: leases[partition]}).applied == 1
    lease_id = f"partition:{partition}"
    applied = db.leases.find_one({"_id": lease_id})["seq"]
    receipt = db.receipts.find_one({"partition": partition, "seq": applied})["_id"]
    # The engine kept the batch but not its last step; A never saw that step answered.
    db.leases.update_one({"_id": lease_id}, {"$set": {"seq": applied - 1, "journal": {
        "seq": applied, "receipt": receipt}}})
    stale = {partition: {**leases[partition], "seq": applied - 1}}

    from mopq.events import as_document, business_event
    event = as_document(business_event("tick", 1, {}, dt.datetime.now(dt.UTC)))
    db.events.insert_one({**event, "_id": "the next tick", "partition": partition})
    lost = apply_batch(db, "A", stale)
    assert lost.applied == 0 and lost.lost_partitions == (partition,)
    assert db.events.count_documents({}) == 1  # still waiting, not deleted uncounted

    db.leases.update_one({"_id": lease_id},  # A is gone; another collector takes over
                         {"$set": {"expires_at": dt.datetime(2000, 1, 1, tzinfo=dt.UTC)}})
    _drain(db, Collector(monitor=False))  # replays the old journal, then applies the tick
    total = db.counters.find_one({"_id": counter_id("b:tick:*", TOTAL, None)})
    assert total["count"] == 2
