"""The Socket.IO namespace ``/live``: stats pushed to the pages when they change.

Why this shape: pages must update without polling, yet a push is only worth
sending when something a page shows has changed. So each gunicorn process
runs one background task (started lazily, on its first connection) that
builds a snapshot from MongoDB every ``MOPQ_LIVE_INTERVAL`` seconds (never
more often than once a second) and pushes it only when its fingerprint
differs from the last one pushed. Processes share nothing: each reads
MongoDB itself, so workers and hosts can be added, as long as clients use the
websocket transport (a connection then stays on one process).

The snapshot is the ``/api/stats`` document plus ``throughput``: the seconds
of the last minute in which something was written, acknowledged or failed
(only non-zero seconds, so a quiet system sends nothing). Values that grow
with the clock alone (oldest pending age, collector lag) are left out of the
fingerprint: pages extrapolate them between pushes; crossing the collector
lag warning does change it. An engine error is pushed once as
``{"engine_error": "..."}`` and the task keeps trying.
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
from flask_socketio import ConnectionRefusedError, SocketIO
from pymongo.database import Database
from pymongo.errors import PyMongoError

from mopq.clock import utcnow
from mopq.collectors import series
from mopq.collectors.stats import read_stats
from mopq.dashboard import auth, stats_cache, store

log = logging.getLogger("mopq.live")

NAMESPACE = "/live"
# The Socket.IO event name pages listen to. ("push", not "emit", in this module's words:
# emit() is mopq's business event.)
PUSH = "stats"
MIN_INTERVAL_SECONDS = 1.0
MIN_SLEEP_SECONDS = 0.1
THROUGHPUT_SECONDS = 60
CLOCK_FIELDS = ("generated_at",)


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

    def client_left(self) -> None:
        with self._lock:
            self._clients = max(0, self._clients - 1)
            if not self._clients:  # the next visitor gets a fresh push, not an old one
                self.latest = None
                self._last = None

    def _interval(self) -> float:
        configured = self.app.config.get("MOPQ_LIVE_INTERVAL", MIN_INTERVAL_SECONDS)
        return max(MIN_INTERVAL_SECONDS, float(configured))

    def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                if self._clients:
                    self.push_once()
            except Exception:  # the loop must outlive any one bad snapshot
                log.exception("mopq live: building a push failed; trying again")
            spent = time.monotonic() - started
            self.socketio.sleep(max(MIN_SLEEP_SECONDS, self._interval() - spent))

    def snapshot(self) -> dict[str, Any]:
        with self.app.app_context():
            try:
                db = store.database()
                stats = stats_cache.cache().refresh(db)
                return build_snapshot(db, stats=stats)
            except PyMongoError as error:
                reason = " ".join(str(error).split())[:300]
                return {"engine_error": f"the engine is unreachable: {reason}"}

    def push_once(self) -> bool:
        """Build a snapshot; push it if it differs from the last push. True if pushed."""
        snapshot = self.snapshot()
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

    @socketio.on("disconnect", namespace=NAMESPACE)
    def on_disconnect(*_args):
        pusher.client_left()
