"""The receiving side of a move or an import: stage, record, arrive.

A copy is first *staged*: inserted under its own ``_id`` in state
``arriving`` (``schema.ARRIVING``), with ``arrive_as`` (its real state),
``arrive_version`` (the source's ``updated_at`` it was copied at) and
``arrive_from`` (the source's deployment id). Nothing claims, expires,
counts or removes an ``arriving`` document, so a staged copy can never run.
Once the source has committed the move (or, for an import, once the
arrival is recorded), the copy *arrives*: its arrival is recorded in
``arrivals`` (``_id`` = the message id), then the copy of exactly that
version takes its real state. Making a staged copy visible is always safe: it
was never visible, and a visible copy is never written from scratch, so a
copy the target already ran and deleted is never brought back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pymongo import DeleteOne, UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError, DuplicateKeyError

from mopq import schema
from mopq.bulk import duplicates_only
from mopq.clock import utcnow
from mopq.counter_documents import add_queue_names
from mopq.doorbell import ringer_for
from mopq.migration.deployments import chunks
from mopq.migration.work import Work

# The fields a staged copy carries until it arrives (then they are removed).
ARRIVE_AS, ARRIVE_VERSION, ARRIVE_FROM = "arrive_as", "arrive_version", "arrive_from"

# What became of a copy that was to be staged.
STAGED = "staged"      # staged now, or by an earlier run at the same version
RETRY = "retry"        # not staged: the source moved on, or another run holds the slot
PRESENT = "present"    # the target holds the id visibly without having received it


def staged_copy(copy: dict[str, Any], version: Any, source_id: str) -> dict[str, Any]:
    """The ``arriving`` document of ``copy`` (in its real state) at ``version``."""
    staged = dict(copy)
    staged.update({"state": schema.ARRIVING, ARRIVE_AS: copy["state"], ARRIVE_VERSION: version,
                   ARRIVE_FROM: source_id})
    return staged


def staged_by(source_id: str | None) -> dict[str, object]:
    """The query of the copies ``source_id`` staged on a target and did not make arrive yet."""
    return {"state": schema.ARRIVING, ARRIVE_FROM: source_id}


class Receiver:
    """The target's side of a move (``via`` "migrate") or an import (``via`` "import")."""

    def __init__(self, target: Database, source_id: str, via: str) -> None:
        self.target = target
        self.source_id = source_id
        self.via = via
        self.unique_dropped: list[Any] = []   # staged without their dedupe key's uniqueness

    def recorded(self, ids: list[Any]) -> set[Any]:
        """Which of ``ids`` the target recorded as arrived (it has, or had, them)."""
        found: set[Any] = set()
        for chunk in chunks(ids):
            found.update(d["_id"] for d in self.target[schema.ARRIVALS].find(
                {"_id": {"$in": chunk}}, {"_id": 1}))
        return found

    def stage(self, work: Work, items: list[tuple[dict[str, Any], Any]],
              current: Callable[[Any], Any] | None) -> dict[str, list[int]]:
        """Stage ``(copy, version)`` items; return their indexes by outcome (STAGED, ...).

        A duplicate ``_id`` is looked at: a staged copy of the same version is
        kept; one of another version is replaced when ``current`` (the source's
        version now; None for an import, whose file does not change) says ours
        is the current one; a ``moved`` record of this deployment is replaced
        (the message comes back); a visible copy is PRESENT and left alone.
        A ``dedupe`` key held on the target by another unfinished message is
        dropped from the copy (its ``dedupe_key`` kept): both then run,
        rather than the later one being lost.
        """
        outcomes: dict[str, list[int]] = {STAGED: [], RETRY: [], PRESENT: []}
        if not items:
            return outcomes
        collection = self.target[work.collection]
        copies = [staged_copy(copy, version, self.source_id) for copy, version in items]
        try:
            collection.insert_many(copies, ordered=False)
            duplicates: set[int] = set()
        except BulkWriteError as error:
            duplicates = set(duplicates_only(error))
        outcomes[STAGED] = [index for index in range(len(items)) if index not in duplicates]
        for index in sorted(duplicates):
            outcome = self._stage_again(collection, copies[index], items[index][1], current)
            outcomes[outcome].append(index)
        return outcomes

    def _replace(self, collection: Collection, query: dict[str, Any],
                 copy: dict[str, Any]) -> bool:
        try:
            return collection.replace_one(query, copy).matched_count == 1
        except DuplicateKeyError:  # its dedupe key is held by another message there
            copy = {key: value for key, value in copy.items() if key != "dedupe"}
            if collection.replace_one(query, copy).matched_count == 1:
                self.unique_dropped.append(copy["_id"])
                return True
            return False

    def _stage_again(self, collection: Collection, copy: dict[str, Any], version: Any,
                     current: Callable[[Any], Any] | None) -> str:
        found = collection.find_one({"_id": copy["_id"]}, {"state": 1, ARRIVE_VERSION: 1})
        if found is None:  # the duplicate was the dedupe key, held by another message there
            if "dedupe" not in copy:
                return RETRY
            try:
                collection.insert_one({k: v for k, v in copy.items() if k != "dedupe"})
            except DuplicateKeyError:
                return RETRY
            self.unique_dropped.append(copy["_id"])
            return STAGED
        if found["state"] == schema.ARRIVING:
            if found.get(ARRIVE_VERSION) == version:
                return STAGED
            if current is not None and current(copy["_id"]) != version:
                return RETRY  # ours is stale; the other may be the one to commit
            query = {"_id": copy["_id"], "state": schema.ARRIVING,
                     ARRIVE_VERSION: found.get(ARRIVE_VERSION)}
            return STAGED if self._replace(collection, query, copy) else RETRY
        if found["state"] == schema.MOVED:
            query = {"_id": copy["_id"], "state": schema.MOVED}
            return STAGED if self._replace(collection, query, copy) else RETRY
        return PRESENT

    def arrive(self, work: Work, items: list[tuple[Any, Any, str, str | None]]) -> int:
        """Record arrivals, then make the staged copies of these versions visible.

        ``items``: (id, version, real state, queue). Returns how many became
        visible now (the others were made visible before). The record comes
        first: a run killed in between leaves a recorded, staged copy, which
        the next run makes visible.
        """
        if not items:
            return 0
        now = utcnow()
        records = [{"_id": item_id, "source": self.source_id, "collection": work.collection,
                    "queue": queue, "at": now, "via": self.via}
                   for item_id, _, _, queue in items]
        for chunk in chunks(records):
            try:
                self.target[schema.ARRIVALS].insert_many(chunk, ordered=False)
            except BulkWriteError as error:
                duplicates_only(error)
        shown = 0
        for chunk in chunks(items):
            result = self.target[work.collection].bulk_write([
                UpdateOne({"_id": item_id, "state": schema.ARRIVING, ARRIVE_VERSION: version},
                          {"$set": {"state": state},
                           "$unset": {ARRIVE_AS: "", ARRIVE_VERSION: "", ARRIVE_FROM: ""}})
                for item_id, version, state, _ in chunk], ordered=False)
            shown += result.modified_count
        queues = {queue for _, _, _, queue in items if queue}
        add_queue_names(self.target, queues)
        if work.collection == schema.MESSAGES:
            ringer = ringer_for(self.target)
            for queue in {queue for _, _, state, queue in items
                          if state == schema.PENDING and queue}:
                ringer.ring(queue)
        return shown

    def unstage(self, work: Work, items: list[tuple[Any, Any]]) -> None:
        """Delete the staged copies of these ``(id, version)``: their commit did not happen."""
        for chunk in chunks(items):
            self.target[work.collection].bulk_write([
                DeleteOne({"_id": item_id, "state": schema.ARRIVING, ARRIVE_VERSION: version})
                for item_id, version in chunk], ordered=False)
