"""Disaster migration, export and import (issue 13, item 2), between two real engines.

The *source* deployment is a database of the session's engine; the *target*
is a database of a second engine started for this module, so every move
crosses from one server to another. Counts are read as the dashboard reads
them (``collectors.stats.read_stats``) after a collector has applied each
side's business log. Kill tests run ``mopq migrate`` / ``mopq import`` as
real processes and SIGKILL them at points drawn at random (the seed is in
every assertion message).
"""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator

import pytest
from bson import json_util
from pymongo import MongoClient
from pymongo.database import Database

from mopq import Queue, emit, flush, migration, policy, schema
from mopq.activities import Activity, Step
from mopq.cli import main
from mopq.clock import utcnow
from mopq.collectors import Collector
from mopq.collectors.stats import read_stats
from mopq.engine import Engine
from mopq.errors import LeaseLost
from mopq.maintenance import republish_outboxes
from mopq.migration.deployments import Sides
from mopq.migration.move import Move
from mopq.migration.receiver import Receiver
from mopq.migration.work import MESSAGES
from tests.helpers import conserved, drain_log, free_port, wait_until

FLOWS = ("written", "done", "failed", "expired", "removed", "claimed", "retried")
WAITING = ("pending", "delayed", "dead", "inflight")
UNFINISHED = {"state": {"$in": ["pending", "inflight", "dead"]}}


def _uri(base: str, name: str) -> str:
    parts = urllib.parse.urlsplit(base)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))


class Side:
    """One deployment of a test: its database, a URI naming it, and a collector of its log."""

    def __init__(self, client: MongoClient, base_uri: str, name: str) -> None:
        self.client = client
        self.db: Database = client[name]
        self.uri = _uri(base_uri, name)
        self.collector = Collector(db=self.db, monitor=False)

    def drain(self) -> int:
        return drain_log(self.db, self.collector)

    def stats(self, queue: str) -> dict:
        return read_stats(self.db)["queues"][queue]

    def messages(self, **query) -> list[dict]:
        return list(self.db[schema.MESSAGES].find(query))

    def unfinished(self) -> set:
        return {m["_id"] for m in self.db[schema.MESSAGES].find(UNFINISHED, {"_id": 1})}


@pytest.fixture(scope="module")
def target_engine() -> Iterator[str]:
    with Engine() as engine:
        yield engine.uri


@pytest.fixture
def sides(engine_uri: str, target_engine: str) -> Iterator[tuple[Side, Side]]:
    clients = [MongoClient(engine_uri, tz_aware=True), MongoClient(target_engine, tz_aware=True)]
    tag = uuid.uuid4().hex[:8]
    source = Side(clients[0], engine_uri, f"t_src_{tag}")
    target = Side(clients[1], target_engine, f"t_dst_{tag}")
    try:
        yield source, target
    finally:
        flush(10)
        for side in (source, target):
            side.client.drop_database(side.db.name)
            side.client.close()


def _fill(source: Side) -> dict[str, object]:
    """Every kind of unfinished work, some finished work, an activity and a business event."""
    emails = Queue("emails", db=source.db, max_attempts=1)
    emails.write_many([{"n": n} for n in range(8)])
    emails.write({"later": True}, delay=3600)
    for message in emails.read(limit=2):
        message.fail("boom")                                    # dead
    for message in emails.read(limit=2):
        message.delete()                                        # done, into history
    expired = emails.read(limit=1, visibility_timeout=0.2)[0]   # its lease runs out
    held = emails.read(limit=1, visibility_timeout=600)[0]      # held by a live consumer
    reports = Queue("reports", db=source.db)
    reports.write_many([{"r": n} for n in range(3)], activity="nightly")
    emit("order.paid", value=12.5, tags={"region": "cn"}, uri=source.uri,
         database=source.db.name)
    wait_until(lambda: utcnow() > expired.lease_expires_at, timeout=5, interval=0.02,
               message="the short lease to run out")
    source.drain()
    return {"expired": expired.id, "held": held.id, "emails": emails}


def _flows(row: dict) -> dict:
    return {name: row[name] for name in FLOWS}


def _counts(row: dict) -> dict:
    """A stats row without the age of the oldest pending message (which grows as time passes)."""
    return {name: value for name, value in row.items() if name != "oldest_pending_age_seconds"}


def _counter(db: Database, counter: str) -> dict:
    found = db[schema.COUNTERS].find_one({"_id": counter}) or {}
    return {"counts": found.get("counts"), "count": found.get("count"), "sum": found.get("sum")}


def _same_totals(source: Side, target: Side, before: dict[str, dict]) -> None:
    """After a whole move, counted on both sides: the target shows the source's totals."""
    for queue, row in before.items():
        on_source, on_target = source.stats(queue), target.stats(queue)
        assert _flows(on_target) == _flows(row), queue
        assert conserved(on_source) and conserved(on_target), queue
        assert on_target["pending"] == row["pending"] + row["inflight"], queue
        assert on_target["delayed"] == row["delayed"] and on_target["dead"] == row["dead"]
        assert on_source["removed"] == row["removed"] + sum(row[name] for name in WAITING)
        assert sum(on_source[name] for name in WAITING) == 0, queue


