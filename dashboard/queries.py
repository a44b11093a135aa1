"""The messages pages and the JSON API show: failed ones, one by id, search results.

Figures (counts, series, rates, workers) are the collectors' read model
(``collectors.stats``, ``collectors.series``); this module reads only the
messages themselves. Every function takes already-checked arguments (see
``dashboard.parameters``) and returns plain JSON-able data (datetimes stay
datetimes; the API encoder writes them as ISO-8601).
"""

from __future__ import annotations

import re
from typing import Any

from bson import ObjectId
from bson.errors import InvalidId
from pymongo.database import Database

from mopq import schema
from mopq.collectors.counters import (
    HOUR,
    MINUTE,
    SECOND,
)

RESOLUTION_WIDTH = {SECOND: 1, MINUTE: 60, HOUR: 3600}
QUEUE_KINDS = schema.MESSAGE_EVENT_KINDS
SEARCH_FIELDS = "search_fields"  # the settings document (mopq.search)
MAX_SEARCH_RESULTS = 100


def failed_query(queue: str | None, error_contains: str | None, state: str) -> dict[str, Any]:
    """Dead messages, or failing ones (waiting for a retry after an error)."""
    query: dict[str, Any]
    if state == "dead":
        query = {"state": schema.DEAD}
    else:
        query = {"state": {"$in": [schema.PENDING, schema.INFLIGHT]},
                 "last_error": {"$type": "string"}}
    if queue:
        query["queue"] = queue
    if error_contains:
        query["last_error"] = {"$regex": re.escape(error_contains), "$options": "i"}
    return query


def failed(db: Database, queue: str | None, error_contains: str | None, state: str,
           page: int, per_page: int) -> dict[str, Any]:
    """One page of dead (or failing) messages, newest failure first."""
    query = failed_query(queue, error_contains, state)
    messages = db[schema.MESSAGES]
    total = messages.count_documents(query)
    items = list(messages.find(query, {"outbox": 0, "log": 0})
                 .sort([("updated_at", -1), ("_id", -1)])
                 .skip((page - 1) * per_page).limit(per_page))
    return {"total": total, "page": page, "per_page": per_page,
            "items": [message_view(d) for d in items]}


def message_view(document: dict[str, Any]) -> dict[str, Any]:
    """A message as pages and the API show it (no internal fields)."""
    keep = ("queue", "routing_key", "body", "priority", "state", "attempts", "created_at",
            "updated_at", "visible_at", "expire_at", "last_error", "traceback", "errors",
            "dead_at", "activity", "dedupe_key", "leased_by", "claimed_at", "progress", "log",
            "done_at", "duration", "worker", "result", "cancelled")
    view = {"id": str(document["_id"])}
    view.update({key: document[key] for key in keep if key in document})
    if "done_at" in document and "state" not in document:  # from history
        view["state"] = "cancelled" if document.get("cancelled") else schema.DONE
    if view.get("expire_at") == schema.NEVER:
        view["expire_at"] = None
    return view


def message(db: Database, message_id: str) -> dict[str, Any] | None:
    try:
        object_id = ObjectId(message_id)
    except (InvalidId, TypeError):
        return None
    document = db[schema.MESSAGES].find_one({"_id": object_id}, {"outbox": 0}) or \
        db[schema.HISTORY].find_one({"_id": object_id})
    return message_view(document) if document else None


def declared_search_fields(db: Database) -> dict[str, list[str]]:
    """Body fields users declared searchable, per queue (``mopq.search.declare``)."""
    document = db[schema.SETTINGS].find_one({"_id": SEARCH_FIELDS}) or {}
    declared: dict[str, list[str]] = {}
    for entry in document.get("fields") or []:
        declared.setdefault(entry["queue"], []).append(entry["field"])
    return {queue: sorted(fields) for queue, fields in sorted(declared.items())}


def search(db: Database, message_id: str | None = None, field: str | None = None,
           value: Any = None, queue: str | None = None) -> list[dict[str, Any]]:
    """Messages by id, or by a declared body field's value, across queues and states,
    finished ones (history) included.

    ``messages`` is read before ``history``: a message is copied into history
    before it leaves ``messages``, so one finishing meanwhile is still found
    (in both, then shown once).
    """
    if message_id:
        found = message(db, message_id)
        return [found] if found else []
    query: dict[str, Any] = {f"body.{field}": {"$in": value if isinstance(value, list)
                                                  else [value]}}
    if queue:
        query["queue"] = queue
    found = [message_view(d) for d in db[schema.MESSAGES].find(
        query, {"outbox": 0, "log": 0}).limit(MAX_SEARCH_RESULTS)]
    if len(found) < MAX_SEARCH_RESULTS:
        seen = {view["id"] for view in found}
        finished = (message_view(d) for d in db[schema.HISTORY].find(
            query, {"log": 0}).sort([("done_at", -1)]).limit(MAX_SEARCH_RESULTS))
        found += [view for view in finished if view["id"] not in seen][
            :MAX_SEARCH_RESULTS - len(found)]
    return found


def recent_finished(db: Database, queue: str, limit: int = 20) -> list[dict[str, Any]]:
    """The queue's most recently finished messages, from history."""
    return [message_view(d) for d in db[schema.HISTORY].find(
        {"queue": queue}, {"log": 0}).sort([("done_at", -1)]).limit(limit)]


