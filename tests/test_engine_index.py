"""The engine's ordered indexes (engine/OrderedIndex.java, issue 16) change speed, not results.

Every query here runs on two engines started for this module: ours, which walks
a non-unique index for a sorted query on it (mopq's claim read), and the plain
engine (``MOPQ_ENGINE_PLAIN_INDEXES=1``: mongo-java-server's own empty indexes,
so every such query scans and sorts). The same writes go to both, and every
query must return the same documents in the same order; where the data allows,
a brute-force evaluation in Python must agree too. H2 storage is checked across
a restart, when the index is rebuilt from the file.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import shutil
import signal
import threading
import time
from collections.abc import Iterator

import bson
import pytest
from bson import Decimal128, Int64, ObjectId
from pymongo import ASCENDING, DESCENDING, MongoClient, ReturnDocument, UpdateOne
from pymongo.errors import DuplicateKeyError
from pymongo.results import (
    BulkWriteResult,
    DeleteResult,
    InsertManyResult,
    InsertOneResult,
    UpdateResult,
)

from mopq import engine as engine_module
from mopq import schema
from mopq.engine import Engine
from mopq.queue import CANDIDATE_FIELDS

pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="Java is not installed")

PLAIN = "MOPQ_ENGINE_PLAIN_INDEXES"
CLAIM_SORT = [("priority", DESCENDING), ("_id", ASCENDING)]
NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
QUEUES = ("q1", "q2", "q3")
STATES = ("pending", "inflight", "done", "dead")


def start_engine(plain: bool, data=None) -> Engine:
    engine = Engine(data=data, env={PLAIN: "1" if plain else "0"})
    engine.start()
    return engine


@pytest.fixture(scope="module")
def engines() -> Iterator[tuple[str, str]]:
    ordered, plain = start_engine(False), start_engine(True)
    try:
        yield ordered.uri, plain.uri
    finally:
        ordered.stop()
        plain.stop()


class Pair:
    """One database on each engine; every call goes to both and must come back the same."""

    def __init__(self, ordered_uri: str, plain_uri: str, name: str) -> None:
        self.clients = [MongoClient(uri, tz_aware=True) for uri in (ordered_uri, plain_uri)]
        self.dbs = [client[name] for client in self.clients]
        self.compared = 0

    def close(self, drop: bool = True) -> None:
        for client, db in zip(self.clients, self.dbs, strict=True):
            if drop:
                client.drop_database(db.name)
            client.close()

    def write(self, method: str, *args, collection: str = "messages", **kwargs) -> object:
        """``<collection>.<method>(*args, **kwargs)`` on both; what it returned, alike on both."""
        outcomes = []
        for db in self.dbs:
            try:
                outcomes.append(outcome(getattr(db[collection], method)(*args, **kwargs)))
            except DuplicateKeyError:
                outcomes.append("duplicate key")
        assert outcomes[0] == outcomes[1], (method, args, kwargs)
        return outcomes[0]

    def find(self, query: dict, sort: list, limit: int = 0, skip: int = 0,
             projection: dict | None = None, collection: str = "messages",
             batch_size: int = 0) -> list[dict]:
        found = [list(db[collection].find(query, projection).sort(sort).skip(skip).limit(limit)
                      .batch_size(batch_size))
                 for db in self.dbs]
        # As BSON: field order and number types count too, and NaN equals itself.
        assert [bson.encode(d) for d in found[0]] == [bson.encode(d) for d in found[1]], (
            f"{query} sorted by {sort}, limit {limit}, skip {skip}")
        self.compared += 1
        return found[0]


def outcome(result: object) -> object:
    """A write's result as something to compare."""
    if isinstance(result, UpdateResult):
        return result.matched_count, result.modified_count, result.upserted_id
    if isinstance(result, DeleteResult):
        return result.deleted_count
    if isinstance(result, InsertManyResult):
        return result.inserted_ids
    if isinstance(result, InsertOneResult):
        return result.inserted_id
    if isinstance(result, BulkWriteResult):
        return result.bulk_api_result
    return result


