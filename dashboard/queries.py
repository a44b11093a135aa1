"""What the pages and the JSON API read, in one place.

Every function takes already-validated arguments (see ``dashboard.parameters``)
and returns plain JSON-able data (datetimes stay datetimes; the API encoder
writes them as ISO-8601). Queue state comes from the queue, flows from the
collectors' counters (``collectors.stats``), so pages, API and push agree.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from bson import ObjectId
from bson.errors import InvalidId
from pymongo import ASCENDING
from pymongo.database import Database

from collectors.counters import (
    ALL_QUEUES_SERIES,
    HOUR,
    MINUTE,
    SECOND,
    TOTAL,
    bucket_ids,
    percentile,
)
from collectors.monitor import Thresholds, classify
from collectors.stats import read_stats
from mopq import schema

RESOLUTION_WIDTH = {SECOND: 1, MINUTE: 60, HOUR: 3600}
QUEUE_KINDS = (schema.WRITTEN, schema.CLAIMED, schema.ACKED, schema.FAILED, schema.DEAD_EVENT,
               schema.EXPIRED_EVENT, schema.RECLAIMED, schema.DELETED, schema.RETRIED)
SEARCH_FIELDS = "search_fields"  # the settings document (mopq.search)
MAX_SEARCH_RESULTS = 100


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _series(db: Database, series: str, resolution: str, since: dt.datetime,
            until: dt.datetime) -> list[dict[str, Any]]:
    """The buckets of one series, read by ``_id`` (see ``collectors.counters.bucket_ids``)."""
    ids = bucket_ids(series, resolution, since, until)
    return list(db[schema.COUNTERS].find(
        {"_id": {"$in": ids}},
        {"bucket": 1, "counts": 1, "count": 1, "sum": 1, "min": 1, "max": 1, "hist": 1},
    ).sort([("bucket", ASCENDING)]))


def _series_counts(db: Database, scope_filter: dict[str, Any], resolution: str,
                   since: dt.datetime, until: dt.datetime) -> list[dict[str, Any]]:
    """Buckets of every series matching ``scope_filter`` (a scan on the embedded engine:
    only for pages that need several series, such as a metric filtered by tags)."""
    return list(db[schema.COUNTERS].find(
        {**scope_filter, "resolution": resolution, "bucket": {"$gte": since, "$lte": until}},
        {"bucket": 1, "counts": 1, "queue": 1, "count": 1, "sum": 1, "min": 1, "max": 1,
         "hist": 1, "tags": 1},
    ).sort([("bucket", ASCENDING)]))


def throughput(db: Database, seconds: int = 300, now: dt.datetime | None = None,
               queue: str | None = None) -> dict[str, Any]:
    """Written / acked / failed per second over the last ``seconds``, all queues summed."""
    now = now or _now()
    until = now.replace(microsecond=0)
    since = until - dt.timedelta(seconds=seconds - 1)
    series = f"q:{queue}" if queue is not None else ALL_QUEUES_SERIES
    by_second: dict[dt.datetime, dict[str, int]] = {}
    for document in _series(db, series, SECOND, since, until):
        row = by_second.setdefault(document["bucket"], {})
        for kind, count in (document.get("counts") or {}).items():
            row[kind] = row.get(kind, 0) + int(count)
    times = [since + dt.timedelta(seconds=i) for i in range(seconds)]
    return {
        "t": times,
        "written": [by_second.get(t, {}).get(schema.WRITTEN, 0) for t in times],
        "acked": [by_second.get(t, {}).get(schema.ACKED, 0) for t in times],
        "failed": [by_second.get(t, {}).get(schema.FAILED, 0) for t in times],
    }


def _rate_per_second(db: Database, queue: str, now: dt.datetime, kind: str,
                     minutes: int = 5) -> float:
    since = (now - dt.timedelta(minutes=minutes)).replace(second=0, microsecond=0)
    total = sum(int((d.get("counts") or {}).get(kind, 0))
                for d in _series(db, f"q:{queue}", MINUTE, since, now))
    elapsed = max(1.0, (now - since).total_seconds())
    return total / elapsed


def _serving_workers(db: Database, now: dt.datetime, thresholds: Thresholds) -> dict[str, int]:
    serving: dict[str, int] = {}
    for worker in db[schema.WORKERS].find({}, {"queues": 1, "state": 1, "heartbeat_at": 1,
                                                "zombie_reason": 1, "gone_reason": 1}):
        if classify(worker, now, thresholds) == "alive":
            for name in worker.get("queues") or []:
                serving[name] = serving.get(name, 0) + 1
    return serving


def queues(db: Database, now: dt.datetime | None = None,
           stats: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every queue with its state, rates, time to drain and warnings."""
    now = now or _now()
    stats = stats or read_stats(db, now)
    serving = _serving_workers(db, now, Thresholds.from_env())
    rows = []
    for name, row in stats["queues"].items():
        rate = _rate_per_second(db, name, now, schema.ACKED)
        backlog = row["pending"] + row["delayed"] + row["inflight"]
        warnings = []
        if row["pending"] and not serving.get(name):
            warnings.append("messages are waiting but no live worker serves this queue")
        rows.append({
            "name": name, **row,
            "done_per_second": round(rate, 3),
            "drain_seconds": round(backlog / rate, 1) if rate > 0 and backlog else None,
            "workers": serving.get(name, 0),
            "failure_rate": round(row["failed"] / (row["failed"] + row["done"]), 4)
            if row["failed"] + row["done"] else 0.0,
            "warnings": warnings,
        })
    return rows


