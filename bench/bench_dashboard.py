"""Dashboard benchmark (issue 5): /api/stats under load, event-to-browser latency, 200 clients.

Run:  .venv/bin/python bench/bench_dashboard.py [--quick] [--load auto|wrk|python]

Starts its own embedded engine (memory storage) unless MOPQ_MONGODB_URI is
set, and a live gunicorn per part (``python -m gunicorn -c gunicorn.conf.py
--bind 127.0.0.1:<free port> app:app`` from the repository root, one worker
(two for the second run of part 1),
no credentials configured, so reading is open), then measures:

1. ``/api/stats`` at 50 keep-alive connections for 20 s (5 s with --quick),
   with ``/healthz`` on the same server as the baseline, under wrk when it is
   installed (``apt-get install -y wrk``) and always under this script's
   own asyncio generator (HTTP/1.1 keep-alive, waits for the requests still
   running at the end). The database holds 100 queues (pending,
   delayed, inflight and dead messages in each, written with the library and
   counted by a real collector) and the counters the collector would have
   produced for 1,000,000 events (200,000 with --quick) spread over those
   queues and the last hour. Those counters are built from synthetic events
   with ``collectors.counters.deltas_of`` in chunks of 50,000 events and
   written with the collector's own update documents (``Delta.update``:
   ``$inc`` / ``$set`` of the batch mark / ``$setOnInsert``), upserted by
   ``_id`` without the collector's "not applied yet" guard (the database is
   fresh; with the guard every write scans the collection on this engine,
   which the diagnosis measures). Goal: p99 under 100 ms.
   A diagnosis follows: each query behind ``/api/stats`` and the push timed
   alone, and the collector's guarded counter write next to a plain one.
2. Event-to-browser latency: Chromium (Playwright) opens the overview page;
   a listener on ``window.mopq.socket``'s ``stats`` event records
   ``Date.now()`` and the pushed ``written`` total of one queue; the script
   writes messages to that queue at a steady rate (20/s) with a Collector
   (default settings, monitor on) running, stamping each send with
   ``time.time()``. A send is seen at the first push whose total includes
   it. Run twice: on a fresh database, and on the part-1 database.
   Goal: p99 under 2 s.
3. 200 python-socketio clients (websocket transport, namespace /live) held
   by one gunicorn process for 40 s (30 s with --quick: past Engine.IO's
   first ping at 25 s) on the part-1 database while messages are written
   (5/s) and a collector runs, with the default thread count (300; every
   websocket holds one of gunicorn's threads and the app admits live pages
   up to threads - 20). Counts clients connected, still connected at the
   end, and those that received a push during the hold; the worker
   process's RSS, threads and /healthz latency while they are held. Then the
   same 200 clients against ``MOPQ_WEB_THREADS=100``, briefly: 80 should be
   admitted, the rest refused with a reason, and /healthz should still answer.

``--parts 1,3`` runs only those parts; ``--workers 1,2`` (the default) runs
part 1 once per number of gunicorn worker processes.

Everything targets 127.0.0.1, is bounded in time, and stops what it started
(engine, gunicorn, Chromium), also on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ctypes
import datetime as dt
import http.client
import importlib.metadata
import json
import logging
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
from pymongo import MongoClient, UpdateOne

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mopq import Queue, flush, schema  # noqa: E402
from mopq.collectors import Collector, batch, series  # noqa: E402
from mopq.collectors.counters import Delta, deltas_of  # noqa: E402
from mopq.collectors.stats import (  # noqa: E402
    collector_state,
    queue_flows,
    queue_states,
    read_stats,
    worker_states,
)
from mopq.dashboard.live import build_snapshot  # noqa: E402
from mopq.engine import engine_unless_configured  # noqa: E402
from tests.live_server import stop_gunicorn  # noqa: E402

HOST = "127.0.0.1"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]
AUTH_VARIABLES = ("MOPQ_READ_TOKEN", "MOPQ_ADMIN_TOKEN", "MOPQ_BASIC_AUTH_USERS",
                  "MOPQ_ADMIN_USERS")
QUEUES = 100
CHUNK = 50_000
# The batch mark written with the synthetic counters: a partition number no
# collector uses (real partitions are 0..schema.PARTITIONS-1), so collectors
# running later on the same database are not blocked by it.
SYNTHETIC_PARTITION = 10_000
# Synthetic event kinds, repeated: 6 written, 6 claimed, 6 acked (with a
# duration), 1 failed, 1 dead per 20 events.
PATTERN = (schema.WRITTEN, schema.CLAIMED, schema.ACKED) * 6 + (schema.FAILED,
                                                                 schema.DEAD_EVENT)
LIVE_QUEUE = "bench-live"


# -- plumbing ------------------------------------------------------------------------


def _stop_on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def _die_with_parent() -> None:
    """In the child: get SIGTERM if this script dies (Linux), so gunicorn never outlives it."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def pct(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, int(round(fraction * len(ordered) + 0.5)) - 1))
    return ordered[index]


