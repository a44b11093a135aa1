"""How an instance moves: each move is one compare-and-set update of its one document.

Why a step can be neither skipped nor recorded twice, without transactions:

* The instance *is* the message of the step it is at. Step N+1 has no
  message of its own that could be claimed early: the same update that
  records step N done (its result, attempts, acknowledging lease) changes the
  document's queue to step N+1's and its state to pending. Before that update
  nothing of step N+1 exists in any queue; after it, step N is recorded.
* That update's filter is the claim's lease (``_id``, ``inflight``, the lease
  token, the lease not run out) *and* the position the holder was given
  (``sequence.phase``, ``sequence.at``). A step delivered twice (its worker
  was killed, its lease ran out, another worker claimed it) has two holders,
  but only the current lease matches: the late one gets ``LeaseLost`` and
  changes nothing. So each step is recorded done once, and the position moves
  from N to N+1 once. The handler itself may run twice (delivery is at least
  once; handlers are idempotent by the activity key), never the transition.
* A step that runs out of attempts goes ``dead`` by the ordinary fail; the
  move into compensation is a second update whose filter is that dead state
  at that position (and its ``dead_at``), so it happens once whoever tries it
  (the failing process at once, or the sweep after a crash), and not at all
  if an operator retried the step first.
* Fan-in (``fanout``) counts each child into the parent by a filter that
  names the count it read and excludes the child's id, and the update that
  counts the last child is the one that moves the parent on.

Every move pushes the events that keep the counters exact: leaving a step by
acknowledgement is ``acked`` in its queue; entering one is ``written`` in the
next (id ``<message>:s<N>:w``, once per step), and ``claimed`` there too when
the acknowledging worker holds it at once (claim on move: ``_following``); a
step that went dead and is
left for compensation is ``deleted`` from its queue (``<message>:s<N>:rm``,
reason ``activity compensating``), so that each queue's conservation law
holds: ``written = done + removed + dead + pending + inflight + delayed``.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import bson
from bson.codec_options import CodecOptions
from pymongo import ReturnDocument, UpdateOne
from pymongo.database import Database
from pymongo.errors import PyMongoError

from mopq import schema
from mopq.activities import fanout
from mopq.activities.document import (
    FORWARD,
    Move,
    claimed,
    compensating,
    entering,
    snapshot,
    step_token,
)
from mopq.clock import utcnow
from mopq.errors import InvalidInput, MopqError
from mopq.events import message_event
from mopq.history import checked_result
from mopq.message import Message
from mopq.publisher import Outbox, publisher_for
from mopq.queue import new_token

if TYPE_CHECKING:
    from mopq.queue import Queue

log = logging.getLogger("mopq.activities")


class Following(NamedTuple):
    """Where a holder claims the instance on its move: the queue, the lease, and ``take``,
    which hands the claimed ``Message`` to the holder's thread."""

    queue: Queue
    timeout: float
    take: Callable[[Message], None]


@dataclass
class _Ack:
    """One step's acknowledgement as prepared: the update and what follows once it matched."""

    message: Message
    where: dict[str, Any]
    update: dict[str, Any]
    events: list[dict[str, Any]]
    move: Move
    done_field: str  # the step record's time this acknowledgement sets (to tell it matched)
    following: Following | None


def acknowledge(message: Message, result: Any) -> None:
    """Record the held step (or compensation) done and move the instance on, in one update.

    Raises ``LeaseLost`` (and changes nothing) if the lease is no longer
    held; ``InvalidInput`` (and changes nothing) if the next step fans out and
    ``result`` is not a list. If the holder's ``follow`` takes the next queue,
    the instance is claimed there by this update and handed to the holder
    (``_following``).
    """
    ack = _prepared(message, result, utcnow())
    message._transition(ack.update, "acknowledge", ack.events, where=ack.where)
    _moved_on(ack)


