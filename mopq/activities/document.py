"""The instance document: one message that moves from step to step.

An activity instance is one document of ``messages``, so every change of an
instance is one atomic update of one document (DESIGN.md: an entity is the
boundary of atomicity). Its ``queue``, ``state`` and ``body`` are those of
the step it is at, so any consumer of that queue (Python, Node.js, HTTP)
claims it like any other message; its ``sequence`` field says where it is
and what each step did::

    sequence: {
      name, key,           # the definition and the instance's activity key
      input,               # what start() was given (a JSON object)
      phase,               # "forward", "compensating" or "finished"
      at,                  # the index of the step run (forward) or undone (compensating)
      outcome,             # once finished: "completed" or "compensated"
      started_at, finished_at, failed_step,   # failed_step: the index that went dead
      steps: [{name, queue, compensation, fan_out,        # copied from the definition
               started_at, done_at, attempts, result, acked_lease, worker,
               dead_at, error, errors,                    # when it went dead
               children: {total, dead},                   # a fan-out step, once counted
               compensation_started_at, compensated_at,
               compensation_attempts, compensation_result}, ...],
      children: {ids, total, finished, counted, results, dead, spawned, since}
    }                      # children: only while a fan-out step waits for them

The body a step's handler reads: ``{key, input, previous}`` (``previous``:
the result of the step before, null for the first); a fan-out child's:
``{key, input, item, index}``; a compensation's: ``{key, input, result,
failed_step, error}`` (``result``: what the step being undone returned).

States (``schema``): ``pending``/``inflight`` at a step or a compensation, as
any message; ``waiting`` while a fan-out step's children run; ``dead`` when a
step ran out of attempts (until compensation starts, a moment later) or when
a compensation did (the instance is then *stuck* until an operator retries
it); ``done`` once finished (then copied to history with its ``sequence``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from bson import ObjectId

from mopq import schema
from mopq.errors import InvalidInput
from mopq.events import message_event
from mopq.object_ids import object_ids

FORWARD, COMPENSATING, FINISHED = "forward", "compensating", "finished"
COMPLETED, COMPENSATED = "completed", "compensated"
RUNNING, STUCK = "running", "stuck"
STATUSES = (STUCK, COMPENSATING, RUNNING, COMPLETED, COMPENSATED)

# What a message state means for the step it is at, as the dashboard shows it.
STEP_STATUS = {schema.PENDING: "waiting", schema.INFLIGHT: "running",
               schema.WAITING: "running", schema.DEAD: "dead"}


def step_token(index: int) -> str:
    """The token of step ``index``'s entry and exit events (ids ``<message>:s<i>:<kind>``)."""
    return f"s{index}"


def compensation_token(index: int) -> str:
    """The token naming the entry into step ``index``'s compensation (``<message>:c<i>:w``)."""
    return f"c{index}"


def snapshot(document: dict[str, Any], queue: str) -> dict[str, Any]:
    """What an event says of the instance when it is in ``queue``."""
    return {"_id": document["_id"], "queue": queue, "routing_key": document.get("routing_key"),
            "activity": document.get("activity")}


def step_body(sequence: dict[str, Any], previous: Any) -> dict[str, Any]:
    return {"key": sequence["key"], "input": sequence["input"], "previous": previous}


def child_body(sequence: dict[str, Any], item: Any, index: int) -> dict[str, Any]:
    return {"key": sequence["key"], "input": sequence["input"], "item": item, "index": index}


def compensation_body(sequence: dict[str, Any], index: int) -> dict[str, Any]:
    failed = sequence.get("failed_step")
    failed_step = sequence["steps"][failed] if failed is not None else {}
    return {"key": sequence["key"], "input": sequence["input"],
            "result": sequence["steps"][index].get("result"),
            "failed_step": failed_step.get("name"), "error": failed_step.get("error")}


def status(document: dict[str, Any]) -> str:
    """The instance's status: stuck, compensating, running, completed or compensated.

    Derived from the document rather than stored, so it can never disagree
    with it: a dead compensation is *stuck* (an operator's retry makes it
    compensating again); a dead forward step is compensating (the compensation
    starts at once, or at the next sweep).
    """
    sequence = document["sequence"]
    if sequence["phase"] == FINISHED:
        return sequence.get("outcome", COMPLETED)
    if sequence["phase"] == COMPENSATING:
        return STUCK if document.get("state") == schema.DEAD else COMPENSATING
    return COMPENSATING if document.get("state") == schema.DEAD else RUNNING


def compensable_before(sequence: dict[str, Any], index: int) -> int | None:
    """The last step before ``index`` that declares a compensation (all before it are done)."""
    for earlier in range(index - 1, -1, -1):
        if sequence["steps"][earlier].get("compensation"):
            return earlier
    return None


@dataclass
class Move:
    """What entering a step (or the end) changes, beyond what the caller records itself."""

    set: dict[str, Any]
    unset: dict[str, str]
    events: list[dict[str, Any]]
    state: str
    queue: str
    children: list[ObjectId] = field(default_factory=list)

    def update(self, recorded: dict[str, Any], unset: dict[str, str] | None = None
               ) -> dict[str, Any]:
        """The whole update: the caller's record of what ended, and this move."""
        removed = {**(unset or {}), **self.unset}
        for path in self.set:  # a field set anew is not also removed
            removed.pop(path, None)
        update: dict[str, Any] = {"$set": {**recorded, **self.set}}
        if removed:
            update["$unset"] = removed
        return update


