"""The /live Socket.IO namespace of a live gunicorn, seen by a python-socketio client.

A push arrives when something changed (messages written), none arrives while
nothing changes, several gunicorn processes each push on their own, and the
connection follows the dashboard's read rule (refused without the token).
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import socketio

from mopq import Queue
from mopq.collectors import Collector
from tests.helpers import free_port, wait_until
from tests.live_server import live_dashboard

QUIET_SECONDS = 3.0


class Listener:
    """A websocket client of /live that keeps every ``stats`` push it receives."""

    def __init__(self) -> None:
        self.client = socketio.Client(reconnection=False)
        self.pushes: list[dict] = []
        self._lock = threading.Lock()
        self.refusal: object = None
        self.client.on("stats", self._on_stats, namespace="/live")
        self.client.on("connect_error", self._on_refused, namespace="/live")

    def _on_refused(self, data: object) -> None:
        self.refusal = data

    def _on_stats(self, snapshot: dict) -> None:
        with self._lock:
            self.pushes.append(snapshot)

    def count(self) -> int:
        with self._lock:
            return len(self.pushes)

    def last(self) -> dict:
        with self._lock:
            return self.pushes[-1] if self.pushes else {}

    def connect(self, url: str, token: str | None = None) -> None:
        self.client.connect(url, namespaces=["/live"], transports=["websocket"],
                            auth={"token": token} if token else None, wait_timeout=10)


@contextmanager
def listening(url: str, token: str | None = None) -> Iterator[Listener]:
    listener = Listener()
    listener.connect(url, token)
    try:
        yield listener
    finally:
        listener.client.disconnect()


@pytest.fixture
def collector(engine_uri, db_name) -> Iterator[Collector]:
    running = Collector(engine_uri, db_name, poll_interval=0.05).start()
    yield running
    running.stop(5.0)


def pending_of(listener: Listener, queue: str) -> int | None:
    row = (listener.last().get("queues") or {}).get(queue)
    return row and row["pending"]


def test_a_push_follows_a_change_and_none_comes_while_quiet(engine_uri, db_name, tmp_path,
                                                            collector):
    with live_dashboard(engine_uri, db_name, tmp_path) as url, listening(url) as listener:
        wait_until(listener.count, message="the first push")
        queue = Queue("live", uri=engine_uri, database=db_name)
        queue.write_many([{"n": n} for n in range(4)])
        wait_until(lambda: pending_of(listener, "live") == 4, message="a push with 4 pending")
        wait_until(lambda: listener.last()["queues"]["live"]["written"] == 4
                   and listener.last()["collector"]["events_waiting"] == 0,
                   message="a push after the collector counted the writes")
        snapshot = listener.last()
        assert sum(snapshot["throughput"]["written"]) == 4
        assert "generated_at" in snapshot and snapshot["workers"]["alive"] == 0

        # Nothing changes now (the pending messages only grow older): no push.
        before = listener.count()
        time.sleep(QUIET_SECONDS)  # a negative check needs to watch for a while
        assert listener.count() == before

        for message in queue.read(visibility_timeout=30, limit=1):
            message.delete()
        wait_until(lambda: pending_of(listener, "live") == 3, message="a push after an ack")


def test_each_gunicorn_process_pushes_to_its_own_clients(engine_uri, db_name, tmp_path):
    with live_dashboard(engine_uri, db_name, tmp_path, workers=2) as url:
        with listening(url) as first, listening(url) as second, listening(url) as third:
            Queue("spread", uri=engine_uri, database=db_name).write({"n": 1})
            for listener in (first, second, third):
                wait_until(lambda listener=listener: pending_of(listener, "spread") == 1,
                           message="every client to see the write")


def test_a_client_needs_the_read_token_when_one_is_set(engine_uri, db_name, tmp_path):
    with live_dashboard(engine_uri, db_name, tmp_path, MOPQ_READ_TOKEN="t0ken") as url:
        with pytest.raises(socketio.exceptions.ConnectionError):
            with listening(url):
                pass
        with pytest.raises(socketio.exceptions.ConnectionError):
            with listening(url, token="wrong"):
                pass
        with listening(url, token="t0ken") as listener:
            wait_until(listener.count, message="a push to the authorised client")
            assert "queues" in listener.last()



def test_live_pages_beyond_the_thread_budget_are_refused_and_http_still_answers(
        engine_uri, db_name, tmp_path):
    """Each live page holds a gunicorn thread; past threads - 20 the next is refused, saying why."""
    with live_dashboard(engine_uri, db_name, tmp_path, MOPQ_WEB_THREADS="23") as url:
        with listening(url) as first, listening(url), listening(url):
            refused = Listener()
            with pytest.raises(socketio.exceptions.ConnectionError):
                refused.connect(url)
            assert "MOPQ_WEB_THREADS" in str(refused.refusal)
            with urllib.request.urlopen(url + "/api/stats", timeout=10) as response:
                assert response.status == 200
            first.client.disconnect()
            wait_until(lambda: _connects(url), message="a free place once a page left")


def _connects(url: str) -> bool:
    listener = Listener()
    try:
        listener.connect(url)
    except socketio.exceptions.ConnectionError:
        return False
    listener.client.disconnect()
    return True

def test_an_engine_outage_is_pushed_once(db_name, tmp_path):
    uri = f"mongodb://127.0.0.1:{free_port()}/?serverSelectionTimeoutMS=300"
    with live_dashboard(uri, db_name, tmp_path) as url, listening(url) as listener:
        wait_until(listener.count, timeout=20, message="the outage push")
        assert "engine_error" in listener.last()
        pushes = listener.count()
        time.sleep(QUIET_SECONDS)  # the loop keeps trying but says it only once
        assert listener.count() == pushes


def test_snapshot_fingerprint_ignores_what_only_the_clock_changes():
    from mopq.dashboard.live import fingerprint

    base = {"queues": {"q": {"pending": 1, "oldest_pending_age_seconds": 1.0}},
            "collector": {"lag_seconds": 1.0, "events_waiting": 2,
                          "lag_warning_seconds": 10.0},
            "generated_at": "2026-01-01T00:00:00+00:00"}
    later = {"queues": {"q": {"pending": 1, "oldest_pending_age_seconds": 5.0}},
             "collector": {"lag_seconds": 5.0, "events_waiting": 2,
                           "lag_warning_seconds": 10.0},
             "generated_at": "2026-01-01T00:00:04+00:00"}
    behind = {**later, "collector": {"lag_seconds": 15.0, "events_waiting": 2,
                                     "lag_warning_seconds": 10.0}}
    assert fingerprint(base) == fingerprint(later)
    assert fingerprint(later) != fingerprint(behind)
    assert fingerprint(base) != fingerprint({**base, "queues": {"q": {"pending": 2}}})


# -- seeing is fast (issue 16, item 2): collectors ring COUNTED after each batch -----------

SLOW_LOOK_SECONDS = 60.0  # far longer than any wait below: only a ring can explain a push


def written_of(snapshot: dict, queue: str) -> int:
    return ((snapshot.get("queues") or {}).get(queue) or {}).get("written", 0)


def test_a_count_is_pushed_when_the_collector_rings_not_at_the_next_look(engine_uri, db_name,
                                                                        collector):
    """A page sees a count as soon as a collector applied it, not when its process next looks."""
    from mopq.dashboard import create_app
    from mopq.dashboard.factory import socketio as server

    app = create_app({"MOPQ_MONGODB_URI": engine_uri, "MOPQ_DATABASE": db_name,
                      "TESTING": True, "MOPQ_LIVE_INTERVAL": SLOW_LOOK_SECONDS})
    page = server.test_client(app, namespace="/live")
    pushes: list[dict] = []

    def received() -> list[dict]:
        pushes.extend(p["args"][0] for p in page.get_received("/live") if p["name"] == "stats")
        return pushes

    try:
        wait_until(received, message="the first push")
        Queue("rung", uri=engine_uri, database=db_name).write({"n": 1})
        wait_until(lambda: any(written_of(p, "rung") == 1 for p in received()), timeout=15,
                   message="a push of the counted write long before the next look")
    finally:
        page.disconnect("/live")


def test_stats_are_read_anew_when_a_collector_rings(db, collector):
    """With no marker look and a long max age, the ring alone makes the next answer fresh."""
    from mopq.dashboard.stats_cache import StatsCache

    cache = StatsCache(SLOW_LOOK_SECONDS, marker=None, rings=True)
    assert written_of(cache.get(db), "rung") == 0
    Queue("rung", uri=None, database=db.name).write({"n": 1})
    wait_until(lambda: written_of(cache.get(db), "rung") == 1, timeout=15,
               message="the counted write in the cached stats")
    reads = cache.reads
    for _ in range(20):  # no ring since: the cached answer, however often asked
        cache.get(db)
    assert cache.reads == reads


def rung_after(cache, db) -> int:
    """Ring ``COUNTED`` as a collector does; the cache's ring count once it arrived."""
    from mopq.doorbell import COUNTED, ringer_for

    before = cache.rings(db)
    ringer_for(db).ring(COUNTED)
    wait_until(lambda: cache.rings(db) > before, message="the ring at this process's doorbell")
    return cache.rings(db)


