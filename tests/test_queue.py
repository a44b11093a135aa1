"""Queue semantics against the real engine: leases, retries, dead letters, expiry, dedupe."""

from __future__ import annotations

import datetime as dt
import os
import time
from itertools import pairwise

import pytest
from pymongo import MongoClient, monitoring

from mopq import Envelope, LeaseLost, Queue, admin, exponential_backoff, flush, maintenance, schema
from tests.helpers import wait_until


@pytest.fixture
def queue(db_name) -> Queue:
    return Queue("emails", max_attempts=3, backoff=lambda attempts: 0.3)


def test_write_read_ack_round_trip_keeps_the_body(queue, db):
    when = dt.datetime(2026, 11, 26, 12, 30, tzinfo=dt.UTC)
    body = {"to": "a@b", "n": 3, "ok": True, "none": None, "tags": ["x", 1.5],
            "nested": {"at": when}}
    message_id = queue.write(body, routing_key="welcome")
    [message] = queue.read(routing_key="welcome")
    assert message.id == message_id
    assert message.body == body
    assert message.attempts == 1
    assert queue.read() == []
    message.delete()
    assert flush(10)
    assert db.messages.count_documents({}) == 0


def test_routing_keys_separate_consumers(queue):
    queue.write({"n": 1}, routing_key="a")
    queue.write({"n": 2}, routing_key="b")
    [b] = queue.read(routing_key="b")
    assert b.body == {"n": 2}
    assert queue.read(routing_key="b") == []
    [a] = queue.read()
    assert a.body == {"n": 1}


def test_highest_priority_first_then_oldest(queue):
    queue.write({"n": "low-old"}, priority=0)
    queue.write({"n": "high"}, priority=5)
    queue.write({"n": "low-new"}, priority=0)
    bodies = [m.body["n"] for m in queue.read(limit=3)]
    assert bodies == ["high", "low-old", "low-new"]


def test_one_process_messages_are_claimed_in_the_order_written_one_by_one_or_in_bulk(queue):
    queue.write({"n": 0})
    queue.write_many([{"n": 1}, {"n": 2}])
    queue.write({"n": 3})
    queue.write_many([{"n": 4}])
    assert [m.body["n"] for m in queue.read(limit=5)] == [0, 1, 2, 3, 4]


class _Claims(monitoring.CommandListener):
    """The commands one client sends, and its claims (a findAndModify that counts an attempt)."""

    def __init__(self) -> None:
        self.sent = 0
        self.everything = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.everything += 1
        if event.command_name.lower() == "findandmodify" \
                and "attempts" in (event.command.get("update") or {}).get("$inc", {}):
            self.sent += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def test_consumers_in_two_processes_take_turns_without_losing_a_claim_in_strict_order(
        engine_uri, db_name, db):
    # Each consumer has its own client, as two processes (two gunicorn workers serving
    # the HTTP queue, two worker processes) would: a claim from a candidate list read
    # by one would often find the message already taken by the other.
    queue = Queue("turns")
    queue.write_many([Envelope({"n": n}, priority=n % 3) for n in range(30)])
    expected = sorted(range(30), key=lambda n: (-(n % 3), n))
    listeners = [_Claims(), _Claims()]
    clients = [MongoClient(engine_uri, event_listeners=[listener]) for listener in listeners]
    try:
        consumers = [Queue("turns", db=client[db_name]) for client in clients]
        got = []
        for turn in range(30):
            [message] = consumers[turn % 2].read()
            got.append(message.body["n"])
            message.delete()
        assert got == expected
        assert [listener.sent for listener in listeners] == [15, 15], \
            "each claim should be one findAndModify that found its message"
        assert consumers[0].read() == [] and consumers[0].found_none()
        assert flush(10)
    finally:
        for client in clients:
            client.close()
    claimed = list(db.events.find({"queue": "turns", "kind": "claimed"}))
    assert len(claimed) == 30 and len({e["message"] for e in claimed}) == 30
    assert all(0 <= e["partition"] < schema.PARTITIONS and e["worker"] is None for e in claimed)
    assert db.events.count_documents({"queue": "turns", "kind": "acked"}) == 30


