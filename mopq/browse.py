"""Browse a queue's messages by state, and move one to the front or to another queue.

Why here and not in the dashboard: the same look and the same moves are in
the API, on the queue's page and in ``mopq queue browse|front|move``, so the
library holds them once.

Browsing pages by ``_id`` (``after`` the last id seen), not by skipping, so
a page costs the same deep in a long queue and a message written meanwhile
never shifts the pages already read. The states an operator can look at:
``pending`` (visible now), ``delayed`` (pending, visible later), ``inflight``
(with the worker that holds it and the lease's end) and ``dead``.

Moves are single compare-and-set updates on the state the message was read
in. To the front: its priority becomes one more than the highest pending
priority of the queue and it is visible now (consumers see it within their
candidate cache's age, ``mopq.queue.CANDIDATE_TTL_SECONDS``). To another
queue: its ``queue`` changes and its outbox gets a ``deleted`` event for the
old queue (reason ``moved``) and a ``written`` event for the new one, both
named by a fresh nonce, so each queue's counts stay conserved.
"""

from __future__ import annotations

import secrets
from typing import Any

from bson import ObjectId
from pymongo import DESCENDING, ReturnDocument
from pymongo.database import Database

from mopq import schema, validation
from mopq.admin import parse_ids
from mopq.clock import utcnow
from mopq.doorbell import ringer_for
from mopq.errors import InvalidInput, MessageNotFound
from mopq.events import message_event
from mopq.publisher import Outbox, publisher_for

BROWSE_STATES = ("pending", "delayed", "inflight", "dead")
MAX_PAGE = 200
PREVIEW_CHARS = 160
MOVABLE = (schema.PENDING, schema.DEAD)
MAX_PRIORITY = 2**31 - 1
_LISTED = {"body": 1, "routing_key": 1, "priority": 1, "state": 1, "attempts": 1,
           "created_at": 1, "visible_at": 1, "leased_by": 1, "last_error": 1, "dead_at": 1,
           "progress": 1, "queue": 1}


def _preview(body: Any) -> str:
    text = repr(body) if not isinstance(body, dict) else ", ".join(
        f"{key}: {value!r}" for key, value in body.items())
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS - 1] + "…"


def browse(db: Database, queue: str, state: str, routing_key: str | None = None,
           after: str | None = None, limit: int = 50) -> dict[str, Any]:
    """One page of ``queue``'s messages in ``state``, oldest first, after the id ``after``."""
    queue = validation.queue_name(queue)
    if state not in BROWSE_STATES:
        raise InvalidInput(f"state must be one of {', '.join(BROWSE_STATES)}, got {state!r}.")
    limit = validation.integer("limit", limit, 1, MAX_PAGE)
    routing_key = validation.optional_key("routing_key", routing_key)
    now = utcnow()
    query: dict[str, Any] = {"queue": queue}
    if state == "pending":
        query.update(state=schema.PENDING, visible_at={"$lte": now})
    elif state == "delayed":
        query.update(state=schema.PENDING, visible_at={"$gt": now})
    else:
        query["state"] = state
    if routing_key is not None:
        query["routing_key"] = routing_key
    if after is not None:
        query["_id"] = {"$gt": parse_ids([after])[0]}
    found = list(db[schema.MESSAGES].find(query, _LISTED).sort("_id", 1).limit(limit + 1))
    items = [_row(document) for document in found[:limit]]
    return {"queue": queue, "state": state, "routing_key": routing_key, "items": items,
            "next": items[-1]["id"] if len(found) > limit else None}


def _row(document: dict[str, Any]) -> dict[str, Any]:
    row = {"id": str(document["_id"]), "preview": _preview(document.get("body")),
           **{key: document.get(key) for key in ("routing_key", "priority", "attempts",
                                                 "created_at", "visible_at")}}
    if document.get("state") == schema.INFLIGHT:
        row.update(worker=document.get("leased_by"), lease_ends_at=document.get("visible_at"),
                   progress=(document.get("progress") or {}).get("fraction"))
    if document.get("state") == schema.DEAD:
        row.update(last_error=document.get("last_error"), dead_at=document.get("dead_at"))
    return row


def _one(db: Database, queue: str, message_id: object, states: tuple[str, ...],
         what: str) -> dict[str, Any]:
    object_id: ObjectId = parse_ids([message_id])[0]
    document = db[schema.MESSAGES].find_one({"_id": object_id, "queue": queue},
                                            {"outbox": 0, "log": 0})
    if document is None or document.get("state") not in states:
        found = "not in this queue" if document is None else f"{document.get('state')}"
        raise MessageNotFound(f"Cannot {what} message {message_id} of queue {queue!r}: it is "
                              f"{found}; only {' or '.join(states)} messages can be.")
    return document


def to_front(db: Database, queue: str, message_id: object) -> int:
    """Make a pending (or delayed) message the next one claimed; return its new priority."""
    queue = validation.queue_name(queue)
    document = _one(db, queue, message_id, (schema.PENDING,), "move to the front")
    top = db[schema.MESSAGES].find_one({"queue": queue, "state": schema.PENDING},
                                       {"priority": 1}, sort=[("priority", DESCENDING)])
    priority = min(MAX_PRIORITY, max(int((top or {}).get("priority", 0)) + 1,
                                     int(document.get("priority", 0))))
    now = utcnow()
    changed = db[schema.MESSAGES].find_one_and_update(
        {"_id": document["_id"], "state": schema.PENDING, "queue": queue},
        {"$set": {"priority": priority, "visible_at": now, "updated_at": now}},
        projection={"_id": 1})
    if changed is None:
        raise MessageNotFound(f"Message {message_id} of queue {queue!r} was claimed or "
                              "removed meanwhile; nothing was changed.")
    ringer_for(db).ring(queue)
    return priority


def to_queue(db: Database, queue: str, message_id: object, target: str) -> None:
    """Move a pending, delayed or dead message to the queue ``target``, state kept."""
    queue, target = validation.queue_name(queue), validation.queue_name(target)
    if target == queue:
        raise InvalidInput(f"The message is in {queue!r} already; name another queue.")
    document = _one(db, queue, message_id, MOVABLE, "move")
    now = utcnow()
    nonce = secrets.token_hex(8)
    left = message_event(schema.DELETED, document, now, nonce, was=document["state"],
                         reason="moved", to=target)
    arrived = message_event(schema.WRITTEN, {**document, "queue": target}, now, nonce,
                            delayed=document["visible_at"] > now, moved_from=queue)
    events = [left, arrived]
    changed = db[schema.MESSAGES].find_one_and_update(
        {"_id": document["_id"], "state": document["state"], "queue": queue},
        {"$set": {"queue": target, "updated_at": now, "moved_from": queue},
         "$unset": {"dedupe": "", "once": ""}, "$push": {"outbox": {"$each": events}}},
        projection={"state": 1}, return_document=ReturnDocument.AFTER)
    if changed is None:
        raise MessageNotFound(f"Message {message_id} of queue {queue!r} was claimed or "
                              "removed meanwhile; nothing was changed.")
    publisher_for(db).add_outbox(Outbox(document["_id"], changed["state"], events))
    ringer_for(db).ring(target)
