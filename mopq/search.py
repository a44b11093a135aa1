"""Searchable body fields: declared per queue, each backed by an index.

Why declared: searching a body field nobody indexed scans every message,
which on a large backlog is slow for everyone. Declaring a field creates the
index once and lets the dashboard's search offer it. Declare fields when a
service starts, before it writes: the embedded engine can corrupt a
collection's ``_id`` index if an index is built while messages change (see
``mopq.schema.create_missing_indexes``)::

    from mopq.search import declare_search_field
    declare_search_field("orders", "order_id")
"""

from __future__ import annotations

import re

from pymongo import ASCENDING, IndexModel
from pymongo.database import Database

from mopq import schema, validation
from mopq.connection import get_database
from mopq.errors import InvalidInput

SEARCH_FIELDS = "search_fields"  # the settings document listing declared fields
FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}(\.[A-Za-z_][A-Za-z0-9_]{0,63}){0,3}$")


def check_field(field: object) -> str:
    if not isinstance(field, str) or not FIELD.match(field):
        raise InvalidInput(f"A search field is a body key like 'order_id' or 'customer.id' "
                           f"(letters, digits, '_', up to 4 levels), got {field!r}.")
    return field


def declare_search_field(queue: str, field: str, db: Database | None = None) -> None:
    """Make ``body.<field>`` of ``queue`` searchable (creates its index; idempotent)."""
    validation.queue_name(queue)
    check_field(field)
    db = db if db is not None else get_database()
    for collection in (schema.MESSAGES, schema.HISTORY):  # finished messages are found too
        schema.create_missing_indexes(db[collection], [IndexModel(
            [("queue", ASCENDING), (f"body.{field}", ASCENDING)], name=f"search_{field}",
            sparse=True)])
    db[schema.SETTINGS].update_one({"_id": SEARCH_FIELDS},
                                   {"$addToSet": {"fields": {"queue": queue, "field": field}}},
                                   upsert=True)