def test_a_message_written_after_the_queue_was_found_empty_is_claimed_in_one_command(
        engine_uri, db_name):
    # Pickup after a quiet spell: the ring wakes the consumer, whose claim is then the
    # whole delay between the write and the handler; one round trip, not two.
    listener = _Claims()
    client = MongoClient(engine_uri, event_listeners=[listener])
    try:
        consumer = Queue("quiet", db=client[db_name])
        assert consumer.read() == [] and consumer.found_none()
        Queue("quiet").write({"n": 1})
        before = listener.everything
        [message] = consumer.read()
        assert message.body == {"n": 1}
        assert listener.everything - before == 1, "a candidate read and a claim were sent"
        message.delete()
        assert flush(10)
    finally:
        client.close()


def test_message_ids_are_distinct_ordered_and_differ_after_a_fork():
    from mopq.object_ids import object_ids

    ids = object_ids(5000) + object_ids(1) + object_ids(3000)
    counters = [int.from_bytes(oid.binary[9:], "big") for oid in ids]
    assert all((later - earlier) % 2**24 == 1 for earlier, later in pairwise(counters))
    assert len(set(ids)) == len(ids)
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # the child reports the random part of its next id, then leaves at once
        os.write(writer, object_ids(1)[0].binary[4:9])
        os._exit(0)
    os.close(writer)
    assert os.waitpid(child, 0)[1] == 0
    with os.fdopen(reader, "rb") as pipe:
        assert pipe.read() != ids[0].binary[4:9]
    assert object_ids(1)[0].binary[4:9] == ids[0].binary[4:9]  # ours is unchanged


def test_read_limit_claims_several_atomically(queue):
    queue.write_many([{"n": i} for i in range(10)])
    first = queue.read(limit=4)
    second = queue.read(limit=10)
    assert len(first) == 4 and len(second) == 6
    assert not {m.id for m in first} & {m.id for m in second}


def test_delayed_message_is_invisible_until_its_time(queue, db):
    queue.write({"n": 1}, delay=1.0)
    assert queue.read() == []
    started = time.monotonic()
    [message] = wait_until(lambda: queue.read(), timeout=5, message="the delayed message")
    assert time.monotonic() - started >= 0.5
    assert message.body == {"n": 1}


def test_expired_lease_makes_the_message_visible_again_within_a_second(queue):
    queue.write({"n": 1})
    [first] = queue.read(visibility_timeout=1)
    claimed = time.monotonic()
    [second] = wait_until(lambda: queue.read(visibility_timeout=30), timeout=5,
                          interval=0.02, message="re-delivery")
    waited = time.monotonic() - claimed
    assert 0.9 <= waited <= 2.0, waited
    assert second.id == first.id and second.attempts == 2


def test_stale_lease_is_refused_and_changes_nothing(queue, db):
    queue.write({"n": 1})
    [stale] = queue.read(visibility_timeout=0.5)
    [fresh] = wait_until(lambda: queue.read(visibility_timeout=30), timeout=5,
                         message="re-delivery")
    for act in (stale.delete, stale.ack, lambda: stale.fail("late"), stale.extend,
                lambda: stale.progress(0.5), lambda: stale.log("late")):
        with pytest.raises(LeaseLost, match="no longer held"):
            act()
    document = db.messages.find_one({"_id": fresh.id})
    assert document["state"] == "inflight"
    assert document["lease_token"] == fresh.lease_token
    assert "last_error" not in document and "log" not in document
    fresh.delete()
    with pytest.raises(LeaseLost):
        fresh.delete()


def test_extend_and_progress_hold_the_lease(queue, db):
    queue.write({"n": 1})
    [message] = queue.read(visibility_timeout=1)
    message.extend(5)
    message.progress(0.25, note="a quarter")
    time.sleep(1.2)  # past the original timeout: the lease must still hold
    assert queue.read() == []
    document = db.messages.find_one({"_id": message.id})
    assert document["progress"]["fraction"] == 0.25
    assert document["progress"]["note"] == "a quarter"
    message.delete()


