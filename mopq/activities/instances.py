"""Reading instances back: where one is, each step's attempts and results, its compensation.

An unfinished instance is its document in ``messages``; a finished one (or
one a compensation left ``done``) is its copy in ``history``, kept as long as
history keeps finished messages (``MOPQ_HISTORY_SECONDS``). Everything shown
is derived from that one document, so the view cannot disagree with it.
"""

from __future__ import annotations

from typing import Any

from pymongo import DESCENDING
from pymongo.database import Database

from mopq import schema
from mopq.activities.document import (
    COMPENSATING,
    FINISHED,
    FORWARD,
    STATUSES,
    STEP_STATUS,
    STUCK,
    status,
)

MAX_LISTED = 100
_LIST_FIELDS = {"state": 1, "queue": 1, "attempts": 1, "updated_at": 1, "done_at": 1,
                "last_error": 1, "sequence.name": 1, "sequence.key": 1, "sequence.phase": 1,
                "sequence.at": 1, "sequence.outcome": 1, "sequence.started_at": 1,
                "sequence.finished_at": 1, "sequence.failed_step": 1, "sequence.steps.name": 1}


def _step_view(document: dict[str, Any], index: int) -> dict[str, Any]:
    sequence = document["sequence"]
    step = sequence["steps"][index]
    at, phase, state = sequence["at"], sequence["phase"], document.get("state")
    current = phase != FINISHED and index == at
    if step.get("dead_at"):
        shown = "dead"
    elif step.get("done_at"):
        shown = "done"
    elif current and phase == FORWARD:
        shown = STEP_STATUS.get(state, state)
    else:
        shown = "not started"
    view = {"index": index, "name": step["name"], "queue": step["queue"],
            "fan_out": bool(step.get("fan_out")), "status": shown,
            "attempts": document.get("attempts", 0) if current and phase == FORWARD
            else step.get("attempts", 0),
            "result": step.get("result"), "error": step.get("error"),
            "errors": step.get("errors") or [], "started_at": step.get("started_at"),
            "done_at": step.get("done_at"), "dead_at": step.get("dead_at")}
    if step.get("fan_out"):
        children = sequence.get("children") if current else None
        if children is not None:
            view["children"] = {"total": children["total"], "finished": children["finished"],
                                "dead": len(children["dead"])}
        elif step.get("children"):
            view["children"] = {**step["children"], "finished": step["children"]["total"]}
    if step.get("compensation"):
        view["compensation"] = _compensation_view(document, index)
    return view


def _compensation_view(document: dict[str, Any], index: int) -> dict[str, Any]:
    sequence = document["sequence"]
    step = sequence["steps"][index]
    failed = sequence.get("failed_step")
    undoing = sequence["phase"] == COMPENSATING and sequence["at"] == index
    if step.get("compensated_at"):
        shown = "done"
    elif undoing:
        shown = STEP_STATUS.get(document.get("state"), document.get("state"))
    elif failed is not None and index < failed and step.get("done_at"):
        shown = "waiting"
    else:
        shown = "not needed"
    return {"queue": step["compensation"], "status": shown,
            "attempts": document.get("attempts", 0) if undoing
            else step.get("compensation_attempts", 0),
            "result": step.get("compensation_result"),
            "error": document.get("last_error") if undoing else None,
            "started_at": step.get("compensation_started_at"),
            "done_at": step.get("compensated_at")}


def summary(document: dict[str, Any]) -> dict[str, Any]:
    """One line of an instance list: who it is, its status, where it is."""
    sequence = document["sequence"]
    steps = sequence["steps"]
    at = sequence["at"]
    where = steps[at]["name"] if at < len(steps) else None
    return {"id": str(document["_id"]), "activity": sequence["name"], "key": sequence["key"],
            "status": status(document), "phase": sequence["phase"], "step": where,
            "state": document.get("state"), "attempts": document.get("attempts", 0),
            "started_at": sequence.get("started_at"),
            "updated_at": document.get("updated_at") or document.get("done_at"),
            "finished_at": sequence.get("finished_at"),
            "last_error": document.get("last_error")}


def view(document: dict[str, Any]) -> dict[str, Any]:
    """Everything about one instance: the summary, its input and every step."""
    sequence = document["sequence"]
    failed = sequence.get("failed_step")
    return {**summary(document), "input": sequence.get("input"),
            "result": document.get("result") if sequence.get("outcome") == "completed"
            else None,
            "failed_step": sequence["steps"][failed]["name"] if failed is not None else None,
            "steps": [_step_view(document, index) for index in range(len(sequence["steps"]))]}


def find(db: Database, name: str, key: str) -> dict[str, Any] | None:
    """The instance of activity ``name`` with ``key``: running, or finished in history."""
    query = {"sequence.name": name, "sequence.key": key}
    document = db[schema.MESSAGES].find_one(query) or db[schema.HISTORY].find_one(
        query, sort=[("done_at", DESCENDING)])
    return view(document) if document is not None else None


def listing(db: Database, name: str | None = None, limit: int = MAX_LISTED) -> list[dict[str, Any]]:
    """Instances, stuck ones first, then compensating, running, and the latest finished.

    Unfinished instances come from ``messages`` (all of them, up to
    ``limit``), finished ones from history, newest first, to fill the rest.
    """
    query: dict[str, Any] = {"sequence.name": name} if name else {"sequence": {"$exists": True}}
    live = [summary(document) for document in db[schema.MESSAGES].find(
        {**query, "state": {"$in": [schema.PENDING, schema.INFLIGHT, schema.WAITING,
                                    schema.DEAD]}}, _LIST_FIELDS).limit(limit)]
    order = {value: position for position, value in enumerate(STATUSES)}
    live.sort(key=lambda row: (order[row["status"]], str(row["started_at"]), row["key"]))
    room = max(0, limit - len(live))
    finished = [summary(document) for document in db[schema.HISTORY].find(
        query, _LIST_FIELDS).sort([("done_at", DESCENDING)]).limit(room)] if room else []
    return live + finished


def counts(db: Database) -> dict[str, dict[str, int]]:
    """Per activity: unfinished instances by status, and finished ones still in history."""
    found: dict[str, dict[str, int]] = {}
    for document in db[schema.MESSAGES].find(
            {"sequence": {"$exists": True},
             "state": {"$in": [schema.PENDING, schema.INFLIGHT, schema.WAITING, schema.DEAD]}},
            {"state": 1, "sequence.name": 1, "sequence.phase": 1}):
        row = found.setdefault(document["sequence"]["name"], dict.fromkeys(STATUSES, 0))
        row[status(document)] += 1
    for document in db[schema.HISTORY].aggregate([
            {"$match": {"sequence.phase": FINISHED}},
            {"$group": {"_id": {"name": "$sequence.name", "outcome": "$sequence.outcome"},
                        "count": {"$sum": 1}}}]):
        row = found.setdefault(document["_id"]["name"], dict.fromkeys(STATUSES, 0))
        row[document["_id"]["outcome"]] += document["count"]
    return found


__all__ = ["STUCK", "counts", "find", "listing", "summary", "view"]
