"""``Message``: a claimed message and what its holder may do with it.

Every method is a compare-and-set on the lease token the claim handed out
and on the lease's deadline: if the lease expired (whether or not the message
was claimed again since) or the message was already acknowledged, failed or
removed, the update matches nothing, nothing changes, and
:class:`mopq.errors.LeaseLost` says so.
"""

from __future__ import annotations

import datetime as dt
import traceback as traceback_module
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bson import ObjectId
from pymongo import ReturnDocument, UpdateOne

from mopq import history, schema, validation
from mopq.clock import utcnow
from mopq.errors import InvalidInput, LeaseLost, MessageCancelled
from mopq.events import message_event
from mopq.history import checked_result
from mopq.publisher import Outbox

if TYPE_CHECKING:
    from mopq.queue import Queue

MAX_ERROR_CHARS = 2_000
MAX_TRACEBACK_CHARS = 20_000
MAX_LOG_LINE_CHARS = 2_000
# The reclaim reason of a message its holder gives back unstarted (release_all).
RELEASED = "released"


class Message:
    """A message held under a lease by this consumer."""

    def __init__(self, queue: Queue, document: dict[str, Any]) -> None:
        self.queue = queue
        self.document = document
        self.id: ObjectId = document["_id"]
        self.body: dict[str, Any] = document["body"]
        self.routing_key: str | None = document.get("routing_key")
        self.attempts: int = document["attempts"]
        self.priority: int = document.get("priority", 0)
        self.activity: str | None = document.get("activity")
        self.lease_token: str = document["lease_token"]
        self.claimed_at: dt.datetime = document["claimed_at"]
        self.visibility_timeout: float = document["visibility_timeout"]
        self.lease_expires_at: dt.datetime = document["visible_at"]
        # What the handler returned, kept with the finished message (a Worker sets it).
        self.result: Any = None

    def __repr__(self) -> str:
        return (f"Message(id={self.id}, queue={self.queue.name!r}, "
                f"attempts={self.attempts}, routing_key={self.routing_key!r})")

    def _held(self) -> dict[str, Any]:
        """The lease is ours and has not run out: a late holder is refused even when no
        one has claimed the message since (design invariant 2)."""
        return {"_id": self.id, "state": schema.INFLIGHT, "lease_token": self.lease_token,
                "visible_at": {"$gt": utcnow()}}

    def _transition(self, update: dict[str, Any], what: str,
                    events: list[dict[str, Any]] | None = None,
                    where: dict[str, Any] | None = None) -> dict[str, Any]:
        """Apply ``update`` if the lease is still ours (and ``where`` holds); ``events`` go
        into the outbox with it."""
        if events:
            update.setdefault("$push", {})["outbox"] = {"$each": events}
        document = self.queue.messages.find_one_and_update(
            {**self._held(), **(where or {})}, update, projection={"state": 1, "visible_at": 1},
            return_document=ReturnDocument.AFTER,
        )
        if document is None:
            raise self._refusal(what)
        if events:
            self.queue.publisher.add_outbox(Outbox(self.id, document["state"], events))
        return document

    def _refusal(self, what: str) -> LeaseLost | MessageCancelled:
        """Why a holder action matched nothing: an operator's cancel, else a lost lease."""
        cancelled = history.cancellation(self.queue.db, self.id)
        if cancelled is not None:
            return MessageCancelled(
                f"Cannot {what} message {self.id} of queue {self.queue.name!r}: "
                f"{cancelled.get('who')} cancelled it ({cancelled.get('reason')}). Stop "
                "working on it; nothing was changed.")
        return LeaseLost(
            f"Cannot {what} message {self.id} of queue {self.queue.name!r}: its lease "
            f"(token {self.lease_token}) is no longer held. It expired and the message "
            "was re-delivered, or it was already acknowledged, failed or removed. "
            "Nothing was changed. Extend the lease (Message.extend / progress) for long work."
        )

    def _event(self, kind: str, now: dt.datetime, **extra: Any) -> dict[str, Any]:
        snapshot = {"_id": self.id, "queue": self.queue.name, "routing_key": self.routing_key,
                    "activity": self.activity}
        return message_event(kind, snapshot, now, self.lease_token, **extra)

    @property
    def cancelled(self) -> bool:
        """Whether an operator cancelled this message (one query; for long handlers to check).

        ``extend``, ``progress`` and the acknowledgement raise ``MessageCancelled``
        then; a handler that calls none of them for a while can look here.
        """
        return history.cancellation(self.queue.db, self.id) is not None

    def delete(self, result: Any = None) -> None:
        """Acknowledge: the work is done and the message goes away (Karait's word).

        ``result`` (JSON-like, at most 64 KiB encoded) is kept with the finished
        message in history, where ``Queue.write(...).result()`` and the HTTP API
        find it.
        """
        result = checked_result(result)
        if "sequence" in self.document:  # an activity's step: its ack moves the instance on
            from mopq.activities import transitions
            transitions.acknowledge(self, result)
            return
        update, events = self._ack(result, utcnow())
        self._transition(update, "acknowledge", events)
        if "parent" in self.document:  # a fan-out child: counted into its activity
            from mopq.activities import transitions
            transitions.after_ack(self, result)

    def _ack(self, result: Any, now: dt.datetime) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The acknowledgement's update (docs/FORMAT.md §4.5, without its outbox push) and
        its event."""
        duration = (now - self.claimed_at).total_seconds()
        finished: dict[str, Any] = {"state": schema.DONE, "updated_at": now, "done_at": now,
                                    "acked_lease": self.lease_token}
        if result is not None:
            finished["result"] = result
        return ({"$set": finished, "$unset": {"lease_token": "", "dedupe": ""}},
                [self._event(schema.ACKED, now, duration=duration, attempts=self.attempts)])

    @property
    def bulk_ackable(self) -> bool:
        """Whether ``acknowledge_all`` takes this one in bulk: not a fan-out child, whose
        acknowledgement is then counted into another document (an activity's steps go in
        a bulk of their own: ``mopq.activities.transitions.acknowledge_steps``)."""
        return "parent" not in self.document

    ack = delete

    def fail(self, reason: str | BaseException = "failed", traceback: str | None = None) -> str:
        """Record a failed attempt: retry after the queue's backoff, or dead at max_attempts.

        ``reason`` may be an exception; its traceback is then recorded too. Returns
        the new state: ``"pending"`` (will be retried) or ``"dead"``.
        """
        if isinstance(reason, BaseException):
            if traceback is None:
                traceback = "".join(traceback_module.format_exception(reason))
            reason = f"{type(reason).__name__}: {reason}"
        if not isinstance(reason, str):
            raise InvalidInput(f"fail() takes a reason string or an exception, got {reason!r}.")
        reason = reason[:MAX_ERROR_CHARS]
        traceback = traceback[-MAX_TRACEBACK_CHARS:] if traceback else None
        now = utcnow()
        dead = self.attempts >= self.queue.max_attempts
        error = {"attempt": self.attempts, "at": now, "error": reason, "traceback": traceback,
                 "worker": self.document.get("leased_by")}
        events = [self._event(schema.FAILED, now, error=reason[:200], attempts=self.attempts,
                              duration=(now - self.claimed_at).total_seconds())]
        update: dict[str, Any] = {
            "$set": {"updated_at": now, "last_error": reason, "traceback": traceback},
            "$unset": {"lease_token": ""},
            "$push": {"errors": {"$each": [error], "$slice": -schema.ERRORS_KEPT}},
        }
        if dead:
            update["$set"].update(state=schema.DEAD, dead_at=now)
            events.append(self._event(schema.DEAD_EVENT, now, error=reason[:200]))
        else:
            delay = self.queue.retry_delay(self.attempts)
            update["$set"].update(state=schema.PENDING,
                                  visible_at=now + dt.timedelta(seconds=delay))
        document = self._transition(update, "fail", events)
        if dead and ("sequence" in self.document or "parent" in self.document):
            from mopq.activities import transitions  # compensation, or counted as dead
            transitions.after_dead(self)
        return document["state"]

    def extend(self, seconds: float | None = None) -> dt.datetime:
        """Hold the lease ``seconds`` longer from now (default: the visibility timeout)."""
        seconds = validation.non_negative("seconds", seconds, allow_none=True)
        if seconds is None:
            seconds = self.visibility_timeout
        now = utcnow()
        deadline = now + dt.timedelta(seconds=seconds)
        self._transition({"$set": {"visible_at": deadline, "updated_at": now}}, "extend")
        self.lease_expires_at = deadline
        return deadline

    def progress(self, fraction: float, note: str | None = None) -> None:
        """Report progress (0..1) and renew the lease: a per-task heartbeat.

        The lease then lasts at least the visibility timeout from now; a longer
        lease set by ``extend()`` is kept.
        """
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) \
                or not 0 <= fraction <= 1:
            raise InvalidInput(f"progress fraction must be a number from 0 to 1, got {fraction!r}.")
        if note is not None and not isinstance(note, str):
            raise InvalidInput(f"progress note must be a string, got {note!r}.")
        now = utcnow()
        deadline = now + dt.timedelta(seconds=self.visibility_timeout)
        document = self._transition(
            {"$set": {"progress": {"fraction": float(fraction), "note": note, "at": now},
                      "updated_at": now},
             "$max": {"visible_at": deadline}},
            "report progress on",
        )
        self.lease_expires_at = document["visible_at"]

    def log(self, line: str) -> None:
        """Append a line to the message's log (the last 100 are kept and shown)."""
        if not isinstance(line, str):
            raise InvalidInput(f"log() takes a string, got {type(line).__name__}.")
        now = utcnow()
        entry = {"at": now, "line": line[:MAX_LOG_LINE_CHARS]}
        self._transition({"$push": {"log": {"$each": [entry], "$slice": -schema.LOG_LINES_KEPT}}},
                         "log on")


