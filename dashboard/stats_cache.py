"""One stats read per process per interval, shared by every reader.

``read_stats`` costs tens of milliseconds of MongoDB work (an aggregate over
the messages, counters by ``_id``). Fifty dashboards, a Prometheus scraper and
the live push asking at once would each pay it and queue behind one another
in one gunicorn process (measured: p99 1.5 s at 50 connections). The numbers
change at most once a collector batch, so each process reads at most once per
``MOPQ_STATS_MAX_AGE_SECONDS`` (default 1 s), one reader at a time, and every
caller in between gets that answer; ``generated_at`` says how old it is.
While one caller reads anew, the others keep getting the previous answer
(stale-while-revalidate) instead of all queueing behind that read once a
second, up to ``STALE_LIMIT_SECONDS`` past its age; only with no answer, or
one older than that (the engine too slow or down), do they wait for the read.

Why a finished task still shows within a tenth of a second: an answer older
than ``CHECK_SECONDS`` (50 ms) is kept only while the collectors' applied-events
total (``applied_marker``, one read by ``_id``) has not moved; when it moves,
the next caller reads anew. So the full read runs at most twenty times a second
per process while counts change, and once per max age while they do not,
however many pages or callers there are.
Faster still, when collectors ring (``MOPQ_RINGS``, ``mopq.doorbell``): each
process has a doorbell for ``COUNTED`` that a collector rings as soon as the
counters hold a batch, and a ring makes the next caller read anew at once (no
sooner than ``RING_GAP_SECONDS`` after the last read, so a flood of rings costs
at most one read per gap). The full read then runs once per collector batch
per process while counts change, still whatever the pages or callers. The
``applied_marker`` look stays, for collectors that cannot ring this host. The
doorbell is made on the first ``get`` in each process (gunicorn forks its
workers first) and stays registered (one upsert every few seconds) while the
process is asked for stats.
An admin action in this process drops the cached answer so its effect shows
at once; other processes see it within the interval.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, current_app
from pymongo.database import Database
from pymongo.errors import PyMongoError

from mopq.collectors.stats import applied_marker, read_stats
from mopq.config import settings
from mopq.doorbell import COUNTED, Doorbell, doorbell_for

Reader = Callable[[Database], dict[str, Any]]
Marker = Callable[[Database], int]
STALE_LIMIT_SECONDS = 5.0
CHECK_SECONDS = 0.05
RING_GAP_SECONDS = 0.01
# How often a process says it still waits on COUNTED (the doorbell renews its
# registration every few seconds of such calls; see mopq.doorbell).
LISTEN_SECONDS = 1.0


class StatsCache:
    """A single-flight, time-bounded cache of one ``read_stats`` document."""

    def __init__(self, max_age_seconds: float, reader: Reader = read_stats,
                 marker: Marker | None = applied_marker, rings: bool | None = None) -> None:
        self.max_age_seconds = max_age_seconds
        self._ringable = settings().rings if rings is None else rings
        self._bell: Doorbell | None = None
        self._bell_pid = 0
        self._listened_at = 0.0
        self._rings_read = 0  # the doorbell's ring count when the last read began
        self._value_rings = 0  # ... and when the cached answer's read began
        self.reads = 0
        self._reader = reader
        self._marker = marker
        self._marked: int | None = None
        self._checked_at = 0.0
        self._lock = threading.Lock()
        self._value: dict[str, Any] | None = None
        self._read_at = 0.0
        self._encoded: tuple[dict[str, Any], bytes] | None = None

    def _fresh(self, db: Database, asked_at: float) -> dict[str, Any] | None:
        """The answer another thread read since this caller asked or a moment ago, if any.

        A caller that waited for the lock while another read takes that read's
        answer, however long it waited: on a busy host the wait can outlast
        ``CHECK_SECONDS``, and fifty waiters would otherwise read one by one.
        """
        if self._value is None:
            return None
        if self._read_at >= asked_at:
            return self._value
        age = time.monotonic() - self._read_at
        if age < min(CHECK_SECONDS, self.max_age_seconds) and not self._rung(db, age):
            return self._value
        return None

    def _unchanged(self, db: Database) -> bool:
        """Whether nothing was counted since the last read (looked at once per CHECK_SECONDS)."""
        if self._marker is None:
            return True
        now = time.monotonic()
        if now - self._checked_at < CHECK_SECONDS:
            return True
        self._checked_at = now
        try:
            return self._marker(db) == self._marked
        except PyMongoError:
            return True  # the full read, when its age is up, will say what is wrong

    def doorbell(self, db: Database) -> Doorbell | None:
        """This process's doorbell for ``COUNTED`` (None when rings are off), kept registered."""
        if not self._ringable:
            return None
        bell, now = self._bell, time.monotonic()
        if bell is None or self._bell_pid != os.getpid():  # a forked worker needs its own
            bell, self._bell_pid, self._listened_at = doorbell_for(db), os.getpid(), 0.0
            self._bell = bell
        if now - self._listened_at >= LISTEN_SECONDS:  # cheap, but not per request
            self._listened_at = now
            bell.listen([COUNTED])
        return bell

    def rings(self, db: Database) -> int:
        """A number that grows with every ring of ``COUNTED`` (0 when rings are off)."""
        bell = self.doorbell(db)
        return bell.rings([COUNTED]) if bell is not None else 0

    def after_ring(self, db: Database, ring: int) -> dict[str, Any]:
        """Stats whose read began after ring number ``ring`` (see ``rings``).

        The cached answer if its read did; else the read another thread has
        begun since, waited for, or a new one, no sooner than
        ``RING_GAP_SECONDS`` after the last (so a flood of rings still costs one
        read per gap). For the live push: it follows a ring at once, where ``get``
        could hand it the answer another thread read before the ring.
        """
        if self._value is not None and self._value_rings >= ring:
            return self._value
        time.sleep(max(0.0, RING_GAP_SECONDS - (time.monotonic() - self._read_at)))
        with self._lock:
            if self._value is not None and self._value_rings >= ring:
                return self._value
            return self._read(db)

    def _rung(self, db: Database, age: float) -> bool:
        return age >= RING_GAP_SECONDS and self.rings(db) != self._rings_read

    def get(self, db: Database) -> dict[str, Any]:
        """The cached document if young enough, else a new read.

        One thread reads; the others get the previous document meanwhile if it
        is within the stale limit, and wait for the read otherwise.
        """
        asked_at = time.monotonic()
        value, read_at = self._value, self._read_at
        if value is not None:
            age = time.monotonic() - read_at
            if age < self.max_age_seconds and not self._rung(db, age) and \
                    (age < CHECK_SECONDS or self._unchanged(db)):
                return value
            if age < self.max_age_seconds + STALE_LIMIT_SECONDS:
                if not self._lock.acquire(blocking=False):
                    return value  # another thread is reading
                try:
                    value = self._fresh(db, asked_at)
                    return value if value is not None else self._read(db)
                finally:
                    self._lock.release()
        with self._lock:
            value = self._fresh(db, asked_at)
            if value is None:
                value = self._read(db)
            return value

    def encoded(self, db: Database, encode: Callable[[dict[str, Any]], str]) -> bytes:
        """``get`` as JSON bytes, encoded once per read (half the cost of a cached answer)."""
        value = self.get(db)
        encoded = self._encoded
        if encoded is None or encoded[0] is not value:
            encoded = (value, encode(value).encode())
            self._encoded = encoded  # a racing thread encodes the same value: harmless
        return encoded[1]

    def refresh(self, db: Database) -> dict[str, Any]:
        """Read now whatever the cache holds; later ``get`` calls reuse this read."""
        with self._lock:
            return self._read(db)

    def invalidate(self) -> None:
        with self._lock:
            self._value = None
            self._encoded = None

    def _read(self, db: Database) -> dict[str, Any]:
        self._rings_read = self.rings(db)  # first, like the marker
        if self._marker is not None:  # first: a count applied during the read moves it again
            self._marked = self._marker(db)
            self._checked_at = time.monotonic()
        rings = self._rings_read
        value = self._reader(db)
        self.reads += 1
        self._value, self._read_at, self._value_rings = value, time.monotonic(), rings
        return value

    def rings_of(self, value: dict[str, Any]) -> int:
        """The ring count when ``value`` was read (0 if it is no longer the cached answer)."""
        return self._value_rings if value is self._value else 0


def init_app(app: Flask, max_age_seconds: float) -> None:
    app.extensions["mopq_stats"] = StatsCache(max_age_seconds)


def cache() -> StatsCache:
    return current_app.extensions["mopq_stats"]


def stats_json(db: Database) -> bytes:
    """``stats`` encoded as the app encodes JSON."""
    return cache().encoded(db, lambda value: current_app.json.dumps(value, separators=(",", ":")))


def stats(db: Database) -> dict[str, Any]:
    """The ``/api/stats`` document for this request, at most max-age old.

    Callers must not mutate it: it is shared until the next read.
    """
    return cache().get(db)
