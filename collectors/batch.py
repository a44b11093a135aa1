"""Applying a batch of business-log events exactly once.

Why this is safe against a crash at any point (SIGKILL included) and against
duplicate events, without multi-document transactions:

1. Each partition's lease document carries ``seq``, the number of the last
   batch applied to it. A batch for partition *p* gets ``seq + 1`` = *s*.
2. Before touching a counter, the collector stores a *receipt* of the batch
   (the ids of the events to apply, and the ids to skip as duplicates), then
   writes a *journal* into the lease (a compare-and-set on ``owner``, so only
   the holder can): *s* and the receipt's id. The ids are written once: the
   receipt that later proves an event applied is the journal's list.
3. Every counter update is conditional on the counter's own mark for *p*
   being below *s*, and sets it to *s* in the same atomic update. Applying a
   batch twice therefore changes each counter once, whoever does it. (A batch
   spans several partitions; see ``_apply_counters`` for how one update per
   counter covers them all and stays exact when a replay came first.)
4. Then the receipt is marked committed, the events are deleted, and the
   journal is cleared while ``seq`` becomes *s* (one update). The receipt
   stays.

A collector that takes over a partition with a journal replays it: it
recomputes the counter changes from the journal's events that still exist.
Events are deleted only after every counter carries *s* (step 4 follows 3),
so any counter the replay could still change gets the full change, and every
other one ignores it.

Duplicates: an event can be published twice (a publisher retried an insert
that had in fact succeeded, or a sweep republished an outbox whose first
publication was cut short); such copies carry ``republished``. If the first
copy is still waiting, the second insert collided on ``_id`` and never
existed. If the first copy was already applied and deleted, its id is in a
committed receipt, and the copy is skipped. Receipts are kept
``RECEIPT_KEEP``, far longer than a republication can lag behind while
collectors run. Only committed receipts count as proof: a receipt whose
journal was never written (the lease was lost in between) names events that
were not applied, and one of them may itself carry ``republished`` (its
publisher's first insert failed mid-way); trusting that receipt would skip
the only copy (found by ``make chaos`` after an engine kill -9). Such a
receipt is never committed and expires unused. A receipt is committed only
after its batch's counters (step 4), while its events still wait in the log,
so no copy can be inserted before the receipt can prove it one.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pymongo import UpdateOne
from pymongo.database import Database
from pymongo.errors import BulkWriteError, OperationFailure

from mopq import schema
from mopq.bulk import duplicates_only
from mopq.clock import utcnow
from mopq.collectors.counters import Delta, deltas_of
from mopq.collectors.leases import partition_lease_id
from mopq.counter_documents import QUEUE_REGISTRY, add_queue_names

RECEIPT_KEEP = dt.timedelta(hours=1)


@dataclass
class BatchResult:
    applied: int = 0
    skipped: int = 0
    lost_partitions: tuple[int, ...] = ()


CounterUpdate = tuple[dict[str, Any], dict[str, Any]]


def _counter_update(counter_id: str, delta: Delta, marks: dict[int, int]) -> CounterUpdate:
    """Add ``delta`` only if the counter has none of these batches yet, and mark them.

    The filter is plain conditions on ``_id`` and the marks (no ``$or``);
    every counter is born with a mark for every partition (``Delta.update``).
    """
    query: dict[str, Any] = {"_id": counter_id}
    query.update({f"applied.{p}": {"$lt": seq} for p, seq in sorted(marks.items())})
    return query, delta.update(marks)


def _write_counters(db: Database, operations: list[CounterUpdate]) -> list[int]:
    """Run the counter updates in one unordered bulk; return the indexes that collided.

    A collision (duplicate ``_id`` on the upsert) means the counter already
    carries one of the marks: that share was applied before. Unordered so one
    collision does not stop the others. Each filter is ``_id`` plus mark
    conditions; the engine launcher answers such a filter from the ``_id``
    index (engine/IndexFirst.java), as MongoDB does.
    """
    if not operations:
        return []
    requests = [UpdateOne(query, update, upsert=True) for query, update in operations]
    try:
        db[schema.COUNTERS].bulk_write(requests, ordered=False)
    except BulkWriteError as error:
        return duplicates_only(error)
    return []


def _mark_missing(db: Database, counter_ids: set[str]) -> None:
    """Give counters written before a partition existed a 0 mark for it."""
    for document in db[schema.COUNTERS].find({"_id": {"$in": sorted(counter_ids)}},
                                              {"applied": 1}):
        applied = document.get("applied") or {}
        missing = {f"applied.{p}": 0 for p in range(schema.PARTITIONS) if str(p) not in applied}
        if missing:
            db[schema.COUNTERS].update_one({"_id": document["_id"]}, {"$set": missing})


def _apply_counters(db: Database, events_by_partition: dict[int, list[dict[str, Any]]],
                    seqs: dict[int, int]) -> None:
    """Step 3: one update per counter for the whole batch, per partition where needed.

    The common case is one combined update per counter covering every partition
    of the batch. If a counter already carries one of those marks (a replay by
    another collector got there first for that partition), the combined update
    matches nothing and collides on ``_id``; that counter then gets one update
    per partition, each guarded by its own mark, so every share lands once (a
    counter missing a partition's mark gets a 0 mark first).
    """
    totals = deltas_of(event for events in events_by_partition.values() for event in events)
    combined = [(counter_id, _counter_update(counter_id, total,
                                             {p: seqs[p] for p in total.partitions}))
                for counter_id, total in totals.items()]
    if not combined:
        return
    collided = {combined[index][0]
                for index in _write_counters(db, [operation for _, operation in combined])}
    if not collided:
        return
    _mark_missing(db, collided)
    _write_counters(db, [_counter_update(counter_id, delta, {partition: seqs[partition]})
                         for partition, events in events_by_partition.items()
                         for counter_id, delta in deltas_of(events).items()
                         if counter_id in collided])


_registered: dict[tuple[int, str], set[str]] = {}


def register_queues(db: Database, names: set[str]) -> None:
    """Record queue names in the registry (``settings`` ``queues``) once each.

    Why: the stats reader lists every queue, including those with no message
    left, without scanning the counters (see ``collectors.stats``).
    """
    known = _registered.setdefault((id(db.client), db.name), set())
    new = names - known
    if new:
        add_queue_names(db, new)
        known.update(new)


def registered_queues(db: Database) -> list[str]:
    return sorted((db[schema.SETTINGS].find_one({"_id": QUEUE_REGISTRY}) or {}).get("names", []))


def _already_applied(db: Database, candidates: list[str]) -> set[str]:
    if not candidates:
        return set()
    wanted = set(candidates)
    found: set[str] = set()
    # Receipts written before the committed flag existed have none: they count.
    for receipt in db[schema.RECEIPTS].find({"ids": {"$in": candidates},
                                             "committed": {"$ne": False}}, {"ids": 1}):
        found.update(wanted.intersection(receipt["ids"]))
    return found


def _finish(db: Database, owner: str, journals: dict[int, dict[str, Any]],
            events_by_partition: dict[int, list[dict[str, Any]]],
            counted: Callable[[], None] | None = None) -> int:
    """Steps 3 and 4 for journals already written: counters, receipts, delete, clear.

    ``counted`` is called once the counters hold the batch (a reader sees it
    from then on), before step 4's round trips, which no reader waits for.
    """
    if not journals:
        return 0
    _apply_counters(db, events_by_partition, {p: j["seq"] for p, j in journals.items()})
    if counted is not None and events_by_partition:
        counted()
    register_queues(db, {e["queue"] for events in events_by_partition.values() for e in events
                         if e.get("queue")})
    # Journals written before receipts held the ids carry them themselves.
    _store_receipts(db, {p: j for p, j in journals.items() if "receipt" not in j},
                    committed=True)
    stored = [j["receipt"] for j in journals.values() if "receipt" in j]
    if stored:
        db[schema.RECEIPTS].update_many({"_id": {"$in": stored}}, {"$set": {"committed": True}})
    _delete_events(db, [event_id for j in journals.values() for event_id in j["apply"] + j["skip"]])
    db[schema.LEASES].bulk_write([
        UpdateOne({"_id": partition_lease_id(p), "owner": owner, "journal.seq": j["seq"]},
                  {"$set": {"seq": j["seq"]}, "$unset": {"journal": ""}})
        for p, j in journals.items()], ordered=False)
    return sum(len(j["apply"]) for j in journals.values())


DELETE_CHUNK = 10_000


def _delete_events(db: Database, ids: list[str]) -> None:
    """Delete events by ``_id``: the ``delete`` command ``bulk_write`` would send.

    Built as plain statements: a ``DeleteOne`` object per event cost about a
    fifth of the collector's Python time. (``delete_many`` with ``$in`` is three
    times slower on the embedded engine.)
    """
    for start in range(0, len(ids), DELETE_CHUNK):
        statements = [{"q": {"_id": event_id}, "limit": 1}
                      for event_id in ids[start:start + DELETE_CHUNK]]
        answer = db.command("delete", schema.EVENTS, deletes=statements, ordered=False)
        if answer.get("writeErrors"):
            raise OperationFailure(f"deleting applied events failed: {answer['writeErrors'][:3]}")


def _store_receipts(db: Database, journals: dict[int, dict[str, Any]], committed: bool) -> None:
    now = utcnow()
    receipts = [{"_id": j.get("receipt") or f"{p}:{j['seq']}", "partition": p, "seq": j["seq"],
                 "ids": j["apply"], "skip": j["skip"], "at": now, "expires_at": now + RECEIPT_KEEP,
                 "committed": committed}
                for p, j in journals.items()]
    if receipts:
        try:
            db[schema.RECEIPTS].insert_many(receipts, ordered=False)
        except BulkWriteError as error:
            duplicates_only(error)


def replay(db: Database, owner: str, partition: int, journal: dict[str, Any]) -> int:
    """Finish a journal left by a collector that stopped mid-batch; return events applied."""
    if "receipt" in journal:
        receipt = db[schema.RECEIPTS].find_one({"_id": journal["receipt"]})
        if receipt is None:
            raise RuntimeError(
                f"partition {partition}: the receipt {journal['receipt']} of its unfinished "
                "batch is missing, so the batch cannot be replayed exactly. Was the receipts "
                "collection dropped or edited? Restore it, or clear the lease's journal to "
                "accept a possible double count.")
        journal = {**journal, "apply": receipt["ids"], "skip": receipt.get("skip", [])}
    events = list(db[schema.EVENTS].find({"_id": {"$in": journal["apply"]}}))
    return _finish(db, owner, {partition: journal}, {partition: events} if events else {})


def _partition_filter(leases: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The held partitions' events, in natural (roughly arrival) order.

    No sort: counters do not depend on order, and a sort by time makes the
    embedded engine sort the whole log on every batch. Every event is read
    eventually because applied events are deleted.
    """
    if len(leases) == schema.PARTITIONS:
        return {}
    return {"partition": {"$in": sorted(leases)}}