def acknowledge_steps(messages: Sequence[Message]) -> list[MopqError | None]:
    """Acknowledge held steps (each with its ``result``) in one round trip; for a Worker.

    Each is ``acknowledge``'s own update, all sent in one unordered ``update``
    command. Returns, in order, None for each acknowledged (by this call, or
    by an earlier one of the same lease whose answer was lost: its events are
    that call's), else what ``acknowledge`` would have raised (nothing was
    changed for it). Which matched is read back only when not all did: the
    one whose step record has this call's time and lists the lease.
    ``PyMongoError`` propagates, as from ``acknowledge``.
    """
    now = utcnow()
    outcome: list[MopqError | None] = [None] * len(messages)
    acks: list[tuple[int, _Ack]] = []
    for position, message in enumerate(messages):
        try:
            acks.append((position, _prepared(message, checked_result(message.result), now)))
        except InvalidInput as problem:  # a fan-out's items not a list: nothing moves
            outcome[position] = problem
    if not acks:
        return outcome
    collection = acks[0][1].message.queue.messages
    statements = [UpdateOne({**ack.message._held(), **ack.where},
                            {**ack.update, "$push": {**ack.update.get("$push", {}),
                                                     "outbox": {"$each": ack.events}}})
                  for _, ack in acks]
    matched = collection.bulk_write(statements, ordered=False).matched_count
    mine = None if matched == len(acks) else _matched([ack for _, ack in acks], now)
    for number, (position, ack) in enumerate(acks):
        if mine is None or mine[number] is True:
            ack.message.queue.publisher.add_outbox(
                Outbox(ack.message.id, ack.move.state, ack.events))
            _moved_on(ack)
        elif mine[number] is False:
            outcome[position] = ack.message._refusal("acknowledge")
    return outcome


def _prepared(message: Message, result: Any, now: dt.datetime) -> _Ack:
    document = message.document
    sequence = document["sequence"]
    index, phase = sequence["at"], sequence["phase"]
    prefix = f"sequence.steps.{index}"
    if phase == FORWARD:
        recorded = {f"{prefix}.result": result, f"{prefix}.done_at": now,
                    f"{prefix}.attempts": message.attempts,
                    f"{prefix}.acked_lease": message.lease_token,
                    f"{prefix}.worker": document.get("leased_by")}
        if document.get("errors"):
            recorded[f"{prefix}.errors"] = document["errors"]
        move = entering(document, index + 1, result, now)
        done_field = "done_at"
    else:
        recorded = {f"{prefix}.compensation_result": result, f"{prefix}.compensated_at": now,
                    f"{prefix}.compensation_attempts": message.attempts}
        move = compensating(document, index, now)
        done_field = "compensated_at"
    recorded["acked_lease"] = message.lease_token
    following = _following(message, move, now)
    if following is not None:
        move = claimed(move, document, new_token(), following.queue.worker,
                       following.timeout, now)
    acked = message._event(schema.ACKED, now, duration=(now - message.claimed_at)
                           .total_seconds(), attempts=message.attempts)
    update = move.update(recorded)
    update["$push"] = {"sequence.leases": message.lease_token}  # a repeated ack finds it
    update = _whole_sequence(update, sequence)
    return _Ack(message, {"sequence.phase": phase, "sequence.at": index}, update,
                [acked, *move.events], move, done_field, following)


def _whole_sequence(update: dict[str, Any], sequence: dict[str, Any]) -> dict[str, Any]:
    """``update`` with its changes of ``sequence.*`` made to the held ``sequence`` and set
    as one field.

    The same document results, because nothing but the lease's holder changes
    an inflight instance and the update's filter is that lease (see
    ``_after``). Why: the embedded engine applies each dotted path of a
    ``$set`` by walking the document, and an acknowledgement names a dozen of
    them; one field made the bulk acknowledgement of 65 steps take 5.9 ms
    instead of 8.7 (median of 12, one engine, nothing else running).
    """
    whole = {"sequence": dict(sequence)}
    copied = {id(whole), id(whole["sequence"])}
    changed = {operator: dict(fields) for operator, fields in update.items()}
    for operator in ("$set", "$unset", "$push"):
        fields = changed.get(operator, {})
        for path in [path for path in fields if path.startswith("sequence.")]:
            _apply(whole, operator, path, fields.pop(path), copied)
    changed.setdefault("$set", {})["sequence"] = whole["sequence"]
    return {operator: fields for operator, fields in changed.items() if fields}


def _moved_on(ack: _Ack) -> None:
    """What follows a matched acknowledgement: hand on the claimed instance, or ring."""
    message = ack.message
    if ack.following is not None:
        ack.following.take(Message(ack.following.queue, _after(
            message.document, ack.update, message.queue.db.codec_options)))
    fanout.after_move(message.queue.db, message.id, ack.move)


