"""The audit log: every admin action (retry, delete, purge, schedule.*), who did it and to what.

``audit`` — one document per action, written before the action runs and
completed after it, so an action interrupted half-way still leaves a record::

    {_id: ObjectId, at: datetime,            # when it was asked for
     action: "retry" | "delete" | "purge"
           | "schedule.define" | "schedule.pause" | "schedule.resume" | "schedule.run"
           | "schedule.delete" | "worker.stop" | "worker.quiet" | "worker.resume",
     who: {name, via},                       # dashboard.auth.Identity; via token|basic,
                                             # or cli (the OS user, mopq schedules)
     remote_addr, user_agent,
     target: {queue} | {ids: [...]} | {all_matching, queue, error, state}
           | {schedule, queue} | {worker},
     status: "started" | "done" | "failed",
     count: int | None, finished_at, error}

Listed newest first by ``at`` (then ``_id``); the collection holds one small
document per operator action, so it stays small.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bson import ObjectId
from pymongo import DESCENDING
from pymongo.database import Database
from pymongo.errors import PyMongoError

from mopq import control, schema
from mopq.clock import utcnow
from mopq.errors import MopqError

# Every action the log records (/openapi.json's AuditEntry lists these).
ACTIONS = ("retry", "delete", "purge", "schedule.define", "schedule.pause", "schedule.resume",
           "schedule.run", "schedule.delete",
           *(f"worker.{command}" for command in control.COMMANDS),  # dashboard.workers_api
           # dashboard.queue_control
           "queue.policy", "queue.pause", "queue.resume", "message.cancel", "message.front",
           "message.move")
MAX_IDS_RECORDED = 1_000
USER_AGENT_CHARS = 200


def begin(db: Database, action: str, target: dict[str, Any], who: dict[str, str],
          remote_addr: str | None, user_agent: str | None) -> ObjectId:
    """Record that ``action`` (one of ``ACTIONS``) was asked for; returns the record's id."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}: add it to ACTIONS")
    if "ids" in target:
        target = {**target, "ids": list(target["ids"])[:MAX_IDS_RECORDED]}
    document = {"at": utcnow(), "action": action, "who": who,
                "remote_addr": remote_addr,
                "user_agent": (user_agent or "")[:USER_AGENT_CHARS] or None,
                "target": target, "status": "started", "count": None}
    return db[schema.AUDIT].insert_one(document).inserted_id


def finish(db: Database, record: ObjectId, count: int | None,
           error: str | None = None) -> None:
    """Complete a record with how many messages changed (or why the action failed)."""
    update: dict[str, Any] = {"status": "failed" if error else "done", "count": count,
                              "finished_at": utcnow()}
    if error:
        update["error"] = error[:500]
    db[schema.AUDIT].update_one({"_id": record}, {"$set": update})


def recorded(db: Database, action: str, target: dict[str, Any], who: dict[str, str],
             run: Callable[[Database], int], remote_addr: str | None = None,
             user_agent: str | None = None) -> tuple[int, ObjectId]:
    """Run an admin action between its record's :func:`begin` and :func:`finish`.

    Returns how many things it changed and the record's id. When the engine
    fails mid-way the record says so (if it still can) and the error goes on.
    """
    record = begin(db, action, target, who, remote_addr, user_agent)
    try:
        count = run(db)
    except (PyMongoError, MopqError) as error:
        try:
            finish(db, record, None, error=type(error).__name__)
        except PyMongoError:
            pass
        raise
    finish(db, record, count)
    return count, record


def view(document: dict[str, Any]) -> dict[str, Any]:
    return {"id": str(document["_id"]), "at": document.get("at"),
            "action": document.get("action"), "who": document.get("who") or {},
            "remote_addr": document.get("remote_addr"),
            "user_agent": document.get("user_agent"),
            "target": document.get("target") or {}, "status": document.get("status"),
            "count": document.get("count"), "finished_at": document.get("finished_at"),
            "error": document.get("error")}


def entries(db: Database, page: int = 1, per_page: int = 50) -> dict[str, Any]:
    """One page of the audit log, newest first."""
    collection = db[schema.AUDIT]
    total = collection.count_documents({})
    documents = (collection.find({}).sort([("at", DESCENDING), ("_id", DESCENDING)])
                 .skip((page - 1) * per_page).limit(per_page))
    return {"total": total, "page": page, "per_page": per_page,
            "items": [view(document) for document in documents]}