def get(url: str, path: str, timeout: float = 10.0) -> tuple[int, bytes, float]:
    """One GET on a new connection: status, body, seconds."""
    host, port = url.removeprefix("http://").split(":")
    started = time.perf_counter()
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        return response.status, body, time.perf_counter() - started
    finally:
        connection.close()


def median_ms(function: Callable[[], Any], rounds: int = 3) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


@contextmanager
def gunicorn(uri: str, database: str, log_dir: Path, threads: int | None = None,
             workers: int = 1) -> Iterator[tuple[str, psutil.Process]]:
    """A live ``gunicorn app:app`` for ``database``: its URL and its (first) worker."""
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in AUTH_VARIABLES and k not in ("MOPQ_WEB_THREADS", "MOPQ_ACCESS_LOG")}
    env.update(MOPQ_MONGODB_URI=uri, MOPQ_DATABASE=database, MOPQ_WEB_WORKERS=str(workers))
    if threads is not None:
        env["MOPQ_WEB_THREADS"] = str(threads)
    log_path = log_dir / f"gunicorn-{port}.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
             "--bind", f"{HOST}:{port}", "app:app"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent)
    url = f"http://{HOST}:{port}"
    family: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {log_path.read_text()[-2000:]}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if get(url, "/healthz", 5)[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("gunicorn did not answer within 60 s")
            time.sleep(0.2)
        family = psutil.Process(server.pid).children(recursive=True)
        yield url, family[0]
    finally:
        stop_gunicorn(server, family)


class Writer(threading.Thread):
    """Writes one message to ``queue`` every 1/rate s for ``seconds``; keeps send times."""

    def __init__(self, queue: Queue, rate: float, seconds: float) -> None:
        super().__init__(name="bench-writer", daemon=True)
        self.queue, self.rate, self.seconds = queue, rate, seconds
        self.sent: list[float] = []  # time.time() just before each write
        self.stop = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        count = int(self.rate * self.seconds)
        for n in range(count):
            due = started + n / self.rate
            if self.stop.wait(max(0.0, due - time.monotonic())):
                return
            sent_at = time.time()
            self.queue.write({"n": n, "sent_at": sent_at})
            self.sent.append(sent_at)


# -- the database with 100 queues and 1,000,000 events counted -------------------------


def queue_names() -> list[str]:
    return [f"bench-{n:03d}" for n in range(QUEUES)]


def write_messages(uri: str, database: str, db: Any) -> dict[str, int]:
    """Per queue: 3 pending, 1 delayed, 1 inflight, 1 dead; all their events counted."""
    for name in queue_names():
        queue = Queue(name, uri=uri, database=database, max_attempts=1)
        queue.write_many([{"n": n, "name": name} for n in range(5)])
        queue.write({"later": True}, delay=3600)
        dead, held = queue.read(visibility_timeout=3600, limit=2)
        dead.fail("bench: synthetic failure")
        del held  # stays inflight for an hour
    flush()
    collector = Collector(db=db, monitor=False, batch_size=2000)
    collector.partitions.rebalance({})
    applied = 0
    while db[schema.EVENTS].estimated_document_count():
        step = collector.step().applied
        applied += step
        if not step:
            time.sleep(0.05)
    collector.partitions.release_all()
    return {"messages": db[schema.MESSAGES].estimated_document_count(), "events": applied}


def seed_counters(db: Any, events: int, seconds: int = 3600) -> tuple[int, float]:
    """The counters a collector would hold after ``events`` events over 100 queues."""
    names = queue_names()
    rng = random.Random(5)
    until = dt.datetime.now(dt.UTC).replace(microsecond=0)
    since = until - dt.timedelta(seconds=seconds)
    started = time.perf_counter()
    writes = 0
    for number, first in enumerate(range(0, events, CHUNK), start=1):
        batch = []
        for i in range(first, min(events, first + CHUNK)):
            kind = PATTERN[i % len(PATTERN)]
            event = {"kind": kind, "at": since + dt.timedelta(seconds=seconds * i / events),
                     "queue": names[rng.randrange(QUEUES)], "routing_key": None}
            if kind == schema.ACKED:
                event["duration"] = rng.expovariate(20)  # mean 50 ms
            batch.append(event)
        operations = [UpdateOne({"_id": key}, delta.update({SYNTHETIC_PARTITION: number}),
                                upsert=True)
                      for key, delta in deltas_of(batch).items()]
        db[schema.COUNTERS].bulk_write(operations, ordered=False)
        writes += len(operations)
    return writes, time.perf_counter() - started


# -- part 1: /api/stats under load ----------------------------------------------------

PROBE = "bench:probe|total|-"


def write_counter(db: Any, key: str, seq: int) -> None:
    """One counter update exactly as the collector sends it (guarded by a batch mark)."""
    operation = batch._counter_update(key, Delta({"scope": "probe"}, {"count": 1}),
                                      {SYNTHETIC_PARTITION + 1: seq})
    if hasattr(batch, "_write_counters"):  # find_one_and_update, one per counter
        batch._write_counters(db, [operation])
    else:  # an UpdateOne in a bulk write (the code before 63f72b0)
        db[schema.COUNTERS].bulk_write([operation])


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    headers = {}
    for line in head[1:]:
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        await reader.read()
        return status, True
    return status, headers.get("connection", "").lower() == "close"


async def _connection(port: int, path: str, deadline: float, timeout: float,
                      latencies: list[float], errors: collections.Counter) -> None:
    request = (f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
               "Connection: keep-alive\r\n\r\n").encode()
    reader = writer = None
    while time.monotonic() < deadline:
        if writer is None:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 5)
            except (TimeoutError, OSError):
                errors["connect"] += 1
                await asyncio.sleep(0.05)
                continue
        started = time.perf_counter()
        try:
            writer.write(request)
            status, close = await asyncio.wait_for(_read_response(reader), timeout)
        except (TimeoutError, OSError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError, ValueError) as error:
            errors[type(error).__name__] += 1
            close = True
        else:
            latencies.append(time.perf_counter() - started)
            if status != 200:
                errors[f"HTTP {status}"] += 1
        if close:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            reader = writer = None
    if writer is not None:
        writer.close()