def queue_history(db: Database, queue: str, resolution: str, since: dt.datetime,
                  until: dt.datetime) -> dict[str, Any]:
    """Counts of each event kind per bucket for one queue, and handler time percentiles."""
    documents = _series(db, f"q:{queue}", resolution, since, until)
    durations = {d["bucket"]: d for d in _series(db, f"d:{queue}:*", resolution, since, until)}
    series: dict[str, list[int]] = {kind: [] for kind in QUEUE_KINDS}
    times = []
    for document in documents:
        times.append(document["bucket"])
        counts = document.get("counts") or {}
        for kind in QUEUE_KINDS:
            series[kind].append(int(counts.get(kind, 0)))
    percentiles: dict[str, list[float | None]] = {"p50": [], "p95": [], "p99": []}
    for bucket in times:
        hist = (durations.get(bucket) or {}).get("hist") or {}
        for name, fraction in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
            percentiles[name].append(percentile(hist, fraction))
    return {"queue": queue, "resolution": resolution, "t": times, "counts": series,
            "duration_seconds": percentiles}


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
            "dead_at", "activity", "dedupe_key", "leased_by", "claimed_at", "progress", "log")
    view = {"id": str(document["_id"])}
    view.update({key: document[key] for key in keep if key in document})
    if view.get("expire_at") == schema.NEVER:
        view["expire_at"] = None
    return view


def message(db: Database, message_id: str) -> dict[str, Any] | None:
    try:
        object_id = ObjectId(message_id)
    except (InvalidId, TypeError):
        return None
    document = db[schema.MESSAGES].find_one({"_id": object_id}, {"outbox": 0})
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
    """Messages by id, or by a declared body field's value, across queues and states."""
    messages = db[schema.MESSAGES]
    if message_id:
        found = message(db, message_id)
        return [found] if found else []
    query: dict[str, Any] = {f"body.{field}": {"$in": value if isinstance(value, list)
                                                  else [value]}}
    if queue:
        query["queue"] = queue
    return [message_view(d) for d in messages.find(query, {"outbox": 0, "log": 0})
            .limit(MAX_SEARCH_RESULTS)]