@pytest.fixture
def pair(engines) -> Iterator[Pair]:
    both = Pair(*engines, f"ix_{ObjectId()}")
    for db in both.dbs:
        schema.create_missing_indexes(db.messages, list(schema.INDEXES[0].indexes))
    yield both
    both.close()


def message(rnd: random.Random, **fields) -> dict:
    document = {"_id": ObjectId(), "queue": rnd.choice(QUEUES), "state": rnd.choice(STATES),
                "priority": rnd.choice((0, 0, 0, 1, 5, -3)),
                "visible_at": NOW + dt.timedelta(seconds=rnd.randint(-60, 60)),
                "routing_key": rnd.choice((None, "r1", "r2")),
                "expire_at": schema.NEVER, "body": {"n": rnd.randint(0, 10**6)}}
    document.update(fields)
    return document


def candidate_queries() -> Iterator[tuple[dict, list, int, int]]:
    """Queue.read's candidate read in every form, then other sorted queries on mopq's indexes."""
    for queue in (*QUEUES, "none"):
        for state in ({"$in": ["pending", "inflight"]}, "pending", {"$eq": "inflight"},
                      {"$in": ["inflight", "pending", "pending"]}):
            for routing_key in (None, "r1"):
                query = {"queue": queue, "state": state, "visible_at": {"$lte": NOW}}
                if routing_key is not None:
                    query["routing_key"] = routing_key
                for limit in (1, 5, 128, 0):
                    yield query, CLAIM_SORT, limit, 0
                yield query, CLAIM_SORT, 3, 2
    yield {"queue": {"$in": ["q1", "q2"]}, "state": {"$in": ["pending", "dead"]}}, CLAIM_SORT, 40, 0
    yield {"queue": "q1", "state": "pending"}, [("visible_at", ASCENDING)], 10, 0
    yield {"queue": "q2", "state": {"$in": ["pending", "inflight"]}}, [("visible_at", 1)], 0, 4
    # Every key pinned but the last (an integer, and a 64-bit integer of the same value).
    yield {"queue": "q1", "state": "pending", "priority": 0}, [("_id", ASCENDING)], 0, 0
    yield ({"queue": "q3", "state": {"$in": ["pending", "dead"]}, "priority": {"$eq": Int64(0)}},
           [("_id", ASCENDING)], 7, 0)
    # Nothing pinned: the sort is the whole index, the walk covers every document.
    yield ({"routing_key": "r1"}, [("queue", ASCENDING), ("state", ASCENDING),
                                   ("visible_at", ASCENDING)], 25, 0)
    # Shapes the index does not answer (the engine scans, as before): same results.
    yield {"queue": "q1", "state": "pending"}, [("priority", ASCENDING), ("_id", DESCENDING)], 10, 0
    yield {"queue": "q1", "state": "pending"}, [("priority", DESCENDING)], 10, 0
    yield {"queue": "q1", "state": {"$nin": ["done"]}}, CLAIM_SORT, 10, 0
    yield {"queue": {"$regex": "^q"}, "state": "pending"}, CLAIM_SORT, 10, 0
    yield {"state": "pending"}, CLAIM_SORT, 10, 0
    yield {"queue": "q1", "state": {"$in": [None, "pending"]}}, CLAIM_SORT, 10, 0
    yield {"queue": "q1", "state": {"$in": []}}, CLAIM_SORT, 10, 0
    yield {"queue": "q1", "state": {"$in": ["pending"], "$ne": "dead"}}, CLAIM_SORT, 10, 0
    yield {"queue": {"$in": [f"q{i}" for i in range(70)]}, "state": "pending"}, CLAIM_SORT, 10, 0


