"""Write intents: a large ``write_many`` counted by one event instead of one per message.

Why: publishing a "written" event per message means, after the insert, an
events insert as large again and an update of every message (pulling the
event from its outbox), and on the embedded engine that update costs several
times the insert (issue 16: write + publish ran at 0.17-0.20x a raw
``insert_many``). A batch is counted instead by one event per group of
messages that count alike (routing key, activity, delayed), and nothing is
written to the messages after their insert.

What keeps the count exact through a crash (docs/FORMAT.md §6.4):

1. Before the insert, the writer inserts an *intent* ``{_id: B, state: "open"}``
   and the messages carry ``batch: B``.
2. After the insert, the writer *takes* the intent (open -> publishing, with
   the groups' counts: what was inserted is known only now), inserts the
   batch's events (ids derived from ``B``, so a repeat is the same event) and
   deletes the intent.
3. A message whose intent still exists is never deleted (:func:`releasable`),
   so while an intent is open every message of its batch can still be found.
4. The sweep takes an intent left open longer than ``GRACE_SECONDS`` (its
   writer died, or is very late): open -> swept. It then publishes one
   "written" event per message found with ``batch: B`` (the per-message id,
   flagged republished) and removes the field. A writer finding its intent
   swept publishes nothing; messages its late insert lands afterwards are
   found by the sweep's later passes (a swept intent is kept
   ``SWEPT_KEPT_SECONDS``). An intent left publishing (its writer died after
   taking it) is finished by the sweep from the counts it holds.

Exactly one of the writer and the sweep takes an open intent (a
compare-and-set), so a batch is counted either by its batch events or by
per-message events, never both.
"""

from __future__ import annotations

import collections
import datetime as dt
import threading
from typing import Any, NamedTuple

from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.database import Database

from mopq import schema
from mopq.bulk import insert_events
from mopq.events import as_document, message_event

# A write_many of at least this many messages goes by an intent; a smaller one
# puts each message's event in its outbox (one insert, no intent round trips).
MIN_MESSAGES = 32
# How long the writer has to take its intent before the sweep takes it.
GRACE_SECONDS = 10.0
# How long a swept intent is kept, so that a very late insert is still counted.
SWEPT_KEPT_SECONDS = 600.0

# Intents this process saw gone, named in deletions' filters (see not_held): enough
# to cover the batches a worker is draining, few enough that the engine's test of
# the list, element by element, stays cheap.
GONE_REMEMBERED = 16

OPEN, PUBLISHING, SWEPT = "open", "publishing", "swept"
BATCH_FIELD = "batch"
_STRAGGLER_FIELDS = {"queue": 1, "routing_key": 1, "activity": 1, "created_at": 1,
                     "visible_at": 1, "attempts": 1, BATCH_FIELD: 1}


class Group(NamedTuple):
    """Messages of one batch that count alike, and how many were inserted."""

    routing_key: str | None
    activity: str | None
    delayed: bool
    count: int


class WrittenBatch(NamedTuple):
    """What the writer publishes for one intent once its insert is answered."""

    intent_id: ObjectId
    queue: str
    at: dt.datetime
    groups: list[Group]
    republished: bool = False  # a retry: the events may be in the log already


def open_intent(db: Database, queue: str, at: dt.datetime) -> ObjectId:
    """Insert a new open intent and return its id (step 1)."""
    intent_id = ObjectId()
    db[schema.WRITE_INTENTS].insert_one({"_id": intent_id, "state": OPEN, "queue": queue,
                                         "at": at})
    return intent_id


def batch_events(batch: WrittenBatch, republished: bool = False) -> list[dict[str, Any]]:
    """The events documents of a batch: one "written" event per group, with its count."""
    documents = []
    for index, group in enumerate(batch.groups):
        if not group.count:
            continue
        source = {"_id": f"{batch.intent_id}.{index}", "queue": batch.queue,
                  "routing_key": group.routing_key, "activity": group.activity}
        event = message_event(schema.WRITTEN, source, batch.at, delayed=group.delayed,
                              count=group.count, batch=str(batch.intent_id))
        event["message"] = None
        document = as_document(event)
        if republished:
            document["republished"] = True
        documents.append(document)
    return documents


def take(db: Database, batch: WrittenBatch) -> bool:
    """Step 2's compare-and-set: True if this writer publishes the batch (not the sweep)."""
    taken = db[schema.WRITE_INTENTS].find_one_and_update(
        {"_id": batch.intent_id, "state": {"$in": [OPEN, PUBLISHING]}},
        {"$set": {"state": PUBLISHING,
                  "groups": [group._asdict() for group in batch.groups]}},
        projection={"_id": 1}, return_document=ReturnDocument.AFTER)
    return taken is not None