def test_dry_run_then_move_then_force_then_verify(sides, capsys):
    source, target = sides
    filled = _fill(source)
    before = {queue: source.stats(queue) for queue in ("emails", "reports")}
    series = ("a:nightly|total|-", "b:order.paid:*|total|-",
              'b:order.paid:{"region":"cn"}|total|-', "q:*|total|-")
    counters_before = {name: _counter(source.db, name) for name in series}
    arguments = ["migrate", "--from", source.uri, "--to", target.uri]

    # Dry run: counts per queue and state, nothing written on either side.
    assert main([*arguments, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would move: 9 document(s)" in out
    assert "emails: dead 2, delayed 1, inflight, lease expired 1, pending 2" in out
    assert "reports: pending 3" in out
    assert "not moved: 1 inflight message(s) whose lease is still held" in out
    assert "emails: inflight, held 1" in out
    assert "history: 2 finished message(s) to copy" in out
    assert target.db.list_collection_names() == []
    assert source.db[schema.SETTINGS].find_one({"_id": migration.DEPLOYMENT}) is None
    assert main([*arguments, "--dry-run", "--force"]) == 0
    assert "would move: 10 document(s)" in capsys.readouterr().out

    # The move: everything but the held message; the expired lease ends on the source.
    source.db[schema.MESSAGES].update_many({"state": "pending"}, {"$set": {"x_note": "kept"}})
    as_they_were = {m["_id"]: m for m in source.messages(state="pending")}
    assert main(arguments) == 0
    out = capsys.readouterr().out
    assert "moved: 9 document(s)" in out and "emails: dead 2, delayed 1" in out
    assert "not moved: 1 inflight message(s)" in out and "--force" in out
    assert "history: 2 finished message(s) copied" in out
    assert {m["_id"] for m in source.messages(state="inflight")} == {filled["held"]}
    arrived = {m["_id"]: m for m in target.messages()}
    assert len(arrived) == 9 and filled["held"] not in arrived
    assert arrived[filled["expired"]]["state"] == "pending"
    assert "lease_token" not in arrived[filled["expired"]]
    assert all(m["outbox"] == [] for m in arrived.values())
    for message_id, before_move in as_they_were.items():   # whole documents, own fields too
        assert arrived[message_id] == {**before_move, "outbox": []}
    assert not [key for m in arrived.values() for key in m if key.startswith("arrive_")]
    assert target.db[schema.HISTORY].count_documents({}) == 2
    assert main([*arguments, "--verify"]) == 1     # the source's log of the moves: not counted
    assert "not carried" in capsys.readouterr().out

    # --force moves the held one and says what may run twice; its holder is refused.
    assert main([*arguments, "--force"]) == 0
    out = capsys.readouterr().out
    assert "moved: 1 document(s)" in out and "inflight, held (--force) 1" in out
    assert "runs twice" in out
    with pytest.raises(LeaseLost):
        filled["emails"].held(filled["held"], "whatever")

    # Counting: the source counts moves as removed; the target shows the source's totals.
    source.drain()
    assert main(arguments) == 0          # carries what the source's collector applied since
    out = capsys.readouterr().out
    assert "moved: 0 document(s)" in out
    assert "every event of the source is counted" in out
    target.drain()
    _same_totals(source, target, before)
    for queue, row in before.items():
        assert target.stats(queue)["reclaimed"] == row["reclaimed"] + row["inflight"]
    for name in series:   # the activity and all-queue ones: less the moves' "deleted"
        if name.startswith("q:*"):
            counters_before[name]["counts"]["reclaimed"] = 2   # the two leases the move ended
        assert _counter(target.db, name) == counters_before[name], name

    # --verify: identical sets, and the counters carry the source's sums.
    assert main([*arguments, "--verify"]) == 0
    out = capsys.readouterr().out
    assert "moved on the source: 10; arrived on the target: 10" in out
    assert "identical:" in out

    # The target's own work counts on top of what was carried.
    claimed = Queue("emails", db=target.db).read(limit=10)
    for message in claimed:
        message.delete()
    target.drain()
    assert len(claimed) == before["emails"]["pending"] + before["emails"]["inflight"]
    assert target.stats("emails")["done"] == before["emails"]["done"] + len(claimed)
    assert conserved(target.stats("emails"))


def _identical(source: Side, target: Side) -> None:
    """Count the source's log, carry it, and verify: both sides the same, counters too."""
    source.drain()
    migration.migrate(source.db, target.db)
    result = migration.verify(source.db, target.db)
    assert result.identical, result.differences[:5]


def _never_on_both_sides(source: Side, target: Database) -> None:
    """At any instant: a visible copy on the target has left the source, and the reverse."""
    on_source = {d["_id"]: d for d in source.db[schema.MESSAGES].find({}, {"state": 1})}
    on_target = {d["_id"]: d for d in target[schema.MESSAGES].find({}, {"state": 1})}
    for message_id, doc in on_target.items():
        if doc["state"] != schema.ARRIVING:
            assert on_source[message_id]["state"] == schema.MOVED, message_id
    for message_id, doc in on_source.items():
        if doc["state"] == schema.MOVED:
            assert message_id in on_target, f"{message_id} moved but not on the target"
        else:
            assert on_target.get(message_id, {}).get("state") in (None, schema.ARRIVING)


def _command(*arguments: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mopq", *arguments],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_at_random_points(start: Callable[[], subprocess.Popen], progress: Callable[[], int],
                           total: int, rounds: int, reap: list, seed: int,
                           after_each: Callable[[], None] = lambda: None) -> int:
    """Start the command ``rounds`` times; SIGKILL each once ``progress()`` passes a random mark.

    The marks are drawn from ``seed`` over ``1..total`` and rise, so each run
    is killed further on (a run that finishes first is not killed). Returns
    how many runs were killed.
    """
    marks = sorted(random.Random(seed).sample(range(1, total), rounds))
    kills = 0
    for mark in marks:
        process = start()
        reap.append(process)
        wait_until(lambda m=mark, p=process: p.poll() is not None or progress() >= m,
                   timeout=120, interval=0.003, message=f"progress {mark} (seed {seed})")
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)
            kills += 1
        after_each()
    return kills


def test_a_migration_sigkilled_at_random_points_then_rerun_moves_everything_once(sides, reap):
    source, target = sides
    bulk = Queue("bulk", db=source.db)
    for start in range(0, 2400, 800):
        bulk.write_many([{"n": n} for n in range(start, start + 800)])
    bulk.write_many([{"later": n} for n in range(100)], delay=3600)
    for message in bulk.read(limit=150):
        message.delete()                                   # history to copy
    dying = Queue("dying", db=source.db, max_attempts=1)
    dying.write_many([{"d": n} for n in range(100)])
    for message in dying.read(limit=100):
        message.fail("gone")
    source.drain()
    before = {queue: source.stats(queue) for queue in ("bulk", "dying")}
    everything = source.unfinished()
    assert len(everything) == 2450

    def progress() -> int:     # whatever the run writes to the target, in the order it writes
        return sum(target.db[name].estimated_document_count()
                   for name in (schema.MESSAGES, schema.HISTORY, schema.COUNTERS))

    seed = int(os.environ.get("MOPQ_TEST_SEED", time.time_ns() % 1_000_000))
    arguments = ("migrate", "--from", source.uri, "--to", target.uri, "--batch-size", "25")
    total = 2450 + 150 + source.db[schema.COUNTERS].count_documents({})
    kills = _kill_at_random_points(lambda: _command(*arguments), progress, total, 5,
                                   reap, seed, lambda: _never_on_both_sides(source, target.db))
    assert kills >= 3, f"the migration finished before it could be killed (seed {seed})"

    final = _command(*arguments)
    out, err = final.communicate(timeout=300)
    assert final.returncode == 0, f"seed {seed}: {out}{err}"
    _never_on_both_sides(source, target.db)

    # Every message once on the target, under its own id; none left on the source.
    visible = list(target.db[schema.MESSAGES].find({}, {"state": 1}))
    assert {d["_id"] for d in visible} == everything and len(visible) == 2450, seed
    assert not [d for d in visible if d["state"] == schema.ARRIVING], seed
    assert source.unfinished() == set(), seed
    assert target.db[schema.ARRIVALS].count_documents({}) == 2450, seed
    assert target.db[schema.HISTORY].count_documents({}) == 150, seed

    # The counts: once the source's log is applied and carried, the same totals. A run
    # killed after a commit left its events in the moved documents' outboxes: the next
    # run publishes those older than the sweep's grace, the source's monitor any (here).
    republish_outboxes(source.db, grace_seconds=0)
    source.drain()
    again = _command("migrate", "--from", source.uri, "--to", target.uri)
    assert again.wait(120) == 0, seed
    target.drain()
    _same_totals(source, target, before)

    verify = subprocess.run([sys.executable, "-m", "mopq", "migrate", "--from", source.uri,
                             "--to", target.uri, "--verify"],
                            capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0, f"seed {seed}: {verify.stdout}{verify.stderr}"
    assert "moved on the source: 2450; arrived on the target: 2450" in verify.stdout
    assert "identical:" in verify.stdout


def test_a_producer_still_writing_to_the_source_is_caught_by_a_second_pass(sides):
    source, target = sides
    queue = Queue("orders", db=source.db)
    queue.write_many([{"n": n} for n in range(1000)])
    written = [1000]
    stop = threading.Event()

    def produce() -> None:
        while not stop.is_set():
            queue.write({"late": written[0]})
            written[0] += 1
            time.sleep(0.002)   # a producer's pace, not a wait

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        first = migration.migrate(source.db, target.db, batch_size=20)
    finally:
        stop.set()
        producer.join()
    moved_first = sum(first.moved.values())
    assert 1000 <= moved_first < written[0], "the producer wrote nothing during the pass"
    second = migration.migrate(source.db, target.db)
    assert moved_first + sum(second.moved.values()) == written[0]
    assert target.db[schema.MESSAGES].count_documents({"state": "pending"}) == written[0]
    assert source.unfinished() == set()
    _identical(source, target)
    target.drain()
    assert target.stats("orders")["written"] == written[0] == target.stats("orders")["pending"]


@pytest.mark.parametrize("force", [False, True])
def test_a_consumer_on_the_source_during_the_move_never_finds_its_message_moved_too(sides,
                                                                                   force):
    """Claims and acks race the commits: each message ends done there or moved, never both.

    With ``--force`` a claimed message may be moved from under its consumer:
    its acknowledgement is then refused (LeaseLost), and it waits on the target.
    """
    source, target = sides
    queue = Queue("race", db=source.db)
    written = set(queue.write_many([{"n": n} for n in range(1500)]))
    acked, refused = set(), set()
    stop = threading.Event()

    def consume() -> None:
        while not stop.is_set():
            for message in queue.read(limit=5, visibility_timeout=60):
                try:
                    message.delete()
                    acked.add(message.id)
                except LeaseLost:
                    refused.add(message.id)

    consumer = threading.Thread(target=consume)
    consumer.start()
    try:
        migration.migrate(source.db, target.db, batch_size=10, force=force)
    finally:
        stop.set()
        consumer.join()
    migration.migrate(source.db, target.db, force=True)    # whatever the consumer still held
    on_target = {m["_id"] for m in target.messages()}
    assert acked, "the consumer acknowledged nothing during the move"
    assert not acked & on_target
    assert acked | on_target == written
    assert refused <= on_target
    if not force:
        assert not refused
    source.drain()
    migration.migrate(source.db, target.db)
    target.drain()
    assert target.stats("race")["written"] == 1500
    assert target.stats("race")["done"] == len(acked)
    assert target.stats("race")["pending"] == len(on_target)
    assert conserved(target.stats("race")) and conserved(source.stats("race"))


def test_killed_between_commit_and_arrival_the_rerun_makes_the_copies_visible(sides,
                                                                              monkeypatch):
    source, target = sides
    Queue("q", db=source.db).write_many([{"n": n} for n in range(50)])
    source.drain()
    real_arrive = Receiver.arrive

    def die(self, work, items):
        if items:
            raise RuntimeError("killed after the commit")
        return real_arrive(self, work, items)

    monkeypatch.setattr(Receiver, "arrive", die)
    with pytest.raises(RuntimeError):
        migration.migrate(source.db, target.db)
    assert source.db[schema.MESSAGES].count_documents({"state": "moved"}) == 50
    assert target.db[schema.MESSAGES].count_documents({"state": "arriving"}) == 50
    assert not migration.verify(source.db, target.db).identical
    monkeypatch.setattr(Receiver, "arrive", real_arrive)

    report = migration.migrate(source.db, target.db)
    assert report.reconciled == 50 and sum(report.moved.values()) == 0
    assert target.db[schema.MESSAGES].count_documents({"state": "pending"}) == 50
    _identical(source, target)


def test_killed_between_staging_and_commit_a_changed_message_stays_where_it_is(sides,
                                                                               monkeypatch):
    source, target = sides
    queue = Queue("q", db=source.db)
    queue.write_many([{"n": n} for n in range(20)])
    source.drain()

    def die(self, work, items, now):
        raise RuntimeError("killed after staging")

    monkeypatch.setattr(Move, "_commit", die)
    with pytest.raises(RuntimeError):
        migration.migrate(source.db, target.db)
    monkeypatch.undo()
    assert target.db[schema.MESSAGES].count_documents({"state": "arriving"}) == 20
    done = []
    for message in queue.read(limit=5):  # finished on the source meanwhile
        message.delete()
        done.append(message.id)
    held = queue.read(limit=1, visibility_timeout=600)[0]   # still held when the rerun comes
    flush(10)

    report = migration.migrate(source.db, target.db)
    assert sum(report.moved.values()) == 14 and sum(report.skipped.values()) == 1
    on_target = {d["_id"]: d["state"] for d in target.messages()}
    assert set(on_target.values()) == {"pending"} and len(on_target) == 14
    assert not set(done) & set(on_target) and held.id not in on_target
    held.delete()
    _identical(source, target)


def test_a_dedupe_key_held_on_the_target_does_not_lose_the_later_message(sides):
    source, target = sides
    queue = Queue("q", db=source.db)
    first = queue.write({"v": 1}, dedupe_key="k")
    migration.migrate(source.db, target.db)
    second = queue.write({"v": 2}, dedupe_key="k")   # the key is free on the source again
    assert second != first
    report = migration.migrate(source.db, target.db)
    assert report.unique_dropped == [second]
    on_target = {d["_id"]: d for d in target.messages()}
    assert set(on_target) == {first, second}
    assert on_target[first]["dedupe"] == "q\x00k" and "dedupe" not in on_target[second]
    assert on_target[second]["dedupe_key"] == "k"


def test_only_the_queues_named_move_with_their_own_counters(sides, capsys):
    source, target = sides
    Queue("a", db=source.db).write_many([{"n": n} for n in range(5)])
    Queue("b", db=source.db).write_many([{"n": n} for n in range(3)])
    source.drain()
    assert main(["migrate", "--from", source.uri, "--to", target.uri, "--queue", "a"]) == 0
    assert "only these queues' own series" in capsys.readouterr().out
    assert {m["queue"] for m in target.messages()} == {"a"} and len(target.messages()) == 5
    assert len(source.messages(queue="b", state="pending")) == 3
    source.drain()
    assert main(["migrate", "--from", source.uri, "--to", target.uri, "--queue", "a"]) == 0
    target.drain()
    assert target.stats("a")["written"] == 5 == target.stats("a")["pending"]
    assert "b" not in read_stats(target.db)["queues"]
    assert target.db[schema.COUNTERS].find_one({"_id": "q:*|total|-"}) is None
    assert main(["migrate", "--from", source.uri, "--to", target.uri, "--queue", "a",
                 "--verify"]) == 0
    assert "identical:" in capsys.readouterr().out


def _counter_sums(db: Database) -> dict:
    return {d["_id"]: {k: d.get(k) for k in ("counts", "count", "sum", "hist", "min", "max")}
            for d in db[schema.COUNTERS].find()}


def test_export_then_import_twice_adds_nothing_the_second_time(sides, tmp_path, capsys):
    source, target = sides
    _fill(source)
    expected = {queue: source.stats(queue) for queue in ("emails", "reports")}
    backup = tmp_path / "backup.jsonl"
    assert main(["export", "--from", source.uri, "--output", str(backup)]) == 0
    out = capsys.readouterr().out
    assert "history 2" in out and "messages 10" in out and "counters" in out
    lines = backup.read_text().splitlines()
    assert '"mopq": "export"' in lines[0] and '"mopq": "end"' in lines[-1]
    assert '{"$date": {"$numberLong": ' in backup.read_text()
    assert not (tmp_path / "backup.jsonl.partial").exists()

    assert main(["import", "--input", str(backup), "--to", target.uri]) == 0
    out = capsys.readouterr().out
    assert "2 message(s) were inflight when exported: imported as pending" in out
    target.drain()
    first = {queue: _counts(target.stats(queue)) for queue in expected}
    messages_first = sorted(target.db[schema.MESSAGES].find(), key=lambda d: d["_id"])
    counters_first = _counter_sums(target.db)

    assert main(["import", "--input", str(backup), "--to", target.uri]) == 0
    out = capsys.readouterr().out
    assert "added nothing" in out and "already there 12" in out
    target.drain()
    assert {queue: _counts(target.stats(queue)) for queue in expected} == first
    assert sorted(target.db[schema.MESSAGES].find(), key=lambda d: d["_id"]) == messages_first
    assert _counter_sums(target.db) == counters_first
    for queue, row in expected.items():
        imported = first[queue]
        assert _flows(imported) == _flows(row) and conserved(imported), queue
        assert imported["pending"] == row["pending"] + row["inflight"]
        assert imported["inflight"] == 0 and imported["dead"] == row["dead"]

    # Even after the target has processed what it imported, importing again adds nothing.
    emails = Queue("emails", db=target.db)
    for message in emails.read(limit=20):
        message.delete()
    flush(10)
    left = emails.count()
    assert left == first["emails"]["dead"] + first["emails"]["delayed"]
    assert main(["import", "--input", str(backup), "--to", target.uri]) == 0
    capsys.readouterr()
    assert emails.count() == left


def test_an_import_sigkilled_at_random_points_then_rerun_adds_each_message_once(sides,
                                                                               tmp_path, reap):
    source, target = sides
    queue = Queue("bulk", db=source.db)
    queue.write_many([{"n": n} for n in range(1500)])
    for message in queue.read(limit=100):
        message.delete()
    source.drain()
    before = source.stats("bulk")
    backup = tmp_path / "backup.jsonl"
    assert main(["export", "--from", source.uri, "--output", str(backup)]) == 0

    def progress() -> int:
        return sum(target.db[name].estimated_document_count()
                   for name in (schema.MESSAGES, schema.HISTORY))

    seed = int(os.environ.get("MOPQ_TEST_SEED", time.time_ns() % 1_000_000))
    arguments = ("import", "--input", str(backup), "--to", target.uri, "--batch-size", "20")
    kills = _kill_at_random_points(lambda: _command(*arguments), progress, 1500, 4, reap, seed)
    assert kills >= 2, f"the import finished before it could be killed (seed {seed})"
    final = _command(*arguments)
    out, err = final.communicate(timeout=300)
    assert final.returncode == 0, f"seed {seed}: {out}{err}"
    assert "added nothing" not in out or kills == 4, out

    ids = [d["_id"] for d in target.db[schema.MESSAGES].find({}, {"state": 1})]
    assert len(ids) == len(set(ids)) == 1400, seed
    assert target.db[schema.MESSAGES].count_documents({"state": "pending"}) == 1400, seed
    assert target.db[schema.HISTORY].count_documents({}) == 100, seed
    target.drain()
    assert _flows(target.stats("bulk")) == _flows(before), seed
    assert conserved(target.stats("bulk")), seed


def test_import_reports_a_bad_line_by_number_and_writes_nothing_after_it(sides, tmp_path,
                                                                         capsys):
    source, target = sides
    Queue("q", db=source.db).write_many([{"n": n} for n in range(10)])
    source.drain()
    backup = tmp_path / "backup.jsonl"
    assert main(["export", "--from", source.uri, "--output", str(backup)]) == 0
    lines = backup.read_text().splitlines(keepends=True)
    order = [json_util.loads(line)["document"]["_id"] for line in lines[1:11]]

    # Line 5 cut in half: lines 2-4 (three messages) are written, nothing from 5 on.
    broken = tmp_path / "broken.jsonl"
    broken.write_text("".join(lines[:4]) + lines[4][:40] + "\n" + "".join(lines[5:]))
    assert main(["import", "--input", str(broken), "--to", target.uri,
                 "--batch-size", "2"]) == 1
    err = capsys.readouterr().err
    assert f"{broken}: line 5: not Extended JSON" in err
    assert "lines 1 to 4 were imported; nothing from line 5 on" in err
    assert [d["_id"] for d in target.db[schema.MESSAGES].find().sort("_id", 1)] == order[:3]
    assert target.db[schema.COUNTERS].count_documents({}) == 0

    # Good JSON, bad content: refused by what it says, with its number.
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(lines[:7]) + lines[7].replace('"pending"', '"bogus"')
                   + "".join(lines[8:]))
    assert main(["import", "--input", str(bad), "--to", target.uri]) == 1
    err = capsys.readouterr().err
    assert "line 8: messages document" in err and "state 'bogus'" in err
    assert target.db[schema.MESSAGES].count_documents({}) == 6

    # Cut short (no end line): everything there is written, and the cut is reported.
    short = tmp_path / "short.jsonl"
    short.write_text("".join(lines[:-1]))
    assert main(["import", "--input", str(short), "--to", target.uri]) == 1
    assert f"line {len(lines)}: the file ends after line {len(lines) - 1} without its end " \
           "line" in capsys.readouterr().err
    assert target.db[schema.MESSAGES].count_documents({}) == 10

    # The whole file then adds only the end line's worth: nothing twice.
    assert main(["import", "--input", str(backup), "--to", target.uri]) == 0
    assert "already there 10" in capsys.readouterr().out
    target.drain()
    assert target.stats("q")["written"] == 10 == target.stats("q")["pending"]


def test_migrating_what_was_imported_marks_it_moved_without_copying_it_again(sides, tmp_path):
    source, target = sides
    queue = Queue("q", db=source.db)
    queue.write_many([{"n": n} for n in range(30)])
    source.drain()
    backup = tmp_path / "backup.jsonl"
    with backup.open("w") as file:
        migration.export(source.db, file)
    with backup.open() as file:
        migration.import_lines(target.db, file)
    for message in Queue("q", db=target.db).read(limit=10):   # the target works on them
        message.delete()
    queue.write_many([{"late": n} for n in range(5)])          # the source gets more
    flush(10)

    report = migration.migrate(source.db, target.db)
    assert sum(report.already.values()) == 30 and sum(report.moved.values()) == 5
    assert target.db[schema.MESSAGES].count_documents({"state": "pending"}) == 25
    assert source.unfinished() == set()
    _identical(source, target)
    target.drain()
    row = target.stats("q")
    assert (row["written"], row["done"], row["pending"]) == (35, 10, 25) and conserved(row)


def test_an_export_is_not_imported_into_the_deployment_it_came_from(sides, tmp_path, capsys):
    source, _ = sides
    Queue("q", db=source.db).write({"n": 1})
    backup = tmp_path / "backup.jsonl"
    assert main(["export", "--from", source.uri, "--output", str(backup)]) == 0
    assert main(["import", "--input", str(backup), "--to", source.uri]) == 1
    err = capsys.readouterr().err
    assert "line 1: this export was taken from this very deployment" in err
    assert source.db[schema.MESSAGES].count_documents({}) == 1


def test_one_deployment_as_both_sides_and_an_unreachable_one_are_refused_clearly(sides,
                                                                                 capsys):
    source, target = sides
    Queue("q", db=source.db).write({"n": 1})
    assert main(["migrate", "--from", source.uri, "--to", source.uri, "--dry-run"]) == 2
    assert "same deployment" in capsys.readouterr().err
    assert main(["migrate", "--from", source.uri, "--to", source.uri]) == 2
    assert "same deployment" in capsys.readouterr().err
    nowhere = f"mongodb://127.0.0.1:{free_port()}/x?serverSelectionTimeoutMS=300"
    assert main(["migrate", "--from", nowhere, "--to", target.uri]) == 1
    err = capsys.readouterr().err
    assert f"the source (127.0.0.1:{nowhere.split(':')[2].split('/')[0]}/x) did not answer" \
        in err and "Check --from" in err and "nothing was written" in err
    assert target.db.list_collection_names() == []
    assert source.db[schema.MESSAGES].count_documents({"state": "pending"}) == 1


def test_a_move_is_counted_in_the_bucket_of_its_time(sides):
    """The source's moves are subtracted from the very buckets its collector put them in."""
    source, target = sides
    Queue("q", db=source.db).write_many([{"n": n} for n in range(4)])
    migration.migrate(source.db, target.db)
    source.drain()
    migration.migrate(source.db, target.db)
    moved_at = source.db[schema.MESSAGES].find_one({"state": "moved"})["moved_at"]
    minute = moved_at.replace(second=0, microsecond=0)
    bucket = f"q:q|m|{minute.isoformat()}"
    assert source.db[schema.COUNTERS].find_one({"_id": bucket})["counts"]["deleted"] == 4
    carried = target.db[schema.COUNTERS].find_one({"_id": bucket})
    assert carried["counts"].get("deleted", 0) == 0
    total = target.db[schema.COUNTERS].find_one({"_id": "q:q|total|-"})["counts"]
    assert total["written"] == 4 and total.get("deleted", 0) == 0
    assert moved_at > utcnow() - dt.timedelta(minutes=5)


def test_a_message_read_in_a_finished_state_is_never_moved(sides):
    """The embedded engine was seen returning, under concurrent acks, a document the query's
    state no longer matched: the commit's guard takes the state as read, so a done message
    would have been moved (and run twice). Such a document is skipped."""
    source, target = sides
    queue = Queue("q", db=source.db)
    queue.write_many([{"n": n} for n in range(3)])
    message = queue.read(limit=1)[0]
    read_before_the_ack = source.db[schema.MESSAGES].find_one({"_id": message.id})
    message.delete()
    as_returned = {**read_before_the_ack, "state": "done"}   # what the engine handed back
    move = Move(Sides.open(source.db, target.db, None, create=True))
    assert move._move_batch(MESSAGES, [as_returned]) == []
    assert target.messages() == [] and sum(move.report.moved.values()) == 0
    flush(10)
    assert source.db[schema.HISTORY].find_one({"_id": message.id}) is not None


def _lines(db: Database) -> Activity:
    """split (into its input's lines) -> pack each line (fan-out) -> total."""
    return Activity("lines", [
        Step("split", "line-split", lambda m: m.body["input"]["lines"]),
        Step("pack", "line-pack", lambda m: {"packed": m.body["item"]}, fan_out=True),
        Step("total", "line-total", lambda m: m.body["previous"]),
    ], db=db)


def test_a_fan_out_parent_waiting_for_its_children_moves_with_them_and_ends_on_the_target(
        sides, capsys):
    source, target = sides
    flow = _lines(source.db)
    parent, _ = flow.start("f1", {"lines": ["a", "b", "c", "d"]})
    Queue("line-split", db=source.db).read()[0].delete(["a", "b", "c", "d"])
    pack = Queue("line-pack", db=source.db)
    first = pack.read(limit=1)[0]
    first.delete({"packed": first.body["item"]})                # counted on the source
    held = pack.read(limit=1, visibility_timeout=600)[0]         # a source consumer holds it
    assert source.db[schema.MESSAGES].find_one({"_id": parent})["state"] == schema.WAITING
    source.drain()
    arguments = ["migrate", "--from", source.uri, "--to", target.uri]

    assert main([*arguments, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would move: 3 document(s)" in out
    assert "line-pack: pending 2, waiting (fan-out) 1" in out
    assert "line-pack: inflight, held 1" in out

    assert main(arguments) == 0
    capsys.readouterr()
    main([*arguments, "--verify"])
    out = capsys.readouterr().out
    assert "on the target now:\n  line-pack: pending 2, waiting 1\n" in out, out
    assert "still unfinished on the source (the next run moves them):\n" \
           "  line-pack: inflight 1\n" in out, out
    moved = target.db[schema.MESSAGES].find_one({"_id": parent})
    assert moved["state"] == schema.WAITING and moved["queue"] == "line-pack"
    assert moved["sequence"]["children"]["counted"] == [first.id]
    # Acknowledged on the source after its parent left: counted nowhere there; its
    # history follows with the next run and it is counted into the parent on the target.
    held.delete({"packed": held.body["item"]})
    flush(10)                                    # published, so archived into history
    assert main([*arguments, "--verify"]) == 1
    assert f"{held.id} (line-pack): a fan-out child of {parent} finished on the source " \
        "after its parent moved" in capsys.readouterr().out
    assert main(arguments) == 0
    assert "1 fan-out child(ren) that finished apart from their parent" in \
        capsys.readouterr().out
    children = target.db[schema.MESSAGES].find_one({"_id": parent})["sequence"]["children"]
    assert children["counted"] == [first.id, held.id] and children["finished"] == 2
    assert main(arguments) == 0 and "fan-out child" not in capsys.readouterr().out

    # The target serves the rest; the parent moves on once all are done, each counted once.
    for message in Queue("line-pack", db=target.db).read(limit=5):
        message.delete({"packed": message.body["item"]})
    total = Queue("line-total", db=target.db).read()[0]
    assert total.body["previous"] == {"results": [{"packed": item} for item in "abcd"],
                                      "dead": []}
    total.delete(total.body["previous"])
    assert Activity("lines", flow.steps, db=target.db, define=False).instance("f1")[
        "status"] == "completed"
    assert source.db[schema.MESSAGES].find_one({"_id": parent})["state"] == schema.MOVED
    _identical(source, target)
    target.drain()
    for queue in ("line-split", "line-pack", "line-total"):
        assert conserved(target.stats(queue)), queue
    assert conserved(source.stats("line-split")) and conserved(source.stats("line-pack"))
    assert target.stats("line-pack")["done"] == 4


def test_definitions_and_policies_follow_and_the_targets_own_stronger_setting_is_kept(
        sides, capsys):
    source, target = sides
    _lines(source.db)                                             # an activity definition
    policy.define(source.db, "line-pack", {"max_attempts": 7, "rate_limit_max": 10,
                                           "rate_limit_per_seconds": 1.0})      # code's
    policy.change(source.db, "line-split", {"visibility_timeout": 90.0}, who="ops")  # admin's
    policy.pause(source.db, "line-split", who="ops", reason="incident")
    policy.define(target.db, "line-split", {"visibility_timeout": 10.0})   # outranked: code's
    policy.change(target.db, "line-pack", {"max_attempts": 2}, who="new-ops")  # kept: admin's
    Queue("line-split", db=source.db).write({"n": 1})
    arguments = ["migrate", "--from", source.uri, "--to", target.uri]

    assert main([*arguments, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "definitions and policies to carry: 4:\n  line-pack: rate limit\n" \
           "  line-split: paused, visibility_timeout\n  lines: definition\n" in out, out
    assert "kept as the target has them" in out
    assert "  line-pack: max_attempts (the target's own is an admin's)" in out
    assert target.db[schema.ACTIVITIES].count_documents({}) == 0
    assert not policy.read(target.db, "line-split").paused

    assert main(arguments) == 0
    assert "definitions and policies carried: 4:" in capsys.readouterr().out
    split, pack = policy.read(target.db, "line-split"), policy.read(target.db, "line-pack")
    assert split.paused and split.paused.who == "ops" and split.paused.reason == "incident"
    assert split.value("visibility_timeout") == 90.0 and split.source("visibility_timeout")[
        "who"] == "ops"
    assert pack.value("max_attempts") == 2 and pack.rate_limit() == (10, 1.0)
    assert target.db[schema.ACTIVITIES].find_one({"_id": "lines"})["steps"] == \
        source.db[schema.ACTIVITIES].find_one({"_id": "lines"})["steps"]
    # The moved message waits paused on the target, as it did on the source.
    assert target.db[schema.MESSAGES].count_documents({"queue": "line-split"}) == 1
    assert Queue("line-split", db=target.db).read() == []

    source.drain()
    assert main(arguments) == 0
    out = capsys.readouterr().out
    assert "definitions and policies carried: 0\n" in out
    assert "definitions and policies the same on the target already: 4" in out
    assert main([*arguments, "--verify"]) == 0
    assert "identical:" in capsys.readouterr().out

    # Resumed on the target by its admin: a later run does not pause it again.
    assert policy.resume(target.db, "line-split")
    assert main(arguments) == 0
    assert "line-split: paused (carried before, resumed on the target since)" in \
        capsys.readouterr().out
    assert not policy.read(target.db, "line-split").paused
    assert [m.body for m in Queue("line-split", db=target.db).read()] == [{"n": 1}]


def test_export_and_import_carry_waiting_instances_definitions_and_policies_once(
        sides, tmp_path, capsys):
    source, target = sides
    flow = _lines(source.db)
    parent, _ = flow.start("f1", {"lines": ["a", "b"]})
    Queue("line-split", db=source.db).read()[0].delete(["a", "b"])
    policy.pause(source.db, "line-pack", who="ops")
    source.drain()
    backup = tmp_path / "backup.jsonl"
    assert main(["export", "--from", source.uri, "--output", str(backup)]) == 0
    out = capsys.readouterr().out
    assert "activities 1, queues 1, messages 3" in out
    assert "line-pack: pending 2, waiting 1" in out

    for attempt in range(2):
        assert main(["import", "--input", str(backup), "--to", target.uri]) == 0
        out = capsys.readouterr().out
        if attempt == 0:
            assert "added messages pending 2, messages waiting 1" in out
            assert "definitions and policies carried: 2:" in out
        else:
            assert "added nothing" in out and "already there 3" in out
            assert "definitions and policies carried: 0" in out
            assert "the same on the target already: 2" in out
    assert target.db[schema.MESSAGES].find_one({"_id": parent})["state"] == schema.WAITING
    assert policy.read(target.db, "line-pack").paused
    assert target.db[schema.ACTIVITIES].count_documents({}) == 1
    policy.resume(target.db, "line-pack")
    for message in Queue("line-pack", db=target.db).read(limit=5):
        message.delete({"packed": message.body["item"]})
    total = Queue("line-total", db=target.db).read()[0]
    assert total.body["previous"]["results"] == [{"packed": "a"}, {"packed": "b"}]


def test_a_round_trip_counts_nothing_twice(sides):
    """A -> B -> A: A ends with the totals B showed before the move back (its own before the
    first move, plus what B did); B keeps its own, the moves back counted as removed. Two
    more hops: still each target shows its source's totals (the moved records of the
    messages that came back are gone by then)."""
    a, b = sides
    queue = Queue("trip", db=a.db)
    queue.write_many([{"n": n} for n in range(10)])
    for message in queue.read(limit=3):
        message.delete()
    a.drain()
    before = a.stats("trip")
    assert (before["written"], before["done"], before["pending"]) == (10, 3, 7)

    def move(source: Side, target: Side) -> None:
        migration.migrate(source.db, target.db)
        source.drain()                   # the moves' own events, then carried
        migration.migrate(source.db, target.db)
        target.drain()
        assert migration.verify(source.db, target.db).identical

    move(a, b)
    assert _flows(b.stats("trip")) == _flows(before) and b.stats("trip")["pending"] == 7
    for message in Queue("trip", db=b.db).read(limit=2):          # B works on some
        message.delete()
    b.drain()
    on_b = b.stats("trip")
    move(b, a)
    back = a.stats("trip")
    assert _flows(back) == _flows(on_b), (back, on_b)
    assert (back["written"], back["done"], back["removed"], back["pending"]) == (10, 5, 0, 5)
    assert conserved(back)
    everything = a.db[schema.COUNTERS].find_one({"_id": "q:*|total|-"})["counts"]
    assert everything["written"] == 10 and everything.get("deleted", 0) == 0
    after_b = b.stats("trip")
    assert (after_b["written"], after_b["done"], after_b["removed"]) == (10, 5, 5)
    assert conserved(after_b) and after_b["pending"] == 0

    migration.migrate(b.db, a.db)         # carried again: nothing changes
    a.drain()
    assert _flows(a.stats("trip")) == _flows(back)

    # Further hops: each target shows its source's totals, as after any move.
    for source, target in ((a, b), (b, a)):
        shown = source.stats("trip")
        move(source, target)
        assert _flows(target.stats("trip")) == _flows(shown), (target.stats("trip"), shown)
        assert target.stats("trip")["pending"] == 5 and conserved(target.stats("trip"))
        assert conserved(source.stats("trip")) and source.stats("trip")["pending"] == 0


def test_an_export_imported_back_into_its_first_deployment_counts_nothing_twice(sides,
                                                                              tmp_path):
    a, b = sides
    Queue("trip", db=a.db).write_many([{"n": n} for n in range(6)])
    a.drain()
    before = _counter_sums(a.db)
    for source, target, name in ((a, b, "a.jsonl"), (b, a, "b.jsonl")):
        backup = tmp_path / name
        with backup.open("w") as file:
            migration.export(source.db, file)
        with backup.open() as file:
            migration.import_lines(target.db, file)
    a.drain()
    assert _counter_sums(a.db) == before
    assert a.stats("trip")["written"] == 6 == a.stats("trip")["pending"]