def workers(db: Database, now: dt.datetime | None = None) -> list[dict[str, Any]]:
    now = now or _now()
    thresholds = Thresholds.from_env()
    rows = []
    for worker in db[schema.WORKERS].find().sort([("_id", ASCENDING)]):
        current = []
        for item in worker.get("current") or []:
            since = item.get("since")
            current.append({"message_id": item.get("message_id"), "queue": item.get("queue"),
                            "since": since,
                            "seconds": round((now - since).total_seconds(), 1) if since else None})
        beat = worker.get("heartbeat_at")
        rows.append({
            "id": worker["_id"], "state": classify(worker, now, thresholds),
            "zombie_reason": worker.get("zombie_reason"),
            "queues": worker.get("queues") or [], "concurrency": worker.get("concurrency"),
            "hostname": worker.get("hostname"), "pid": worker.get("pid"),
            "started_at": worker.get("started_at"), "heartbeat_at": beat,
            "heartbeat_age_seconds": round((now - beat).total_seconds(), 1) if beat else None,
            "processed": int(worker.get("processed") or 0),
            "failed": int(worker.get("failed") or 0), "current": current,
        })
    return rows


def activities(db: Database, now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """Progress of every activity: done / failed / total, rate and time left."""
    now = now or _now()
    rows = []
    for document in db[schema.COUNTERS].find({"scope": "activity", "resolution": TOTAL}):
        counts = document.get("counts") or {}
        total = int(counts.get(schema.WRITTEN, 0))
        done = int(counts.get(schema.ACKED, 0))
        dead = int(counts.get(schema.DEAD_EVENT, 0)) - int(counts.get(schema.RETRIED, 0))
        removed = int(counts.get(schema.DELETED, 0)) + int(counts.get(schema.EXPIRED_EVENT, 0))
        since = (now - dt.timedelta(minutes=5)).replace(second=0, microsecond=0)
        recent = sum(int((d.get("counts") or {}).get(schema.ACKED, 0)) for d in _series(
            db, f"a:{document['activity']}", MINUTE, since, now))
        rate = recent / max(1.0, (now - since).total_seconds())
        left = max(0, total - done - max(0, dead) - removed)
        rows.append({"activity": document["activity"], "total": total, "done": done,
                     "failed": max(0, dead), "removed": removed, "left": left,
                     "done_per_second": round(rate, 3),
                     "seconds_left": round(left / rate, 1) if rate > 0 and left else None,
                     "complete": left == 0})
    rows.sort(key=lambda row: (row["complete"], row["activity"]))
    return rows


def metric_names(db: Database) -> list[str]:
    return sorted(db[schema.COUNTERS].distinct("name", {"scope": "business",
                                                        "resolution": TOTAL}))


def metric(db: Database, name: str, resolution: str, since: dt.datetime, until: dt.datetime,
           tags: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """Count, sum, min, max per bucket of one business event, optionally for matching tags.

    ``tags`` gives the values wanted per key: an event matches if each key has one of them.
    """
    if tags:
        scope: dict[str, Any] = {"scope": "business", "name": name}
        scope.update({f"tags.{key}": {"$in": values} for key, values in tags.items()})
        documents = _series_counts(db, scope, resolution, since, until)
    else:
        documents = _series(db, f"b:{name}:*", resolution, since, until)
    buckets: dict[dt.datetime, dict[str, float]] = {}
    for document in documents:
        row = buckets.setdefault(document["bucket"], {"count": 0, "sum": 0.0, "min": None,
                                                      "max": None})
        row["count"] += int(document.get("count", 0))
        row["sum"] += float(document.get("sum", 0.0))
        for key, pick in (("min", min), ("max", max)):
            if document.get(key) is not None:
                row[key] = document[key] if row[key] is None else pick(row[key], document[key])
    times = sorted(buckets)
    tag_values: dict[str, set[str]] = {}
    for document in db[schema.COUNTERS].find({"scope": "business", "name": name,
                                              "resolution": TOTAL, "tags": {"$ne": None}},
                                             {"tags": 1}):
        for key, value in (document.get("tags") or {}).items():
            tag_values.setdefault(key, set()).add(value)
    return {"name": name, "resolution": resolution, "tags": tags or {},
            "t": times, "count": [buckets[t]["count"] for t in times],
            "sum": [buckets[t]["sum"] for t in times],
            "min": [buckets[t]["min"] for t in times], "max": [buckets[t]["max"] for t in times],
            "available_tags": {k: sorted(v) for k, v in sorted(tag_values.items())}}
