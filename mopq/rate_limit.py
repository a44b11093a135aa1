"""A queue's rate limit: at most *max* claims per *per_seconds*, across every process.

Why windows in MongoDB: the limit must hold for all workers of a queue, in
any process or language, with nothing but the database in common. Time is
cut into windows of ``per_seconds`` (window *n* starts at ``n * per_seconds``
since 1970, UTC); each claim first takes a slot in the current window's
document with one conditional upsert::

    update_one({_id: "<queue>\\0<n>", taken: {$lt: max}}, {$inc: {taken: 1}}, upsert=True)

It matches while slots are left; once the window is full it matches nothing,
its upsert collides on ``_id`` and the claim waits for the next window. So
no more than *max* slots are ever taken in a window, however many claimers
race. A claimer that took a slot and then lost its candidate to another
gives the slot back (``give_back``), so contention does not eat the limit.
A refusal is counted in the window (``waited``), which the queue's page
shows. Window documents (``rate_windows``)::

    {_id: "<queue>\\0<n>", queue, starts_at, taken, waited}

are removed by the monitor once ``KEEP_SECONDS`` old.
"""

from __future__ import annotations

import datetime as dt
import math

from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from mopq import schema

KEEP_SECONDS = 3600.0


def _window(now: dt.datetime, per_seconds: float) -> tuple[int, dt.datetime, float]:
    """The window ``now`` falls in: its number, its start, and the seconds until it ends."""
    epoch = now.timestamp()
    number = math.floor(epoch / per_seconds)
    starts = dt.datetime.fromtimestamp(number * per_seconds, dt.UTC)
    return number, starts, max(0.0, (number + 1) * per_seconds - epoch)


def take(db: Database, queue: str, limit: tuple[int, float], now: dt.datetime) -> float:
    """Take one claim slot: 0.0 if granted, else the seconds until the next window."""
    most, per_seconds = limit
    number, starts, left = _window(now, per_seconds)
    window_id = f"{queue}\x00{number}"
    windows = db[schema.RATE_WINDOWS]
    try:
        windows.update_one({"_id": window_id, "taken": {"$lt": most}},
                           {"$inc": {"taken": 1},
                            "$setOnInsert": {"queue": queue, "starts_at": starts}},
                           upsert=True)
        return 0.0
    except DuplicateKeyError:
        windows.update_one({"_id": window_id}, {"$inc": {"waited": 1}})
        return left


def give_back(db: Database, queue: str, limit: tuple[int, float], now: dt.datetime) -> None:
    """Return an unused slot of the window ``now`` is in (a claim that found nothing)."""
    number = _window(now, limit[1])[0]
    db[schema.RATE_WINDOWS].update_one({"_id": f"{queue}\x00{number}", "taken": {"$gt": 0}},
                                       {"$inc": {"taken": -1}})


def waits(db: Database, queue: str, since: dt.datetime) -> dict[str, int]:
    """Claims granted and refusals (a claimer waited) in windows that started since ``since``."""
    granted = waited = 0
    for window in db[schema.RATE_WINDOWS].find({"queue": queue, "starts_at": {"$gte": since}},
                                               {"taken": 1, "waited": 1}):
        granted += int(window.get("taken", 0))
        waited += int(window.get("waited", 0))
    return {"granted": granted, "waited": waited}


def forget(db: Database, now: dt.datetime) -> int:
    """Remove windows older than ``KEEP_SECONDS`` (the monitor calls it)."""
    before = now - dt.timedelta(seconds=KEEP_SECONDS)
    return db[schema.RATE_WINDOWS].delete_many({"starts_at": {"$lt": before}}).deleted_count