def _matched(acks: list[_Ack], now: dt.datetime) -> list[bool | None]:
    """After a bulk acknowledgement that did not match every step: for each, True if this
    call's update matched it, None if an earlier acknowledgement of the same lease did,
    False if none did (the lease is lost)."""
    stored_now = now.replace(microsecond=now.microsecond // 1000 * 1000)
    db = acks[0].message.queue.db
    ids = [ack.message.id for ack in acks]
    fields = {"sequence.leases": 1, "sequence.steps": 1}
    found = {d["_id"]: d for d in db[schema.MESSAGES].find({"_id": {"$in": ids}}, fields)}
    missing = [i for i in ids if i not in found]
    if missing:  # finished and archived since: by an earlier acknowledgement's publisher
        found.update({d["_id"]: d for d in db[schema.HISTORY].find(
            {"_id": {"$in": missing}}, fields)})
    outcome: list[bool | None] = []
    for ack in acks:
        sequence = (found.get(ack.message.id) or {}).get("sequence") or {}
        if ack.message.lease_token not in (sequence.get("leases") or []):
            outcome.append(False)
            continue
        step = sequence["steps"][ack.where["sequence.at"]]
        outcome.append(True if step.get(ack.done_field) == stored_now else None)
    return outcome


def _following(message: Message, move: Move, now: dt.datetime) -> Following | None:
    """Where the holder claims the instance with this acknowledgement, or None.

    Claim on move: a ``Worker`` sets ``message.follow(name)``, which gives the
    queue ``name``, the worker's visibility timeout (None for the queue's
    policy) and where to hand a claimed message (the acknowledging thread's
    messages claimed ahead) when that thread would take a message of it now.
    The instance then enters the next step (or compensation) inflight under a
    fresh lease of that thread, which runs it without a candidate read.
    Why this can neither skip a step nor run one into a wrong state: it is
    the same update, with the same filter (this lease, this position), as the
    plain move; it only adds what a claim of the pending instance would set,
    and the new lease is an ordinary one: the new holder's acknowledgement is
    filtered on it and on the new position, and if that holder dies (or never
    starts it) the lease runs out and the step is delivered again, as after
    any claim. Not when the queue is paused or rate limited (its claims go
    through the usual read), nor for a move into a fan-out's wait or the end.
    """
    follow = getattr(message, "follow", None)
    if follow is None or move.state != schema.PENDING:
        return None
    if (message.document.get("expire_at") or schema.NEVER) <= now:
        return None
    found = follow(move.queue)
    if found is None:
        return None
    queue, timeout, take = found
    record = queue.record
    if record.paused is not None or record.rate_limit() is not None:
        return None
    return Following(queue, timeout if timeout is not None
                     else record.value("visibility_timeout"), take)


def _after(document: dict[str, Any], update: dict[str, Any],
           codec: CodecOptions) -> dict[str, Any]:
    """The instance as ``update`` leaves it (but its outbox), without reading it back.

    Exact because the acknowledging update sets or removes every field a
    holder reads (``Message``, the next acknowledgement's ``sequence``), and
    the fields it leaves were as claimed: nothing but the holder changes an
    inflight instance under its lease (``log`` lines are the one thing the
    copy may lack: no holder reads them). The update's values are encoded and
    decoded as the engine would store them (times to the millisecond, tuples
    to lists); ``document`` is left as it was: the containers on each changed
    path are copied, the rest is shared with it (the acknowledged step's
    document, which nothing changes after its acknowledgement). Copying the
    whole instance instead took 4 times as long, in the one thread that
    acknowledges for a whole worker.
    """
    changes = bson.decode(bson.encode({
        "set": update.get("$set", {}),
        "push": {path: value for path, value in update.get("$push", {}).items()
                 if path != "outbox"}}), codec_options=codec)
    after = {key: value for key, value in document.items() if key != "outbox"}
    copied = {id(after)}
    for path, value in changes["set"].items():
        _apply(after, "$set", path, value, copied)
    for path in update.get("$unset", {}):
        _apply(after, "$unset", path, None, copied)
    for path, value in changes["push"].items():
        _apply(after, "$push", path, value, copied)
    return after


def _apply(document: dict[str, Any], operator: str, path: str, value: Any,
           copied: set[int]) -> None:
    """Make one ``$set``, ``$unset`` or ``$push`` of ``path`` to ``document`` as the engine
    would, copying the containers on the way first (``_parent``)."""
    parent, name = _parent(document, path, copied)
    if operator == "$set":
        parent[name] = value
    elif operator == "$unset":
        parent.pop(name, None)
    else:
        parent[name] = [*parent.get(name, []), value]


def _parent(document: dict[str, Any], path: str, copied: set[int]) -> tuple[Any, Any]:
    """The container a dotted ``path`` ends in, and the key (or list index) in it.

    Each container on the way that is not in ``copied`` (ids of this call's
    own copies) is replaced by a shallow copy first, so the caller may change
    what it returns without touching the document it copied from.
    """
    *above, last = path.split(".")
    node: Any = document
    for part in above:
        key: Any = int(part) if isinstance(node, list) else part
        child = node[key] if isinstance(node, list) else node.get(key)
        if child is None or id(child) not in copied:
            child = {} if child is None else list(child) if isinstance(child, list) \
                else dict(child)
            copied.add(id(child))
            node[key] = child
        node = child
    return node, int(last) if isinstance(node, list) else last


def compensate(db: Database, document: dict[str, Any]) -> bool:
    """Move an instance whose forward step went dead into compensation; True if this call did.

    ``document`` is the dead instance as read (its ``dead_at`` is part of the
    filter: a step retried by an operator and dead again is another death,
    judged from its own document).
    """
    sequence = document["sequence"]
    index = sequence["at"]
    now = utcnow()
    prefix = f"sequence.steps.{index}"
    failed = dict(document)
    failed["sequence"] = {**sequence, "failed_step": index,
                          "steps": [dict(step) for step in sequence["steps"]]}
    failed["sequence"]["steps"][index]["error"] = document.get("last_error")
    move = compensating(failed, index, now)
    recorded = {f"{prefix}.dead_at": document.get("dead_at"),
                f"{prefix}.error": document.get("last_error"),
                f"{prefix}.errors": document.get("errors", []),
                f"{prefix}.attempts": document.get("attempts", 0),
                "sequence.failed_step": index}
    reason = "activity compensated" if move.state == schema.DONE else "activity compensating"
    left = message_event(schema.DELETED, snapshot(document, document["queue"]), now,
                         step_token(index), reason=reason)
    events = [left, *move.events]
    changed = db[schema.MESSAGES].find_one_and_update(
        {"_id": document["_id"], "state": schema.DEAD, "sequence.phase": FORWARD,
         "sequence.at": index, "dead_at": document.get("dead_at")},
        _with_outbox(move.update(recorded), events),
        projection={"state": 1}, return_document=ReturnDocument.AFTER)
    if changed is None:
        return False
    publisher_for(db).add_outbox(Outbox(document["_id"], changed["state"], events))
    fanout.after_move(db, document["_id"], move)
    return True


def after_dead(message: Message) -> None:
    """What follows a failed attempt that left the message dead: compensation, or fan-in.

    Called by ``Message.fail``; an error here never undoes the fail (the sweep
    finishes the job: ``recovery``).
    """
    document = message.document
    try:
        if "parent" in document:
            fanout.child_finished(message.queue.db, document, dead=True)
        elif "sequence" in document and document["sequence"]["phase"] == FORWARD:
            current = message.queue.messages.find_one({"_id": message.id,
                                                       "state": schema.DEAD})
            if current is not None:
                compensate(message.queue.db, current)
    except PyMongoError as error:
        log.warning("mopq activities: could not move on after %r went dead (%s); the sweep "
                    "will", message, error)


def after_ack(message: Message, result: Any) -> None:
    """Count an acknowledged fan-out child into its parent (the sweep does it if this fails)."""
    try:
        fanout.child_finished(message.queue.db, message.document, result=result)
    except PyMongoError as error:
        log.warning("mopq activities: could not count %r into its parent yet (%s); the sweep "
                    "will", message, error)


def _with_outbox(update: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
    if events:
        update.setdefault("$push", {})["outbox"] = {"$each": events}
    return update