def acknowledge_all(messages: Sequence[Message]) -> list[LeaseLost | MessageCancelled | None]:
    """Acknowledge ``messages`` (each with its ``result``) in one round trip.

    Each acknowledgement is ``Message.delete``'s own compare-and-set on its
    lease (docs/FORMAT.md §4.5), all sent in one unordered ``update`` command.
    Returns, in order, None for each one acknowledged, or the ``LeaseLost`` /
    ``MessageCancelled`` that ``delete`` would have raised for it (nothing was
    changed for that one). Which matched is read back only when not all did.
    Activity steps go in a bulk of their own; fan-out children one by one
    (``bulk_ackable``). ``PyMongoError`` propagates: then any of them may or
    may not be acknowledged, as with a ``delete`` whose answer was lost;
    calling again acknowledges the rest and refuses the others.
    """
    outcome: list[LeaseLost | MessageCancelled | None] = [None] * len(messages)
    bulk: dict[int, list[tuple[int, Message]]] = {}
    steps = [(position, m) for position, m in enumerate(messages) if "sequence" in m.document]
    if steps:  # an activity's steps: each moves its instance on (mopq.activities)
        from mopq.activities import transitions
        for (position, _), refused in zip(steps, transitions.acknowledge_steps(
                [m for _, m in steps]), strict=True):
            outcome[position] = refused  # type: ignore[assignment]
    for position, message in enumerate(messages):
        if "sequence" in message.document:
            continue
        if message.bulk_ackable:
            bulk.setdefault(id(message.queue.db), []).append((position, message))
            continue
        try:
            message.delete(result=message.result)
        except (LeaseLost, MessageCancelled) as refused:
            outcome[position] = refused
    for group in bulk.values():
        now = utcnow()
        acks, outboxes = [], []
        for _, message in group:
            update, events = message._ack(checked_result(message.result), now)
            update["$push"] = {"outbox": {"$each": events}}
            acks.append(UpdateOne(message._held(), update))
            outboxes.append(Outbox(message.id, schema.DONE, events))
        messages_collection = group[0][1].queue.messages
        matched = messages_collection.bulk_write(acks, ordered=False).matched_count
        mine = None if matched == len(group) else _matched(group, now)
        for (position, message), outbox in zip(group, outboxes, strict=True):
            if mine is None or mine[position] == MATCHED:
                message.queue.publisher.add_outbox(outbox)
            elif mine[position] == REFUSED:
                outcome[position] = message._refusal("acknowledge")
    return outcome