def test_log_keeps_the_last_hundred_lines(queue, db):
    queue.write({"n": 1})
    [message] = queue.read()
    for i in range(105):
        message.log(f"line {i}")
    lines = [entry["line"] for entry in db.messages.find_one({"_id": message.id})["log"]]
    assert len(lines) == 100 and lines[0] == "line 5" and lines[-1] == "line 104"


def test_failures_retry_with_backoff_then_die_with_history(queue, db):
    message_id = queue.write({"n": 1})
    for attempt in (1, 2):
        [message] = wait_until(lambda: queue.read(), timeout=5, message=f"attempt {attempt}")
        assert message.attempts == attempt
        try:
            raise RuntimeError(f"boom {attempt}")
        except RuntimeError as error:
            assert message.fail(error) == "pending"
        assert queue.read() == [], "a failed message must wait for its backoff"
    [message] = wait_until(lambda: queue.read(), timeout=5, message="attempt 3")
    assert message.fail("final reason") == "dead"
    document = db.messages.find_one({"_id": message_id})
    assert document["state"] == "dead"
    assert document["last_error"] == "final reason"
    assert [e["attempt"] for e in document["errors"]] == [1, 2, 3]
    assert "RuntimeError: boom 2" in document["errors"][1]["traceback"]
    time.sleep(0.4)
    assert queue.read() == [], "a dead message is never delivered"


def test_default_backoff_starts_near_a_second_and_doubles_with_a_cap():
    backoff = exponential_backoff()
    assert 0.85 <= backoff(1) <= 1.15
    assert 1.7 <= backoff(2) <= 2.3
    assert 3.4 <= backoff(3) <= 4.6
    assert backoff(30) <= 330


def _kill(queue: Queue, times: int) -> None:
    for _ in range(times):
        [message] = wait_until(lambda: queue.read(), timeout=5, message="a message to fail")
        message.fail("nope")


def test_dead_messages_can_be_retried_and_deleted_singly_and_in_bulk(db_name, db):
    queue = Queue("jobs", max_attempts=1)
    ids = queue.write_many([{"n": i} for i in range(6)])
    _kill(queue, 6)
    assert queue.count("dead") == 6
    single = admin.retry(db, admin.selection(ids=[ids[0]]))
    assert single == 1
    [again] = queue.read()
    assert again.id == ids[0] and again.attempts == 1  # attempts were reset
    again.delete()
    assert admin.remove(db, admin.selection(ids=[ids[1]])) == 1
    assert admin.retry(db, admin.selection(queue="jobs")) == 4
    assert queue.count("pending") == 4 and queue.count("dead") == 0
    _kill(queue, 4)
    assert admin.remove(db, admin.selection(queue="jobs", error_contains="NOPE")) == 4
    assert flush(10)
    wait_until(lambda: db.messages.count_documents({}) == 0, message="removed messages to go")


def test_expired_message_is_never_delivered_and_is_counted(queue, db):
    message_id = queue.write({"n": 1}, expire=0.3)
    time.sleep(0.4)
    assert queue.read() == []
    assert flush(10)
    assert db.events.count_documents({"kind": "expired", "message": str(message_id)}) == 1
    assert db.messages.count_documents({}) == 0


def test_sweep_expires_what_nobody_reads(queue, db):
    message_id = queue.write({"n": 1}, expire=0.2)
    time.sleep(0.3)
    assert maintenance.sweep(db).expired == 1
    assert maintenance.sweep(db).expired == 0
    assert db.events.count_documents({"kind": "expired", "message": str(message_id)}) == 1


def test_dedupe_key_returns_the_first_id_while_it_is_unfinished(queue, db):
    first = queue.write({"n": 1}, dedupe_key="order-42")
    again = queue.write({"n": 2}, dedupe_key="order-42")
    assert again == first
    assert db.messages.count_documents({"queue": "emails"}) == 1
    other_queue = Queue("sms").write({"n": 3}, dedupe_key="order-42")
    assert other_queue != first
    [message] = queue.read()
    message.delete()
    later = queue.write({"n": 4}, dedupe_key="order-42")
    assert later != first


