"""Counter documents: their ids, buckets and value fields, declared once.

The collectors write the counters (``collectors.counters``,
``collectors.batch``) and read them back (``collectors.series``,
``collectors.stats``); a migration carries them to another deployment
(``mopq.migration.counters``). Both must agree on every id and field, and
the library may not import the collectors (the layers: dashboard →
collectors → mopq), so these facts live here, below both. The shape of a
counter document is described in ``collectors.counters``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from pymongo.database import Database

from mopq import schema

SECOND, MINUTE, HOUR, TOTAL = "s", "m", "h", "total"
RESOLUTIONS: dict[str, tuple[dt.timedelta, dt.timedelta]] = {
    # resolution: (bucket width, how long buckets are kept)
    SECOND: (dt.timedelta(seconds=1), dt.timedelta(hours=1)),
    MINUTE: (dt.timedelta(minutes=1), dt.timedelta(days=2)),
    HOUR: (dt.timedelta(hours=1), dt.timedelta(days=90)),
}
EVENTS_APPLIED_SERIES = "c:events"
ALL_QUEUES_SERIES = "q:*"

# Where a counter keeps its sums: documents of sums by key (event kind, histogram
# bin), plain sums, and extremes (which only ever widen).
VALUE_GROUPS = ("counts", "hist")
VALUE_FIELDS = ("count", "sum")
EXTREMES = ("min", "max")
# The collectors' marks of the batches a counter holds (see collectors.batch).
MARKS = "applied"

# settings {_id: "queues", names: [...]}: every queue counted, so the stats list a
# queue with no message left without scanning the counters (collectors.stats).
QUEUE_REGISTRY = "queues"


def bucket_start(at: dt.datetime, resolution: str) -> dt.datetime:
    """The start of the bucket of ``resolution`` that ``at`` falls in (naive means UTC).

    Computed here rather than with ``$dateTrunc``, which the embedded engine lacks.
    """
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
    """A counter's ``_id``: ``<series>|<resolution>|<bucket start ISO, or '-' for the total>``."""
    return f"{series}|{resolution}|{bucket.isoformat() if bucket else '-'}"


def counter_ids(series: str, at: dt.datetime) -> list[str]:
    """The ``_id`` of every counter an event of ``series`` at ``at`` lands in."""
    return [counter_id(series, resolution, bucket_start(at, resolution))
            for resolution in RESOLUTIONS] + [counter_id(series, TOTAL, None)]


def unmarked(marks: Iterable[int] = ()) -> dict[str, int]:
    """A 0 mark for every partition not in ``marks``, as dotted paths for ``$setOnInsert``.

    Every counter is born with a mark for every partition, so that a batch
    can test its own with a plain ``$lt`` (``collectors.batch``), whoever
    creates the counter.
    """
    given = set(marks)
    return {f"{MARKS}.{p}": 0 for p in range(schema.PARTITIONS) if p not in given}


def add_queue_names(db: Database, names: Iterable[str]) -> None:
    """Add queue names to the registry the stats list (``settings`` ``queues``)."""
    new = sorted({name for name in names if name})
    if new:
        db[schema.SETTINGS].update_one({"_id": QUEUE_REGISTRY},
                                       {"$addToSet": {"names": {"$each": new}}}, upsert=True)