MATCHED, ACKED_BEFORE, REFUSED = "matched", "acked before", "refused"


def _matched(group: list[tuple[int, Message]], now: dt.datetime) -> dict[int, str]:
    """After an acknowledgement in bulk at ``now`` that did not match every message: for
    each, whether this call's update matched it, an earlier acknowledgement of the same
    lease did (a retry after a lost answer, or the handler's own ``delete``: its event is
    that call's to publish, or the sweep's), or none did (the lease is lost).

    This call's acknowledgement is the one whose ``done_at`` is ``now`` as stored
    (to the millisecond): an earlier one of the same lease was answered before this
    call began.
    """
    stored_now = now.replace(microsecond=now.microsecond // 1000 * 1000)
    found = {document["_id"]: document for document in group[0][1].queue.messages.find(
        {"_id": {"$in": [message.id for _, message in group]}},
        {"state": 1, "acked_lease": 1, "done_at": 1})}
    outcome = {}
    for position, message in group:
        document = found.get(message.id)
        if document is None:  # archived since: by an earlier acknowledgement's publisher
            acked = message.queue.acknowledged(message.id, message.lease_token)
            outcome[position] = ACKED_BEFORE if acked else REFUSED
        elif document.get("state") != schema.DONE \
                or document.get("acked_lease") != message.lease_token:
            outcome[position] = REFUSED
        else:
            outcome[position] = MATCHED if document.get("done_at") == stored_now \
                else ACKED_BEFORE
    return outcome


def release_all(messages: Sequence[Message]) -> list[Message]:
    """Give back messages claimed but never started: pending again at once; those released.

    For a holder that claimed ahead (``Worker``) and will not start them (it
    stops, goes quiet, the queue is paused, or they waited too long): the
    reclaim of docs/FORMAT.md §4.10 with reason ``"released"``, filtered on
    this lease, in one round trip, that also takes back the attempt the claim
    counted (``$inc: {attempts: -1}``), since no handler saw the message. A
    message whose lease is no longer this holder's is left as it is.
    """
    if not messages:
        return []
    now = utcnow()
    releases, outboxes = [], []
    for message in messages:
        event = message._event(schema.RECLAIMED, now, reason=RELEASED)
        releases.append(UpdateOne(
            {"_id": message.id, "state": schema.INFLIGHT, "lease_token": message.lease_token},
            {"$set": {"state": schema.PENDING, "visible_at": now, "updated_at": now},
             "$unset": {"lease_token": "", "leased_by": ""}, "$inc": {"attempts": -1},
             "$push": {"outbox": event}}))
        outboxes.append(Outbox(message.id, schema.PENDING, [event]))
    collection = messages[0].queue.messages
    matched = collection.bulk_write(releases, ordered=False).matched_count
    released = list(messages)
    if matched != len(messages):
        # Only a release pushes a "reclaimed" entry with this reason (the lease's other
        # ends give "lease expired" or "worker dead" under the same id).
        back = {document["_id"] for document in collection.find(
            {"_id": {"$in": [m.id for m in messages]},
             "outbox": {"$elemMatch": {"reason": RELEASED,
                                       "id": {"$in": [o.events[0]["id"] for o in outboxes]}}}},
            {"_id": 1})}
        released = [m for m in messages if m.id in back]
    kept = {m.id for m in released}
    for message, outbox in zip(messages, outboxes, strict=True):
        if message.id in kept:
            message.queue.publisher.add_outbox(outbox)
    return released
