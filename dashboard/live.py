"""The Socket.IO namespace ``/live``: stats pushed to the pages when they change.

Why this shape: pages must update without polling, yet a push is only worth
sending when something a page shows has changed. So each gunicorn process
runs one background task (started lazily, on its first connection) that
builds a snapshot and pushes it only when its fingerprint differs from the
last one pushed. It builds as soon as a collector rings ``COUNTED`` after a
batch (``mopq.doorbell``; the ring is the count, so the push follows the
collector's batch by one stats read, not by a timer), and otherwise every
``MOPQ_LIVE_INTERVAL`` seconds (0.1, never less), which covers collectors that
cannot ring this host. The snapshot is built anew only when the stats cache
has a new answer (which it has only when the collectors counted something,
``dashboard.stats_cache``) or once ``REBUILD_SECONDS`` has passed, so the
engine's work stays one stats read per collector batch per process, whatever
the pages; the push is encoded once and the same frame sent to every page
(python-socketio does so when no callback is asked).
Processes share nothing: each reads MongoDB itself, so workers and hosts
can be added, as long as clients use the websocket transport (a connection
then stays on one process).

The snapshot is the ``/api/stats`` document plus ``throughput``: the seconds
of the last minute in which something was written, acknowledged or failed
(only non-zero seconds, so a quiet system sends nothing). Values that grow
with the clock alone (oldest pending age, collector lag) are left out of the
fingerprint: pages extrapolate them between pushes; crossing the collector
lag warning does change it. An engine error is pushed once as
``{"engine_error": "..."}`` and the task keeps trying.

The Workers page also *follows* ``workers`` (it sends ``follow`` with that
topic): its clients, and only they, get a ``workers`` push of every worker's
row (``collectors.stats.worker_rows``: state, what it holds and how far
along, what it was asked) whenever a row changes, a new worker included.
Rows are read only while some page of this process follows them; the
seconds that grow with the clock alone are left out of the fingerprint.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from typing import Any

import flask_socketio
from flask import Flask, request
from flask_socketio import ConnectionRefusedError, SocketIO, join_room
from pymongo.database import Database
from pymongo.errors import PyMongoError

from mopq.clock import utcnow
from mopq.collectors import series
from mopq.collectors.stats import read_stats, worker_rows
from mopq.dashboard import auth, stats_cache, store
from mopq.doorbell import COUNTED

log = logging.getLogger("mopq.live")

NAMESPACE = "/live"
# The Socket.IO event name pages listen to. ("push", not "emit", in this module's words:
# emit() is mopq's business event.)
PUSH = "stats"
MIN_INTERVAL_SECONDS = 0.1
MIN_SLEEP_SECONDS = 0.05
# The snapshot (and the workers' rows) are rebuilt at least this often anyway: the
# throughput seconds and the workers' heartbeats move with the clock.
REBUILD_SECONDS = 1.0
THROUGHPUT_SECONDS = 60
CLOCK_FIELDS = ("generated_at",)
# The topic pages may follow (event "follow"), its room and the event its pushes come as.
WORKERS = "workers"
FOLLOW = "follow"
MAX_WORKERS_PUSHED = 1_000


def build_snapshot(db: Database, now: dt.datetime | None = None,
                   stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a push carries: the stats document and the recent non-zero seconds."""
    now = now or utcnow()
    snapshot = dict(stats if stats is not None else read_stats(db, now))
    recent = series.throughput(db, THROUGHPUT_SECONDS, now)
    busy = [i for i, t in enumerate(recent["t"])
            if recent["written"][i] or recent["acked"][i] or recent["failed"][i]]
    snapshot["throughput"] = {"t": [recent["t"][i].isoformat() for i in busy],
                              **{kind: [recent[kind][i] for i in busy]
                                 for kind in ("written", "acked", "failed")}}
    return snapshot


