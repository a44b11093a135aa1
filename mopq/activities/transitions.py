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
next (id ``<message>:s<N>:w``, once per step); a step that went dead and is
left for compensation is ``deleted`` from its queue (``<message>:s<N>:rm``,
reason ``activity compensating``), so that each queue's conservation law
holds: ``written = done + removed + dead + pending + inflight + delayed``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pymongo import ReturnDocument
from pymongo.database import Database
from pymongo.errors import PyMongoError

from mopq import schema
from mopq.activities import fanout
from mopq.activities.document import FORWARD, compensating, entering, snapshot, step_token
from mopq.clock import utcnow
from mopq.events import message_event
from mopq.publisher import Outbox, publisher_for

if TYPE_CHECKING:
    from mopq.message import Message

log = logging.getLogger("mopq.activities")


def acknowledge(message: Message, result: Any) -> None:
    """Record the held step (or compensation) done and move the instance on, in one update.

    Raises ``LeaseLost`` (and changes nothing) if the lease is no longer
    held; ``InvalidInput`` (and changes nothing) if the next step fans out and
    ``result`` is not a list.
    """
    document = message.document
    sequence = document["sequence"]
    index, phase = sequence["at"], sequence["phase"]
    now = utcnow()
    prefix = f"sequence.steps.{index}"
    if phase == FORWARD:
        recorded = {f"{prefix}.result": result, f"{prefix}.done_at": now,
                    f"{prefix}.attempts": message.attempts,
                    f"{prefix}.acked_lease": message.lease_token,
                    f"{prefix}.worker": document.get("leased_by")}
        if document.get("errors"):
            recorded[f"{prefix}.errors"] = document["errors"]
        move = entering(document, index + 1, result, now)
    else:
        recorded = {f"{prefix}.compensation_result": result, f"{prefix}.compensated_at": now,
                    f"{prefix}.compensation_attempts": message.attempts}
        move = compensating(document, index, now)
    recorded["acked_lease"] = message.lease_token
    acked = message._event(schema.ACKED, now, duration=(now - message.claimed_at)
                           .total_seconds(), attempts=message.attempts)
    update = move.update(recorded)
    update["$push"] = {"sequence.leases": message.lease_token}  # a repeated ack finds it
    message._transition(update, "acknowledge", [acked, *move.events],
                        where={"sequence.phase": phase, "sequence.at": index})
    fanout.after_move(message.queue.db, document["_id"], move)


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
