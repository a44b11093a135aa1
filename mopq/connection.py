"""Connections to MongoDB, one client per process and URI.

Why one place: pymongo clients are thread-safe but must not cross a fork, and
every part of mopq (queue, emit buffer, collector, dashboard) should share the
same pool and the same timeouts.
"""

from __future__ import annotations

import os
import threading

from pymongo import MongoClient
from pymongo.database import Database

from mopq.config import settings

DEFAULT_URI = "mongodb://127.0.0.1:27017/"
SERVER_SELECTION_TIMEOUT_MS = 5000

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
            timeouts = {name: SERVER_SELECTION_TIMEOUT_MS
                        for name in ("serverSelectionTimeoutMS", "connectTimeoutMS")
                        if name.lower() + "=" not in given}
            client = MongoClient(key[1], tz_aware=True, appname="mopq", **timeouts)
            _clients[key] = client
        return client


def get_database(uri: str | None = None, database: str | None = None) -> Database:
    """The mopq database: ``database`` or ``MOPQ_DATABASE`` (default ``mopq``)."""
    return get_client(uri)[database or settings().database]


def close_all() -> None:
    """Close every client this process opened (tests and shutdown)."""
    with _lock:
        for client in _clients.values():
            client.close()
        _clients.clear()