def check(pair: Pair, brute: bool = True) -> None:
    """Every candidate query gives the same on both engines (and by brute force, if asked)."""
    everything = pair.dbs[1].messages.find({}) if brute else []
    documents = list(everything)
    for query, sort, limit, skip in candidate_queries():
        found = pair.find(query, sort, limit, skip, CANDIDATE_FIELDS)
        if brute and sort is CLAIM_SORT and skip == 0 and isinstance(query.get("queue"), str):
            expected = [d for d in documents if matches(d, query)]
            expected.sort(key=lambda d: (-d["priority"], d["_id"]))
            expected = expected[:limit] if limit else expected
            assert [d["_id"] for d in found] == [d["_id"] for d in expected], query


def matches(document: dict, query: dict) -> bool:
    """A filter of candidate_queries evaluated in Python (equality, $eq, $in, $nin, $lte)."""
    for field, condition in query.items():
        value = document.get(field)
        if isinstance(condition, dict):
            if "$in" in condition and value not in condition["$in"]:
                return False
            if "$nin" in condition and value in condition["$nin"]:
                return False
            if "$eq" in condition and value != condition["$eq"]:
                return False
            if "$lte" in condition and not (value is not None and value <= condition["$lte"]):
                return False
        elif value != condition:
            return False
    return True


def test_claim_reads_match_the_plain_engine_through_every_kind_of_write(pair):
    rnd = random.Random(16)
    documents = [message(rnd) for _ in range(400)]
    # Ties in priority, with ids inserted in descending order.
    documents += [message(rnd, queue="q1", state="pending", priority=2,
                          _id=ObjectId(f"{0x6500_0000 + i:08x}{0:016x}")) for i in range(20, 0, -1)]
    pair.write("insert_many", documents)
    check(pair)

    ids = [d["_id"] for d in documents]
    pair.write("delete_many", {"_id": {"$in": ids[:50]}})
    # New documents take the storage slots the deleted ones left.
    pair.write("insert_many", [message(rnd, queue="q1", state="pending") for _ in range(30)])
    check(pair)

    # Updates that move documents in the index (state, priority, queue) and one that does not.
    changes = ({"state": "inflight", "visible_at": NOW + dt.timedelta(seconds=30)},
               {"priority": 3}, {"state": "pending"}, {"queue": "q2"}, {"body": {"touched": 1}})
    for i, message_id in enumerate(ids[50:200]):
        pair.write("update_one", {"_id": message_id}, {"$set": changes[i % len(changes)]})
    check(pair)
    pair.write("update_many", {"queue": "q3", "state": "inflight"},
               {"$set": {"state": "pending"}, "$inc": {"priority": 1}})
    pair.write("replace_one", {"_id": ids[300]}, {"queue": "q1", "state": "pending", "priority": 9,
                                                  "visible_at": NOW, "routing_key": None})
    pair.write("find_one_and_delete", {"_id": ids[301]})
    check(pair)

    # A sorted find_one_and_update (a claim in one step, as a hand-written queue does it)
    # is answered from the index too: each call must take the same document.
    for _ in range(25):
        pair.write("find_one_and_update",
                   {"queue": "q1", "state": "pending", "visible_at": {"$lte": NOW}},
                   {"$set": {"state": "inflight"}}, sort=CLAIM_SORT, projection={"_id": 1},
                   return_document=ReturnDocument.AFTER)
    # Upserts, by _id and with the indexed fields in the filter.
    pair.write("update_one", {"_id": ObjectId("0123456789ab0123456789ab")},
               {"$set": {"queue": "q1", "state": "pending", "priority": 3, "visible_at": NOW,
                         "routing_key": "r1"}}, upsert=True)
    pair.write("update_one", {"queue": "q2", "state": "pending", "priority": 4,
                              "_id": ObjectId("0123456789ab0123456789ac")},
               {"$set": {"visible_at": NOW}}, upsert=True)
    # An update a unique index refuses changes nothing, in either engine.
    pair.write("update_one", {"_id": ids[310]}, {"$set": {"dedupe": "k"}})
    refused = pair.write("update_one", {"_id": ids[311]}, {"$set": {"dedupe": "k", "priority": 8}})
    assert refused == "duplicate key"
    check(pair)

    pair.write("delete_many", {"queue": "q1"})
    check(pair)
    assert pair.compared > 500


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_writes_then_the_same_reads(pair, seed):
    """Hundreds of random inserts, updates, replaces and deletes, compared every 100."""
    rnd = random.Random(seed)
    ids: list[ObjectId] = []
    for step in range(600):
        roll = rnd.random()
        if roll < 0.4 or not ids:
            document = message(rnd)
            ids.append(document["_id"])
            pair.write("insert_one", document)
        elif roll < 0.7:
            fields = {"state": rnd.choice(STATES), "priority": rnd.choice((0, 1, 2, -1)),
                      "visible_at": NOW + dt.timedelta(seconds=rnd.randint(-60, 60)),
                      "queue": rnd.choice(QUEUES), "routing_key": rnd.choice((None, "r1"))}
            change = {"$set": dict(rnd.sample(sorted(fields.items()), rnd.randint(1, 3)))}
            how = rnd.choice(("update_one", "find_one_and_update", "update_many"))
            if how == "update_many":
                pair.write(how, {"queue": rnd.choice(QUEUES), "state": "inflight"}, change)
            else:
                pair.write(how, {"_id": rnd.choice(ids)}, change)
        elif roll < 0.8:
            pair.write("replace_one", {"_id": rnd.choice(ids)},
                       {"queue": "q1", "state": "pending", "priority": rnd.randint(-2, 2),
                        "visible_at": NOW, "routing_key": None})
        else:
            pair.write("delete_one", {"_id": ids.pop(rnd.randrange(len(ids)))})
        if step % 100 == 99:
            check(pair)


