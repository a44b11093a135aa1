"""Bulk writes in which a duplicate key means "already there", not a failure.

Event ids, receipts and counters carry deterministic ``_id``s, and an
insert (or upsert) that collides with one already stored is how mopq learns
that a write was done before. Every bulk write that relies on that reads
its error here, so "duplicate: fine, anything else: raise" is written once.
"""

from __future__ import annotations

from pymongo.errors import BulkWriteError

DUPLICATE_KEY = 11000


def duplicates_only(error: BulkWriteError) -> list[int]:
    """The indexes of the operations refused as duplicates; re-raise if anything else failed."""
    failures = error.details.get("writeErrors", [])
    if error.details.get("writeConcernErrors") or any(
            failure.get("code") != DUPLICATE_KEY for failure in failures):
        raise error
    return [failure["index"] for failure in failures]
