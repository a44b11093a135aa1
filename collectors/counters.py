"""Counters: what a batch of events adds, and where it is stored.

A counter document holds the sums of one *series* in one time *bucket*::

    {_id: "<series>|<resolution>|<bucket start ISO>",
     series: "<series>", scope, resolution: "s" | "m" | "h" | "total",
     bucket: datetime | None, expires_at: datetime | None,
     queue, routing_key, name, tags,               # what the series is about
     counts: {written: n, acked: n, ...},          # scope "queue": per event kind
     count, sum, min, max,                         # scope "business"
     hist: {"0": n, "1": n, ...},                  # scope "duration": HISTOGRAM_EDGES
     applied: {"<partition>": seq}}                # see collectors.batch

Series (scope):
* ``queue``: ``q:<queue>`` — counts of each message event kind.
* ``duration``: ``d:<queue>:<routing key>`` — claim-to-ack times as a fixed
  histogram, from which p50/p95/p99 per bucket are read back.
* ``business``: ``b:<name>:*`` over all events of a name, and
  ``b:<name>:<tags JSON>`` per exact non-empty tag set — count, sum, min, max
  of ``emit()`` values.
* ``activity``: ``a:<activity>`` — counts of each message event kind of the
  messages written with that ``activity``.
* ``collector``: ``c:events`` — events applied.

Buckets: 1 second (kept 1 hour), 1 minute (kept 2 days), 1 hour (kept 90
days), and an all-time total. Bucket starts are computed here in Python (the
embedded engine has no ``$dateTrunc``).
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mopq import schema

SECOND, MINUTE, HOUR, TOTAL = "s", "m", "h", "total"
RESOLUTIONS: dict[str, tuple[dt.timedelta, dt.timedelta]] = {
    # resolution: (bucket width, how long buckets are kept)
    SECOND: (dt.timedelta(seconds=1), dt.timedelta(hours=1)),
    MINUTE: (dt.timedelta(minutes=1), dt.timedelta(days=2)),
    HOUR: (dt.timedelta(hours=1), dt.timedelta(days=90)),
}

# Upper edges (seconds) of the duration histogram; the last bin is "more".
HISTOGRAM_EDGES: tuple[float, ...] = (
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300,
    600, 1800, 3600,
)
EVENTS_APPLIED_SERIES = "c:events"


def bucket_start(at: dt.datetime, resolution: str) -> dt.datetime:
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    if resolution == SECOND:
        return at.replace(microsecond=0)
    if resolution == MINUTE:
        return at.replace(second=0, microsecond=0)
    if resolution == HOUR:
        return at.replace(minute=0, second=0, microsecond=0)
    raise ValueError(f"unknown resolution {resolution!r}")


def counter_id(series: str, resolution: str, bucket: dt.datetime | None) -> str:
    return f"{series}|{resolution}|{bucket.isoformat() if bucket else '-'}"


def histogram_bin(seconds: float) -> int:
    return bisect.bisect_left(HISTOGRAM_EDGES, max(0.0, seconds))


def tags_key(tags: dict[str, str]) -> str:
    return json.dumps(tags, sort_keys=True, separators=(",", ":"))


@dataclass
class Delta:
    """What one batch adds to one counter document."""

    identity: dict[str, Any]
    inc: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    low: float | None = None
    high: float | None = None

    def observe(self, value: float) -> None:
        self.low = value if self.low is None else min(self.low, value)
        self.high = value if self.high is None else max(self.high, value)

    def update(self, partition: int, seq: int) -> dict[str, Any]:
        update: dict[str, Any] = {
            "$inc": dict(self.inc),
            "$set": {f"applied.{partition}": seq},
            "$setOnInsert": self.identity,
        }
        if self.low is not None:
            update["$min"] = {"min": self.low}
            update["$max"] = {"max": self.high}
        return update


def _deltas_for(deltas: dict[str, Delta], series: str, at: dt.datetime,
                identity: dict[str, Any]) -> Iterable[Delta]:
    for resolution, (_, keep) in RESOLUTIONS.items():
        bucket = bucket_start(at, resolution)
        key = counter_id(series, resolution, bucket)
        if key not in deltas:
            deltas[key] = Delta({**identity, "series": series, "resolution": resolution,
                                 "bucket": bucket, "expires_at": bucket + keep})
        yield deltas[key]
    key = counter_id(series, TOTAL, None)
    if key not in deltas:
        deltas[key] = Delta({**identity, "series": series, "resolution": TOTAL,
                             "bucket": None, "expires_at": None})
    yield deltas[key]


def deltas_of(events: Iterable[dict[str, Any]]) -> dict[str, Delta]:
    """The counter changes a batch of events makes, keyed by counter ``_id``."""
    deltas: dict[str, Delta] = {}
    applied = 0
    latest: dt.datetime | None = None
    for event in events:
        applied += 1
        at = event["at"]
        latest = at if latest is None or at > latest else latest
        kind = event["kind"]
        if kind == schema.BUSINESS:
            name, tags, value = event["name"], event.get("tags") or {}, float(event["value"])
            series_of = [(f"b:{name}:*", None)]
            if tags:
                series_of.append((f"b:{name}:{tags_key(tags)}", tags))
            for series, series_tags in series_of:
                identity = {"scope": "business", "name": name, "tags": series_tags}
                for delta in _deltas_for(deltas, series, at, identity):
                    delta.inc["count"] += 1
                    delta.inc["sum"] += value
                    delta.observe(value)
            continue
        queue = event["queue"]
        for delta in _deltas_for(deltas, f"q:{queue}", at, {"scope": "queue", "queue": queue}):
            delta.inc[f"counts.{kind}"] += 1
        if event.get("activity"):
            activity = event["activity"]
            for delta in _deltas_for(deltas, f"a:{activity}", at,
                                     {"scope": "activity", "activity": activity}):
                delta.inc[f"counts.{kind}"] += 1
        if kind == schema.ACKED and event.get("duration") is not None:
            routing_key = event.get("routing_key") or ""
            identity = {"scope": "duration", "queue": queue, "routing_key": routing_key}
            bin_name = f"hist.{histogram_bin(float(event['duration']))}"
            for delta in _deltas_for(deltas, f"d:{queue}:{routing_key}", at, identity):
                delta.inc[bin_name] += 1
                delta.inc["count"] += 1
                delta.inc["sum"] += float(event["duration"])
    if applied and latest is not None:
        for delta in _deltas_for(deltas, EVENTS_APPLIED_SERIES, latest, {"scope": "collector"}):
            delta.inc["count"] += applied
    return deltas


def percentile(hist: dict[str, int], fraction: float) -> float | None:
    """The upper edge of the histogram bin holding the given fraction of observations."""
    total = sum(hist.values())
    if not total:
        return None
    needed = fraction * total
    running = 0
    for index in range(len(HISTOGRAM_EDGES) + 1):
        running += hist.get(str(index), 0)
        if running >= needed:
            return HISTOGRAM_EDGES[index] if index < len(HISTOGRAM_EDGES) else float("inf")
    return float("inf")


def totals(db: Any, queue: str) -> dict[str, int]:
    """All-time event counts of one queue."""
    document = db[schema.COUNTERS].find_one({"_id": counter_id(f"q:{queue}", TOTAL, None)})
    return {k: int(v) for k, v in (document or {}).get("counts", {}).items()}
