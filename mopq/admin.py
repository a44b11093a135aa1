"""Operator actions on messages: retry or remove dead ones, purge a queue, cancel.

Used by the dashboard and the ``mopq failed`` / ``mopq retry`` commands. Each
message changes with its own compare-and-set update (on the state the
selection saw) that also records the transition's event, so a bulk action
that is interrupted leaves every message either changed and counted, or
untouched, and running it again is harmless.

Selections are built here from checked values only (ids, a queue name, a
plain substring of the error), never from a caller's query document.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bson import ObjectId
from bson.errors import InvalidId
from pymongo import ReturnDocument
from pymongo.database import Database

from mopq import history, schema, validation
from mopq.clock import utcnow
from mopq.doorbell import ringer_for
from mopq.errors import InvalidInput
from mopq.events import message_event
from mopq.publisher import Outbox, publisher_for

# One call changes at most this many messages (about 5 s on the embedded engine),
# so a request that acts on "all matching" stays short; call again for the rest.
MAX_SELECTION = 10_000
PAGE = 1_000
_EVENT_FIELDS = {"queue": 1, "routing_key": 1, "activity": 1, "state": 1}


@dataclass(frozen=True)
class Selection:
    """Which messages an action applies to: all conditions must hold."""

    states: tuple[str, ...] = (schema.DEAD,)
    queue: str | None = None
    ids: tuple[ObjectId, ...] | None = None
    error_contains: str | None = None

    def query(self) -> dict[str, Any]:
        query: dict[str, Any] = {"state": {"$in": list(self.states)}}
        if self.queue is not None:
            query["queue"] = self.queue
        if self.ids is not None:
            query["_id"] = {"$in": list(self.ids)}
        if self.error_contains:
            query["last_error"] = {"$regex": re.escape(self.error_contains), "$options": "i"}
        return query


def parse_ids(values: Iterable[object]) -> tuple[ObjectId, ...]:
    ids = []
    for value in values:
        try:
            ids.append(ObjectId(str(value)))
        except (InvalidId, TypeError) as error:
            raise InvalidInput(f"{value!r} is not a message id (24 hex characters).") from error
    return tuple(ids)


def selection(*, states: Iterable[str] = (schema.DEAD,), queue: str | None = None,
              ids: Iterable[object] | None = None,
              error_contains: str | None = None) -> Selection:
    """Check the parts of a selection and build it."""
    states = tuple(states)
    allowed = (schema.PENDING, schema.DEAD)
    if not states or any(state not in allowed for state in states):
        raise InvalidInput(f"states must be some of {allowed}, got {states!r}.")
    if queue is not None:
        validation.queue_name(queue)
    if error_contains is not None and (not isinstance(error_contains, str)
                                       or len(error_contains) > 200):
        raise InvalidInput("error_contains must be a string of at most 200 characters.")
    return Selection(states, queue, parse_ids(ids) if ids is not None else None,
                     error_contains or None)


def _apply(db: Database, chosen: Selection, update_for: Any,
           limit: int) -> tuple[int, set[str]]:
    """Run one CAS update per selected message; return how many changed, and their queues."""
    messages = db[schema.MESSAGES]
    publisher = publisher_for(db)
    changed = 0
    queues: set[str] = set()
    seen: set[ObjectId] = set()
    while changed < limit:
        page = [d for d in messages.find(chosen.query(), _EVENT_FIELDS).limit(PAGE)
                if d["_id"] not in seen]
        if not page:
            break
        for candidate in page[: limit - changed]:
            seen.add(candidate["_id"])
            now = utcnow()
            update, state, event = update_for(candidate, now)
            document = messages.find_one_and_update(
                {"_id": candidate["_id"], "queue": candidate["queue"],
                 "state": candidate["state"]}, update,
                projection={"state": 1}, return_document=ReturnDocument.AFTER)
            if document is not None and document["state"] == state:
                publisher.add_outbox(Outbox(document["_id"], state, [event]))
                changed += 1
                queues.add(candidate["queue"])
    return changed, queues


def retry(db: Database, chosen: Selection, limit: int = MAX_SELECTION) -> int:
    """Put selected dead messages back to pending with their attempts reset."""
    if chosen.states != (schema.DEAD,):
        raise InvalidInput("Only dead messages can be retried.")

    def update_for(candidate: dict[str, Any], now: dt.datetime):
        epoch = secrets.token_hex(8)
        event = message_event(schema.RETRIED, candidate, now, epoch)
        return ({"$set": {"state": schema.PENDING, "attempts": 0, "visible_at": now,
                          "updated_at": now, "epoch": epoch, "retried_at": now},
                 "$unset": {"dead_at": ""}, "$push": {"outbox": event}}, schema.PENDING, event)

    changed, queues = _apply(db, chosen, update_for, limit)
    ringer = ringer_for(db)
    for queue in queues:  # their consumers may be waiting: ring them
        ringer.ring(queue)
    return changed


def remove(db: Database, chosen: Selection, limit: int = MAX_SELECTION,
           reason: str = "operator") -> int:
    """Remove selected messages (dead, or pending for a purge); each is counted as removed.

    Not ``delete``: that is Karait's word for acknowledging (``Message.delete``).
    ``reason`` goes with each removal's event ("operator", "retention").
    """

    def update_for(candidate: dict[str, Any], now: dt.datetime):
        event = message_event(schema.DELETED, candidate, now, was=candidate["state"],
                              reason=reason)
        return ({"$set": {"state": schema.REMOVED, "updated_at": now},
                 "$unset": {"dedupe": ""}, "$push": {"outbox": event}}, schema.REMOVED, event)

    return _apply(db, chosen, update_for, limit)[0]


CANCELLABLE = (schema.PENDING, schema.INFLIGHT)


def cancel(db: Database, message_ids: Iterable[object], reason: str, who: str,
           queue: str | None = None) -> dict[str, list[str]]:
    """Cancel messages: pending or delayed ones are removed, inflight ones revoked.

    Each is one compare-and-set from the state it was read in to ``removed``
    with a ``cancelled`` event (counted among the removed, and as cancelled),
    so an inflight message's holder is refused at its next extend, progress
    or acknowledgement: its lease no longer matches. The message is then kept
    in history with the reason (``history.keep_cancelled``), which is how the
    holder learns why (``MessageCancelled``). Returns the ids cancelled, and
    those not cancelled because they were already finished, dead or unknown.
    """
    if not isinstance(reason, str) or not reason.strip() or len(reason) > 200:
        raise InvalidInput("A cancel needs a reason: a string of 1 to 200 characters, "
                           "kept with the message and shown to its holder.")
    ids = parse_ids(message_ids)
    if queue is not None:
        validation.queue_name(queue)
    messages = db[schema.MESSAGES]
    publisher = publisher_for(db)
    done: list[str] = []
    query: dict[str, Any] = {"_id": {"$in": list(ids)}, "state": {"$in": list(CANCELLABLE)}}
    if queue is not None:
        query["queue"] = queue
    for candidate in messages.find(query, {"outbox": 0}):
        now = utcnow()
        cancelled = {"reason": reason, "who": who, "at": now, "was": candidate["state"]}
        event = message_event(schema.CANCELLED, candidate, now, was=candidate["state"],
                              reason=reason)
        match = {"_id": candidate["_id"], "queue": candidate["queue"],
                 "state": candidate["state"]}
        if candidate["state"] == schema.INFLIGHT:
            match["lease_token"] = candidate.get("lease_token")
        before = messages.find_one_and_update(
            match, {"$set": {"state": schema.REMOVED, "updated_at": now, "cancelled": cancelled},
                    "$unset": {"dedupe": "", "lease_token": ""}, "$push": {"outbox": event}},
            projection={"outbox": 0}, return_document=ReturnDocument.BEFORE)
        if before is None:
            continue  # it moved on meanwhile (acknowledged, failed, claimed again)
        history.keep_cancelled(db, before, cancelled)
        publisher.add_outbox(Outbox(before["_id"], schema.REMOVED, [event]))
        done.append(str(before["_id"]))
    return {"cancelled": done, "not_cancelled": [str(i) for i in ids if str(i) not in done]}


def purge(db: Database, queue: str) -> int:
    """Remove every pending (including delayed) and dead message of ``queue``."""
    return remove(db, selection(states=(schema.PENDING, schema.DEAD), queue=queue))