def load(url: str, path: str, connections: int, seconds: float,
         timeout: float = 60.0) -> dict[str, Any]:
    """``connections`` keep-alive connections asking ``path`` back to back for ``seconds``.

    Requests started before the end are awaited (up to ``timeout`` each).
    """
    port = int(url.rsplit(":", 1)[1])
    latencies: list[float] = []
    errors: collections.Counter = collections.Counter()

    async def run() -> float:
        started = time.monotonic()
        deadline = started + seconds
        await asyncio.gather(*(_connection(port, path, deadline, timeout, latencies, errors)
                               for _ in range(connections)))
        return time.monotonic() - started

    elapsed = asyncio.run(run())
    return {"path": path, "requests": len(latencies), "elapsed": elapsed,
            "rate": len(latencies) / elapsed, "p50": pct(latencies, 0.50),
            "p95": pct(latencies, 0.95), "p99": pct(latencies, 0.99),
            "max": max(latencies, default=0.0), "errors": dict(errors)}


WRK_REPORT = """done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRK %d %d %d %d %d %d %d %d %d %d %d\\n", summary.requests,
    summary.duration, latency:percentile(50), latency:percentile(95), latency:percentile(99),
    latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def wrk_load(url: str, path: str, connections: int, seconds: float, log_dir: Path,
             timeout: float = 60.0) -> dict[str, Any]:
    """The same measurement with wrk (C, 2 threads); requests still running at the end are
    not counted by wrk."""
    script = log_dir / "report.lua"
    script.write_text(WRK_REPORT)
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{int(seconds)}s",
                          "--timeout", f"{int(timeout)}s", "-s", str(script), url + path],
                         capture_output=True, text=True, timeout=seconds + timeout + 30).stdout
    line = next(x for x in out.splitlines() if x.startswith("WRK "))
    n, duration, p50, p95, p99, top, *errors = (int(x) for x in line.split()[1:])
    named = dict(zip(("connect", "read", "write", "HTTP status", "timeout"), errors,
                     strict=True))
    return {"path": path, "requests": n, "elapsed": duration / 1e6, "rate": n / (duration / 1e6),
            "p50": p50 / 1e6, "p95": p95 / 1e6, "p99": p99 / 1e6, "max": top / 1e6,
            "errors": {k: v for k, v in named.items() if v}}


def part_stats_load(uri: str, database: str, db: Any, log_dir: Path, seconds: float,
                    generators: tuple[str, ...], connections: int = 50,
                    workers: int = 1) -> dict[str, Any]:
    with gunicorn(uri, database, log_dir, workers=workers) as (url, worker):
        for path in ("/healthz", "/api/stats", "/api/stats"):
            status, body, _ = get(url, path, 60)
            assert status == 200, (path, status, body[:300])
        size = len(body)
        document = json.loads(body)
        serial = [get(url, "/api/stats", 60)[2] for _ in range(10)]
        runs = {}
        for generator in generators:
            for path in ("/healthz", "/api/stats"):
                if generator == "wrk":
                    runs[generator, path] = wrk_load(url, path, connections, seconds, log_dir)
                else:
                    runs[generator, path] = load(url, path, connections, seconds)
        threads = worker.num_threads()
    probe_marks = iter(range(2, 100))
    write_counter(db, PROBE, 1)  # created now: the last document of the collection
    diagnosis = {
        "counter documents": db[schema.COUNTERS].estimated_document_count(),
        "queue_states (aggregate on messages)": median_ms(
            lambda: queue_states(db, dt.datetime.now(dt.UTC))),
        "queue_flows (the queues' totals)": median_ms(lambda: queue_flows(db, set())),
        "worker_states": median_ms(lambda: worker_states(db, dt.datetime.now(dt.UTC))),
        "collector_state": median_ms(lambda: collector_state(db, dt.datetime.now(dt.UTC))),
        "read_stats (all of the above)": median_ms(lambda: read_stats(db)),
        "push: series.throughput(60 s)": median_ms(lambda: series.throughput(db, 60)),
        "push: build_snapshot (read_stats + throughput)": median_ms(lambda: build_snapshot(db)),
        "overview page: series.throughput(300 s)": median_ms(
            lambda: series.throughput(db, 300)),
        "a scan: count_documents on counters by scope": median_ms(
            lambda: db[schema.COUNTERS].count_documents({"scope": "probe"})),
        "collector's counter write, an existing recent counter": median_ms(
            lambda: write_counter(db, PROBE, next(probe_marks))),
        "collector's counter write, a new counter": median_ms(
            lambda: write_counter(db, f"bench:probe:{next(probe_marks)}|total|-", 1)),
        "the same $inc by _id alone (no guard)": median_ms(lambda: db[schema.COUNTERS].update_one(
            {"_id": PROBE}, {"$inc": {"count": 1}}, upsert=True)),
    }
    db[schema.COUNTERS].delete_many({"scope": "probe"})
    return {"runs": runs, "size": size, "serial": serial,
            "queues": len(document["queues"]),
            "events_total": document["collector"]["events_total"],
            "worker_threads": threads, "diagnosis": diagnosis}


# -- part 2: event-to-browser latency -----------------------------------------------------

LISTEN = """(queue) => {
  window.__bench = [];
  window.mopq.socket.on("stats", (snapshot) => {
    const row = (snapshot.queues || {})[queue] || {};
    const collector = snapshot.collector || {};
    window.__bench.push({t: Date.now(), written: row.written || 0,
                         lag: collector.lag_seconds || 0, error: snapshot.engine_error || null});
  });
}"""


def part_browser(browser: Any, uri: str, database: str, log_dir: Path, seconds: float,
                 rate: float, drain: float) -> dict[str, Any]:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    queue = Queue(LIVE_QUEUE, uri=uri, database=database)
    collector = Collector(uri, database).start()
    page = None
    try:
        with gunicorn(uri, database, log_dir) as (url, _worker):
            page = browser.new_page()
            page.goto(url + "/", timeout=60_000)
            # A function, not an expression: polling an expression evals it in the page,
            # which the dashboard's CSP forbids once the first check has failed.
            try:
                page.wait_for_function("() => window.mopq && window.mopq.socket && "
                                       "window.mopq.socket.connected", timeout=30_000)
            except PlaywrightTimeout:
                state = page.evaluate("(document.getElementById('live-state') || {}).textContent")
                raise RuntimeError(f"the page's live socket did not connect within 30 s (its "
                                   f"status line says {state!r})") from None
            page.evaluate(LISTEN, LIVE_QUEUE)
            page.wait_for_timeout(2000)  # the push loop's first snapshots
            base = page.evaluate("window.__bench.length")
            writer = Writer(queue, rate, seconds)
            writer.start()
            while writer.is_alive():
                page.wait_for_timeout(250)
            wanted = len(writer.sent)
            deadline = time.monotonic() + drain
            while time.monotonic() < deadline:
                pushes = page.evaluate("window.__bench")
                if pushes and pushes[-1]["written"] >= wanted:
                    break
                page.wait_for_timeout(250)
            pushes = page.evaluate("window.__bench")[base:]
    finally:
        if page is not None:
            page.close()
        collector.stop(5.0)
    latencies, unseen = [], 0
    index = 0
    for number, sent_at in enumerate(writer.sent, start=1):
        while index < len(pushes) and pushes[index]["written"] < number:
            index += 1
        if index == len(pushes):
            unseen += 1
            continue
        latencies.append(pushes[index]["t"] / 1000 - sent_at)
    gaps = [b["t"] - a["t"] for a, b in zip(pushes, pushes[1:], strict=False)]
    return {"sent": len(writer.sent), "seen": len(latencies), "unseen": unseen,
            "pushes": len(pushes), "p50": pct(latencies, 0.5), "p99": pct(latencies, 0.99),
            "max": max(latencies, default=0.0), "min": min(latencies, default=0.0),
            "gap": statistics.median(gaps) / 1000 if gaps else 0.0,
            "lag": statistics.median([p["lag"] for p in pushes]) if pushes else 0.0,
            "errors": sum(1 for p in pushes if p["error"])}


# -- part 3: many Socket.IO clients on one process ----------------------------------------


class Client:
    def __init__(self) -> None:
        import socketio

        # websocket-client checks every text frame's UTF-8 in pure Python unless told
        # not to (about 8 ms for a 20 KB push); 200 clients in this one process then fall
        # behind the pushes, the server's pings queue behind them, and clients give up
        # after 30 s without a ping (measured). The server is not the bottleneck there.
        self.sio = socketio.Client(reconnection=False, request_timeout=5,
                                   websocket_extra_options={"skip_utf8_validation": True})
        self.pushes = 0
        self.dropped: str | None = None
        self.sio.on("stats", self._on_stats, namespace="/live")
        self.sio.on("disconnect", self._on_disconnect, namespace="/live")

    def _on_stats(self, _snapshot: dict) -> None:
        self.pushes += 1

    def _on_disconnect(self, reason: Any = "?") -> None:
        self.dropped = str(reason)

    def connect(self, url: str) -> bool:
        try:
            self.sio.connect(url, namespaces=["/live"], transports=["websocket"],
                             wait_timeout=10)
        except Exception:  # noqa: BLE001 - counted as not connected
            return False
        return self.connected

    @property
    def connected(self) -> bool:
        return self.sio.connected and "/live" in self.sio.namespaces and self.dropped is None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.sio.disconnect()


def _rss(process: psutil.Process) -> float:
    return process.memory_info().rss / 2**20


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


class LogCount(logging.Handler):
    """Counts what the Socket.IO / Engine.IO clients log (instead of printing it 200 times)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: collections.Counter = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.seen[f"{record.levelname.lower()}: {record.getMessage()[:60]}"] += 1


