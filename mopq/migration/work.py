"""What moves: each collection of unfinished work, how one document of it moves, how an
imported one is checked.

:data:`WORK` lists every collection of unfinished work, in the order it moves;
a kind kept in a collection of its own adds a :class:`Work` there and is
then moved, counted in dry runs, verified, exported and imported like
messages. A message is moved whole (every field, its own and unknown ones),
so work that lives in message documents moves with them in the states of
:data:`MESSAGE_STATES`; a state of its own that must move too joins there,
with how it is counted in :func:`message_plan`. :data:`FINISHED` lists the
collections of finished work that are copied as they are (by ``_id``:
already there means copied).

A plan is decided from what was read of a document, and the move's commit
applies only if the document is still exactly that (:attr:`Plan.guard`), so
a document that changes while it moves is never moved in a state it no
longer has (see :mod:`mopq.migration`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bson import ObjectId
from pymongo.database import Database

from mopq import schema, validation
from mopq.activities.recovery import SPAWN_GRACE_SECONDS
from mopq.errors import InvalidInput
from mopq.events import message_event
from mopq.publisher import Outbox, publish_outboxes

# The reason of the source's ``deleted`` event of a moved message.
MIGRATED = "migrated"

# How a moved document is reported, besides its state.
DELAYED = "delayed"
LEASE_EXPIRED = "inflight, lease expired"
HELD = "inflight, held"
FORCED = "inflight, held (--force)"
WAITING = "waiting (fan-out)"
SPAWNING = "waiting, children not written yet"


@dataclass(frozen=True)
class Plan:
    """How one source document moves, decided from what was read of it.

    ``copy`` is the target's document in its real state (None: it does not
    move now, ``skip`` says why); ``guard`` is what the source document must
    still be, besides its ``_id``, for the commit to apply; ``events`` are
    pushed into the source's outbox by the commit; ``version`` is the
    source's ``updated_at`` as read (the staged copy carries it, so a copy of
    an older version is never made visible).
    """

    copy: dict[str, Any] | None
    guard: dict[str, Any]
    events: list[dict[str, Any]]
    version: Any
    label: str
    skip: str | None = None
    forced: bool = False          # a held lease taken away (--force): may run twice


PlanFunction = Callable[[dict[str, Any], dt.datetime, bool, str], Plan]


def message_plan(doc: dict[str, Any], now: dt.datetime, force: bool, token: str) -> Plan:
    """How a message moves: as it is, but an inflight one as pending, with its lease ended.

    Pending, delayed and dead messages move as they are. An inflight one
    moves only once its lease ran out, or with ``force``; it then arrives
    pending (as a reclaim would leave it) and the commit pushes ``reclaimed``
    (ending the lease on the source, so that claim is counted once, there).
    Every move pushes ``deleted`` (``reason: "migrated"``, id
    ``<message>:<token>:rm``): the source counts the message as removed.
    The copy leaves the outbox behind: those events describe the source's
    transitions and are published and counted there.
    """
    state = doc.get("state")
    version = doc.get("updated_at")
    guard: dict[str, Any] = {"state": state, "updated_at": version}
    copy = dict(doc)
    copy["outbox"] = []
    if state == schema.WAITING:
        return _waiting_plan(doc, copy, guard, now)
    label = DELAYED if state == schema.PENDING and doc["visible_at"] > now else str(state)
    events = []
    was = state
    forced = False
    if state == schema.INFLIGHT:
        expired = doc["visible_at"] <= now
        if not expired and not force:
            return Plan(None, {}, [], version, HELD,
                        skip=f"its lease runs until {doc['visible_at'].isoformat()}")
        forced = not expired
        guard["lease_token"] = doc.get("lease_token")
        if not force:
            guard["visible_at"] = {"$lte": now}
        events.append(message_event(schema.RECLAIMED, doc, now, doc.get("lease_token"),
                                    reason="migrated while held (--force)" if forced
                                    else "lease expired"))
        copy.update(state=schema.PENDING, visible_at=now)
        copy.pop("lease_token", None)
        copy.pop("leased_by", None)
        was = schema.PENDING
        label = FORCED if forced else LEASE_EXPIRED
    events.append(message_event(schema.DELETED, doc, now, token, was=was, reason=MIGRATED))
    return Plan(copy, guard, events, version, label, forced=forced)


def _waiting_plan(doc: dict[str, Any], copy: dict[str, Any], guard: dict[str, Any],
                  now: dt.datetime) -> Plan:
    """How an activity instance waiting for its fan-out children moves: as it is, no events.

    Entering a fan-out step writes no event in its queue (its children are
    the step's messages), so its move counts nothing either. The guard also
    names the children counted so far: a count that lands in the same
    millisecond as the read still fails the commit. Its children move as the
    messages they are; one that finishes on either side is counted into the
    parent where the parent is (by the acker, or by the sweep reading
    history, which the move copies): ``counted`` lists the ids counted, so
    each child counts once. A parent whose children are not all written yet
    is held while its spawner may still be writing them (a child written on
    the source after its parent left would wait there); the move writes those
    of a spawner dead for longer (:meth:`Move.run`), as the sweep would.
    """
    children = (doc.get("sequence") or {}).get("children") or {}
    version = doc.get("updated_at")
    if children.get("spawned") is False:
        since = children.get("since")
        return Plan(None, {}, [], version, SPAWNING,
                    skip=f"its children are being written (since {since}); run again in "
                         f"{SPAWN_GRACE_SECONDS:g} s")
    guard["sequence.children.finished"] = children.get("finished")
    return Plan(copy, guard, [], version, WAITING)


def plain_plan(doc: dict[str, Any], now: dt.datetime, force: bool, token: str) -> Plan:
    """Move a document as it is, guarded by its ``state`` and ``updated_at``; no events.

    For a kind of work whose documents carry ``state`` and an ``updated_at``
    renewed by every change of theirs, and whose moves need not be counted.
    """
    return Plan(dict(doc), {"state": doc.get("state"), "updated_at": doc.get("updated_at")},
                [], doc.get("updated_at"), str(doc.get("state")))


def _is_date(value: Any) -> bool:
    return isinstance(value, dt.datetime)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _identity_problem(doc: dict[str, Any], what: str) -> str | None:
    """Why a message's or history document's ``_id`` or ``queue`` will not do, or None."""
    if not isinstance(doc.get("_id"), ObjectId):
        return f"{what}'s _id must be an ObjectId"
    try:
        validation.queue_name(doc.get("queue"))
    except InvalidInput as error:
        return str(error)
    return None


# Unfinished message states; ``waiting``: an activity instance whose fan-out children run.
MESSAGE_STATES = (schema.PENDING, schema.INFLIGHT, schema.DEAD, schema.WAITING)


def check_message(doc: dict[str, Any]) -> str | None:
    """Why an imported message cannot be stored (docs/FORMAT.md §3.1), or None."""
    problem = _identity_problem(doc, "a message")
    if problem:
        return problem
    if doc.get("state") not in MESSAGE_STATES:
        return (f"state {doc.get('state')!r} is not one of an unfinished message "
                f"({', '.join(MESSAGE_STATES)})")
    if not isinstance(doc.get("body"), dict):
        return "body must be a document"
    for name in ("created_at", "updated_at", "visible_at", "expire_at"):
        if not _is_date(doc.get(name)):
            return f"{name} must be a date"
    for name in ("attempts", "priority"):
        if not _is_int(doc.get(name)):
            return f"{name} must be an integer"
    if doc.get("routing_key") is not None and not isinstance(doc["routing_key"], str):
        return "routing_key must be a string or null"
    for name in ("dedupe", "dedupe_key", "activity", "once", "lease_token"):
        if name in doc and not isinstance(doc[name], str):
            return f"{name} must be a string"
    return None


def check_history(doc: dict[str, Any]) -> str | None:
    """Why an imported history document cannot be stored (docs/FORMAT.md §9), or None."""
    problem = _identity_problem(doc, "a history document")
    if problem:
        return problem
    if "done_at" in doc and not _is_date(doc["done_at"]):
        return "done_at must be a date"
    return None


def publish_messages(db: Database, outboxes: list[Outbox], republished: bool) -> None:
    """Publish the events moves pushed into messages' outboxes (as any transition's)."""
    publish_outboxes(db, outboxes, republished=republished)


@dataclass(frozen=True)
class Work:
    """A collection of unfinished work that moves between deployments.

    ``states`` are its unfinished states (what moves); ``plan`` says how one
    document moves; ``check`` validates an imported one (None when fine,
    else why not); ``publish`` publishes the events a commit pushed into such
    documents' outboxes (None when its plan pushes none); ``queue_field``
    names the field ``--queue`` selects on and reports group by.
    """

    collection: str
    states: tuple[str, ...]
    plan: PlanFunction
    check: Callable[[dict[str, Any]], str | None]
    publish: Callable[[Database, list[Outbox], bool], None] | None = None
    queue_field: str = "queue"

    def selection(self, queues: tuple[str, ...] | None) -> dict[str, Any]:
        """The query of its unfinished documents (of these queues only, when given)."""
        return {"state": {"$in": list(self.states)}, **self.of_queues(queues)}

    def unfinished(self, doc: dict[str, Any]) -> bool:
        """Whether ``doc`` as read is unfinished work, checked again on what was returned.

        The embedded engine was seen returning, under concurrent updates, a
        document that no longer matched the query's state (a message
        acknowledged meanwhile): such a document is skipped, never planned,
        since the commit's guard takes its state as read.
        """
        return doc.get("state") in self.states

    def moved_to(self, target_id: str | None, queues: tuple[str, ...] | None) -> dict[str, Any]:
        """The query of its documents this source moved to ``target_id``: the record of a move."""
        return {"state": schema.MOVED, "moved_to": target_id, **self.of_queues(queues)}

    def of_queues(self, queues: tuple[str, ...] | None) -> dict[str, Any]:
        """The part of a query that keeps only these queues' documents ({} for all)."""
        return {self.queue_field: {"$in": list(queues)}} if queues else {}


MESSAGES = Work(schema.MESSAGES, MESSAGE_STATES, message_plan, check_message,
                publish_messages)
# Every collection of unfinished work, in the order it moves (see the docstring above).
WORK: tuple[Work, ...] = (MESSAGES,)
# Finished work copied as it is: history keeps done messages' results (Queue.result)
# and write-once keys (Queue.write_once).
FINISHED: dict[str, Callable[[dict[str, Any]], str | None]] = {schema.HISTORY: check_history}


def finished_selection(queues: tuple[str, ...] | None) -> dict[str, Any]:
    """The query of the finished documents to copy (of these queues only, when given)."""
    return {"queue": {"$in": list(queues)}} if queues else {}


def work_for(collection: str) -> Work | None:
    """The kind of unfinished work kept in ``collection``, or None."""
    return next((work for work in WORK if work.collection == collection), None)


def queue_names(queues: Any) -> tuple[str, ...] | None:
    """``--queue`` values checked as queue names (None: every queue)."""
    return tuple(validation.queue_name(q) for q in queues) if queues else None