def test_values_of_other_types_sort_as_the_plain_engine_sorts_them(pair):
    """Missing, null, doubles, longs, strings, booleans and dates as priority or _id: the
    index orders them as the engine's comparator does. Arrays, subdocuments and decimals
    it cannot order: while one is stored, the engine answers by scanning, as before."""
    rnd = random.Random(7)
    odd = [1.5, -0.0, 2**40, 2.0, "high", None, True, NOW, -1, 3, Int64(3), 3.0, 2**53, -2.5e9]
    documents = [message(rnd, queue="q1", state="pending", priority=value) for value in odd]
    documents += [message(rnd, queue="q1", state="pending", _id=value)
                  for value in (7, 7.5, "seven", NOW, 2**35, Int64(8))]
    missing = message(rnd, queue="q1", state="pending")
    del missing["priority"]
    documents.append(missing)
    pair.write("insert_many", documents)
    check(pair, brute=False)

    # Visible and claimable, in the queues the candidate reads ask for: a filter on "q2"
    # matches a queue array holding it, which an ordered walk of "q2" would not meet.
    visible = {"state": "pending", "visible_at": NOW - dt.timedelta(seconds=1)}
    unorderable = [message(rnd, **{**visible, "queue": ["q1", "q2"]}),
                   message(rnd, **{**visible, "queue": ["q3"], "priority": 50}),
                   message(rnd, **{**visible, "queue": {"nested": 1}}),
                   message(rnd, **{**visible, "queue": "q2", "state": ["pending", "x"]}),
                   message(rnd, **{**visible, "queue": "q1", "priority": [9, -9]}),
                   message(rnd, **{**visible, "queue": "q1", "priority": Decimal128("2.5")}),
                   message(rnd, **{**visible, "queue": "q1", "priority": float("nan")}),
                   message(rnd, **{**visible, "queue": "q1", "_id": {"a": 1}}),
                   message(rnd, **{**visible, "queue": "q1", "priority": 2**53 + 1}),
                   message(rnd, **{**visible, "queue": "q1", "priority": 2.5e9 + 0.5})]
    for document in unorderable:
        pair.write("insert_one", document)
        check(pair, brute=False)
        # Ordered again, then not again, by updates.
        pair.write("update_one", {"_id": document["_id"]},
                   {"$set": {"queue": "q2", "state": "pending", "priority": 1}})
        check(pair, brute=False)
        pair.write("replace_one", {"_id": document["_id"]}, document)
        check(pair, brute=False)
        pair.write("delete_one", {"_id": document["_id"]})
    check(pair, brute=False)