def test_write_many_takes_per_message_options(queue):
    ids = queue.write_many([Envelope({"n": 1}, priority=9), {"n": 2},
                            Envelope({"n": 3}, dedupe_key="k"),
                            Envelope({"n": 4}, dedupe_key="k")])
    assert len(ids) == 4 and ids[2] == ids[3]
    [first] = queue.read()
    assert first.body == {"n": 1}


def test_sweep_returns_expired_leases_to_pending(queue, db):
    queue.write({"n": 1})
    [message] = queue.read(visibility_timeout=0.2)
    time.sleep(0.3)
    assert maintenance.sweep(db).reclaimed == 1
    assert db.messages.find_one({"_id": message.id})["state"] == "pending"
    with pytest.raises(LeaseLost):
        message.delete()


def test_every_transition_is_logged_once_with_stable_ids(queue, db):
    queue.write_many([{"n": i} for i in range(3)])
    first, second, third = queue.read(limit=3)
    first.delete()
    second.fail("oops")
    assert flush(10)
    # Publishing the same outboxes again (as a sweep after a crash would) adds nothing.
    maintenance.republish_outboxes(db, grace_seconds=0)
    kinds = sorted(e["kind"] for e in db.events.find())
    assert kinds == ["acked", "claimed", "claimed", "claimed", "failed",
                     "written", "written", "written"]
    assert db.messages.count_documents({"outbox.id": {"$exists": True}}) == 0
    for event in db.events.find():
        assert 0 <= event["partition"] < schema.PARTITIONS
        assert event["queue"] == "emails"
    acked = db.events.find_one({"kind": "acked"})
    assert acked["duration"] >= 0 and acked["message"] == str(first.id)


def test_a_finished_message_stays_until_every_event_of_its_outbox_is_published(db_name, db):
    """Publishing one transition of a done message must not delete it while another waits."""
    from mopq.events import message_event
    from mopq.publisher import Outbox, publish_outboxes

    now = dt.datetime.now(dt.UTC)
    message = {"_id": "m1", "queue": "q", "state": schema.DONE}
    claimed = message_event(schema.CLAIMED, message, now, "t1")
    acked = message_event(schema.ACKED, message, now, "t1")
    db[schema.MESSAGES].insert_one({**message, "outbox": [claimed, acked]})

    publish_outboxes(db, [Outbox("m1", schema.DONE, [acked])])
    left = db[schema.MESSAGES].find_one({"_id": "m1"})
    assert left is not None and [e["id"] for e in left["outbox"]] == [claimed["id"]]

    publish_outboxes(db, [Outbox("m1", schema.INFLIGHT, [claimed]),
                          Outbox("m1", schema.DONE, [acked])])  # merged: one delete
    assert db[schema.MESSAGES].find_one({"_id": "m1"}) is None
    assert sorted(db[schema.EVENTS].distinct("_id")) == sorted([claimed["id"], acked["id"]])


def test_collectors_are_told_of_events_once_in_the_log_before_outboxes_are_cleared(db_name, db):
    """The count need not wait for the archive, the deletes and the pulls (issue 16, item 2)."""
    from mopq.events import message_event
    from mopq.publisher import Outbox, publish_outboxes

    now = dt.datetime.now(dt.UTC)
    message = {"_id": "m3", "queue": "q", "state": schema.DONE}
    acked = message_event(schema.ACKED, message, now, "t1")
    db[schema.MESSAGES].insert_one({**message, "outbox": [acked]})
    seen: list[tuple[bool, bool]] = []

    def told() -> None:
        seen.append((db[schema.EVENTS].find_one({"_id": acked["id"]}) is not None,
                     db[schema.MESSAGES].find_one({"_id": "m3"}) is not None))

    publish_outboxes(db, [Outbox("m3", schema.DONE, [acked])], inserted=told)
    assert seen == [(True, True)]  # the event was in the log; the message not yet archived
    assert db[schema.MESSAGES].find_one({"_id": "m3"}) is None


