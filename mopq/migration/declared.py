"""What is declared rather than worked: activity definitions and queue policies follow a move.

A deployment's ``activities`` (each definition's chain of steps, drawn by the
dashboard) and ``queues`` (each queue's stored policy and pause,
:mod:`mopq.policy`) are no one's unfinished work, but without them the
target would run the moved work under other rules: a paused queue's messages
would be claimed at once, a queue limited to 10 claims a second would be
served flat out, a message would go dead after another number of attempts.
So a move (and an import) carries them first, before any message arrives.

Both sides may hold a setting: the target's own services declare their
activities and policies when they start, and an admin may have edited
either side. What wins, the same for a move, a rerun, an import and a round
trip (so carrying again changes nothing):

* a policy field (the rate limit's two fields as one): the target's value is
  kept if it is the same, or if it *outranks* the source's: an admin's
  setting outranks code's (as :func:`mopq.policy.define` never overwrites a
  stored value), and between two of a kind the later one wins. A carried
  value keeps its ``set_by`` (who set it and when, on the source).
* a pause: carried once. The target's record notes the pause it took
  (``carried_pause: {at}``), so a queue an admin resumed on the target after
  a first run stays resumed when the migration runs again (the target's own
  newer setting); a queue paused on the target stays paused. A source that
  is not paused unpauses nothing.
* an activity definition: carried if the target has none, or an older
  different one (``updated_at``); the target's own newer definition is kept.
  One whose queues serve another activity on the target is not carried
  (:meth:`mopq.activities.Activity.define` would refuse it too).

Every outcome is reported per queue (or activity) and what: carried, the
same already, or kept as the target has it and why. Each write is one
single-document update guarded by the target's document as read (its
``updated_at``); one changed meanwhile is read and judged again.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from mopq import policy, schema, validation
from mopq.clock import utcnow
from mopq.errors import InvalidInput

DEFINITION = "definition"
PAUSED = "paused"
CARRIED_PAUSE = "carried_pause"     # on the target's queue record: {at} of the pause carried
RATE_LIMIT = "rate limit"
ROUNDS = 10                # a document changed under us is read and judged again
EARLIEST = dt.datetime.min.replace(tzinfo=dt.UTC)

# Policy fields judged together: the rate limit is whole on both sides or on neither.
UNITS: dict[str, tuple[str, ...]] = {
    **{name: (name,) for name in policy.FIELDS if name not in policy.RATE_LIMIT_FIELDS},
    RATE_LIMIT: policy.RATE_LIMIT_FIELDS}


@dataclass
class Declared:
    """What became (or would become) of each setting: per (queue or activity, what)."""

    carried: Counter[tuple[str, str]] = field(default_factory=Counter)
    same: Counter[tuple[str, str]] = field(default_factory=Counter)
    kept: Counter[tuple[str, str]] = field(default_factory=Counter)   # what: "... (why)"

    def add(self, other: Declared) -> None:
        self.carried.update(other.carried)
        self.same.update(other.same)
        self.kept.update(other.kept)


def _rank(set_by: Mapping[str, Any] | None) -> tuple[bool, dt.datetime]:
    set_by = set_by or {}
    at = set_by.get("at")
    return set_by.get("by") == policy.ADMIN, at if isinstance(at, dt.datetime) else EARLIEST


def _of_queues(queues: tuple[str, ...] | None) -> dict[str, Any]:
    return {"_id": {"$in": list(queues)}} if queues else {}


def _definition_queues(doc: Mapping[str, Any]) -> set[str]:
    steps = doc.get("steps") or []
    return {step.get("queue") for step in steps} | \
        {step.get("compensation") for step in steps if step.get("compensation")}


def source_declared(db: Database, queues: tuple[str, ...] | None
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The source's definitions (those serving one of ``queues``, when given) and policies."""
    definitions = [doc for doc in db[schema.ACTIVITIES].find().sort("_id", 1)
                   if not queues or _definition_queues(doc) & set(queues)]
    policies = list(db[schema.QUEUES].find(_of_queues(queues)).sort("_id", 1))
    return definitions, policies


def _policy_update(source: Mapping[str, Any], target: Mapping[str, Any] | None,
                   result: Declared) -> dict[str, Any]:
    """The ``$set`` carrying ``source``'s settings onto ``target`` (as read); notes outcomes."""
    name = source["_id"]
    theirs = (target or {}).get("policy") or {}
    their_by = (target or {}).get("set_by") or {}
    ours = source.get("policy") or {}
    our_by = source.get("set_by") or {}
    changes: dict[str, Any] = {}
    for unit, names in UNITS.items():
        if any(ours.get(n) is None for n in names):
            continue
        if all(theirs.get(n) == ours[n] for n in names):
            result.same[(name, unit)] += 1
            continue
        mine = max(_rank(our_by.get(n)) for n in names)
        if any(theirs.get(n) is not None for n in names):
            other = max(_rank(their_by.get(n)) for n in names if theirs.get(n) is not None)
            if other >= mine:
                why = "an admin's" if other[0] and not mine[0] else "later"
                result.kept[(name, f"{unit} (the target's own is {why})")] += 1
                continue
        for n in names:
            changes[f"policy.{n}"] = ours[n]
            changes[f"set_by.{n}"] = our_by.get(n) or {"by": policy.CODE}
        result.carried[(name, unit)] += 1
    pause = source.get("paused")
    if pause:
        carried_before = ((target or {}).get(CARRIED_PAUSE) or {}).get("at")
        if (target or {}).get("paused"):
            result.same[(name, PAUSED)] += 1
        elif carried_before is not None and carried_before >= (pause.get("at") or EARLIEST):
            result.kept[(name, f"{PAUSED} (carried before, resumed on the target since)")] += 1
        else:
            changes[PAUSED] = pause
            changes[CARRIED_PAUSE] = {"at": pause.get("at")}
            result.carried[(name, PAUSED)] += 1
    return changes


