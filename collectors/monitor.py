"""The monitor: worker states, lost work returned, sweeps and retention.

It runs inside a collector under the ``monitor`` lease, so exactly one
instance acts at a time (a second one would be harmless, every change being
a compare-and-set, but would double the work).

Worker states, from the registry (``workers``) and the messages they hold:

* ``alive`` — beat within ``worker_stale_seconds``;
* ``stale`` — missed a few beats (up to ``worker_dead_seconds``);
* ``dead`` — missed many; its inflight messages are returned to the queue at
  once (``reclaimed``) instead of waiting for their leases;
* ``zombie`` — still beating, but holding a message well past its lease, or
  working on one for ``worker_no_progress_seconds`` without progress, or its
  process no longer exists on this host;
* ``stopped`` — stopped cleanly.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
from dataclasses import dataclass, field
from typing import Any

import psutil
from bson import ObjectId
from bson.errors import InvalidId
from pymongo.database import Database

from collectors.batch import expire_receipts
from mopq import maintenance, schema
from mopq.config import Settings, settings

log = logging.getLogger("mopq.monitor")

ALIVE, STALE, DEAD, ZOMBIE, STOPPED = "alive", "stale", "dead", "zombie", "stopped"
WORKER_STATES = (ALIVE, STALE, DEAD, ZOMBIE, STOPPED)
RETENTION_EVERY = dt.timedelta(minutes=1)


@dataclass(frozen=True)
class Thresholds:
    stale: float = 15.0
    dead: float = 60.0
    zombie: float = 60.0
    no_progress: float = 1800.0
    forget: float = 86400.0

    @classmethod
    def from_settings(cls, current: Settings | None = None) -> Thresholds:
        current = current or settings()
        return cls(current.worker_stale_seconds, current.worker_dead_seconds,
                   current.worker_zombie_seconds, current.worker_no_progress_seconds,
                   current.worker_forget_seconds)


def classify(worker: dict[str, Any], now: dt.datetime, thresholds: Thresholds) -> str:
    """A worker's state from its heartbeat and the monitor's last zombie verdict."""
    if worker.get("state") == "stopped":
        return STOPPED
    beat = worker.get("heartbeat_at")
    age = (now - beat).total_seconds() if beat else float("inf")
    if age > thresholds.dead:
        return DEAD
    if age > thresholds.stale:
        return STALE
    if worker.get("zombie_reason"):
        return ZOMBIE
    return ALIVE


def _object_ids(values: list[Any]) -> list[ObjectId]:
    ids = []
    for value in values:
        try:
            ids.append(ObjectId(str(value)))
        except (InvalidId, TypeError):
            continue
    return ids


def zombie_reason(worker: dict[str, Any], held: dict[ObjectId, dict[str, Any]],
                  now: dt.datetime, thresholds: Thresholds, hostname: str) -> str | None:
    """Why a beating worker is a zombie, or None."""
    if worker.get("hostname") == hostname and worker.get("pid"):
        try:
            alive = psutil.pid_exists(int(worker["pid"]))
        except (ValueError, OverflowError):
            alive = True
        if not alive:
            return f"process {worker['pid']} no longer exists on {hostname}"
    for item in worker.get("current") or []:
        message_ids = _object_ids([item.get("message_id")])
        message = held.get(message_ids[0]) if message_ids else None
        if message is None:
            continue
        still_ours = message.get("state") == schema.INFLIGHT and \
            message.get("leased_by") == worker["_id"]
        lease_end = message.get("visible_at")
        if lease_end and (now - lease_end).total_seconds() > thresholds.zombie:
            owner = "its lease" if still_ours else "a lease it no longer holds"
            return (f"holding message {message['_id']} "
                    f"{(now - lease_end).total_seconds():.0f} s past {owner}")
        progress_at = (message.get("progress") or {}).get("at") or message.get("claimed_at")
        if progress_at and (now - progress_at).total_seconds() > thresholds.no_progress:
            return (f"no progress on message {message['_id']} for "
                    f"{(now - progress_at).total_seconds():.0f} s")
    return None


@dataclass
class MonitorResult:
    states: dict[str, int] = field(default_factory=dict)
    reclaimed: int = 0
    forgotten: int = 0
    sweep: maintenance.SweepResult | None = None


class Monitor:
    """One pass at a time; the collector decides when and under which lease."""

    def __init__(self, db: Database, thresholds: Thresholds | None = None) -> None:
        self.db = db
        self.thresholds = thresholds or Thresholds.from_settings()
        self.hostname = socket.gethostname()
        self._retention_at: dt.datetime | None = None

    def run_once(self, now: dt.datetime | None = None) -> MonitorResult:
        now = now or dt.datetime.now(dt.UTC)
        result = MonitorResult(states=dict.fromkeys(WORKER_STATES, 0))
        workers = self.db[schema.WORKERS]
        registry = list(workers.find())
        current_ids = _object_ids([item.get("message_id") for w in registry
                                   for item in (w.get("current") or [])])
        held = {m["_id"]: m for m in self.db[schema.MESSAGES].find(
            {"_id": {"$in": current_ids}},
            {"state": 1, "leased_by": 1, "visible_at": 1, "claimed_at": 1, "progress": 1})
        } if current_ids else {}
        forget_before = now - dt.timedelta(seconds=self.thresholds.forget)
        for worker in registry:
            reason = None
            if worker.get("state") != "stopped":
                reason = zombie_reason(worker, held, now, self.thresholds, self.hostname)
            if reason != worker.get("zombie_reason"):
                workers.update_one({"_id": worker["_id"]},
                                   {"$set": {"zombie_reason": reason, "checked_at": now}})
                worker["zombie_reason"] = reason
            state = classify(worker, now, self.thresholds)
            result.states[state] += 1
            gone = state == DEAD or (state == ZOMBIE and "no longer exists" in (reason or ""))
            if gone:
                reclaimed = maintenance.reclaim_worker(self.db, worker["_id"],
                                                       reason=f"worker {state}")
                if reclaimed:
                    log.warning("mopq monitor: worker %s is %s; returned %d message(s)",
                                worker["_id"], state, reclaimed)
                result.reclaimed += reclaimed
            last_seen = worker.get("heartbeat_at") or worker.get("started_at")
            if state in (DEAD, STOPPED) and last_seen and last_seen < forget_before:
                workers.delete_one({"_id": worker["_id"],
                                    "heartbeat_at": worker.get("heartbeat_at")})
                result.forgotten += 1
        result.sweep = maintenance.sweep(self.db, now)
        if self._retention_at is None or now - self._retention_at >= RETENTION_EVERY:
            self.enforce_retention(now)
            self._retention_at = now
        return result

    def enforce_retention(self, now: dt.datetime | None = None) -> int:
        """Delete counter buckets past their keep time and old receipts."""
        now = now or dt.datetime.now(dt.UTC)
        removed = self.db[schema.COUNTERS].delete_many({"expires_at": {"$lte": now}}).deleted_count
        return removed + expire_receipts(self.db, now)
