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
* ``queue``: ``q:<queue>`` — counts of each message event kind; scope
  ``all_queues``: ``q:*``, the same summed over every queue.
* ``duration``: ``d:<queue>:<routing key>`` and ``d:<queue>:*`` (all keys) —
  claim-to-ack times as a fixed histogram, from which p50/p95/p99 per bucket
  are read back.
* ``business``: ``b:<name>:*`` over all events of a name, and
  ``b:<name>:<tags JSON>`` per exact non-empty tag set — count, sum, min, max
  of ``emit()`` values.
* ``activity``: ``a:<activity>`` — counts of each message event kind of the
  messages written with that ``activity``.
* ``collector``: ``c:events`` — events applied.

Buckets: 1 second (kept 1 hour), 1 minute (kept 2 days), 1 hour (kept 90
days), and an all-time total. Bucket starts are computed in Python (the
embedded engine has no ``$dateTrunc``). Ids, buckets and value fields are
declared in ``mopq.counter_documents``, shared with the migration that
carries counters to another deployment.
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

# Re-exported: the collectors' modules import these names from here.
from mopq.counter_documents import (  # noqa: F401
    ALL_QUEUES_SERIES,
    EVENTS_APPLIED_SERIES,
    HOUR,
    MINUTE,
    RESOLUTIONS,
    SECOND,
    TOTAL,
    bucket_start,
    counter_id,
    unmarked,
)

# Upper edges (seconds) of the duration histogram; the last bin is "more".
HISTOGRAM_EDGES: tuple[float, ...] = (
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300,
    600, 1800, 3600,
)


def bucket_ids(series: str, resolution: str, since: dt.datetime,
               until: dt.datetime) -> list[str]:
    """The ``_id`` of every bucket of ``series`` from ``since`` to ``until``.

    Reading buckets by ``_id`` uses the unique index on every engine; a query
    on ``series`` and ``bucket`` would scan all counters on the embedded one.
    """
    width = RESOLUTIONS[resolution][0]
    bucket = bucket_start(since, resolution)
    ids = []
    while bucket <= until:
        ids.append(counter_id(series, resolution, bucket))
        bucket += width
    return ids


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
    partitions: set[int] = field(default_factory=set)  # whose events it holds

    def observe(self, value: float) -> None:
        self.low = value if self.low is None else min(self.low, value)
        self.high = value if self.high is None else max(self.high, value)

    def merge(self, other: Delta) -> None:
        self.partitions |= other.partitions
        for key, value in other.inc.items():
            self.inc[key] += value
        if other.low is not None:
            self.observe(other.low)
            self.observe(other.high)

    def update(self, marks: dict[int, int]) -> dict[str, Any]:
        """The atomic update that adds this delta and records the batch marks.

        A new counter starts with a mark of 0 for every other partition, so
        that later batches can test each mark with a plain ``$lt``.
        """
        update: dict[str, Any] = {
            "$inc": dict(self.inc),
            "$set": {f"applied.{partition}": seq for partition, seq in marks.items()},
            "$setOnInsert": {**self.identity, **unmarked(marks)},
        }
        if self.low is not None:
            update["$min"] = {"min": self.low}
            update["$max"] = {"max": self.high}
        return update


def _expand(deltas: dict[str, Delta], series: str, second: dt.datetime,
            identity: dict[str, Any], share: Delta) -> None:
    """Add one (series, second) share to that second's buckets and to the total."""
    for resolution, (_, keep) in RESOLUTIONS.items():
        bucket = bucket_start(second, resolution)
        key = counter_id(series, resolution, bucket)
        if key not in deltas:
            deltas[key] = Delta({**identity, "series": series, "resolution": resolution,
                                 "bucket": bucket, "expires_at": bucket + keep})
        deltas[key].merge(share)
    key = counter_id(series, TOTAL, None)
    if key not in deltas:
        deltas[key] = Delta({**identity, "series": series, "resolution": TOTAL,
                             "bucket": None, "expires_at": None})
    deltas[key].merge(share)


@dataclass(slots=True)
class BusinessTally:
    """``emit()`` events of one name and tag set in one second."""

    tags: dict[str, str]
    count: int
    total: float
    low: float
    high: float
    partitions: set[int]


@dataclass(slots=True)
class TransitionTally:
    """Message events of one kind, queue and activity in one second."""

    count: int
    partitions: set[int]


@dataclass(slots=True)
class DurationTally:
    """Claim-to-ack times of one queue and routing key in one second."""

    seconds: list[float]
    partitions: set[int]


