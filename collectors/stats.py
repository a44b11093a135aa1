"""The stats reader: one function behind the dashboard, ``/api/stats`` and ``mopq stats``.

Queue state (pending, inflight, delayed, dead, oldest pending age) is read
from the queue itself; flows (written, done, failed, expired, removed) come
from the all-time counters the collectors keep. So the conservation law
holds once the system is quiet and the collectors have caught up:
``written = done + expired + removed + dead + pending + inflight + delayed``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pymongo import ASCENDING
from pymongo.database import Database

from mopq import control, schema
from mopq.clock import utcnow
from mopq.collectors import leases
from mopq.collectors.batch import registered_queues
from mopq.collectors.counters import EVENTS_APPLIED_SERIES, TOTAL, counter_id
from mopq.collectors.monitor import ALIVE, WORKER_STATES, Thresholds, classify
from mopq.connection import prepared

# counter kind -> /api/stats field
FLOW_FIELDS = {schema.WRITTEN: "written", schema.ACKED: "done", schema.FAILED: "failed",
               schema.EXPIRED_EVENT: "expired", schema.DELETED: "removed",
               schema.CLAIMED: "claimed", schema.RECLAIMED: "reclaimed",
               schema.RETRIED: "retried", schema.CANCELLED: "cancelled"}
# Flows counted within another as well: a cancelled message is one of the removed.
PART_OF = {"cancelled": "removed"}
STATE_FIELDS = ("pending", "inflight", "delayed", "dead")
# What ``classify`` reads of a worker document.
WORKER_STATE_FIELDS = {"state": 1, "heartbeat_at": 1, "zombie_reason": 1, "gone_reason": 1}
# Pages warn that counts are behind once the oldest unapplied event is this old; the
# stats document carries it (collector.lag_warning_seconds) so the browser need not know it.
LAG_WARNING_SECONDS = 10.0


def _empty_queue() -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(STATE_FIELDS, 0)
    row.update(dict.fromkeys(FLOW_FIELDS.values(), 0))
    row["oldest_pending_age_seconds"] = 0.0
    return row


def queue_states(db: Database, now: dt.datetime) -> dict[str, dict[str, Any]]:
    """Per queue: pending, delayed, inflight, dead and the oldest pending age, in one pass."""
    queues: dict[str, dict[str, Any]] = {}
    pipeline = [
        {"$match": {"state": {"$in": [schema.PENDING, schema.INFLIGHT, schema.DEAD]}}},
        {"$group": {"_id": {"queue": "$queue", "state": "$state",
                            "later": {"$gt": ["$visible_at", now]}},
                    "count": {"$sum": 1}, "oldest": {"$min": "$created_at"}}},
    ]
    for row in db[schema.MESSAGES].aggregate(pipeline):
        key = row["_id"]
        queue = queues.setdefault(key["queue"], _empty_queue())
        state = key["state"]
        if state == schema.PENDING and key.get("later"):
            queue["delayed"] += row["count"]
        elif state == schema.PENDING:
            queue["pending"] += row["count"]
            age = max(0.0, (now - row["oldest"]).total_seconds()) if row.get("oldest") else 0.0
            queue["oldest_pending_age_seconds"] = round(age, 3)
        else:
            queue[state] += row["count"]
    return queues


def queue_flows(db: Database, names: set[str]) -> dict[str, dict[str, int]]:
    """All-time flows of the named queues and of every registered one, read by ``_id``."""
    names = names | set(registered_queues(db))
    flows: dict[str, dict[str, int]] = {}
    ids = [counter_id(f"q:{name}", TOTAL, None) for name in sorted(names)]
    for document in db[schema.COUNTERS].find({"_id": {"$in": ids}},
                                             {"queue": 1, "counts": 1}):
        counts = document.get("counts") or {}
        flow = {field: int(counts.get(kind, 0)) for kind, field in FLOW_FIELDS.items()}
        for part, whole in PART_OF.items():
            flow[whole] += flow[part]
        flows[document["queue"]] = flow
    return flows


def serving_workers(db: Database, now: dt.datetime,
                    thresholds: Thresholds | None = None) -> dict[str, int]:
    """Per queue, how many alive workers consume it (a quiet or stopping one takes nothing)."""
    thresholds = thresholds or Thresholds.from_env()
    serving: dict[str, int] = {}
    for worker in db[schema.WORKERS].find({}, {"queues": 1, **WORKER_STATE_FIELDS}):
        if classify(worker, now, thresholds) == ALIVE and \
                worker.get("state") not in (schema.WORKER_QUIET, schema.WORKER_STOPPING):
            for name in worker.get("queues") or []:
                serving[name] = serving.get(name, 0) + 1
    return serving


def worker_rows(db: Database, now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """Every registered worker with its state, heartbeat age, current messages and their progress.

    ``state`` is the monitor's verdict (alive, stale, ...); ``reported_state`` what the
    worker itself last wrote (running, quiet, stopping, stopped) and ``control`` what an
    admin asked of it (``mopq.control``).
    """
    now = now or utcnow()
    thresholds = Thresholds.from_env()
    rows = []
    workers = list(db[schema.WORKERS].find().sort([("_id", ASCENDING)]))
    progress = control.holding(db, workers)
    for worker in workers:
        current = []
        for item in worker.get("current") or []:
            since = item.get("since")
            current.append({"message_id": item.get("message_id"), "queue": item.get("queue"),
                            "since": since,
                            "seconds": round((now - since).total_seconds(), 1) if since else None,
                            "progress": progress.get(str(item.get("message_id")))})
        beat = worker.get("heartbeat_at")
        rows.append({
            "id": worker["_id"], "state": classify(worker, now, thresholds),
            "zombie_reason": worker.get("zombie_reason") or worker.get("gone_reason"),
            "queues": worker.get("queues") or [], "concurrency": worker.get("concurrency"),
            "hostname": worker.get("hostname"), "pid": worker.get("pid"),
            "started_at": worker.get("started_at"), "heartbeat_at": beat,
            "heartbeat_age_seconds": round((now - beat).total_seconds(), 1) if beat else None,
            "processed": int(worker.get("processed") or 0),
            "failed": int(worker.get("failed") or 0), "current": current,
            "reported_state": worker.get("state"),
            "control": worker.get(control.FIELD) if control.requested(worker) else None,
        })
    return rows


def worker_states(db: Database, now: dt.datetime,
                  thresholds: Thresholds | None = None) -> dict[str, int]:
    thresholds = thresholds or Thresholds.from_env()
    counts = dict.fromkeys(WORKER_STATES, 0)
    for worker in db[schema.WORKERS].find({}, WORKER_STATE_FIELDS):
        counts[classify(worker, now, thresholds)] += 1
    return counts


def collector_state(db: Database, now: dt.datetime) -> dict[str, Any]:
    oldest = next(iter(db[schema.EVENTS].find({}, {"at": 1}).sort([("at", 1)]).limit(1)), None)
    lag = max(0.0, (now - oldest["at"]).total_seconds()) if oldest else 0.0
    return {
        "lag_seconds": round(lag, 3),
        "lag_warning_seconds": LAG_WARNING_SECONDS,
        "events_total": applied_marker(db),
        "events_waiting": db[schema.EVENTS].count_documents({}),
        "collectors_alive": len(leases.live_collectors(db)),
    }


def applied_marker(db: Database) -> int:
    """Events the collectors applied, all time: one read by ``_id``.

    It moves whenever a count could have changed (every transition has its
    event), so a reader may keep its last ``read_stats`` while it stays put.
    """
    total = db[schema.COUNTERS].find_one({"_id": counter_id(EVENTS_APPLIED_SERIES, TOTAL, None)},
                                         {"count": 1})
    return int((total or {}).get("count", 0))


def read_stats(db: Database, now: dt.datetime | None = None) -> dict[str, Any]:
    """The ``/api/stats`` document (shared DESIGN.md names its fields)."""
    db = prepared(db)
    now = now or utcnow()
    queues = queue_states(db, now)
    for name, flows in queue_flows(db, set(queues)).items():
        queues.setdefault(name, _empty_queue()).update(flows)
    return {
        "queues": dict(sorted(queues.items())),
        "workers": worker_states(db, now),
        "collector": collector_state(db, now),
        "generated_at": now.isoformat(),
    }
