"""A large write_many is counted by its write intent: exactly, and through a writer's crash.

Every test runs on the real engine. A writer that "dies" is one whose batch
never reaches its publisher (the in-memory hand-over is dropped), which is
what a kill between the insert and the publication leaves in the database.
"""

from __future__ import annotations

import datetime as dt

import pytest

from mopq import Envelope, Queue, flush, maintenance, schema, write_intents
from mopq.clock import utcnow
from mopq.collectors import Collector
from mopq.collectors.stats import read_stats
from mopq.publisher import publish_batch
from tests.helpers import conserved, drain_log, wait_until

N = 2 * write_intents.MIN_MESSAGES


@pytest.fixture
def queue(db_name) -> Queue:
    return Queue("orders")


@pytest.fixture
def unpublished(queue, monkeypatch) -> list[write_intents.WrittenBatch]:
    """The batches the writer would publish, kept from its publisher (a writer that died)."""
    kept: list[write_intents.WrittenBatch] = []
    monkeypatch.setattr(queue.publisher, "add_batch", kept.append)
    return kept


def after_grace() -> dt.datetime:
    return utcnow() + dt.timedelta(seconds=write_intents.GRACE_SECONDS + 1)


@pytest.fixture
def stats(db):
    """The queue's stats row once every event is applied (one collector for the test)."""
    collector = Collector(db=db, monitor=False)

    def read() -> dict:
        drain_log(db, collector)
        return read_stats(db)["queues"]["orders"]
    return read


def test_a_large_batch_is_one_event_per_group_and_counted_exactly(queue, db, stats):
    bodies = [{"n": i} for i in range(N)]
    bodies[:10] = [Envelope({"n": i}, routing_key="eu") for i in range(10)]
    bodies[10:15] = [Envelope({"n": i}, delay=60) for i in range(5)]
    queue.write_many(bodies)
    assert flush(10)
    events = list(db[schema.EVENTS].find())
    assert sorted((e["routing_key"] or "", e["delayed"], e["count"]) for e in events) == [
        ("", False, N - 15), ("", True, 5), ("eu", False, 10)]
    assert db[schema.WRITE_INTENTS].count_documents({}) == 0
    assert db[schema.MESSAGES].count_documents({"outbox.0": {"$exists": True}}) == 0
    row = stats()
    assert (row["written"], row["pending"], row["delayed"]) == (N, N - 5, 5)
    assert conserved(row)


def test_a_small_batch_keeps_one_event_per_message(queue, db):
    queue.write_many([{"n": i} for i in range(write_intents.MIN_MESSAGES - 1)])
    assert flush(10)
    assert db[schema.EVENTS].count_documents({"count": {"$exists": True}}) == 0
    assert db[schema.EVENTS].count_documents({}) == write_intents.MIN_MESSAGES - 1
    assert db[schema.WRITE_INTENTS].count_documents({}) == 0


def test_a_writer_that_died_is_counted_message_by_message_even_for_finished_ones(
        queue, db, stats, unpublished):
    queue.write_many([{"n": i} for i in range(N)])
    taken = queue.read(limit=20)
    for message in taken[:10]:
        message.delete()
    assert flush(10)
    # The intent may still count them: finished, but not deleted.
    assert db[schema.MESSAGES].count_documents({"state": schema.DONE}) == 10

    assert maintenance.sweep(db, after_grace()).counted_one_by_one == N
    assert db[schema.MESSAGES].count_documents({"batch": {"$exists": True}}) == 0
    assert maintenance.sweep(db, after_grace()).counted_one_by_one == 0
    assert db[schema.MESSAGES].count_documents({"state": schema.DONE}) == 0
    assert db[schema.HISTORY].count_documents({}) == 10
    row = stats()
    assert (row["written"], row["done"], row["inflight"], row["pending"]) == (N, 10, 10, N - 20)
    assert conserved(row)


def test_a_late_writer_publishes_nothing_once_the_sweep_took_its_intent(
        queue, db, stats, unpublished):
    queue.write_many([{"n": i} for i in range(N)])
    maintenance.sweep(db, after_grace())
    publish_batch(db, unpublished[0])
    assert stats()["written"] == N


def test_messages_landing_after_the_sweep_took_their_intent_are_still_counted(
        queue, db, stats, unpublished):
    """An insert slower than the grace: the sweep's later passes find what lands."""
    queue.write_many([{"n": i} for i in range(N)])
    intent_id = unpublished[0].intent_id
    late = db[schema.MESSAGES].find_one_and_delete({})
    maintenance.sweep(db, after_grace())
    db[schema.MESSAGES].insert_one(late)
    assert maintenance.sweep(db, after_grace()).counted_one_by_one == 1
    assert db[schema.WRITE_INTENTS].find_one({"_id": intent_id})["state"] == write_intents.SWEPT
    assert stats()["written"] == N


def test_an_intent_its_writer_left_publishing_is_finished_by_the_sweep(
        queue, db, stats, unpublished):
    queue.write_many([{"n": i} for i in range(N)])
    batch = unpublished[0]
    assert write_intents.take(db, batch)  # then the writer died
    maintenance.sweep(db, after_grace())
    assert db[schema.WRITE_INTENTS].count_documents({}) == 0
    assert stats()["written"] == N
    # The writer's own retry after all: the same event ids, flagged, so not counted again.
    db[schema.WRITE_INTENTS].insert_one({"_id": batch.intent_id, "state": "publishing",
                                         "queue": "orders", "at": batch.at})
    publish_batch(db, batch._replace(republished=True))
    assert stats()["written"] == N


def test_finished_messages_held_by_an_intent_go_once_it_is_published(
        queue, db, stats, unpublished):
    queue.write_many([{"n": i} for i in range(N)])
    for message in queue.read(limit=5):
        message.delete()
    assert flush(10)
    assert db[schema.MESSAGES].count_documents({"state": schema.DONE}) == 5
    publish_batch(db, unpublished[0])
    wait_until(lambda: db[schema.MESSAGES].count_documents({"state": schema.DONE}) == 0,
               timeout=10)
    assert db[schema.HISTORY].count_documents({}) == 5
    row = stats()
    assert (row["written"], row["done"], row["pending"]) == (N, 5, N - 5)