def test_whichever_publisher_empties_a_finished_outbox_deletes_the_message(db_name, db):
    """Two clients in one process have two publishers; the later one may hold the earlier events."""
    from mopq.events import message_event
    from mopq.publisher import Outbox, publish_outboxes

    now = dt.datetime.now(dt.UTC)
    message = {"_id": "m2", "queue": "q", "state": schema.REMOVED}
    failed = message_event(schema.FAILED, message, now, "t1")
    dead = message_event(schema.DEAD_EVENT, message, now, "t1")
    removed = message_event(schema.DELETED, message, now)
    db[schema.MESSAGES].insert_one({**message, "outbox": [failed, dead, removed]})

    publish_outboxes(db, [Outbox("m2", schema.REMOVED, [removed])])
    assert db[schema.MESSAGES].find_one({"_id": "m2"}) is not None  # two events still wait
    publish_outboxes(db, [Outbox("m2", schema.DEAD, [failed, dead])])
    assert db[schema.MESSAGES].find_one({"_id": "m2"}) is None


def test_one_batch_clears_each_outbox_of_exactly_its_published_events(db_name, db):
    """Outboxes are cleared a group of messages per statement: an entry published by
    no one must stay, whichever message of the group holds it, and only emptied
    finished messages go."""
    from mopq.events import message_event
    from mopq.publisher import CLEAR_GROUP, Outbox, publish_outboxes

    now = dt.datetime.now(dt.UTC)

    def message(n: int, state: str) -> dict:
        return {"_id": f"g{n}", "queue": "q", "state": state}

    batch, kept = [], {}
    for n in range(CLEAR_GROUP + 7):  # two groups
        state = [schema.PENDING, schema.EXPIRED, schema.DONE][n % 3]
        written = message_event(schema.WRITTEN, message(n, state), now)
        later = message_event(schema.EXPIRED_EVENT if state == schema.EXPIRED else schema.CLAIMED,
                              message(n, state), now, None if state == schema.EXPIRED else "t")
        # Every fourth message also holds an event its publisher has not sent yet.
        waiting = n % 4 == 0
        db[schema.MESSAGES].insert_one({**message(n, state),
                                        "outbox": [written, later] if waiting else [written]})
        batch.append(Outbox(f"g{n}", state, [written]))
        if waiting:
            kept[f"g{n}"] = [later["id"]]
        elif state == schema.PENDING:
            kept[f"g{n}"] = []

    publish_outboxes(db, batch)

    left = {m["_id"]: [e["id"] for e in m["outbox"]] for m in db[schema.MESSAGES].find()}
    assert left == kept
    assert db[schema.EVENTS].count_documents({}) == len(batch)


def test_flush_publishes_at_once_instead_of_letting_a_batch_gather(db, monkeypatch):
    """Someone waiting in flush() must not wait for the publisher's pause between batches
    (it made up a tenth of write_many + flush, issue 16)."""
    from mopq import publisher

    monkeypatch.setattr(publisher, "GATHER_SECONDS", 60.0)
    queue = Queue("gather", db=db)
    queue.write_many([{"n": n} for n in range(3)])
    assert flush(10)
    queue.write_many([{"n": n} for n in range(3, 5)])  # the publisher waits idle now
    assert flush(10)
    assert db[schema.EVENTS].count_documents({"kind": "written"}) == 5


def test_events_after_a_quiet_spell_go_out_at_once_and_batches_stay_apart(db, monkeypatch):
    """The publisher's pause bounds how often it publishes; it used to delay the first
    event after a quiet spell by the whole pause too (issue 16: seeing a task done)."""
    from mopq import publisher

    monkeypatch.setattr(publisher, "GATHER_SECONDS", 1.0)
    queue = Queue("quiet", db=db)
    events = db[schema.EVENTS]

    def published(message_id: object) -> object:
        return events.find_one({"message": str(message_id)})

    first = queue.write({"n": 0})
    wait_until(lambda: published(first), timeout=5.0, interval=0.01,
               message="the first event (the publisher's thread starts with it)")
    time.sleep(1.1)  # the quiet spell under test: longer than the pause
    after_quiet = queue.write({"n": 1})
    wait_until(lambda: published(after_quiet), timeout=0.5, interval=0.01,
               message="the event after a quiet spell, well before the 1 s pause")
    seen = time.monotonic()
    following = queue.write({"n": 2})
    time.sleep(0.3)  # within 1 s of the last batch: this one gathers
    if time.monotonic() - seen < 0.8:
        assert published(following) is None
    wait_until(lambda: published(following), timeout=5.0, message="the next batch")


