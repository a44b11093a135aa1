"""Connections to MongoDB, one client per process and URI.

Why one place: pymongo clients are thread-safe but must not cross a fork, and
every part of mopq (queue, emit buffer, collector, dashboard) should share the
same pool, the same timeouts and the same promises:

* datetimes come back aware (UTC), so they compare with ``now``;
* an acknowledged write is durable: mopq asks for a journaled write
  acknowledged by a majority (``w="majority", journal=True``), which on a
  replica set survives the loss of the primary and on a single server a
  kill -9 of ``mongod``. The embedded engine commits before it answers (see
  ``engine/``). A URI that sets ``w`` or ``journal`` itself is obeyed.

A database a caller hands mopq (``Queue(..., db=client["x"])``) gets the same
treatment through :func:`prepared`, whatever client it came from.
"""

from __future__ import annotations

import os
import threading

from pymongo import MongoClient, WriteConcern
from pymongo.database import Database

from mopq.config import settings

DEFAULT_URI = "mongodb://127.0.0.1:27017/"
SERVER_SELECTION_TIMEOUT_MS = 5000
DURABLE = WriteConcern(w="majority", j=True)

_clients: dict[tuple[int, str], MongoClient] = {}
_lock = threading.Lock()


def resolve_uri(uri: str | None = None) -> str:
    """The URI to use: the argument, else ``MOPQ_MONGODB_URI``, else the local default."""
    return uri or settings().mongodb_uri or DEFAULT_URI


def get_client(uri: str | None = None) -> MongoClient:
    """A shared client for ``uri`` in this process (a new one after a fork)."""
    key = (os.getpid(), resolve_uri(uri))
    with _lock:
        client = _clients.get(key)
        if client is None:
            # pymongo lets keyword options win over the URI's: give defaults only
            # where the URI sets none.
            given = key[1].lower()
            defaults: dict[str, object] = {
                name: SERVER_SELECTION_TIMEOUT_MS
                for name in ("serverSelectionTimeoutMS", "connectTimeoutMS")
                if name.lower() + "=" not in given}
            if "w=" not in given and "journal=" not in given:
                defaults.update(w=DURABLE.document["w"], journal=DURABLE.document["j"])
            client = MongoClient(key[1], tz_aware=True, appname="mopq", **defaults)
            _clients[key] = client
        return client


def get_database(uri: str | None = None, database: str | None = None) -> Database:
    """The mopq database: ``database`` or ``MOPQ_DATABASE`` (default ``mopq``)."""
    return get_client(uri)[database or settings().database]


def prepared(db: Database) -> Database:
    """``db`` with aware datetimes and durable writes, if its client did not ask for them.

    A client made without ``tz_aware=True`` returns naive datetimes, which
    cannot be compared with mopq's aware ones; one with the server's default
    write concern may acknowledge a write before it is journaled. Both are
    mended on this handle only; the caller's client is not changed. An
    explicit write concern of the caller's is kept.
    """
    options = db.codec_options
    changes: dict[str, object] = {}
    if not options.tz_aware:
        changes["codec_options"] = options.with_options(tz_aware=True)
    if db.write_concern.is_server_default:
        changes["write_concern"] = DURABLE
    return db.with_options(**changes) if changes else db


def close_all() -> None:
    """Close every client this process opened (tests and shutdown)."""
    with _lock:
        for client in _clients.values():
            client.close()
        _clients.clear()