def finish(db: Database, intent_id: ObjectId) -> None:
    """Delete a published intent: its messages may be deleted from now on."""
    db[schema.WRITE_INTENTS].delete_one({"_id": intent_id, "state": PUBLISHING})
    _remember_gone([intent_id])


_gone: collections.OrderedDict[Any, None] = collections.OrderedDict()
_gone_lock = threading.Lock()


def _remember_gone(intent_ids: list[Any]) -> None:
    """An intent once deleted never comes back, so its batch's messages stay free."""
    with _gone_lock:
        for intent_id in intent_ids:
            _gone[intent_id] = None
            _gone.move_to_end(intent_id)
        while len(_gone) > GONE_REMEMBERED:
            _gone.popitem(last=False)


def releasable(db: Database, message_ids: list[Any]) -> tuple[list[Any], list[Any]]:
    """Of terminal messages carrying a batch, those that may be deleted, and those held.

    Held: their intent still exists, so the sweep may yet have to count them
    one by one (rule 3 above). Messages without a batch are in neither list.
    """
    if not message_ids:
        return [], []
    carrying = list(db[schema.MESSAGES].find(
        {"_id": {"$in": message_ids}, BATCH_FIELD: {"$exists": True}},
        {BATCH_FIELD: 1}))
    if not carrying:
        return [], []
    batches = list({document[BATCH_FIELD] for document in carrying})
    live = {document["_id"] for document in
            db[schema.WRITE_INTENTS].find({"_id": {"$in": batches}}, {"_id": 1})}
    _remember_gone([batch for batch in batches if batch not in live])
    free = [d["_id"] for d in carrying if d[BATCH_FIELD] not in live]
    held = [d["_id"] for d in carrying if d[BATCH_FIELD] in live]
    return free, held


def not_held() -> dict[str, Any]:
    """The filter part every deletion of a message adds (rule 3): it carries no batch, or
    one whose intent this process saw gone. Others go by :func:`release`."""
    with _gone_lock:
        gone = list(_gone)
    if not gone:
        return {BATCH_FIELD: {"$exists": False}}
    return {"$or": [{BATCH_FIELD: {"$exists": False}}, {BATCH_FIELD: {"$in": gone}}]}


def sweep(db: Database, now: dt.datetime) -> int:
    """Take abandoned intents, count their messages one by one; return messages counted."""
    intents = db[schema.WRITE_INTENTS]
    before = now - dt.timedelta(seconds=GRACE_SECONDS)
    for stale in list(intents.find({"state": PUBLISHING, "at": {"$lte": before}})):
        batch = WrittenBatch(stale["_id"], stale["queue"], stale["at"],
                             [Group(**group) for group in stale.get("groups", [])])
        insert_events(db, batch_events(batch, republished=True))
        finish(db, stale["_id"])
    for stale in list(intents.find({"state": OPEN, "at": {"$lte": before}}, {"_id": 1})):
        intents.update_one({"_id": stale["_id"], "state": OPEN},
                           {"$set": {"state": SWEPT, "swept_at": now}})
    swept = [document["_id"] for document in intents.find({"state": SWEPT}, {"_id": 1})]
    counted = _count_one_by_one(db, swept) if swept else 0
    intents.delete_many({"state": SWEPT, "at": {
        "$lte": now - dt.timedelta(seconds=SWEPT_KEPT_SECONDS)}})
    return counted


def _count_one_by_one(db: Database, intent_ids: list[ObjectId]) -> int:
    """Publish a per-message "written" event for each message of these batches, then
    remove their batch field (a repeat after a crash republishes the same ids)."""
    found = list(db[schema.MESSAGES].find({BATCH_FIELD: {"$in": intent_ids}},
                                          _STRAGGLER_FIELDS))
    if not found:
        return 0
    documents = []
    for message in found:
        delayed = not message.get("attempts") and message["visible_at"] > message["created_at"]
        event = message_event(schema.WRITTEN, message, message["created_at"], delayed=delayed)
        document = as_document(event)
        document["republished"] = True
        documents.append(document)
    insert_events(db, documents)
    db[schema.MESSAGES].update_many(
        {"_id": {"$in": [message["_id"] for message in found]},
         BATCH_FIELD: {"$in": intent_ids}},
        {"$unset": {BATCH_FIELD: ""}})
    return len(found)


def release(db: Database, message_ids: list[Any]) -> list[Any]:
    """Delete the finished messages among these that no intent holds; return those held.

    The caller has copied the done ones into history already.
    """
    free, held = releasable(db, message_ids)
    if free:
        db[schema.MESSAGES].delete_many({"_id": {"$in": free},
                                         "state": {"$in": list(schema.TERMINAL_STATES)},
                                         "outbox.0": {"$exists": False}})
    return held