def test_the_stored_written_entry_expands_to_the_full_event():
    """write_many stores a short "written" entry; the business log must get the same event."""
    from bson import ObjectId

    from mopq.events import expanded, message_event, written_entry

    message = {"_id": ObjectId(), "queue": "q", "routing_key": "rk", "activity": "a1"}
    at = dt.datetime.now(dt.UTC)
    full = message_event(schema.WRITTEN, message, at, delayed=True)
    entry = written_entry(message["_id"], at, True)
    assert entry == {"id": full["id"], "kind": "written", "at": at, "delayed": True}
    assert expanded(entry, message) == full


def test_any_client_a_user_passes_works(engine_uri, db_name):
    """A client made without tz_aware=True used to crash the first read with
    "can't compare offset-naive and offset-aware datetimes"; read_stats too."""
    from pymongo import MongoClient

    from mopq import flush
    from mopq.collectors import Collector
    from mopq.collectors.stats import read_stats

    client = MongoClient(engine_uri)  # naive datetimes, the server's default write concern
    try:
        db = client[db_name]
        queue = Queue("naive", db=db, max_attempts=1)
        queue.write_many([{"n": 1}, {"n": 2}])
        queue.write({"n": 3}, delay=60)
        first, second = queue.read(limit=2)
        first.delete()
        assert second.fail("boom") == "dead"
        assert queue.db.write_concern.document == {"w": "majority", "j": True}
        assert db.codec_options.tz_aware is False  # the caller's own handle is left alone
        assert flush(10)
        collector = Collector(db=db, monitor=False)
        collector.partitions.rebalance({})
        while collector.step().applied:
            pass
        row = read_stats(db)["queues"]["naive"]
        assert (row["written"], row["done"], row["dead"], row["delayed"]) == (3, 1, 1, 1)
    finally:
        client.close()


def test_an_acknowledgement_after_the_lease_ran_out_is_refused(db_name, db):
    """Even when nobody claimed the message since (make chaos saw such late acks accepted)."""
    queue = Queue("late")
    queue.write({"n": 1})
    [message] = queue.read(visibility_timeout=0.3)
    deadline = message.lease_expires_at.timestamp() + 0.05
    while time.time() < deadline:
        time.sleep(0.02)
    for act in (message.delete, lambda: message.fail("late"), message.extend):
        with pytest.raises(LeaseLost):
            act()
    stored = db.messages.find_one({"_id": message.id})
    assert stored["state"] == "inflight" and stored["lease_token"] == message.lease_token
    [again] = queue.read(visibility_timeout=30)
    assert again.id == message.id and again.attempts == 2
    again.delete()


def test_the_database_records_its_format_and_a_newer_one_is_refused(db_name, db, engine_uri):
    from pymongo import MongoClient

    from mopq.schema import FORMAT_VERSION, FormatMismatch, ensure_indexes

    Queue("formats").write({"n": 1})
    assert db.settings.find_one({"_id": "format"})["version"] == FORMAT_VERSION
    db.settings.update_one({"_id": "format"}, {"$set": {"version": FORMAT_VERSION + 1}})
    with MongoClient(engine_uri, tz_aware=True) as other:  # a process that has not checked yet
        with pytest.raises(FormatMismatch, match="Upgrade mopq"):
            ensure_indexes(other[db_name])


def test_an_older_format_is_raised_so_that_older_clients_refuse_the_database(db_name, db,
                                                                             engine_uri):
    """A version 1 client would miscount write intents' events (docs/FORMAT.md §12)."""
    from pymongo import MongoClient

    from mopq.schema import FORMAT_VERSION, check_format

    db.settings.insert_one({"_id": "format", "version": FORMAT_VERSION - 1})
    with MongoClient(engine_uri, tz_aware=True) as other:
        assert check_format(other[db_name]) == FORMAT_VERSION
    assert db.settings.find_one({"_id": "format"})["version"] == FORMAT_VERSION
