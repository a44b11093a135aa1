"""Bulk writes in which a duplicate key means "already there", not a failure.

Event ids, receipts and counters carry deterministic ``_id``s, and an
insert (or upsert) that collides with one already stored is how mopq learns
that a write was done before. Every bulk write that relies on that reads
its error here, so "duplicate: fine, anything else: raise" is written once.
"""

from __future__ import annotations

from typing import Any

from pymongo.database import Database
from pymongo.errors import BulkWriteError

from mopq import schema

DUPLICATE_KEY = 11000


def duplicates_only(error: BulkWriteError) -> list[int]:
    """The indexes of the operations refused as duplicates; re-raise if anything else failed."""
    failures = error.details.get("writeErrors", [])
    if error.details.get("writeConcernErrors") or any(
            failure.get("code") != DUPLICATE_KEY for failure in failures):
        raise error
    return [failure["index"] for failure in failures]


def insert_events(db: Database, documents: list[dict[str, Any]]) -> None:
    """Insert event documents, treating an already-present id as success."""
    if not documents:
        return
    try:
        db[schema.EVENTS].insert_many(documents, ordered=False)
    except BulkWriteError as error:
        duplicates_only(error)
