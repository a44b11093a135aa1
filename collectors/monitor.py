"""The monitor: worker states, lost work returned, sweeps and retention.

It runs inside a collector under the ``monitor`` lease, so exactly one
instance acts at a time (a second one would be harmless, every change being
a compare-and-set, but would double the work).

Worker states, from the registry (``workers``) and the messages they hold:

* ``alive`` — beat within ``worker_stale_seconds``;
* ``stale`` — missed a few beats (up to ``worker_dead_seconds``);
* ``dead`` — missed many beats, or its process is known to be gone (it ran
  on this host and its pid no longer exists, or now belongs to a process
  started at another time): its inflight messages are returned to the queue
  at once (``reclaimed``) instead of waiting for their leases. A paused
  process (SIGSTOP) still exists, so it goes stale, then zombie or dead;
* ``zombie`` — still beating, but holding a message well past its lease, or
  working on one for ``worker_no_progress_seconds`` without progress;
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

from mopq import admin, history, maintenance, policy, rate_limit, schema
from mopq.clock import utcnow
from mopq.collectors.batch import expire_receipts
from mopq.collectors.settings import Retention, Thresholds

log = logging.getLogger("mopq.monitor")

ALIVE, STALE, DEAD, ZOMBIE, STOPPED = "alive", "stale", "dead", "zombie", "stopped"
WORKER_STATES = (ALIVE, STALE, DEAD, ZOMBIE, STOPPED)
RETENTION_EVERY = dt.timedelta(minutes=1)


def classify(worker: dict[str, Any], now: dt.datetime, thresholds: Thresholds) -> str:
    """A worker's state from its heartbeat and the monitor's last verdicts."""
    if worker.get("state") == "stopped":
        return STOPPED
    if worker.get("gone_reason"):
        return DEAD
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


def gone_reason(worker: dict[str, Any], hostname: str) -> str | None:
    """Why a worker of this host surely no longer runs, or None (another host: can't tell).

    Its identity ``ip:port:start_time:pid`` names the process: gone if no
    process has that pid, or the one that has it started at another second
    (the pid was reused).
    """
    if worker.get("hostname") != hostname or worker.get("ip", "127.0.0.1") not in _own_addresses():
        return None  # another machine, or a container of the same name: its pids are not ours
    try:
        started, pid = (int(part) for part in str(worker["_id"]).rsplit(":", 2)[-2:])
    except (KeyError, ValueError):
        return None
    try:
        created = int(psutil.Process(pid).create_time())
    except psutil.NoSuchProcess:
        return f"process {pid} no longer exists on {hostname}"
    except (psutil.Error, OSError, ValueError, OverflowError):
        return None
    if abs(created - started) > 1:
        return (f"process {pid} on {hostname} is another one now (started at {created}, "
                f"not {started})")
    return None


def _own_addresses() -> set[str]:
    try:
        interfaces = psutil.net_if_addrs().values()
    except (OSError, psutil.Error):
        return {"127.0.0.1"}
    return {"127.0.0.1"} | {address.address for addresses in interfaces
                            for address in addresses if address.family == socket.AF_INET}


def zombie_reason(worker: dict[str, Any], held: dict[ObjectId, dict[str, Any]],
                  now: dt.datetime, thresholds: Thresholds) -> str | None:
    """Why a beating worker is a zombie, or None."""
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

    def __init__(self, db: Database, thresholds: Thresholds | None = None,
                 retention: Retention | None = None) -> None:
        self.db = db
        self.thresholds = thresholds or Thresholds.from_env()
        self.hostname = socket.gethostname()
        self.retention = retention or Retention.from_env()
        self._retention_at: dt.datetime | None = None
        self._retention_behind = False

    def run_once(self, now: dt.datetime | None = None) -> MonitorResult:
        now = now or utcnow()
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
            verdicts: dict[str, str | None] = {"zombie_reason": None, "gone_reason": None}
            if worker.get("state") != "stopped":
                verdicts["gone_reason"] = gone_reason(worker, self.hostname)
                if not verdicts["gone_reason"]:
                    verdicts["zombie_reason"] = zombie_reason(worker, held, now, self.thresholds)
            if any(worker.get(key) != value for key, value in verdicts.items()):
                workers.update_one({"_id": worker["_id"], "state": {"$ne": "stopped"}},
                                   {"$set": {**verdicts, "checked_at": now}})
                worker.update(verdicts)
            state = classify(worker, now, self.thresholds)
            result.states[state] += 1
            if state == DEAD:
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
        if self._retention_at is None or now - self._retention_at >= RETENTION_EVERY \
                or self._retention_behind:
            self.enforce_retention(now)
            self._retention_at = now
        return result

    def enforce_retention(self, now: dt.datetime | None = None) -> int:
        """Delete what is past its keep time: counter buckets, receipts, history, dead messages.

        History and dead messages go a batch at a time; while a batch comes
        back full, the next pass (seconds later) takes another, so a backlog
        drains without holding the engine, and claims (another collection)
        never wait for it.
        """
        now = now or utcnow()
        removed = self.db[schema.COUNTERS].delete_many({"expires_at": {"$lte": now}}).deleted_count
        removed += expire_receipts(self.db, now)
        removed += rate_limit.forget(self.db, now)
        finished, dead = self._kept_by_policy()
        forgotten = history.forget_finished(
            self.db, now - dt.timedelta(seconds=self.retention.finished),
            other_than=list(finished))
        for queue, seconds in finished.items():
            forgotten += history.forget_finished(self.db, now - dt.timedelta(seconds=seconds),
                                                 queue=queue)
        old_dead: list[Any] = []
        for queue, seconds in [(None, self.retention.dead), *dead.items()]:
            query: dict[str, Any] = {
                "state": schema.DEAD, "dead_at": {"$lt": now - dt.timedelta(seconds=seconds)},
                "queue": queue if queue is not None else {"$nin": list(dead)}}
            old_dead += [d["_id"] for d in self.db[schema.MESSAGES].find(query, {"_id": 1})
                         .limit(history.RETENTION_BATCH)]
        expired_dead = admin.remove(self.db, admin.selection(ids=old_dead),
                                    reason="retention") if old_dead else 0
        self._retention_behind = max(forgotten, len(old_dead)) >= history.RETENTION_BATCH
        return removed + forgotten + expired_dead

    def _kept_by_policy(self) -> tuple[dict[str, float], dict[str, float]]:
        """Queues whose stored policy sets their own retention: finished, and dead."""
        finished: dict[str, float] = {}
        dead: dict[str, float] = {}
        for name, record in policy.read_all(self.db).items():
            if record.policy.get("keep_finished_seconds") is not None:
                finished[name] = float(record.policy["keep_finished_seconds"])
            if record.policy.get("keep_dead_seconds") is not None:
                dead[name] = float(record.policy["keep_dead_seconds"])
        return finished, dead