def test_a_push_after_a_ring_uses_stats_read_after_it_and_a_flood_costs_one_read_a_gap(db):
    """The push must not take the answer another caller read just before the ring.

    A ring says a count moved: the stats read before it may lack it, so
    ``after_ring`` reads anew unless the cached answer's read began after it,
    and however many rings come, reads stay ``RING_GAP_SECONDS`` apart.
    """
    from mopq.dashboard.stats_cache import RING_GAP_SECONDS, StatsCache

    reads: list[float] = []

    def reader(_db) -> dict:
        reads.append(time.monotonic())
        return {"read": len(reads)}

    cache = StatsCache(SLOW_LOOK_SECONDS, reader=reader, marker=None, rings=True)
    assert cache.get(db) == {"read": 1}
    ring = rung_after(cache, db)
    after = cache.after_ring(db, ring)
    assert after == {"read": 2}
    assert cache.after_ring(db, ring) is after  # its read began after that ring: kept
    for _ in range(5):
        after = cache.after_ring(db, rung_after(cache, db))
    assert after == {"read": len(reads)} and len(reads) > 2
    gaps = [later - earlier for earlier, later in zip(reads[1:], reads[2:], strict=False)]
    assert min(gaps) >= RING_GAP_SECONDS


def test_a_process_with_no_page_open_sleeps_through_rings(engine_uri, db_name):
    """Its push loop would otherwise wake for every ring with nobody to push to (a busy loop)."""
    from mopq.dashboard import create_app

    app = create_app({"MOPQ_MONGODB_URI": engine_uri, "MOPQ_DATABASE": db_name,
                      "TESTING": True})
    pusher = app.extensions["mopq_live"]
    with app.app_context():
        from mopq.dashboard import stats_cache, store

        cache, db = stats_cache.cache(), store.database()
        cache.get(db)
        rung_after(cache, db)
    started = time.monotonic()
    assert pusher._wait(0.3) is None
    assert time.monotonic() - started >= 0.3
