"""Time series read back from the counters: throughput, history, rates, metrics, activities.

The collectors write counters (``collectors.counters``); this is the one
place that reads them back, so bucket ids, bucket widths, retention and
percentiles are known only to the counting side. The dashboard presents
these results; it does not compute them. Buckets are read by ``_id``
(``counters.bucket_ids``): on the embedded engine a query on ``series`` and
``bucket`` would scan every counter.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pymongo import ASCENDING
from pymongo.database import Database

from mopq import policy, schema
from mopq.clock import utcnow
from mopq.collectors.counters import (
    ALL_QUEUES_SERIES,
    MINUTE,
    SECOND,
    TOTAL,
    bucket_ids,
    percentile,
)
from mopq.collectors.stats import read_stats, serving_workers

QUEUE_KINDS = schema.MESSAGE_EVENT_KINDS
RATE_MINUTES = 5  # rates and times to drain are taken over the last five whole minutes


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
    now = now or utcnow()
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
                     minutes: int = RATE_MINUTES) -> float:
    since = (now - dt.timedelta(minutes=minutes)).replace(second=0, microsecond=0)
    total = sum(int((d.get("counts") or {}).get(kind, 0))
                for d in _series(db, f"q:{queue}", MINUTE, since, now))
    elapsed = max(1.0, (now - since).total_seconds())
    return total / elapsed


def queues(db: Database, now: dt.datetime | None = None,
           stats: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every queue with its state, rates, time to drain and warnings."""
    now = now or utcnow()
    stats = stats or read_stats(db, now)
    serving = serving_workers(db, now)
    records = policy.read_all(db)
    rows = []
    for name, row in stats["queues"].items():
        paused = records[name].paused if name in records else None
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
            "paused": None if paused is None else {"who": paused.who, "at": paused.at,
                                                   "reason": paused.reason},
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


def activities(db: Database, now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """Progress of every activity: done / failed / total, rate and time left."""
    now = now or utcnow()
    rows = []
    for document in db[schema.COUNTERS].find({"scope": "activity", "resolution": TOTAL}):
        counts = document.get("counts") or {}
        total = int(counts.get(schema.WRITTEN, 0))
        done = int(counts.get(schema.ACKED, 0))
        dead = int(counts.get(schema.DEAD_EVENT, 0)) - int(counts.get(schema.RETRIED, 0))
        removed = sum(int(counts.get(kind, 0))
                      for kind in (schema.DELETED, schema.CANCELLED, schema.EXPIRED_EVENT))
        since = (now - dt.timedelta(minutes=RATE_MINUTES)).replace(second=0, microsecond=0)
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