@dataclass
class Tallies:
    """A batch's events summed per thing counted and second, before any counter.

    Why tally first: a batch spans few seconds, so bucket keys are then
    computed a few times rather than once per event.
    """

    business: dict[tuple[str, tuple[tuple[str, Any], ...], dt.datetime], BusinessTally] = \
        field(default_factory=dict)
    transitions: dict[tuple[str, str | None, str, dt.datetime], TransitionTally] = \
        field(default_factory=dict)
    durations: dict[tuple[str, str, dt.datetime], DurationTally] = field(default_factory=dict)

    def add_business(self, event: dict[str, Any], second: dt.datetime, partition: int) -> None:
        tags = event.get("tags") or {}
        items = tuple(sorted(tags.items())) if len(tags) > 1 else tuple(tags.items())
        value = float(event["value"])
        key = (event["name"], items, second)
        tally = self.business.get(key)
        if tally is None:
            self.business[key] = BusinessTally(tags, 1, value, value, value, {partition})
            return
        tally.count += 1
        tally.total += value
        tally.low = min(tally.low, value)
        tally.high = max(tally.high, value)
        tally.partitions.add(partition)

    def add_transition(self, event: dict[str, Any], second: dt.datetime, partition: int) -> None:
        queue, kind = event["queue"], event["kind"]
        key = (queue, event.get("activity") or None, kind, second)
        tally = self.transitions.get(key)
        if tally is None:
            tally = self.transitions[key] = TransitionTally(0, set())
        tally.count += event.get("count", 1)  # a write intent's event counts its batch
        tally.partitions.add(partition)
        if kind == schema.ACKED and event.get("duration") is not None:
            self.add_duration(queue, event.get("routing_key") or "", float(event["duration"]),
                              second, partition)

    def add_duration(self, queue: str, routing_key: str, seconds: float, second: dt.datetime,
                     partition: int) -> None:
        key = (queue, routing_key, second)
        tally = self.durations.get(key)
        if tally is None:
            tally = self.durations[key] = DurationTally([], set())
        tally.seconds.append(seconds)
        tally.partitions.add(partition)


class Shares:
    """Each series' share of a batch, per second, before it is spread over the buckets."""

    def __init__(self) -> None:
        self.by_second: dict[tuple[str, dt.datetime], Delta] = {}
        self.identities: dict[str, dict[str, Any]] = {}

    def of(self, series: str, second: dt.datetime, identity: dict[str, Any],
           partitions: set[int]) -> Delta:
        key = (series, second)
        found = self.by_second.get(key)
        if found is None:
            self.identities.setdefault(series, identity)
            found = self.by_second[key] = Delta(identity)
        found.partitions |= partitions
        return found

    def add_applied(self, tallies: Tallies) -> None:
        """Events applied, per second: every event is a business event or a transition."""
        applied: dict[dt.datetime, TransitionTally] = {}
        counted = [(key[-1], t.count, t.partitions) for key, t in tallies.business.items()]
        counted += [(key[-1], t.count, t.partitions) for key, t in tallies.transitions.items()]
        for second, count, partitions in counted:
            total = applied.setdefault(second, TransitionTally(0, set()))
            total.count += count
            total.partitions |= partitions
        for second, total in applied.items():
            self.of(EVENTS_APPLIED_SERIES, second, {"scope": "collector"},
                    total.partitions).inc["count"] += total.count

    def add_business(self, tallies: Tallies) -> None:
        tag_keys: dict[tuple[tuple[str, Any], ...], str] = {}
        for (name, items, second), tally in tallies.business.items():
            series_of = [(f"b:{name}:*", None)]
            if items:
                tag_key = tag_keys.get(items)
                if tag_key is None:
                    tag_key = tag_keys[items] = tags_key(tally.tags)
                series_of.append((f"b:{name}:{tag_key}", tally.tags))
            for series, series_tags in series_of:
                delta = self.of(series, second, {"scope": "business", "name": name,
                                                 "tags": series_tags}, tally.partitions)
                delta.inc["count"] += tally.count
                delta.inc["sum"] += tally.total
                delta.observe(tally.low)
                delta.observe(tally.high)

    def add_transitions(self, tallies: Tallies) -> None:
        for (queue, activity, kind, second), tally in tallies.transitions.items():
            for series, identity in ((f"q:{queue}", {"scope": "queue", "queue": queue}),
                                     (ALL_QUEUES_SERIES, {"scope": "all_queues"})):
                self.of(series, second, identity, tally.partitions).inc[f"counts.{kind}"] += \
                    tally.count
            if activity:
                self.of(f"a:{activity}", second, {"scope": "activity", "activity": activity},
                        tally.partitions).inc[f"counts.{kind}"] += tally.count

    def add_durations(self, tallies: Tallies) -> None:
        for (queue, routing_key, second), tally in tallies.durations.items():
            for key in (routing_key, "*"):
                delta = self.of(f"d:{queue}:{key}", second,
                                {"scope": "duration", "queue": queue, "routing_key": key},
                                tally.partitions)
                for seconds in tally.seconds:
                    delta.inc[f"hist.{histogram_bin(seconds)}"] += 1
                delta.inc["count"] += len(tally.seconds)
                delta.inc["sum"] += sum(tally.seconds)


def deltas_of(events: Iterable[dict[str, Any]]) -> dict[str, Delta]:
    """The counter changes a batch of events makes, keyed by counter ``_id``.

    Events are tallied per (what they count, second) (``Tallies``), each tally
    becomes its series' share of that second (``Shares``), and each share is
    added to its 1 s, 1 min, 1 h buckets and the total. Every event counts in
    the buckets of its own time, so the changes of any subset of a batch touch
    only counters that the whole batch touches.
    """
    tallies = Tallies()
    second_of: dict[dt.datetime, dt.datetime] = {}
    for event in events:
        at = event["at"]
        second = second_of.get(at)
        if second is None:
            second = second_of[at] = at.replace(microsecond=0)
        if event["kind"] == schema.BUSINESS:
            tallies.add_business(event, second, event.get("partition", 0))
        else:
            tallies.add_transition(event, second, event.get("partition", 0))
    shares = Shares()
    shares.add_applied(tallies)
    shares.add_business(tallies)
    shares.add_transitions(tallies)
    shares.add_durations(tallies)
    deltas: dict[str, Delta] = {}
    for (series, second), delta in shares.by_second.items():
        _expand(deltas, series, second, shares.identities[series], delta)
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
