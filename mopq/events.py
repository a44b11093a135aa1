"""Business-log events and their deterministic ids.

Why deterministic ids: a transition's event is written into the message's own
``outbox`` in the same atomic update as the transition, and published to the
``events`` collection later, possibly more than once (a process can die after
inserting the event and before clearing the outbox; the sweep then publishes
it again). Each id names the transition uniquely, so a repeat is recognisable:
the insert fails on the duplicate ``_id``, or, if the first copy was already
applied and deleted, the collector's receipts skip it.

A transition is unique given the message id and the lease token it ended or
began (one claim per token; one of ack/fail/reclaim ends a token), or the
message id alone for things that happen once in a message's life (written,
expired, removed), or the operator-retry nonce ``epoch``; a claim that let the
engine choose its message is named by a fresh ObjectId of its own.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from bson import ObjectId

from mopq.schema import (
    ACKED,
    BUSINESS,
    CANCELLED,
    CLAIMED,
    DEAD_EVENT,
    DELETED,
    EXPIRED_EVENT,
    FAILED,
    RECLAIMED,
    RETRIED,
    WRITTEN,
    partition_of,
)

_SUFFIX = {WRITTEN: "w", CLAIMED: "c", ACKED: "a", FAILED: "f", DEAD_EVENT: "d",
           RECLAIMED: "r", EXPIRED_EVENT: "x", DELETED: "rm", RETRIED: "rt", CANCELLED: "cn"}


def event_id(kind: str, message_id: object, token: str | None = None) -> str:
    """The id of the event of ``kind`` of a message's transition (docs/FORMAT.md §5.2)."""
    return f"{message_id}:{token}:{_SUFFIX[kind]}" if token else f"{message_id}:{_SUFFIX[kind]}"


def message_event(kind: str, message: dict[str, Any], at: dt.datetime,
                  token: str | None = None, **extra: Any) -> dict[str, Any]:
    """The event of one transition of ``message`` (a message document or its key fields).

    ``token`` is the lease token (or retry epoch) that makes the transition
    unique; ``None`` for once-in-a-life transitions.
    """
    message_id = str(message["_id"])
    event = {
        "id": event_id(kind, message_id, token),
        "kind": kind,
        "partition": partition_of(message_id),
        "at": at,
        "queue": message["queue"],
        "routing_key": message.get("routing_key"),
        "message": message_id,
    }
    if message.get("activity") is not None:
        event["activity"] = message["activity"]
    event.update(extra)
    return event


def written_entry(message_id: Any, at: dt.datetime, delayed: bool) -> dict[str, Any]:
    """The "written" event as a new message's outbox stores it: without what the message says.

    Messages are written in bulk with this entry in their outbox; leaving out
    the partition, queue, routing key, message id and activity keeps that write
    small and spares the producer building the full event. :func:`expanded`
    rebuilds it (the publisher in the background, or the sweep from the document).
    """
    return {"id": f"{message_id}:{_SUFFIX[WRITTEN]}", "kind": WRITTEN, "at": at,
            "delayed": delayed}


def first_claim_entry(at: dt.datetime, worker: str | None) -> dict[str, Any]:
    """The "claimed" entry of a claim that chose its message in the engine (FORMAT §4.3).

    Such a claim (one sorted ``findAndModify``) cannot know the message's id
    before its update, so the id cannot name the message: a fresh ObjectId,
    unique on its own, names the claim instead. The message fields are left
    out, as in :func:`written_entry`, and rebuilt from the document.
    """
    return {"id": event_id(CLAIMED, str(ObjectId())), "kind": CLAIMED, "at": at,
            "worker": worker}


def expanded(entry: dict[str, Any], message: dict[str, Any]) -> dict[str, Any]:
    """The full event of an outbox entry of ``message`` (stored or already full)."""
    full = message_event(entry["kind"], message, entry["at"])
    full.update(entry)
    return full


def business_event(name: str, value: float, tags: dict[str, str],
                   at: dt.datetime) -> dict[str, Any]:
    """An ``emit()`` event; its random id is fixed once, so re-sends stay one event."""
    event_id = uuid.uuid4().hex
    return {"id": event_id, "kind": BUSINESS, "partition": partition_of(event_id), "at": at,
            "name": name, "value": value, "tags": tags}


def as_document(event: dict[str, Any]) -> dict[str, Any]:
    """The ``events`` collection's document for an outbox entry (``id`` becomes ``_id``)."""
    document = {key: value for key, value in event.items() if key != "id"}
    document["_id"] = event["id"]
    return document