CLIENT_LOG = LogCount()
for _name in ("engineio.client", "socketio.client"):
    logging.getLogger(_name).addHandler(CLIENT_LOG)
    logging.getLogger(_name).propagate = False


def _probe(url: str, count: int = 10, timeout: float = 5.0) -> dict[str, Any]:
    times, failures = [], 0
    for _ in range(count):
        try:
            status, _, seconds = get(url, "/healthz", timeout)
            if status == 200:
                times.append(seconds)
            else:
                failures += 1
        except (OSError, http.client.HTTPException):
            failures += 1
    return {"p50": statistics.median(times) if times else None,
            "max": max(times, default=None), "failures": failures, "count": count}


def part_clients(uri: str, database: str, log_dir: Path, clients: int, hold: float,
                 threads: int | None, write: bool) -> dict[str, Any]:
    collector = Collector(uri, database).start() if write else None
    writer = None
    held: list[Client] = []
    try:
        with gunicorn(uri, database, log_dir, threads=threads) as (url, worker), \
                ThreadPoolExecutor(50) as pool:
            rss_before = _rss(worker)
            threads_before = worker.num_threads()
            CLIENT_LOG.seen.clear()
            cpu_started = _cpu(worker)
            if write:
                writer = Writer(Queue(LIVE_QUEUE, uri=uri, database=database), 5,
                                hold + 120)
                writer.start()
            held = [Client() for _ in range(clients)]
            started = time.monotonic()
            connected = sum(pool.map(lambda c: c.connect(url), held))
            connect_seconds = time.monotonic() - started
            cpu_connect = _cpu(worker) - cpu_started
            rss_connected = _rss(worker)
            cpu_hold = _cpu(worker)
            hold_started = time.monotonic()
            for client in held:
                client.pushes = 0
            rss_max = rss_connected
            deadline = time.monotonic() + hold
            probe = _probe(url, count=10 if threads else 3)
            while time.monotonic() < deadline:
                rss_max = max(rss_max, _rss(worker))
                time.sleep(0.5)
            cpu_hold = (_cpu(worker) - cpu_hold) / (time.monotonic() - hold_started)
            still = sum(1 for c in held if c.connected)
            dropped = collections.Counter(c.dropped for c in held if c.dropped is not None)
            pushed = [c.pushes for c in held if c.connected]
            threads_held = worker.num_threads()
            client_log = dict(CLIENT_LOG.seen)  # before the clients close on purpose
            list(pool.map(Client.close, held))
            time.sleep(1)
            rss_after = _rss(worker)
    finally:
        if writer is not None:
            writer.stop.set()
            writer.join(10)
        for client in held:
            client.close()
        if collector is not None:
            collector.stop(5.0)
    return {"clients": clients, "threads": threads, "connected": connected,
            "connect_seconds": connect_seconds, "still": still,
            "with_push": sum(1 for n in pushed if n), "pushes_median":
            statistics.median(pushed) if pushed else 0, "rss_before": rss_before,
            "rss_connected": rss_connected, "rss_max": rss_max, "rss_after": rss_after,
            "threads_before": threads_before, "threads_held": threads_held, "probe": probe,
            "hold": hold, "cpu_connect": cpu_connect, "cpu_hold": cpu_hold,
            "dropped": dict(dropped), "client_log": client_log}