def _definition_outcome(source: Mapping[str, Any], target: Mapping[str, Any] | None,
                        others: list[Mapping[str, Any]], result: Declared) -> bool:
    """Whether ``source``'s definition is to be written over ``target`` (as read); notes why."""
    name = source["_id"]
    if target is not None:
        if target.get("steps") == source.get("steps"):
            result.same[(name, DEFINITION)] += 1
            return False
        if (target.get("updated_at") or EARLIEST) >= (source.get("updated_at") or EARLIEST):
            result.kept[(name, f"{DEFINITION} (the target's own is later)")] += 1
            return False
    mine = _definition_queues(source)
    for other in others:
        shared = sorted(_definition_queues(other) & mine)
        if other["_id"] != name and shared:
            result.kept[(name, f"{DEFINITION} (queue(s) {', '.join(shared)} serve "
                               f"{other['_id']!r} on the target)")] += 1
            return False
    result.carried[(name, DEFINITION)] += 1
    return True


def settle(target: Database, definitions: Iterable[Mapping[str, Any]],
           policies: Iterable[Mapping[str, Any]], write: bool = True) -> Declared:
    """Carry ``definitions`` and ``policies`` (a source's) to ``target`` as the rules say.

    With ``write`` False nothing is written: the outcomes are what a carry
    would do now (a dry run, a verification). Safe to repeat and to run
    beside the target's own services. Raises ``RuntimeError`` only if a
    document keeps changing under it: run again.
    """
    result = Declared()
    for doc in definitions:
        result.add(_settle_one(target, schema.ACTIVITIES, doc, write, _definition_write))
    for doc in policies:
        result.add(_settle_one(target, schema.QUEUES, doc, write, _policy_write))
    return result


def _definition_write(target: Database, source: Mapping[str, Any],
                      found: Mapping[str, Any] | None, result: Declared) -> dict[str, Any] | None:
    others = list(target[schema.ACTIVITIES].find({"_id": {"$ne": source["_id"]}}, {"steps": 1}))
    if not _definition_outcome(source, found, others, result):
        return None
    return {"steps": source.get("steps"), "updated_at": source.get("updated_at"),
            **({} if found else {"defined_at": source.get("defined_at")})}


def _policy_write(target: Database, source: Mapping[str, Any],
                  found: Mapping[str, Any] | None, result: Declared) -> dict[str, Any] | None:
    changes = _policy_update(source, found, result)
    return {**changes, "updated_at": utcnow()} if changes else None


def _settle_one(target: Database, collection: str, source: Mapping[str, Any], write: bool,
                decide: Any) -> Declared:
    documents = target[collection]
    for _ in range(ROUNDS):
        result = Declared()
        found = documents.find_one({"_id": source["_id"]})
        changes = decide(target, source, found, result)
        if not changes or not write:
            return result
        if found is None:
            guard: dict[str, Any] = {"_id": source["_id"], "updated_at": {"$exists": False}}
        else:
            guard = {"_id": source["_id"], "updated_at": found.get("updated_at")}
        try:
            if documents.update_one(guard, {"$set": changes}, upsert=found is None).matched_count \
                    or found is None:
                return result
        except DuplicateKeyError:  # made on the target meanwhile: judged again
            continue
    raise RuntimeError(f"{collection} {source['_id']!r} kept changing on the target while "
                       "being carried; run again")


def check_definition(doc: dict[str, Any]) -> str | None:
    """Why an imported activity definition cannot be stored, or None."""
    if not isinstance(doc.get("_id"), str) or not doc["_id"]:
        return "an activity definition's _id must be its name"
    steps = doc.get("steps")
    if not isinstance(steps, list) or not steps or not all(
            isinstance(step, dict) and isinstance(step.get("name"), str)
            and isinstance(step.get("queue"), str) for step in steps):
        return "steps must be a list of {name, queue, compensation, fan_out}"
    for name in ("defined_at", "updated_at"):
        if name in doc and not isinstance(doc[name], dt.datetime):
            return f"{name} must be a date"
    return None


def check_queue(doc: dict[str, Any]) -> str | None:
    """Why an imported queue record (policy, pause) cannot be stored, or None."""
    try:
        validation.queue_name(doc.get("_id"))
        policy.check(doc.get("policy") or {}, partial=False)
    except InvalidInput as error:
        return str(error)
    for name in ("set_by", "paused"):
        if doc.get(name) is not None and not isinstance(doc[name], dict):
            return f"{name} must be a document"
    if doc.get("updated_at") is not None and not isinstance(doc["updated_at"], dt.datetime):
        return "updated_at must be a date"
    return None