def fingerprint(snapshot: dict[str, Any]) -> str:
    """A stable dump of what a page shows, without what only the clock changes."""
    stable = {key: value for key, value in snapshot.items() if key not in CLOCK_FIELDS}
    if "queues" in stable:
        stable["queues"] = {name: {k: v for k, v in row.items()
                                   if k != "oldest_pending_age_seconds"}
                            for name, row in stable["queues"].items()}
    if "collector" in stable:
        collector = dict(stable["collector"])
        collector["behind"] = collector.pop("lag_seconds") > collector["lag_warning_seconds"]
        stable["collector"] = collector
    return json.dumps(stable, sort_keys=True, default=str)


def build_workers(db: Database, now: dt.datetime | None = None) -> dict[str, Any]:
    """What a ``workers`` push carries: every worker's row (at most ``MAX_WORKERS_PUSHED``)."""
    rows = worker_rows(db, now)
    return {"workers": rows[:MAX_WORKERS_PUSHED], "total": len(rows),
            "generated_at": (now or utcnow()).isoformat()}


def workers_fingerprint(push: dict[str, Any]) -> str:
    """The rows as a page shows them, without the ages the page computes from timestamps."""
    rows = [{**{k: v for k, v in row.items() if k != "heartbeat_age_seconds"},
             "current": [{k: v for k, v in item.items() if k != "seconds"}
                         for item in row.get("current") or []]}
            for row in push.get("workers") or []]
    return json.dumps([rows, push.get("total")], sort_keys=True, default=str)