def _read_events(db: Database, query: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` events in one reply: the ``find`` command, not a cursor.

    Why: iterating a pymongo cursor costs a Python call per document plus a
    second round trip (the first reply holds 101 documents), about a tenth of
    the collector's time; one reply is decoded in one C call. A reply is
    capped at 16 MiB, so a batch may come back shorter; the rest waits for
    the next batch.
    """
    answer = db.command("find", schema.EVENTS, filter=query, limit=limit, batchSize=limit,
                        singleBatch=True)
    cursor = answer["cursor"]
    if cursor.get("id"):  # a server that ignores singleBatch: do not leave it open
        db.command("killCursors", schema.EVENTS, cursors=[cursor["id"]])
    return cursor["firstBatch"]


def apply_batch(db: Database, owner: str, leases: dict[int, dict[str, Any]],
                limit: int = 2000, counted: Callable[[], None] | None = None) -> BatchResult:
    """Read up to ``limit`` events of the held partitions and apply them exactly once.

    ``counted`` is called as soon as the counters hold what this batch applied
    (the collector rings the dashboards then; see ``_finish``).
    """
    result = BatchResult()
    for partition, lease in list(leases.items()):
        if lease.get("journal"):
            result.applied += replay(db, owner, partition, lease["journal"])
            lease["seq"] = lease["journal"]["seq"]
            lease.pop("journal")
    if not leases:
        return result
    events = _read_events(db, _partition_filter(leases), limit)
    if not events:
        return result
    duplicates = _already_applied(db, [e["_id"] for e in events if e.get("republished")])
    by_partition: dict[int, list[dict[str, Any]]] = defaultdict(list)
    skipped: dict[int, list[str]] = defaultdict(list)
    for event in events:
        if event["_id"] in duplicates:
            skipped[event["partition"]].append(event["_id"])
        else:
            by_partition[event["partition"]].append(event)
    partitions = sorted(set(by_partition) | set(skipped))
    journals = {p: {"seq": leases[p].get("seq", 0) + 1, "receipt": uuid.uuid4().hex,
                    "apply": [e["_id"] for e in by_partition.get(p, [])],
                    "skip": skipped.get(p, [])} for p in partitions}
    _store_receipts(db, journals, committed=False)
    journaled = db[schema.LEASES].bulk_write([
        UpdateOne({"_id": partition_lease_id(p), "owner": owner, "seq": leases[p].get("seq", 0),
                   "journal": None},
                  {"$set": {"journal": {"seq": journal["seq"], "receipt": journal["receipt"]}}})
        for p, journal in journals.items()], ordered=False)
    if journaled.matched_count == len(journals):
        written = set(journals)
    else:  # some lease was lost meanwhile: find out which journals were written
        # By receipt, not by seq: a journal left by an earlier batch whose last step
        # was cut short (an engine killed mid-batch) can carry the same seq, and
        # taking it for this batch's would apply this batch under marks its
        # counters already hold, so its events would be deleted uncounted.
        written = {doc["partition"] for doc in db[schema.LEASES].find(
            {"_id": {"$in": [partition_lease_id(p) for p in partitions]}, "owner": owner,
             "journal.receipt": {"$in": [j["receipt"] for j in journals.values()]}},
            {"partition": 1, "journal.receipt": 1})
            if doc["journal"]["receipt"] == journals[doc["partition"]]["receipt"]}
    lost = tuple(p for p in partitions if p not in written)
    for partition in lost:
        leases.pop(partition, None)
        journals.pop(partition)
    result.lost_partitions = lost
    applied = _finish(db, owner, journals,
                      {p: by_partition[p] for p in journals if by_partition.get(p)}, counted)
    for partition, journal in journals.items():
        leases[partition]["seq"] = journal["seq"]
    result.applied += applied
    result.skipped += sum(len(j["skip"]) for j in journals.values())
    return result


def expire_receipts(db: Database, now: dt.datetime | None = None) -> int:
    """Drop receipts past their keep time, except those a journal still needs for a replay."""
    now = now or utcnow()
    needed = [lease["journal"]["receipt"] for lease in db[schema.LEASES].find(
        {"journal.receipt": {"$exists": True}}, {"journal.receipt": 1})]
    query: dict[str, Any] = {"expires_at": {"$lte": now}}
    if needed:
        query["_id"] = {"$nin": needed}
    return db[schema.RECEIPTS].delete_many(query).deleted_count
