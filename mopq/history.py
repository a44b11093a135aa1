"""History: acknowledged messages kept for a while, with their result.

Why a collection of its own: a claim looks for candidates in ``messages``,
and on the embedded engine every such look scans the collection
(docs/ENGINE.md), so finished work cannot stay there without slowing
claims. Once a done message's events are published, whoever publishes them
(the consumer's publisher, or the sweep for one a crashed process left)
copies it here and then deletes it from ``messages``; the copy is keyed by
the message id, so doing it twice changes nothing.

A history document::

    {_id: message id, queue, routing_key, body, priority, activity, dedupe_key,
     attempts, created_at, claimed_at, done_at, duration, worker, result,
     acked_lease,        # the lease token the acknowledgement carried
     errors: [...],      # the failed attempts before it succeeded
     once,               # "<queue>\\0<key>" of Queue.write_once: a repeat finds it here
     sequence}           # an activity instance's steps and outcome (mopq.activities)

A message an operator cancelled (``mopq.admin.cancel``) is kept the same
way, without result, with ``cancelled: {reason, who, at, was}`` and
``done_at`` the time of the cancel: its holder learns from it why its lease
was refused, and ``Queue.result`` raises ``MessageCancelled``.

Retention, enforced by the monitor under its lease in batches
(``collectors.monitor``): finished messages are forgotten after
``MOPQ_HISTORY_SECONDS`` (one day); dead messages are removed after
``MOPQ_DEAD_SECONDS`` (30 days), counted as removed like an operator's delete.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pymongo.database import Database
from pymongo.errors import BulkWriteError

from mopq import schema, validation
from mopq.bulk import duplicates_only

MAX_RESULT_BYTES = 64 * 1024
RETENTION_BATCH = 1_000
KEPT = ("queue", "routing_key", "body", "priority", "activity", "dedupe_key", "attempts",
        "created_at", "claimed_at", "done_at", "result", "acked_lease", "errors", "once",
        "sequence")  # an activity instance's record (mopq.activities)


def checked_result(result: Any) -> Any:
    """A handler's result as stored: JSON-like as a body is, and at most ``MAX_RESULT_BYTES``."""
    if result is None:
        return None
    return validation.json_like(result, "result", MAX_RESULT_BYTES)


def history_document(message: dict[str, Any]) -> dict[str, Any]:
    document = {key: message[key] for key in KEPT if key in message}
    document["_id"] = message["_id"]
    document["worker"] = message.get("leased_by")
    if message.get("claimed_at") and message.get("done_at"):
        document["duration"] = (message["done_at"] - message["claimed_at"]).total_seconds()
    return document


def archive(db: Database, message_ids: list[Any]) -> int:
    """Copy the done messages among ``message_ids`` into history; return how many were found.

    Call before deleting them from ``messages``; a repeat copies nothing new.
    """
    if not message_ids:
        return 0
    done = list(db[schema.MESSAGES].find({"_id": {"$in": message_ids}, "state": schema.DONE},
                                         {"outbox": 0, "dedupe": 0, "batch": 0}))
    if done:
        try:
            db[schema.HISTORY].insert_many([history_document(m) for m in done], ordered=False)
        except BulkWriteError as error:
            duplicates_only(error)
    return len(done)


def finished(db: Database, message_id: Any) -> dict[str, Any] | None:
    return db[schema.HISTORY].find_one({"_id": message_id})


def keep_cancelled(db: Database, message: dict[str, Any], cancelled: dict[str, Any]) -> None:
    """Keep a cancelled message (as it was before the cancel) in history; a repeat is harmless."""
    document = history_document(message)
    document.pop("result", None)
    document.pop("once", None)   # cancelled, the key may be written again
    document.pop("duration", None)
    document["done_at"] = cancelled["at"]
    document["cancelled"] = cancelled
    db[schema.HISTORY].update_one({"_id": document["_id"]}, {"$setOnInsert": document},
                                  upsert=True)


def cancellation(db: Database, message_id: Any) -> dict[str, Any] | None:
    """``{reason, who, at, was}`` if an operator cancelled the message, else None."""
    document = db[schema.HISTORY].find_one({"_id": message_id}, {"cancelled": 1})
    return (document or {}).get("cancelled")


def forget_finished(db: Database, before: dt.datetime, queue: str | None = None,
                    other_than: list[str] | None = None) -> int:
    """Forget up to ``RETENTION_BATCH`` finished messages done before ``before``.

    Of one ``queue``, or of every queue but those ``other_than`` (queues whose
    policy keeps them longer or shorter). In batches so that a large backlog
    of old history never holds the engine for long; the monitor calls again
    at its next pass.
    """
    query: dict[str, Any] = {"done_at": {"$lt": before}}
    if queue is not None:
        query["queue"] = queue
    elif other_than:
        query["queue"] = {"$nin": other_than}
    old = [d["_id"] for d in db[schema.HISTORY].find(query, {"_id": 1})
           .limit(RETENTION_BATCH)]
    return db[schema.HISTORY].delete_many({"_id": {"$in": old}}).deleted_count if old else 0
