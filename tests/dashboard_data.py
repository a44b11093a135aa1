"""Traffic the dashboard tests look at, made with the real library on the real engine.

Why one helper: the page, browser and live tests all need a database where
every page has something to show (queues, a dead message whose body and
error are hostile HTML, a declared search field, a worker, an activity, a
business event, a schedule), written the way services write it and counted
by a real collector.
"""

from __future__ import annotations

from dataclasses import dataclass

from pymongo.database import Database

from mopq import Envelope, Queue, Worker, emit, flush, schema
from mopq.collectors import Collector
from mopq.schedules import Schedule, define
from mopq.search import declare_search_field
from tests.helpers import wait_until

HOSTILE_BODY = "<script>alert(1)</script>"
HOSTILE_ERROR = "<img src=x onerror=alert(1)>"


@dataclass
class Traffic:
    dead_id: str
    pending_id: str
    worker_id: str


def make_dead(uri: str, database: str, queue: str, body: dict, error: str) -> str:
    """Write one message and fail its only attempt, so it is dead."""
    q = Queue(queue, uri=uri, database=database, max_attempts=1)
    message_id = q.write(body)
    for message in q.read(visibility_timeout=30, limit=10):
        if message.id == message_id:
            assert message.fail(error) == schema.DEAD
    return str(message_id)


def drain_events(db: Database, uri: str, database: str, timeout: float = 30.0) -> None:
    """Run a collector until the business log is empty (every event counted)."""
    flush()
    collector = Collector(uri, database, monitor=False, poll_interval=0.05).start()
    try:
        wait_until(lambda: db[schema.EVENTS].count_documents({}) == 0, timeout=timeout,
                   message="the collector to apply every event")
    finally:
        collector.stop(5.0)


def populate(db: Database, uri: str, database: str) -> Traffic:
    """Queues with pending, delayed and dead messages, a worker, an activity, events."""
    declare_search_field("orders", "order_id", db=db)
    # Defined only (no scheduler runs here), so it writes nothing the other pages count.
    define(db, Schedule("hourly-digest", "reports", {"kind": "digest", "note": HOSTILE_BODY},
                        cron="0 * * * *", timezone="Asia/Tokyo"))
    orders = Queue("orders", uri=uri, database=database)
    pending_id = orders.write({"order_id": 41, "amount": 12.5}, priority=5)
    orders.write({"order_id": 42, "amount": 1234567.0})
    dead_id = make_dead(uri, database, "orders",
                        {"order_id": 7, "note": HOSTILE_BODY}, HOSTILE_ERROR)
    emails = Queue("emails", uri=uri, database=database)
    emails.write({"to": "a@example.com"})
    emails.write({"to": "b@example.com"}, delay=3600)
    Queue("reports", uri=uri, database=database).write_many(
        [Envelope({"page": n}, activity="nightly-import") for n in range(5)])

    worker = Worker(["thumbs"], lambda message: None, uri=uri, database=database,
                    heartbeat_interval=0.2, poll_interval=0.05)
    Queue("thumbs", uri=uri, database=database).write({"image": "cat.png"})
    worker.start()
    wait_until(lambda: worker.processed >= 1, message="the worker to handle a message")
    worker.stop(timeout=10)

    emit("order.paid", value=12.5, tags={"region": "eu"}, uri=uri, database=database)
    emit("signup", uri=uri, database=database)
    emit("http/requests", value=3, uri=uri, database=database)  # a slash in the name
    drain_events(db, uri, database)
    return Traffic(dead_id=dead_id, pending_id=str(pending_id), worker_id=worker.identity)