class Pusher:
    """This process's push loop; at most one, started by the first connection."""

    def __init__(self, socketio: SocketIO, app: Flask) -> None:
        self.socketio = socketio
        self.app = app
        self.latest: dict[str, Any] | None = None
        self.pushes = 0
        self._last: str | None = None
        self._lock = threading.Lock()
        self._started = False
        self._clients = 0
        self._followers: set[str] = set()   # session ids of pages following workers
        self.latest_workers: dict[str, Any] | None = None
        self._last_workers: str | None = None
        self._stats_seen: dict[str, Any] | None = None  # the stats the last snapshot used
        self._built_at = 0.0
        self._rings_shown = 0  # the COUNTED ring count the last snapshot's stats had seen
        self._workers_at = 0.0

    def admit(self) -> bool:
        """Count a new live page and start the loop; False (nothing counted) when full.

        Each open page holds one of the process's gunicorn threads; beyond
        ``MOPQ_LIVE_MAX_CLIENTS`` plain HTTP requests would find none left.
        """
        with self._lock:
            if self._clients >= self.app.config["MOPQ_LIVE_MAX_CLIENTS"]:
                return False
            self._clients += 1
            if self._started:
                return True
            self._started = True
        self.socketio.start_background_task(self._run)
        return True

    def client_left(self, sid: str | None = None) -> None:
        with self._lock:
            self._clients = max(0, self._clients - 1)
            self._followers.discard(sid or "")
            if not self._followers:
                self.latest_workers = None
                self._last_workers = None
            if not self._clients:  # the next visitor gets a fresh push, not an old one
                self.latest = None
                self._last = None

    def follow(self, sid: str) -> dict[str, Any] | None:
        """Count a page following the workers; the latest workers push, for it alone."""
        with self._lock:
            self._followers.add(sid)
            return self.latest_workers

    def _interval(self) -> float:
        configured = self.app.config.get("MOPQ_LIVE_INTERVAL", MIN_INTERVAL_SECONDS)
        return max(MIN_INTERVAL_SECONDS, float(configured))

    def _run(self) -> None:
        ring: int | None = None
        while True:
            started = time.monotonic()
            try:
                if self._clients:
                    self.push_once(ring)
                if self._followers and started - self._workers_at >= REBUILD_SECONDS:
                    self._workers_at = started
                    self.push_workers()
            except Exception:  # the loop must outlive any one bad snapshot
                log.exception("mopq live: building a push failed; trying again")
            spent = time.monotonic() - started
            ring = self._wait(max(MIN_SLEEP_SECONDS, self._interval() - spent))

    def _wait(self, timeout: float) -> int | None:
        """Sleep ``timeout``, or less: until a collector rings ``COUNTED`` after the stats shown.

        Returns the ring count when it rang (None otherwise); the snapshot then
        uses stats read after that ring (``StatsCache.after_ring``). With no page
        open, rings are not listened to: nothing would take them in.
        """
        if not self._clients:
            self.socketio.sleep(timeout)
            return None
        with self.app.app_context():
            try:
                bell = stats_cache.cache().doorbell(store.database())
            except (PyMongoError, OSError):  # no doorbell: the interval alone, as without rings
                bell = None
        if bell is None:
            self.socketio.sleep(timeout)
        elif bell.wait([COUNTED], self._rings_shown, timeout):
            return bell.rings([COUNTED])
        return None

    def snapshot(self, ring: int | None = None) -> dict[str, Any] | None:
        """A new snapshot, or None when nothing could have changed since the last one.

        ``ring``: a ring count of ``COUNTED``; the stats are then read after it.
        """
        with self.app.app_context():
            try:
                db = store.database()
                cache = stats_cache.cache()
                stats = cache.get(db) if ring is None else cache.after_ring(db, ring)
                self._rings_shown = cache.rings_of(stats)
                now = time.monotonic()
                if stats is self._stats_seen and now - self._built_at < REBUILD_SECONDS \
                        and self.latest is not None:
                    return None
                self._stats_seen, self._built_at = stats, now
                return build_snapshot(db, stats=stats)
            except PyMongoError as error:
                reason = " ".join(str(error).split())[:300]
                return {"engine_error": f"the engine is unreachable: {reason}"}

    def push_once(self, ring: int | None = None) -> bool:
        """Build a snapshot (see ``snapshot``); push it if it differs from the last.

        True if pushed.
        """
        snapshot = self.snapshot(ring)
        if snapshot is None:
            return False
        key = fingerprint(snapshot)
        if "engine_error" in snapshot:
            key = "engine_error"  # once per outage, whatever the reason's wording
        self.latest = snapshot
        if key == self._last:
            return False
        self._last = key
        self.pushes += 1
        self.socketio.emit(PUSH, snapshot, namespace=NAMESPACE)
        return True


    def push_workers(self) -> bool:
        """Push the workers' rows to the pages following them if they changed. True if pushed.

        While the engine is unreachable nothing is pushed here: the stats push says so.
        """
        with self.app.app_context():
            try:
                rows = build_workers(store.database())
            except PyMongoError:
                return False
            # In the JSON the API answers (datetimes as ISO-8601 UTC): what /api/workers says.
            push = json.loads(self.app.json.dumps(rows))
        key = workers_fingerprint(push)
        self.latest_workers = push
        if key == self._last_workers:
            return False
        self._last_workers = key
        self.socketio.emit(WORKERS, push, namespace=NAMESPACE, to=WORKERS)
        return True


def register(socketio: SocketIO, app: Flask) -> None:
    pusher = Pusher(socketio, app)
    app.extensions["mopq_live"] = pusher

    @socketio.on("connect", namespace=NAMESPACE)
    def on_connect(auth_data=None):
        if not auth.socket_allowed(request.headers.get("Authorization"), auth_data):
            return False
        if not pusher.admit():
            limit = app.config["MOPQ_LIVE_MAX_CLIENTS"]
            raise ConnectionRefusedError(
                f"this dashboard process already serves {limit} live pages; the page still "
                "works on reload. Operators: raise MOPQ_WEB_THREADS or MOPQ_WEB_WORKERS.")
        flask_socketio.emit("hello", {"namespace": NAMESPACE})
        if pusher.latest is not None:
            flask_socketio.emit(PUSH, pusher.latest)

    @socketio.on(FOLLOW, namespace=NAMESPACE)
    def on_follow(topic=None):
        if topic != WORKERS:
            return
        join_room(WORKERS)
        latest = pusher.follow(request.sid)
        if latest is not None:
            flask_socketio.emit(WORKERS, latest)

    @socketio.on("disconnect", namespace=NAMESPACE)
    def on_disconnect(*_args):
        pusher.client_left(request.sid)
