"""The activities' part of the sweep: finish what a crashed process, or another client, left.

The process that acknowledges or fails a step does the follow-up itself at
once (write a fan-out's children, count a finished child into its parent,
start compensation after a dead step). If it is killed in between, or the
step was served by a client that only speaks the plain format (a Node.js
worker acknowledging a fan-out child, say), this sweep does it instead. Each
action is the same compare-and-set as the first attempt, so the sweep and a
slow first attempt, or two sweeps, cannot do it twice.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pymongo.database import Database

from mopq import schema
from mopq.activities import fanout, transitions
from mopq.activities.document import FORWARD
from mopq.clock import utcnow

# A parent whose children are not all written this long after it started waiting
# has lost its spawner (the first one writes them within milliseconds).
SPAWN_GRACE_SECONDS = 5.0
BATCH = 1_000


@dataclass
class Recovered:
    spawned: int = 0      # children written for parents whose spawner died
    counted: int = 0      # finished children counted into their parents
    compensating: int = 0  # instances moved into compensation after a dead step


def recover(db: Database, now: dt.datetime | None = None,
            spawn_grace_seconds: float = SPAWN_GRACE_SECONDS) -> Recovered:
    """One pass; safe to run concurrently with workers and with other sweeps."""
    now = now or utcnow()
    messages = db[schema.MESSAGES]
    result = Recovered()
    late = now - dt.timedelta(seconds=spawn_grace_seconds)
    for parent in messages.find({"state": schema.WAITING, "sequence.children.spawned": False,
                                 "sequence.children.since": {"$lte": late}},
                                {"_id": 1}).limit(BATCH):
        result.spawned += fanout.spawn(db, parent["_id"])
    for parent in messages.find({"state": schema.WAITING},
                                {"sequence.at": 1, "sequence.children": 1}).limit(BATCH):
        for child, dead in fanout.finished_children(db, parent):
            counted = fanout.child_finished(db, child, result=child.get("result"), dead=dead)
            result.counted += int(counted)
    for instance in messages.find({"state": schema.DEAD, "sequence.phase": FORWARD}
                                  ).limit(BATCH):
        result.compensating += int(transitions.compensate(db, instance))
    return result
