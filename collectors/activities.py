"""Activity definitions as chains of steps, each with its figures from the counters.

A step's queue belongs to that step (``mopq.activities.definition`` refuses a
queue another activity uses), so the queue's counters are the step's
counters: done (acknowledged), failed attempts, dead (out of attempts) and
claim-to-ack times come from the counters the collectors keep from the
business log, exactly once across collector crashes like every other
counter (``collectors.batch``); waiting and running are read from the queue
itself, as for every queue. A fan-out step's figures are its children's.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pymongo.database import Database

from mopq import schema
from mopq.activities import instances
from mopq.activities.document import STATUSES
from mopq.clock import utcnow
from mopq.collectors import series
from mopq.collectors.counters import MINUTE, bucket_ids, percentile, totals

P95_WINDOW = dt.timedelta(hours=1)  # step times are the p95 of the last hour


def p95_seconds(db: Database, queue: str, now: dt.datetime) -> float | None:
    """The 95th percentile of claim-to-ack times in ``queue`` over the last hour, or None."""
    ids = bucket_ids(f"d:{queue}:*", MINUTE, now - P95_WINDOW, now)
    hist: dict[str, int] = {}
    for document in db[schema.COUNTERS].find({"_id": {"$in": ids}}, {"hist": 1}):
        for edge, count in (document.get("hist") or {}).items():
            hist[edge] = hist.get(edge, 0) + int(count)
    return percentile(hist, 0.95)


def _figures(db: Database, queue: str, row: dict[str, Any] | None,
             now: dt.datetime) -> dict[str, Any]:
    row = row or {}
    counts = totals(db, queue)
    return {"queue": queue,
            "waiting": int(row.get("pending", 0)) + int(row.get("delayed", 0)),
            "running": int(row.get("inflight", 0)),
            "done": counts.get(schema.ACKED, 0), "failed": counts.get(schema.FAILED, 0),
            "dead": counts.get(schema.DEAD_EVENT, 0),
            "done_per_second": row.get("done_per_second", 0.0),
            "p95_seconds": p95_seconds(db, queue, now),
            "workers": int(row.get("workers", 0)), "warnings": list(row.get("warnings", []))}


def definitions(db: Database, now: dt.datetime | None = None,
                stats: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every activity definition: its steps in order with their figures, and its instances.

    ``instances`` counts unfinished instances by status (stuck, compensating,
    running) and finished ones still in history (completed, compensated).
    """
    now = now or utcnow()
    rows = {row["name"]: row for row in series.queues(db, now, stats)}
    counted = instances.counts(db)
    found = []
    for definition in db[schema.ACTIVITIES].find({}).sort([("_id", 1)]):
        steps = []
        for step in definition["steps"]:
            undo = step.get("compensation")
            steps.append({"name": step["name"], "fan_out": bool(step.get("fan_out")),
                          **_figures(db, step["queue"], rows.get(step["queue"]), now),
                          "compensation": _figures(db, undo, rows.get(undo), now)
                          if undo else None})
        found.append({"name": definition["_id"], "steps": steps,
                      "instances": counted.get(definition["_id"], dict.fromkeys(STATUSES, 0)),
                      "defined_at": definition.get("defined_at")})
    return found
