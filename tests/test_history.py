"""History: acknowledged messages kept with their result, found, handed back, then forgotten.

Real engine, real Worker and collector. An acknowledged message moves from
``messages`` (where claims look) to ``history`` once its events are
published; its result comes back to the writer through ``Written.result``;
search and the API find it; the monitor forgets it after the retention, and
removes (and counts as removed) dead messages after theirs.
"""

from __future__ import annotations

import datetime as dt

import pytest

from mopq import (
    InvalidInput,
    MessageDead,
    MessageNotFound,
    Queue,
    ResultTimeout,
    Worker,
    flush,
    schema,
)
from mopq.collectors.monitor import Monitor
from mopq.collectors.settings import Retention
from mopq.collectors.stats import read_stats
from mopq.connection import get_database
from mopq.dashboard import queries
from tests.helpers import drain_log, wait_until


def test_a_handlers_result_comes_back_to_the_writer(db_name, db):
    queue = Queue("sums")
    written = queue.write({"a": 2, "b": 3})
    worker = Worker(["sums"], lambda m: {"sum": m.body["a"] + m.body["b"]}, poll_interval=0.1)
    worker.start()
    try:
        assert written.result(timeout=20) == {"sum": 5}
    finally:
        worker.stop(timeout=30)
    assert flush(10)
    wait_until(lambda: db[schema.MESSAGES].find_one({"_id": written}) is None,
               message="the finished message to leave messages")
    kept = db[schema.HISTORY].find_one({"_id": written})
    assert kept["result"] == {"sum": 5} and kept["attempts"] == 1
    assert kept["worker"] == worker.identity and kept["duration"] >= 0
    assert kept["acked_lease"]


def test_delete_keeps_a_result_and_refuses_one_too_large(db_name, db):
    queue = Queue("manual")
    written = queue.write({"n": 1})
    [message] = queue.read()
    with pytest.raises(InvalidInput, match="at most 65536"):
        message.delete(result="x" * 70_000)
    message.delete(result=[1, "two"])
    assert written.result(timeout=10) == [1, "two"]


def test_result_says_dead_gone_or_not_yet(db_name, db):
    queue = Queue("outcomes", max_attempts=1)
    doomed = queue.write({"n": 1})
    [message] = queue.read()
    message.fail("no luck")
    with pytest.raises(MessageDead, match="no luck") as dead:
        doomed.result(timeout=5)
    assert dead.value.last_error == "no luck"
    waiting = queue.write({"n": 2}, delay=600)
    with pytest.raises(ResultTimeout, match="still pending"):
        waiting.result(timeout=0.2)
    with pytest.raises(MessageNotFound):
        queue.result("65f0c0ffee00000000000001", timeout=1)


def test_finished_messages_are_found_until_their_retention_ends(db_name, db):
    from mopq.search import declare_search_field

    declare_search_field("orders", "order_id")
    queue = Queue("orders")
    written = queue.write({"order_id": 1000})
    [message] = queue.read()
    message.delete(result="shipped")
    assert flush(10)
    found = queries.search(db, field="order_id", value=[1000], queue="orders")
    assert [m["id"] for m in found] == [str(written)] and found[0]["state"] == "done"
    assert found[0]["result"] == "shipped"
    assert queries.message(db, str(written))["state"] == "done"
    assert [m["id"] for m in queries.recent_finished(db, "orders")] == [str(written)]

    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    Monitor(get_database(), retention=Retention(finished=86400, dead=30 * 86400)).run_once(later)
    assert queries.search(db, field="order_id", value=[1000], queue="orders") == []
    assert db[schema.HISTORY].count_documents({}) == 0


def test_a_message_finishing_during_a_search_is_found_once(db_name, db):
    """Between its copy into history and its removal from messages, a finished
    message is in both: search shows it once (it showed it twice)."""
    from mopq import history
    from mopq.search import declare_search_field

    declare_search_field("orders", "order_id")
    written = Queue("orders").write({"order_id": 1000})
    db[schema.MESSAGES].update_one({"_id": written}, {"$set": {
        "state": schema.DONE, "done_at": dt.datetime.now(dt.UTC)}})
    assert history.archive(db, [written]) == 1  # copied; not yet removed from messages
    found = queries.search(db, field="order_id", value=[1000], queue="orders")
    assert [m["id"] for m in found] == [str(written)]


def test_retention_works_in_batches_and_counts_dead_removals(db_name, db, monkeypatch):
    from mopq import history

    monkeypatch.setattr(history, "RETENTION_BATCH", 3)
    queue = Queue("old", max_attempts=1)
    queue.write_many([{"n": n} for n in range(7)])
    for message in queue.read(limit=4):
        message.delete()
    for message in queue.read(limit=3):
        message.fail("old failure")
    assert flush(10)
    assert db[schema.HISTORY].count_documents({}) == 4
    monitor = Monitor(get_database(), retention=Retention(finished=60, dead=60))
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    monitor.enforce_retention(later)
    assert db[schema.HISTORY].count_documents({}) == 1  # one batch of 3 forgotten
    assert db[schema.MESSAGES].count_documents({"state": "dead"}) == 0  # 3 dead, one batch
    monitor.enforce_retention(later)
    assert db[schema.HISTORY].count_documents({}) == 0
    drain_log(db)
    row = read_stats(db)["queues"]["old"]
    assert (row["written"], row["done"], row["removed"], row["dead"]) == (7, 4, 3, 0)
