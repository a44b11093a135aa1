"""emit() never blocks or raises; with the engine down events wait, bounded, and arrive later."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from pymongo import MongoClient

from mopq import emit
from mopq.engine import Engine
from mopq.events import business_event
from mopq.publisher import DROPPED_EVENT_NAME, Publisher, publisher_for
from tests.helpers import free_port, wait_until


def test_emit_records_a_business_event(db_name, db):
    assert emit("order.paid", value=12.5, tags={"region": "cn"})
    assert publisher_for(_mopq_database(db)).flush(10)
    event = db.events.find_one({"kind": "business"})
    assert event["name"] == "order.paid" and event["value"] == 12.5
    assert event["tags"] == {"region": "cn"}


def _mopq_database(db):  # emit() publishes through the client mopq itself shares
    from mopq.connection import get_database
    return get_database(database=db.name)


@pytest.mark.parametrize("args", [("", 1, {}), ("x", "1", {}), ("x", float("nan"), {}),
                                  ("x", 1, {"a": 1}), ("$where", 1, {}), ("x", 1, "tags"),
                                  ("x\ud800", 1, {}), ("x", 1, {"region": "\udc00"})])
def test_emit_refuses_bad_input_without_raising(db_name, db, args):
    name, value, tags = args
    assert emit(name, value, tags) is False
    assert db.events.count_documents({}) == 0


def test_emit_returns_at_once_while_the_engine_is_down_and_delivers_later():
    port = free_port()
    engine = Engine(port=port)
    uri = engine.start()
    emit("warmup", uri=uri, database="emitdown")
    engine.stop()
    try:
        slowest = 0.0
        for i in range(200):
            started = time.perf_counter()
            assert emit("order.paid", value=i, uri=uri, database="emitdown")
            slowest = max(slowest, time.perf_counter() - started)
        assert slowest < 0.05, f"emit blocked for {slowest:.3f} s"
        engine = Engine(port=port)
        engine.start()
        client = MongoClient(uri)
        wait_until(lambda: client.emitdown.events.count_documents({"name": "order.paid"}) == 200,
                   timeout=40, message="buffered events to arrive")
        total = sum(e["value"] for e in client.emitdown.events.find({"name": "order.paid"}))
        assert total == sum(range(200))
        client.close()
    finally:
        engine.stop()


def test_a_full_buffer_drops_the_oldest_and_reports_the_drop():
    port = free_port()
    engine = Engine(port=port)
    uri = engine.start()
    client = MongoClient(uri, serverSelectionTimeoutMS=500)
    publisher = Publisher(client.dropdb, max_buffered=10)
    engine.stop()
    try:
        now = dt.datetime.now(dt.UTC)
        for i in range(15):
            publisher.add_business(business_event("tick", i, {}, now))
        # A batch the publisher holds while it retries comes back to the buffer after
        # each failed attempt; once it has, all five oldest are gone, whatever the timing.
        wait_until(lambda: publisher.dropped == 5, timeout=20,
                   message="the oldest five to be dropped while the engine is down")
        engine = Engine(port=port)
        engine.start()
        assert publisher.flush(40)
        assert publisher.dropped == 5
        values = sorted(e["value"] for e in client.dropdb.events.find({"name": "tick"}))
        assert values == list(range(5, 15))  # the oldest five were dropped
        report = client.dropdb.events.find_one({"name": DROPPED_EVENT_NAME})
        assert report is not None and report["value"] == 5
    finally:
        client.close()
        engine.stop()


def test_a_closed_client_stops_its_publisher_with_a_clear_error(engine_uri, db_name, caplog):
    """Closing a client with events still buffered: said once, counted, and flush() returns."""
    from mopq import Queue

    client = MongoClient(engine_uri, tz_aware=True)
    database = client[db_name]
    Queue("closing", db=database).write({"n": 1})
    publisher = publisher_for(database)
    client.close()
    publisher.add_business(business_event("late", 1, {}, dt.datetime.now(dt.UTC)))
    started = time.monotonic()
    assert wait_until(lambda: publisher.last_error and publisher.pending() == 0, timeout=10,
                      message="the publisher to give up on the closed client")
    assert publisher.flush(5) and time.monotonic() - started < 10
    assert publisher.dropped >= 1
    errors = [r.getMessage() for r in caplog.records if r.name == "mopq.publisher"]
    assert any("was closed" in message and "mopq.flush()" in message for message in errors)
    assert publisher_for(database) is not publisher  # a later use starts afresh
    dropped = publisher.dropped
    publisher.add_business(business_event("later", 1, {}, dt.datetime.now(dt.UTC)))
    assert publisher.dropped == dropped + 1 and publisher.pending() == 0