def test_a_query_an_index_of_the_engine_answers_stays_the_engines(pair):
    """A filter that is exactly a unique index's keys is answered from that index and then
    sorted; ties keep that index's order, which is not storage order, so the ordered index
    must not take such a query even when it gives the sort."""
    rnd = random.Random(5)
    documents = [message(rnd, queue="q1", state="pending", visible_at=NOW, dedupe=f"d{i}")
                 for i in range(60)]
    pair.write("insert_many", documents)
    by_queue_state_visible = [("queue", ASCENDING), ("state", ASCENDING), ("visible_at", ASCENDING)]
    ids = [d["_id"] for d in documents]
    for query in ({"_id": {"$in": ids[::-1]}}, {"_id": {"$in": ids[::7] + ids[::3]}},
                  {"dedupe": {"$in": [f"d{i}" for i in range(59, 0, -2)]}}):
        found = pair.find(query, by_queue_state_visible)
        assert len(found) == len(set(query.get("_id", query.get("dedupe"))["$in"]))


def test_history_reads_match_the_plain_engine(pair):
    """The history collection's sorted reads (a queue's recent finished messages, the
    search's newest first) on its own indexes."""
    for db in pair.dbs:
        schema.create_missing_indexes(db[schema.HISTORY], list(schema.INDEXES[2].indexes))
    rnd = random.Random(15)
    finished = [{"_id": ObjectId(), "queue": rnd.choice(QUEUES), "priority": 0,
                 "done_at": NOW - dt.timedelta(seconds=rnd.randint(0, 20)),
                 "body": {"order_id": rnd.randint(0, 5)}} for _ in range(300)]
    pair.write("insert_many", finished, collection=schema.HISTORY)
    pair.write("delete_many", {"done_at": {"$lt": NOW - dt.timedelta(seconds=15)}},
               collection=schema.HISTORY)
    for queue in (*QUEUES, "none"):
        for limit, batch_size in ((20, 0), (0, 3), (1, 0)):
            found = pair.find({"queue": queue}, [("done_at", DESCENDING)], limit,
                              projection={"log": 0}, collection=schema.HISTORY,
                              batch_size=batch_size)
            expected = sorted((d for d in finished if d["queue"] == queue
                               and d["done_at"] >= NOW - dt.timedelta(seconds=15)),
                              key=lambda d: d["done_at"], reverse=True)
            assert ([d["done_at"] for d in found]
                    == [d["done_at"] for d in expected[:limit or None]])
    pair.find({"body.order_id": 3}, [("done_at", DESCENDING)], 10, collection=schema.HISTORY)
    pair.find({"done_at": {"$lt": NOW}}, [("done_at", ASCENDING)], 50, collection=schema.HISTORY)


def test_indexes_created_after_the_data_dropped_and_created_again(engines):
    both = Pair(*engines, f"ix_{ObjectId()}")
    indexes = list(schema.INDEXES[0].indexes)
    rnd = random.Random(3)
    try:
        both.write("insert_many", [message(rnd) for _ in range(300)])
        for db in both.dbs:
            schema.create_missing_indexes(db.messages, indexes)
        check(both)
        both.write("drop_index", "claim")
        both.write("insert_many", [message(rnd) for _ in range(50)])
        check(both)
        for db in both.dbs:
            schema.create_missing_indexes(db.messages, indexes)
        both.write("insert_many", [message(rnd) for _ in range(50)])
        check(both)
        both.write("drop")
        for db in both.dbs:
            schema.create_missing_indexes(db.messages, indexes)
        both.write("insert_many", [message(rnd) for _ in range(100)])
        check(both)
    finally:
        both.close()


def stop(engine: Engine, how: str) -> None:
    if how == "sigkill" and engine.pid is not None:
        os.kill(engine.pid, signal.SIGKILL)
    engine.stop()


