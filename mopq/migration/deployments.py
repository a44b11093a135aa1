"""The two deployments of a move: what each is called, and whether both may be used.

Each deployment names itself with a random id kept in ``settings``
``{_id: "deployment", id}``, made the first time a migration or export
touches it. The id, not a URI, is what a move records (``moved_to`` on the
source, ``arrive_from`` and ``arrivals.source`` on the target, ``carried.<id>``
in counters): a deployment reached by another URI, or restored from a copy
of its files, is still recognised, and one database is never both sides.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError, DuplicateKeyError

from mopq import schema
from mopq.bulk import duplicates_only
from mopq.connection import prepared
from mopq.errors import InvalidInput

DEPLOYMENT = "deployment"          # settings {_id: "deployment", id: <16 hex>}
CHUNK = 1_000                      # ids per $in, documents per bulk write


def chunks(items: list[Any], size: int = CHUNK) -> Iterator[list[Any]]:
    """``items`` in slices of ``size``: queries and bulk writes stay bounded."""
    for start in range(0, len(items), size):
        yield items[start:start + size]


def to_ms(moment: dt.datetime) -> dt.datetime:
    """``moment`` at BSON's precision, so that a stored copy compares equal to it."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def insert_new(collection: Collection, documents: list[dict[str, Any]]) -> int:
    """Insert by ``_id`` (already there means inserted before); return how many were new."""
    if not documents:
        return 0
    try:
        collection.insert_many(documents, ordered=False)
        return len(documents)
    except BulkWriteError as error:
        return len(documents) - len(duplicates_only(error))


def deployment_id(db: Database, create: bool = True) -> str | None:
    """The deployment's id, made on first use when ``create``; None if it has none."""
    settings = db[schema.SETTINGS]
    if create:
        try:
            settings.update_one({"_id": DEPLOYMENT},
                                {"$setOnInsert": {"id": secrets.token_hex(8)}}, upsert=True)
        except DuplicateKeyError:  # another process made it at the same moment
            pass
    found = settings.find_one({"_id": DEPLOYMENT})
    return str(found["id"]) if found and found.get("id") else None


def stored_format(db: Database) -> int | None:
    """The database's storage format, read without writing; refuses a newer one than ours.

    A dry run, a verification and an export write nothing, so they cannot
    use ``schema.check_format`` (which records the format of a new database).
    """
    found = db[schema.SETTINGS].find_one({"_id": schema.FORMAT_DOCUMENT})
    version = int(found.get("version", 1)) if found else None
    if version is not None and version > schema.FORMAT_VERSION:
        raise schema.FormatMismatch(
            f"Database {db.name!r} speaks mopq storage format {version}; this mopq speaks "
            f"format {schema.FORMAT_VERSION} (docs/FORMAT.md). Upgrade mopq first.")
    return version


def _servers(db: Database) -> set[tuple[str, int | None]]:
    """The servers ``db``'s client knows (its URI's seeds at least), without connecting."""
    return set(db.client.topology_description.server_descriptions())


@dataclass
class Sides:
    """A source and a target deployment, identified, and the queues chosen (None: all)."""

    source: Database
    target: Database
    queues: tuple[str, ...] | None
    source_id: str | None
    target_id: str | None

    @classmethod
    def open(cls, source: Database, target: Database, queues: tuple[str, ...] | None,
             create: bool) -> Sides:
        """Identify both sides; with ``create``, prepare them for writing (format, indexes, ids).

        Without ``create`` nothing is written anywhere (a dry run, a verify),
        and a side that was never part of a move may have no id (None).
        Raises :class:`InvalidInput` when both are one deployment: moving a
        database into itself would mark every message moved and lose it.
        """
        source, target = prepared(source), prepared(target)
        if create:
            schema.check_format(source)
            schema.ensure_indexes(target)
        else:
            stored_format(source)
            stored_format(target)
        sides = cls(source, target, queues, deployment_id(source, create),
                    deployment_id(target, create))
        same_database = source.name == target.name and _servers(source) == _servers(target)
        if (sides.source_id and sides.source_id == sides.target_id) or same_database:
            raise InvalidInput(f"--from and --to are the same deployment "
                               f"({sides.source_id or source.name}): nothing to move.")
        return sides
