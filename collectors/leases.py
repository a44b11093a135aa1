"""Leases: which collector applies which partition, and which one runs the monitor.

A lease is a document in ``leases`` held by ``owner`` until ``expires_at``::

    {_id: "partition:<n>", kind: "partition", partition: n, owner, expires_at,
     seq,        # number of the last batch applied to this partition
     journal}    # the batch being applied now, if any (see collectors.batch)
    {_id: "monitor", kind: "monitor", owner, expires_at}
    {_id: "collector:<id>", kind: "collector", owner, expires_at, host, pid, started_at}

Taking a lease is one atomic update: it matches only if the lease is free,
expired, or already ours; if the document does not exist the upsert creates
it, and if another collector holds it the upsert collides on ``_id`` and we
get nothing. Holders renew well before expiry; a collector that dies simply
stops renewing, and its leases pass to others after ``LEASE_SECONDS``.

Collectors share partitions fairly: each announces itself with a presence
lease, counts the live ones, and holds at most ``ceil(PARTITIONS / live)``.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from pymongo import ReturnDocument
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from mopq import schema
from mopq.clock import utcnow

LEASE_SECONDS = 10.0
NEVER = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def partition_lease_id(partition: int) -> str:
    return f"partition:{partition}"



def acquire(db: Database, lease_id: str, owner: str, seconds: float = LEASE_SECONDS,
            extra: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Take or renew a lease; return its document if ``owner`` holds it now, else None."""
    now = utcnow()
    try:
        return db[schema.LEASES].find_one_and_update(
            {"_id": lease_id,
             "$or": [{"owner": owner}, {"owner": None}, {"expires_at": {"$lte": now}}]},
            {"$set": {"owner": owner, "expires_at": now + dt.timedelta(seconds=seconds),
                      **(extra or {})},
             "$setOnInsert": {"seq": 0}},
            upsert=True, return_document=ReturnDocument.AFTER,
        )
    except DuplicateKeyError:
        return None


def release(db: Database, lease_id: str, owner: str) -> None:
    db[schema.LEASES].update_one({"_id": lease_id, "owner": owner},
                                 {"$set": {"owner": None, "expires_at": NEVER}})


def renew(db: Database, partitions: list[int], owner: str,
          seconds: float = LEASE_SECONDS) -> dict[int, dict[str, Any]]:
    """Renew the leases of ``partitions`` that ``owner`` still holds; return those, by partition.

    Two commands however many partitions (``acquire`` is one each): a collector
    renews every second in the loop that applies batches, and sixteen round trips
    there held back the next batch, and so every count, by tens of milliseconds on
    a busy engine. Only leases whose ``owner`` is still ``owner`` are renewed; one
    lost meanwhile (it expired and another collector took it) is not returned.
    """
    if not partitions:
        return {}
    ids = [partition_lease_id(partition) for partition in partitions]
    db[schema.LEASES].update_many(
        {"_id": {"$in": ids}, "owner": owner},
        {"$set": {"expires_at": utcnow() + dt.timedelta(seconds=seconds)}})
    return {lease["partition"]: lease
            for lease in db[schema.LEASES].find({"_id": {"$in": ids}, "owner": owner})}


def live_collectors(db: Database) -> list[dict[str, Any]]:
    return list(db[schema.LEASES].find({"kind": "collector", "expires_at": {"$gt": utcnow()}}))


def fair_share(live: int) -> int:
    return math.ceil(schema.PARTITIONS / max(1, live))


class PartitionLeases:
    """The partitions one collector holds, kept to its fair share."""

    def __init__(self, db: Database, owner: str, seconds: float = LEASE_SECONDS) -> None:
        self.db = db
        self.owner = owner
        self.seconds = seconds
        self.held: dict[int, dict[str, Any]] = {}

    def rebalance(self, presence: dict[str, Any]) -> dict[int, dict[str, Any]]:
        """Renew what we hold, take free partitions up to our share, give back the excess."""
        acquire(self.db, f"collector:{self.owner}", self.owner, self.seconds,
                {"kind": "collector", **presence})
        share = fair_share(len(live_collectors(self.db)))
        held = renew(self.db, sorted(self.held), self.owner, self.seconds)
        for partition in sorted(held, reverse=True)[: max(0, len(held) - share)]:
            if not held[partition].get("journal"):
                release(self.db, partition_lease_id(partition), self.owner)
                del held[partition]
        if len(held) < share:
            for partition in range(schema.PARTITIONS):
                if len(held) >= share:
                    break
                if partition in held:
                    continue
                lease = acquire(self.db, partition_lease_id(partition), self.owner, self.seconds,
                                {"kind": "partition", "partition": partition})
                if lease is not None:
                    held[partition] = lease
        self.held = held
        return held

    def release_all(self) -> None:
        for partition in list(self.held):
            release(self.db, partition_lease_id(partition), self.owner)
        self.held = {}
        self.db[schema.LEASES].delete_one({"_id": f"collector:{self.owner}", "owner": self.owner})