@pytest.mark.parametrize("how", ["graceful", "sigkill"])
def test_h2_index_is_rebuilt_from_the_file_on_restart(tmp_path, how):
    """H2 storage: the index lives in memory only and is built again from the file when the
    engine comes back (after a graceful stop, or a kill -9, where every write the engine
    answered was committed before its answer: engine/Durable.java)."""
    folders = (tmp_path / "ordered", tmp_path / "plain")
    engines = [start_engine(False, folders[0]), start_engine(True, folders[1])]
    rnd = random.Random(11)
    try:
        both = Pair(engines[0].uri, engines[1].uri, "h2index")
        for db in both.dbs:
            schema.create_missing_indexes(db.messages, list(schema.INDEXES[0].indexes))
        documents = [message(rnd) for _ in range(500)]
        both.write("insert_many", documents)
        both.write("bulk_write", [UpdateOne({"_id": document["_id"]}, {"$set": {
            "state": "pending", "priority": rnd.randint(0, 3)}}) for document in documents[:100]])
        both.write("delete_many", {"_id": {"$in": [d["_id"] for d in documents[100:150]]}})
        check(both)
        # Written after the last query: the index has only noted them when the engine stops.
        both.write("insert_many", [message(rnd, queue="q1") for _ in range(20)])
        both.write("update_many", {"queue": "q2"}, {"$inc": {"priority": 2}})
        both.close(drop=False)
        for engine in engines:
            stop(engine, how)

        engines = [start_engine(False, folders[0]), start_engine(True, folders[1])]
        both = Pair(engines[0].uri, engines[1].uri, "h2index")
        assert both.dbs[0].messages.count_documents({}) == 470
        check(both)
        both.write("insert_many", [message(rnd) for _ in range(100)])
        both.write("update_many", {"queue": "q1", "state": "pending"},
                   {"$set": {"state": "inflight"}})
        both.write("delete_many", {"queue": "q2", "state": "dead"})
        check(both)
        both.close(drop=False)
    finally:
        for engine in engines:
            engine.stop()


def test_concurrent_writers_and_sorted_readers_leave_the_index_exact(engines):
    """Writers, sorted readers and sorted claimers at once on our engine (each connection
    has its own engine thread). Each claimer takes the best pending message of a queue
    nobody else writes with a sorted find_one_and_update, so its claims come in sort
    order, and together the claimers take each message exactly once; afterwards the
    index still gives what a brute-force evaluation of the stored documents gives."""
    client = MongoClient(engines[0], tz_aware=True, maxPoolSize=20)
    db = client[f"ix_{ObjectId()}"]
    schema.create_missing_indexes(db.messages, list(schema.INDEXES[0].indexes))
    rnd = random.Random(99)
    to_claim = [message(rnd, queue="claims", state="pending", visible_at=NOW,
                        priority=rnd.randint(0, 4)) for _ in range(400)]
    db.messages.insert_many(to_claim)
    errors: list[BaseException] = []
    claimed: list[list[dict]] = [[], []]
    stop = time.monotonic() + 3

    def writer(seed: int) -> None:
        rnd = random.Random(seed)
        mine: list[ObjectId] = []
        try:
            while time.monotonic() < stop:
                roll = rnd.random()
                if roll < 0.5 or not mine:
                    mine.append(db.messages.insert_one(message(rnd)).inserted_id)
                elif roll < 0.85:
                    db.messages.update_one({"_id": rnd.choice(mine)}, {"$set": {
                        "state": rnd.choice(STATES), "priority": rnd.randint(-2, 2)}})
                else:
                    db.messages.delete_one({"_id": mine.pop(rnd.randrange(len(mine)))})
        except BaseException as error:  # noqa: BLE001 - reported by the test
            errors.append(error)

    def reader() -> None:
        try:
            while time.monotonic() < stop:
                list(db.messages.find({"queue": "q1", "state": {"$in": ["pending", "inflight"]},
                                       "visible_at": {"$lte": NOW}}).sort(CLAIM_SORT).limit(20))
        except BaseException as error:  # noqa: BLE001 - reported by the test
            errors.append(error)

    def claimer(mine: list[dict]) -> None:
        try:
            while True:
                taken = db.messages.find_one_and_update(
                    {"queue": "claims", "state": {"$in": ["pending", "inflight"]},
                     "visible_at": {"$lte": NOW}},
                    {"$set": {"state": "inflight", "visible_at": NOW + dt.timedelta(hours=1)}},
                    sort=CLAIM_SORT, projection={"priority": 1})
                if taken is None:
                    return
                mine.append(taken)
        except BaseException as error:  # noqa: BLE001 - reported by the test
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(3)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    threads += [threading.Thread(target=claimer, args=(mine,)) for mine in claimed]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert not errors, errors
        taken = [d["_id"] for mine in claimed for d in mine]
        assert sorted(taken) == sorted(d["_id"] for d in to_claim)
        for mine in claimed:
            order = [(-d["priority"], d["_id"]) for d in mine]
            assert order == sorted(order)
        documents = list(db.messages.find({}))
        assert len(documents) > 500
        for query, sort, limit, skip in candidate_queries():
            if sort is not CLAIM_SORT or skip or not isinstance(query.get("queue"), str):
                continue
            found = list(db.messages.find(query, {"_id": 1}).sort(sort).limit(limit))
            expected = sorted((d for d in documents if matches(d, query)),
                              key=lambda d: (-d["priority"], d["_id"]))
            expected = expected[:limit] if limit else expected
            assert [d["_id"] for d in found] == [d["_id"] for d in expected], query
    finally:
        client.drop_database(db.name)
        client.close()


