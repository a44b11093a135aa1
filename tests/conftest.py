"""The test harness: one real engine for the session, one database per test.

Unless ``MOPQ_MONGODB_URI`` is set, a private embedded engine (memory storage)
is started on a free loopback port for the whole run and stopped at the end.
Each test gets a database of its own, dropped afterwards, and the environment
points mopq at it, so code under test that reads the environment finds it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from pymongo import MongoClient
from pymongo.database import Database

from mopq import flush
from mopq.connection import close_all
from mopq.engine import engine_unless_configured

# The browser fixtures (browser, page_opener, collector) for the page tests.
pytest_plugins = ["tests.browsers"]


@pytest.fixture(scope="session")
def engine_uri() -> Iterator[str]:
    with engine_unless_configured() as (uri, embedded):
        if not embedded:
            yield uri
            return
        os.environ["MOPQ_MONGODB_URI"] = uri
        try:
            yield uri
        finally:
            close_all()
        os.environ.pop("MOPQ_MONGODB_URI", None)


@pytest.fixture
def db_name(engine_uri: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("MOPQ_MONGODB_URI", engine_uri)
    monkeypatch.setenv("MOPQ_DATABASE", name)
    yield name
    flush(10)  # no publisher may still be writing into the database being dropped
    client = MongoClient(engine_uri)
    try:
        client.drop_database(name)
    finally:
        client.close()


@pytest.fixture
def db(engine_uri: str, db_name: str) -> Iterator[Database]:
    client = MongoClient(engine_uri, tz_aware=True)
    try:
        yield client[db_name]
    finally:
        client.close()


@pytest.fixture
def reap():
    """Processes a test started (append them); any still running at the end are killed."""
    processes: list = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(10)
