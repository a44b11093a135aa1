"""Sweeps that keep a queue recoverable without any process being alive to do it.

The monitor (in a collector) calls :func:`sweep` every few seconds; anyone may
call it, any number of processes at once, because each change is a
compare-and-set on one message:

* pending messages past ``expire_at`` become ``expired`` (and are counted);
* inflight messages whose lease ran out go back to ``pending`` (``reclaimed``),
  so stats show them waiting rather than held (a claim would take them anyway);
* write intents that a crashed process left open are counted message by
  message (``mopq.write_intents``);
* outboxes that a crashed process left unpublished are published, and
  finished messages whose publication was cut short are deleted (a done one
  copied into history first);
* activity instances a crashed process (or another client) left between two
  moves are moved on (``mopq.activities.recovery``).

:func:`reclaim_worker` returns a dead worker's messages at once, without
waiting for their leases.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from pymongo.database import Database

from mopq import history, schema, write_intents
from mopq.activities.recovery import Recovered, recover
from mopq.clock import utcnow
from mopq.doorbell import ringer_for
from mopq.events import expanded, message_event
from mopq.publisher import Outbox, publish_outboxes

SWEEP_BATCH = 1_000
OUTBOX_GRACE_SECONDS = 5.0
_EVENT_FIELDS = {"queue": 1, "routing_key": 1, "activity": 1, "lease_token": 1}


@dataclass
class SweepResult:
    expired: int = 0
    reclaimed: int = 0
    republished: int = 0
    counted_one_by_one: int = 0  # messages of write intents their writers left open
    activities: Recovered | None = None



def expire_messages(db: Database, now: dt.datetime | None = None) -> int:
    """Turn pending messages past their expiry into ``expired``; return how many."""
    now = now or utcnow()
    messages = db[schema.MESSAGES]
    changed = []
    for candidate in messages.find({"state": schema.PENDING, "expire_at": {"$lte": now}},
                                   _EVENT_FIELDS).limit(SWEEP_BATCH):
        event = message_event(schema.EXPIRED_EVENT, candidate, now)
        document = messages.find_one_and_update(
            {"_id": candidate["_id"], "queue": candidate["queue"], "state": schema.PENDING,
             "expire_at": {"$lte": now}},
            {"$set": {"state": schema.EXPIRED, "updated_at": now}, "$unset": {"dedupe": ""},
             "$push": {"outbox": event}},
            projection={"_id": 1},
        )
        if document is not None:
            changed.append(Outbox(candidate["_id"], schema.EXPIRED, [event]))
    publish_outboxes(db, changed)
    return len(changed)


def _release(db: Database, query: dict[str, Any], reason: str, now: dt.datetime) -> int:
    """Return held messages matching ``query`` to pending, one CAS per lease."""
    messages = db[schema.MESSAGES]
    changed = []
    released: list[dict[str, Any]] = []
    for candidate in messages.find(query, _EVENT_FIELDS).limit(SWEEP_BATCH):
        token = candidate.get("lease_token")
        event = message_event(schema.RECLAIMED, candidate, now, token, reason=reason)
        document = messages.find_one_and_update(
            {"_id": candidate["_id"], "state": schema.INFLIGHT, "lease_token": token},
            {"$set": {"state": schema.PENDING, "visible_at": now, "updated_at": now},
             "$unset": {"lease_token": "", "leased_by": ""}, "$push": {"outbox": event}},
            projection={"_id": 1},
        )
        if document is not None:
            changed.append(Outbox(candidate["_id"], schema.PENDING, [event]))
            released.append(candidate)
    publish_outboxes(db, changed)
    ringer = ringer_for(db)
    for queue in {candidate["queue"] for candidate in released}:
        ringer.ring(queue)
    return len(changed)


def reclaim_expired_leases(db: Database, now: dt.datetime | None = None) -> int:
    now = now or utcnow()
    return _release(db, {"state": schema.INFLIGHT, "visible_at": {"$lte": now}},
                     "lease expired", now)


def reclaim_worker(db: Database, worker: str, reason: str = "worker dead") -> int:
    """Return every message ``worker`` holds to pending now; return how many."""
    return _release(db, {"state": schema.INFLIGHT, "leased_by": worker}, reason, utcnow())


def republish_outboxes(db: Database, now: dt.datetime | None = None,
                       grace_seconds: float = OUTBOX_GRACE_SECONDS) -> int:
    """Publish outboxes older than the grace period (their writer died or fell behind)."""
    now = now or utcnow()
    before = now - dt.timedelta(seconds=grace_seconds)
    documents = list(db[schema.MESSAGES].find(
        {"updated_at": {"$lte": before},
         "$or": [{"outbox.id": {"$exists": True}},
                 {"state": {"$in": list(schema.TERMINAL_STATES)}}]},
        {"state": 1, "outbox": 1, "queue": 1, "routing_key": 1, "activity": 1},
    ).limit(SWEEP_BATCH))
    history.archive(db, [d["_id"] for d in documents
                         if not d.get("outbox") and d["state"] == schema.DONE])
    finished = [d["_id"] for d in documents
                if not d.get("outbox") and d["state"] in schema.TERMINAL_STATES]
    if finished:
        db[schema.MESSAGES].delete_many({"_id": {"$in": finished},
                                         "state": {"$in": list(schema.TERMINAL_STATES)},
                                         "outbox.0": {"$exists": False},
                                         **write_intents.not_held()})
        write_intents.release(db, finished)
    publish_outboxes(db, [Outbox(d["_id"], d["state"],
                                 [expanded(entry, d) for entry in d.get("outbox", [])])
                          for d in documents], republished=True)
    return len(documents)


def forget_doorbells(db: Database, now: dt.datetime | None = None) -> int:
    """Remove doorbells their processes stopped renewing (writers ignore them already)."""
    return db[schema.DOORBELLS].delete_many({"expires_at": {"$lte": now or utcnow()}}).deleted_count


def sweep(db: Database, now: dt.datetime | None = None) -> SweepResult:
    """One pass of every sweep; safe to run concurrently from many processes."""
    schema.ensure_indexes(db)
    forget_doorbells(db, now)
    return SweepResult(
        expired=expire_messages(db, now),
        reclaimed=reclaim_expired_leases(db, now),
        counted_one_by_one=write_intents.sweep(db, now or utcnow()),
        republished=republish_outboxes(db, now),
        activities=recover(db, now),  # what a crashed process left of an activity's move
    )