def test_an_edited_or_added_engine_source_gets_a_build_of_its_own(tmp_path, monkeypatch):
    """The compiled engine is cached under a hash of the pom and every engine/*.java, so a
    fresh clone or an edited source never runs classes compiled from other sources."""
    copy = tmp_path / "engine"
    shutil.copytree(engine_module.ENGINE_SOURCE_DIR, copy)
    monkeypatch.setattr(engine_module, "ENGINE_SOURCE_DIR", copy)
    monkeypatch.setattr(engine_module, "ENGINE_POM", copy / "pom.xml")
    homes = [engine_module._engine_home()]
    ordered = copy / "OrderedIndex.java"
    ordered.write_text(ordered.read_text() + "\n// edited\n")
    homes.append(engine_module._engine_home())
    (copy / "Extra.java").write_text("final class Extra {}\n")
    homes.append(engine_module._engine_home())
    (copy / "pom.xml").write_text((copy / "pom.xml").read_text() + "\n")
    homes.append(engine_module._engine_home())
    assert len(set(homes)) == len(homes)
    assert "OrderedIndex.java" in {path.name for path in engine_module._java_sources()}


def _best_read_ms(messages, query: dict, rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        list(messages.find(query, CANDIDATE_FIELDS).sort(CLAIM_SORT).limit(128))
        best = min(best, time.perf_counter() - started)
    return best * 1000


def test_the_claim_read_walks_the_index_instead_of_scanning(pair):
    """Results alone cannot tell whether the index was used; time can. 40,000 waiting: the
    plain engine scans and sorts them all, ours reads about the 128 it returns."""
    rnd = random.Random(40)
    for _ in range(4):
        pair.write("insert_many", [message(rnd, queue="big", state="pending", visible_at=NOW)
                                   for _ in range(10_000)])
    query = {"queue": "big", "state": {"$in": ["pending", "inflight"]}, "visible_at": {"$lte": NOW}}
    assert len(pair.find(query, CLAIM_SORT, 128, 0, CANDIDATE_FIELDS)) == 128
    ordered, plain = (_best_read_ms(db.messages, query) for db in pair.dbs)
    assert ordered * 4 < plain, f"ordered {ordered:.1f} ms, plain {plain:.1f} ms"