# -- report ---------------------------------------------------------------------------------


def _commit() -> str:
    """The commit measured (read only), and whether the work tree differs from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head or 'unknown'}{' with local changes' if dirty.strip() else ''}"


def _versions() -> str:
    names = ("Flask", "Flask-SocketIO", "python-socketio", "python-engineio",
             "simple-websocket", "gunicorn", "pymongo", "playwright")
    found = []
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found.append(f"{name} {importlib.metadata.version(name)}")
    return f"Python {platform.python_version()}, " + ", ".join(found)


def _met(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.1f} ms"


def _load_row(label: str, r: dict[str, Any]) -> str:
    errors = sum(r["errors"].values())
    detail = f" {r['errors']}" if errors else ""
    return (f"   {label:<20}{r['rate']:9,.1f} {r['requests']:8,} {r['p50'] * 1000:9.1f} "
            f"{r['p95'] * 1000:9.1f} {r['p99'] * 1000:9.1f} {r['max'] * 1000:9.1f} "
            f"{errors:7}{detail}")


def _numbers(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="200,000 events counted and shorter runs (about 4 minutes; "
                             "the full run takes about 9)")
    parser.add_argument("--load", choices=("auto", "wrk", "python"), default="auto",
                        help="load generator for part 1 (auto: wrk and python if wrk is "
                             "installed, else python)")
    parser.add_argument("--parts", type=_numbers, default=(1, 2, 3),
                        help="which parts to run, e.g. 1 or 1,3 (default: all)")
    parser.add_argument("--workers", type=_numbers, default=(1, 2),
                        help="gunicorn worker processes for part 1, one run each "
                             "(default: 1,2)")
    parser.add_argument("--logs", metavar="DIR", type=Path,
                        help="keep the gunicorn logs in DIR (default: a temporary folder)")
    args = parser.parse_args()
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop_on_signal)
    events = 200_000 if args.quick else 1_000_000
    load_seconds = 5 if args.quick else 20
    live_seconds = 10 if args.quick else 30
    hold = 30 if args.quick else 40  # past Engine.IO's first ping (25 s) and its pong
    total_started = time.monotonic()

    stamp = time.strftime("%H%M%S")
    big, small = f"bench_dash_{stamp}", f"bench_dash_live_{stamp}"
    goals: list[tuple[str, bool]] = []
    with engine_unless_configured() as (uri, embedded), \
            MongoClient(uri, tz_aware=True) as client:
        with tempfile.TemporaryDirectory(prefix="mopq-bench-dashboard-") as tmp:
            log_dir = args.logs or Path(tmp)
            log_dir.mkdir(parents=True, exist_ok=True)
            print(f"engine: {'embedded mongo-java-server (memory), ' if embedded else ''}{uri}  "
                  f"({'quick' if args.quick else 'full'} run)")
            print(f"cpus: {os.cpu_count()}, load average at start: "
                  + " ".join(f"{x:.2f}" for x in os.getloadavg()))
            print(_versions())
            print(f"mopq at commit {_commit()}")

            db = client[big]
            schema.ensure_indexes(db)
            made = write_messages(uri, big, db)
            writes, seed_seconds = seed_counters(db, events)
            print(f"\ndatabase {big}: {QUEUES} queues, {made['messages']} messages "
                  f"(3 pending, 1 delayed, 1 inflight, 1 dead per queue; their {made['events']} "
                  f"events counted by a collector), plus {events:,} synthetic events over "
                  f"the last hour: {writes:,} counter upserts in {seed_seconds:.0f} s")

            generators = ("wrk", "python") if args.load == "auto" and shutil.which("wrk") \
                else ("python",) if args.load in ("auto", "python") else ("wrk",)
            for workers in args.workers if 1 in args.parts else ():
                r1 = part_stats_load(uri, big, db, log_dir, load_seconds, generators,
                                     workers=workers)
                print(f"\n1. GET under load: 50 keep-alive connections, {load_seconds} s per "
                      f"row, {workers} gunicorn worker process{'es' if workers > 1 else ''} "
                      f"({r1['worker_threads']} threads in the first)")
                print(f"   /api/stats: {r1['queues']} queues, events_total "
                      f"{r1['events_total']:,}, {r1['size']:,} B; alone (10 sequential): "
                      f"median {_ms(statistics.median(r1['serial']))}")
                print(f"   {'':<20}{'req/s':>9} {'requests':>8} {'p50 ms':>9} {'p95 ms':>9} "
                      f"{'p99 ms':>9} {'max ms':>9} {'errors':>7}")
                for (generator, path), row in r1["runs"].items():
                    print(_load_row(f"{generator:<7}{path}", row))
                for generator in generators:
                    base = r1["runs"][generator, "/healthz"]
                    stats = r1["runs"][generator, "/api/stats"]
                    ratio = stats["rate"] / base["rate"] if base["rate"] else 0.0
                    ok = stats["p99"] < 0.1 and not stats["errors"]
                    goals.append((f"/api/stats p99 < 100 ms at 50 connections ({generator}, "
                                  f"{workers} worker{'s' if workers > 1 else ''})", ok))
                    print(f"   {generator}: /api/stats rate {ratio:.3f}x /healthz; p99 "
                          f"{_ms(stats['p99'])} (goal < 100 ms: {_met(ok)}); /healthz p99 "
                          f"{_ms(base['p99'])}")
                if "wrk" in generators:
                    print("   (wrk does not count requests still running when its time is up; "
                          "the python generator waits for them)")
            if 1 in args.parts:
                print("   diagnosis, each alone from this script (median of 3):")
                for label, value in r1["diagnosis"].items():
                    shown = f"{value:,}" if label == "counter documents" else f"{value:9.1f} ms"
                    print(f"     {label:<66}{shown:>12}")

            if 2 in args.parts:
                from playwright.sync_api import sync_playwright

                with sync_playwright() as playwright:
                    browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                         args=CHROMIUM_ARGS)
                    try:
                        print(f"\n2. event-to-browser latency, Chromium {browser.version}: "
                              f"20 messages/s for {live_seconds} s, a collector (defaults) running")
                        print(f"   {'database':<22}{'sent':>5}{'seen':>6}{'pushes':>7}"
                              f"{'p50 s':>8}{'p99 s':>8}{'max s':>8}{'push gap':>9}"
                              f"{'lag':>7}  goal p99 < 2 s")
                        for label, name in (("fresh (1 queue)", small),
                                            ("100 queues, part 1", big)):
                            schema.ensure_indexes(client[name])
                            try:
                                r2 = part_browser(browser, uri, name, log_dir, live_seconds, 20,
                                                  drain=30)
                            except RuntimeError as error:
                                goals.append((f"event-to-browser p99 < 2 s, {label}", False))
                                print(f"   {label:<22}failed: {error}")
                                continue
                            ok = r2["unseen"] == 0 and r2["p99"] < 2.0
                            goals.append((f"event-to-browser p99 < 2 s, {label}", ok))
                            print(f"   {label:<22}{r2['sent']:5}{r2['seen']:6}{r2['pushes']:7}"
                                  f"{r2['p50']:8.2f}{r2['p99']:8.2f}{r2['max']:8.2f}"
                                  f"{r2['gap']:8.2f}s{r2['lag']:6.1f}s  {_met(ok)}"
                                  + (f" ({r2['unseen']} never seen)" if r2["unseen"] else ""))
                        print("   (push gap: median time between pushes in the page; lag: median "
                              "collector lag the pushes carried)")
                    finally:
                        browser.close()

            if 3 in args.parts:
                print("\n3. Socket.IO clients (python-socketio, websocket, /live) on one gunicorn "
                      "process, database of part 1")
                runs = [(None, hold, True), (100, 5, False)]
                for threads, held_for, write in runs:
                    r3 = part_clients(uri, big, log_dir, 200, held_for, threads, write)
                    label = (f"MOPQ_WEB_THREADS={threads} (live pages refused past {threads - 20})"
                             if threads else "default threads (300: live pages up to 280)")
                    print(f"   {label}: 200 clients, held {held_for} s"
                          + (" while 5 messages/s are written" if write else ", nothing written"))
                    print(f"     connected {r3['connected']}/200 in {r3['connect_seconds']:.1f} s; "
                          f"still connected at the end {r3['still']}; received a push during "
                          f"the hold {r3['with_push']} (median {r3['pushes_median']} pushes)")
                    print(f"     worker RSS: {r3['rss_before']:.1f} MiB before, "
                          f"{r3['rss_connected']:.1f} connected, {r3['rss_max']:.1f} max, "
                          f"{r3['rss_after']:.1f} after disconnecting; threads "
                          f"{r3['threads_before']} -> {r3['threads_held']}")
                    probe = r3["probe"]
                    print(f"     /healthz while held: median {_ms(probe['p50'])}, max "
                          f"{_ms(probe['max'])}, {probe['failures']}/{probe['count']} without an "
                          "answer within 5 s")
                    print(f"     worker CPU: {r3['cpu_connect']:.1f} s while connecting, "
                          f"{r3['cpu_hold'] * 100:.0f}% of a core while held")
                    if r3["dropped"]:
                        print(f"     disconnect reasons seen by clients: {r3['dropped']}")
                    for line, count in sorted(r3["client_log"].items()):
                        print(f"     logged by the clients before closing, x{count}: {line}")
                    if not threads:
                        ok = r3["connected"] == 200 and r3["still"] == 200 \
                            and r3["with_push"] == 200
                        goals.append(("200 clients held by one process (default threads)", ok))

    print("\nsummary")
    for label, ok in goals:
        print(f"   {label:<60} {_met(ok)}")
    print(f"total time {time.monotonic() - total_started:.0f} s, load average at the end: "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