# Fields of a step's run that do not follow the instance into the next step.
_LEFT_BEHIND = {"lease_token": "", "progress": "", "last_error": "", "traceback": "",
                "errors": "", "dead_at": ""}


def entering(document: dict[str, Any], index: int, previous: Any, now: dt.datetime) -> Move:
    """The move into step ``index`` with the result of the step before (past the last: the end).

    A plain step: the document becomes ``pending`` in the step's queue, with
    its written event, so it is claimable from this very update on. A fan-out
    step: ``waiting`` in the step's queue with one child id per item of
    ``previous`` (which must be a list); the children are written after it
    (``fanout.spawn``). A fan-out over no items is done at once.
    """
    sequence = document["sequence"]
    steps = sequence["steps"]
    if index >= len(steps):
        finished = {"state": schema.DONE, "done_at": now, "updated_at": now,
                    "sequence.phase": FINISHED, "sequence.outcome": COMPLETED,
                    "sequence.at": len(steps), "sequence.finished_at": now}
        if previous is not None:
            finished["result"] = previous
        return Move(finished, {**_LEFT_BEHIND, "dedupe": ""}, [], schema.DONE,
                    document["queue"])
    step = steps[index]
    prefix = f"sequence.steps.{index}"
    if step.get("fan_out"):
        if not isinstance(previous, list):
            raise InvalidInput(
                f"Step {step['name']!r} of activity {sequence['name']!r} fans out over the "
                f"result of the step before it, which must be a list (one child per item); "
                f"got {type(previous).__name__}.")
        if not previous:
            later = entering(document, index + 1, {"results": [], "dead": []}, now)
            later.set.update({f"{prefix}.started_at": now, f"{prefix}.done_at": now,
                              f"{prefix}.result": {"results": [], "dead": []},
                              f"{prefix}.children": {"total": 0, "dead": 0}})
            return later
        ids = object_ids(len(previous))
        children = {"ids": ids, "total": len(ids), "finished": 0, "counted": [],
                    "results": {}, "dead": [], "spawned": False, "since": now}
        return Move({"state": schema.WAITING, "queue": step["queue"], "updated_at": now,
                     "sequence.at": index, "sequence.children": children,
                     f"{prefix}.started_at": now},
                    dict(_LEFT_BEHIND), [], schema.WAITING, step["queue"], ids)
    written = message_event(schema.WRITTEN, snapshot(document, step["queue"]), now,
                            step_token(index), delayed=False)
    return Move({"state": schema.PENDING, "queue": step["queue"], "visible_at": now,
                 "updated_at": now, "attempts": 0, "body": step_body(sequence, previous),
                 "sequence.at": index, f"{prefix}.started_at": now},
                dict(_LEFT_BEHIND), [written], schema.PENDING, step["queue"])


def claimed(move: Move, document: dict[str, Any], token: str, worker: str | None,
            timeout: float, now: dt.datetime) -> Move:
    """``move`` (into a plain step or a compensation) with the instance claimed there at once.

    The same fields and ``claimed`` event as a claim of the pending instance
    (FORMAT §4.3) would give it, in the moving update itself: a fresh lease
    ``token`` held by ``worker`` for ``timeout`` seconds, ``attempts`` 1.
    """
    assert move.state == schema.PENDING, move.state
    event = message_event(schema.CLAIMED, snapshot(document, move.queue), now, token,
                          worker=worker)
    lease = {"state": schema.INFLIGHT, "lease_token": token, "leased_by": worker,
             "claimed_at": now, "visibility_timeout": timeout,
             "visible_at": now + dt.timedelta(seconds=timeout), "attempts": 1}
    return Move({**move.set, **lease}, move.unset, [*move.events, event], schema.INFLIGHT,
                move.queue, move.children)


def compensating(document: dict[str, Any], below: int, now: dt.datetime) -> Move:
    """The move into the compensation of the last compensable step before ``below``, or the end.

    Compensations run one at a time in reverse order of their steps; when
    none is left the instance is finished as ``compensated``.
    """
    sequence = document["sequence"]
    index = compensable_before(sequence, below)
    if index is None:
        return Move({"state": schema.DONE, "done_at": now, "updated_at": now,
                     "sequence.phase": FINISHED, "sequence.outcome": COMPENSATED,
                     "sequence.finished_at": now},
                    {**_LEFT_BEHIND, "dedupe": ""}, [], schema.DONE, document["queue"])
    queue = sequence["steps"][index]["compensation"]
    written = message_event(schema.WRITTEN, snapshot(document, queue), now,
                            compensation_token(index), delayed=False)
    return Move({"state": schema.PENDING, "queue": queue, "visible_at": now, "updated_at": now,
                 "attempts": 0, "body": compensation_body(sequence, index),
                 "sequence.phase": COMPENSATING, "sequence.at": index,
                 f"sequence.steps.{index}.compensation_started_at": now},
                dict(_LEFT_BEHIND), [written], schema.PENDING, queue)
