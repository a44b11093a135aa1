"""mopq beside its peers: the same no-op work through mopq, kombu, Celery, RQ and Dramatiq.

Run:   make bench                          (installs what is missing, then the full run)
       .venv/bin/python bench/peers.py     (the full run, about 7 minutes)
       .venv/bin/python bench/peers.py --quick --only mopq,rq   (a short look; writes nothing)

The full run prints a table and rewrites its own section of
docs/BENCHMARKS.md, "mopq beside its peers (make bench)", between the
markers ``<!-- make bench: begin -->`` and ``<!-- make bench: end -->``
(appended when they are absent; nothing else in the file is touched), with
the machine, every version, the load average at the start and the end, the
date and the command. ``--no-write`` leaves the file alone.

What runs
---------

Every system runs as its users run it, each process on its own, all on
127.0.0.1, with one worker process handling one task at a time and a no-op
handler (bench/peer_common.py: it appends one short line, the task's send,
start and end times, to a file; about 15 microseconds, the same code for
every system), and a producer process of its own (bench/peer_producer.py,
one send call per task):

- **mopq**: the embedded engine (``mopq.engine.Engine`` with H2 storage in a
  temporary folder, as ``make run`` uses; ``MOPQ_MONGODB_URI`` set means that
  server instead), a ``mopq collect`` process, the dashboard under gunicorn
  (``mopq serve``, its defaults: 2 processes) and ``mopq worker --queue bench
  --handler peer_mopq:handle`` (defaults: concurrency 1, poll interval 1 s).
  The producer calls ``Queue.write`` per task.
- **kombu-Mongo**: kombu's MongoDB transport on the same engine (another
  database in it; its ``messages.broadcast`` created first as a plain
  collection, since kombu would make it capped and the engine refuses capped
  collections), with the project's own kombu and pymongo (the ``test`` extra
  of .venv), a consumer process (``Connection.Consumer`` + ``drain_events``,
  bench/peer_kombu.py) and ``Producer.publish`` per task.
- **Celery + Redis**: ``celery worker --concurrency 1 -E`` (prefork, one pool
  process), ``task.delay`` per task, no result backend, and Flower running.
- **RQ + Redis**: ``rq worker`` (it forks a work horse per job),
  ``queue.enqueue`` per task, and rq-dashboard running.
- **Dramatiq + Redis**: ``dramatiq --processes 1 --threads 1``,
  ``actor.send`` per task.
- **raw pymongo**, the engine's ceiling: the operations mopq's producer and
  worker use, without mopq: ``insert_one`` per task, and a consumer process
  looping ``find_one_and_update`` (claim) + ``delete_one`` (acknowledge),
  sleeping 1 ms when nothing is pending (bench/peer_raw.py), with mopq's
  write concern. Its row 2 is the engine's floor for pickup: what a write
  and a claim cost on this engine and storage when the consumer looks
  every millisecond.

Redis is Debian's ``redis-server``, one per peer, started by this script on
a free loopback port without persistence (``--save "" --appendonly no``) and
stopped after it. Celery, Flower, RQ, rq-dashboard and Dramatiq are installed
into their own virtual environment outside the clone,
``~/.cache/mopq/peers-venv`` (``$MOPQ_CACHE_DIR/peers-venv``), at the
versions pinned in bench/peers-requirements.txt; it is created or updated
with pip when that file changes, so reruns start at once. Where a peer
cannot be installed or run, its cells say why (the error's first line) and
the run goes on with the others.

What each row measures
----------------------

1. **End to end, N = 3,000 tasks.** The worker is running and idle; the
   producer sends N tasks as fast as it can; the rate is N / (the end of the
   last task's handler - the first send). Beside it, printed: the
   producer's own rate, and the **drain rate**, measured first: N tasks are
   enqueued while no worker runs, then the worker is started and the rate is
   N / (the end of the last handler - the start of the first), so the
   worker's start-up is left out. The table shows the end-to-end rate, and
   the other systems' as a ratio to mopq's.
2. **Write -> handler start at a steady 100 tasks/s for 10 s** (1,000
   tasks): the producer sends each task at its own time on a fixed schedule;
   each task carries the time taken just before its send call, and the
   handler notes the time it starts; the row is the 50th and 99th
   percentiles of start - send. Same clock: every process is on this
   machine. The send call's own duration is included (for mopq a durable
   write to the engine).
3. **Task done -> visible in the monitor's JSON**, 100 tasks/s (issue 16's
   rate) for 10 s:
   while they run, the monitor's JSON is fetched in a loop (the next request
   5 ms after the previous answer) and the count of done tasks read from it
   each time; the latency of the k-th task to finish is the first answer
   whose count reached k minus the end of that task's handler. mopq:
   ``/api/stats``, ``queues.bench.done``, from the dashboard under gunicorn
   with a collector running, their defaults (the worker's publisher rings
   the collector, which rings the dashboard after each batch it applies; the
   dashboard reads the stats then, and at least once a second). Celery: Flower's
   ``/api/tasks?taskname=peer_celery.seen&state=SUCCESS``, the number of
   tasks listed (these tasks have a name of their own so the list stays
   short; Flower learns of them from the worker's task events; its API is
   opened without credentials with ``FLOWER_UNAUTHENTICATED_API=true``, as
   mopq's is when no credentials are set).
   RQ: rq-dashboard's ``/0/data/queues.json``, the queue's
   ``finished_job_registry_count``. kombu and Dramatiq: "—". kombu ships no
   monitor; Dramatiq's (dramatiq_dashboard, a separate package) serves HTML
   pages of waiting, delayed and failed messages, no JSON and no count of
   done ones (its Redis broker forgets a message once it is acknowledged).
4. **Task done -> pushed to open pages**, mopq only, 100 tasks/s for 10 s
   again: 50 pages (``pages``) are open on the dashboard's ``/live``
   Socket.IO namespace, each a python-socketio client in this script's
   process connected as the dashboard's own script connects (websocket
   transport, bench/live_pages.py), and nothing reads ``/api/stats``
   meanwhile (as when operators only have pages open). The latency of the
   k-th task to finish, for every page, is the arrival of the first push to
   that page whose ``queues.bench.done`` reached k, minus the end of that
   task's handler; the row is the 50th and 99th percentiles over every page.
   Celery, RQ, kombu and Dramatiq: "—", not measured (Flower and
   rq-dashboard are read through their JSON in row 3).
5. **Worker RSS** after those phases: the resident memory of the worker's
   process and all its children (psutil), so Celery's master and its pool
   process, and Dramatiq's master and its worker process, are added up.
   The monitors' memory is printed beside it, not in the table.

The engine's ceiling: the raw pymongo system runs row 1's and row 2's phases
on the same engine in the same run (producer and consumer processes, like the
others), and one ``insert_many`` of N small documents is timed against one
``Queue.write_many`` of N bodies in this process (best of 3, after a
warm-up; the call only, its 'written' events are published after the clock
stops). Every mopq rate is shown as a fraction of the matching raw one. The
raw processes run alone; mopq's share the engine with its collector and
dashboard, as when users run it.

What is and is not comparable
-----------------------------

- Durability differs. mopq's clients ask for ``w="majority", journal=True``
  and the engine with H2 storage answers a write only once it is in its
  file, so every write, claim and acknowledgement costs a commit; kombu
  uses the same engine with pymongo's default write concern (the engine
  commits all the same); Redis here keeps everything in memory, so an
  acknowledged enqueue is lost if Redis dies. The raw pymongo rows pay the
  same commits as mopq.
- Delivery differs. mopq leases a message and deletes it on acknowledgement
  (a worker killed mid-task gives it back), and records every transition in
  its business log, which the collector counts; kombu's MongoDB transport
  deletes on fetch (its ack never reaches the server); Celery's default
  acknowledges before running the task; RQ and Dramatiq keep the job until
  it is done.
- The monitors differ. mopq's ``done`` is an exact count kept by the
  collector in the database and served with at most 1 s of caching, by a
  dashboard that any number of processes can serve; Flower keeps the
  events it received in its memory (lost on restart, at most 10,000
  tasks); rq-dashboard reads RQ's registries in Redis on each request.
- The engine is mongo-java-server, not MongoDB; Redis is a real Redis.
  Rates are of this machine (2 shared cores running the engine, Redis, the
  producer, the worker and the monitors at once) and swing by tens of
  percent between runs; only the ratios within one run mean anything.
  Each figure is one measurement, not the best of several.

Every process is started in a session of its own and stopped at the end
(SIGTERM, then SIGKILL of its group), also on an error, Ctrl-C or SIGTERM;
each phase gives up after ``PHASE_TIMEOUT`` seconds and the whole run after
``--max-minutes`` (40).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from live_pages import Page, latencies
from peer_mopq import QUEUE as MOPQ_QUEUE
from pymongo import MongoClient

import mopq
from mopq import schema
from mopq.config import settings
from mopq.engine import Engine

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
REQUIREMENTS = BENCH / "peers-requirements.txt"
DOC = ROOT / "docs" / "BENCHMARKS.md"
BEGIN = "<!-- make bench: begin -->"
END = "<!-- make bench: end -->"
SECTION_TITLE = "## mopq beside its peers (make bench)"

FULL = {"n": 3_000, "steady_rate": 100, "steady_seconds": 10, "seen_rate": 100, "pages": 50,
        "seen_seconds": 10}
QUICK = {"n": 300, "steady_rate": 100, "steady_seconds": 3, "seen_rate": 100, "pages": 5,
         "seen_seconds": 3}
PHASE_TIMEOUT = 180.0
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
MONITOR_POLL_SECONDS = 0.005
BASELINE_TIMEOUT = 30.0
BATCH_ROUNDS = 3
AUTH_VARIABLES = ("MOPQ_READ_TOKEN", "MOPQ_ADMIN_TOKEN", "MOPQ_BASIC_AUTH_USERS",
                  "MOPQ_ADMIN_USERS")
SYSTEMS = ("raw", "mopq", "kombu", "celery", "rq", "dramatiq")
TITLES = {"raw": "raw pymongo (the engine's ceiling)", "mopq": "mopq",
          "kombu": "kombu-Mongo (same engine)", "celery": "Celery + Redis",
          "rq": "RQ + Redis", "dramatiq": "Dramatiq + Redis"}
NO_MONITOR = {"kombu": "kombu ships no monitor",
              "dramatiq": "no JSON monitor: dramatiq_dashboard serves HTML, without a count "
                          "of done tasks"}
PEER_PACKAGES = ("celery", "kombu", "redis", "flower", "tornado", "rq", "rq-dashboard",
                 "dramatiq")


class Unavailable(Exception):
    """A system cannot run here; the message says why."""


MAX_REASON = 160


def short(text: str) -> str:
    """One line of at most ``MAX_REASON`` characters (pip's list of versions left out)."""
    lines = text.strip().splitlines()
    line = lines[0].split(" (from versions:")[0] if lines else ""
    return line if len(line) <= MAX_REASON else line[:MAX_REASON - 1] + "…"


def first_line(error: BaseException) -> str:
    detail = short(str(error))
    if isinstance(error, Unavailable):
        return detail
    return short(f"{type(error).__name__}: {detail}") if detail else type(error).__name__


def log_tail(path: Path) -> str:
    """The last meaningful line of a process's log (its exception, usually)."""
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines()
                 if line.strip()]
    except OSError:
        return ""
    for line in reversed(lines):
        if re.match(r"^[\w.]*(Error|Exception|Exit)\b", line) or "rror:" in line:
            return line[:300]
    return lines[-1][:300] if lines else ""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def percentile(values: list[float], fraction: float) -> float:
    """Nearest rank: the smallest value with at least ``fraction`` of them at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def loadavg() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


# -- processes ---------------------------------------------------------------------------


class Processes:
    """Every process this script starts, each in a session (and group) of its own."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: list[subprocess.Popen] = []
        self.log_of: dict[int, Path] = {}

    def start(self, name: str, argv: list[str], *, env: dict[str, str], cwd: Path = BENCH,
              pipes: bool = False) -> subprocess.Popen:
        log_path = self.logs / f"{name}.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                argv, cwd=cwd, env=env, start_new_session=True,
                stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipes else log, stderr=log)
        self.running.append(process)
        self.log_of[process.pid] = log_path
        return process

    def why_dead(self, process: subprocess.Popen, what: str) -> str | None:
        """None while ``process`` runs; else what it said before it exited."""
        if process.poll() is None:
            return None
        tail = log_tail(self.log_of[process.pid])
        return short(f"{what} exited with code {process.returncode}"
                     + (f": {tail}" if tail else ""))

    def stop(self, process: subprocess.Popen) -> None:
        """SIGTERM the process, then SIGKILL its whole group if anything of it lingers."""
        group = process.pid
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + 3
        while _group_alive(group) and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if process in self.running:
            self.running.remove(process)

    def stop_all(self) -> None:
        for process in reversed(list(self.running)):
            self.stop(process)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def tree_rss(pid: int) -> tuple[float, int]:
    """MiB resident in ``pid`` and all its descendants, and how many processes that is."""
    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0, 0
    total, count = 0, 0
    for member in family:
        with contextlib.suppress(psutil.Error):
            total += member.memory_info().rss
            count += 1
    return total / 2**20, count


def wait_http(url: str, process: subprocess.Popen, processes: Processes, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        dead = processes.why_dead(process, what)
        if dead:
            raise Unavailable(dead)
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.status == 200:
                    return
        except (OSError, urllib.error.HTTPError):
            pass
        time.sleep(0.2)
    raise Unavailable(f"{what} did not answer {url} within {START_TIMEOUT:.0f} s")


# -- what the handlers recorded ----------------------------------------------------------


@dataclass
class Row:
    phase: str
    seq: int
    sent: float
    start: float
    end: float
    pid: int


class Records:
    """The lines every handler appended to ``<folder>/<pid>.rec``, read as they come."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.offsets: dict[Path, int] = {}
        self.rows: list[Row] = []
        self.counts: dict[str, int] = {}

    def poll(self) -> None:
        for path in self.folder.glob("*.rec"):
            offset = self.offsets.get(path, 0)
            with open(path, "rb") as source:
                source.seek(offset)
                chunk = source.read()
            complete = chunk.rfind(b"\n") + 1
            if not complete:
                continue
            self.offsets[path] = offset + complete
            for line in chunk[:complete].decode().splitlines():
                phase, seq, sent, start, end, pid = line.split()
                self.rows.append(Row(phase, int(seq), float(sent), float(start), float(end),
                                     int(pid)))
                self.counts[phase] = self.counts.get(phase, 0) + 1

    def count(self, phase: str) -> int:
        return self.counts.get(phase, 0)

    def total(self) -> int:
        return len(self.rows)

    def of(self, phase: str) -> list[Row]:
        return [row for row in self.rows if row.phase == phase]


# -- one system --------------------------------------------------------------------------


@dataclass
class Monitor:
    name: str
    url: str
    count: Callable[[object], int]
    baseline: Callable[[Records], int]  # the count expected before the phase begins
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def read(self) -> int:
        with urllib.request.urlopen(self.url, timeout=5) as answer:
            return self.count(json.load(answer))


@dataclass
class System:
    key: str
    python: str
    env: dict[str, str]
    worker: list[str]
    monitor: Monitor | None = None
    worker_process: subprocess.Popen | None = None
    inspect: Callable[[dict], None] | None = None  # adds what it finds to the results
    live_url: str | None = None  # where pages open their Socket.IO connection (mopq's /live)


class Producer:
    """A bench/peer_producer.py process: ready once its warm-up task is sent, then told to go."""

    def __init__(self, processes: Processes, system: System, phase: str, count: int,
                 rate: float | None = None) -> None:
        argv = [system.python, "peer_producer.py", system.key, phase, str(count)]
        if rate:
            argv += ["--rate", str(rate)]
        self.processes = processes
        self.process = processes.start(f"{system.key}-producer-{phase}", argv, env=system.env,
                                       pipes=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        with contextlib.suppress(ValueError, OSError):
            for line in self.process.stdout:
                self.lines.put(line.decode().strip())
        self.lines.put(None)

    def _line(self, timeout: float) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise Unavailable(f"the producer said nothing within {timeout:.0f} s") from None
        if line is None:
            self.process.wait(5)
            raise Unavailable(self.processes.why_dead(self.process, "the producer")
                              or "the producer closed its output")
        return line

    def ready(self) -> None:
        line = self._line(START_TIMEOUT)
        if line != "ready":
            raise Unavailable(f"the producer said {line!r} instead of ready")

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(b"go\n")
        self.process.stdin.flush()

    def result(self, timeout: float) -> dict:
        outcome = json.loads(self._line(timeout))
        self.process.wait(10)
        self.processes.stop(self.process)
        return outcome


class Bench:
    def __init__(self, processes: Processes, records: Records, size: dict,
                 deadline: float) -> None:
        self.processes = processes
        self.records = records
        self.size = size
        self.deadline = deadline

    def phase_deadline(self, seconds: float = PHASE_TIMEOUT) -> float:
        return min(time.monotonic() + seconds, self.deadline)

    def wait_for(self, system: System, done: Callable[[], bool], what: Callable[[], str],
                 seconds: float = PHASE_TIMEOUT) -> None:
        deadline = self.phase_deadline(seconds)
        while True:
            self.records.poll()
            if done():
                return
            if system.worker_process is not None:
                dead = self.processes.why_dead(system.worker_process, "the worker")
                if dead:
                    raise Unavailable(dead)
            if time.monotonic() > deadline:
                raise Unavailable(f"{what()}: not done after {seconds:.0f} s")
            time.sleep(0.01)

    def wait_phase(self, system: System, phase: str, count: int) -> list[Row]:
        self.wait_for(system, lambda: self.records.count(phase) >= count,
                      lambda: f"{phase} phase ({self.records.count(phase)} of {count} tasks)")
        return self.records.of(phase)

    def started_producer(self, system: System, phase: str, count: int,
                         rate: float | None = None) -> Producer:
        """A producer whose warm-up task is sent and, if a worker runs, handled."""
        before = self.records.total()
        producer = Producer(self.processes, system, phase, count, rate)
        producer.ready()
        if system.worker_process is not None:
            self.wait_for(system, lambda: self.records.total() >= before + 1,
                          lambda: "the producer's warm-up task", START_TIMEOUT)
        return producer

    def measure(self, system: System, result: dict) -> None:
        """Every row for ``system``, filling ``result`` as each is measured."""
        n = self.size["n"]
        producer = self.started_producer(system, "drain", n)
        producer.go()
        sent = producer.result(PHASE_TIMEOUT)
        result["enqueue"] = n / (sent["returned"] - sent["first"])

        system.worker_process = self.processes.start(f"{system.key}-worker", system.worker,
                                                     env=system.env)
        rows = self.wait_phase(system, "drain", n)
        result["drain"] = n / (max(r.end for r in rows) - min(r.start for r in rows))

        producer = self.started_producer(system, "e2e", n)
        producer.go()
        sent = producer.result(PHASE_TIMEOUT)
        rows = self.wait_phase(system, "e2e", n)
        result["e2e"] = n / (max(r.end for r in rows) - sent["first"])
        result["e2e_producer"] = n / (sent["returned"] - sent["first"])

        rate, seconds = self.size["steady_rate"], self.size["steady_seconds"]
        count = int(rate * seconds)
        producer = self.started_producer(system, "steady", count, rate)
        producer.go()
        producer.result(seconds + PHASE_TIMEOUT)
        rows = self.wait_phase(system, "steady", count)
        waits = [r.start - r.sent for r in rows]
        result["pickup"] = (percentile(waits, 0.5), percentile(waits, 0.99), len(waits))
        if system.key == "raw":
            return

        if system.monitor is not None:
            try:
                result["visible"] = self.visibility(system)
            except Exception as error:  # the other rows stand
                result["visible"] = first_line(error)
        else:
            result["visible"] = NO_MONITOR[system.key]
        if system.live_url is not None:
            try:
                result["pushed"] = self.pushed(system)
            except Exception as error:  # the other rows stand
                result["pushed"] = first_line(error)

        assert system.worker_process is not None
        if system.inspect is not None:
            system.inspect(result)
        result["rss"] = tree_rss(system.worker_process.pid)
        if system.monitor is not None:
            result["monitor_rss"] = {name: tree_rss(process.pid)
                                     for name, process in system.monitor.processes.items()}

    def visibility(self, system: System) -> tuple[float, float, int, int]:
        """Row 3: (p50, p99, tasks, answers read) of done -> visible in the monitor's JSON."""
        monitor = system.monitor
        assert monitor is not None
        rate, seconds = self.size["seen_rate"], self.size["seen_seconds"]
        count = int(rate * seconds)
        producer = self.started_producer(system, "seen", count, rate)
        expected = monitor.baseline(self.records)
        deadline = time.monotonic() + BASELINE_TIMEOUT
        baseline: int | str | None = None
        while time.monotonic() < deadline:
            try:
                baseline = monitor.read()
            except (OSError, ValueError, KeyError, TypeError) as error:
                baseline = first_line(error)
            if baseline == expected:
                break
            time.sleep(0.05)
        if baseline != expected:
            raise Unavailable(f"{monitor.name} answered {baseline} done before the phase, "
                              f"{expected} expected, for {BASELINE_TIMEOUT:.0f} s")
        assert isinstance(baseline, int)
        producer.go()
        samples: list[tuple[float, int]] = []
        errors = 0
        stop_at = self.phase_deadline(seconds + 30)
        while time.monotonic() < stop_at:
            try:
                seen = monitor.read() - baseline
            except (OSError, ValueError, KeyError, TypeError) as error:
                errors += 1
                if errors > 100:
                    raise Unavailable(f"{monitor.name}: {first_line(error)}") from error
                continue
            samples.append((time.time(), seen))
            if seen >= count:
                break
            time.sleep(MONITOR_POLL_SECONDS)
        producer.result(PHASE_TIMEOUT)
        rows = self.wait_phase(system, "seen", count)
        ends = sorted(r.end for r in rows)
        latencies = []
        cursor = 0
        for k, end in enumerate(ends, start=1):
            while cursor < len(samples) and samples[cursor][1] < k:
                cursor += 1
            if cursor == len(samples):
                break
            latencies.append(samples[cursor][0] - end)
        if len(latencies) < count:
            raise Unavailable(f"{monitor.name} showed {len(latencies)} of {count} done tasks "
                              f"within {seconds + 30:.0f} s")
        return (percentile(latencies, 0.5), percentile(latencies, 0.99), count, len(samples))


    def pushed(self, system: System) -> tuple[float, float, int, int]:
        """Row 4: (p50, p99, tasks, pages) of done -> pushed to every one of the open pages."""
        assert system.live_url is not None
        rate, seconds = self.size["seen_rate"], self.size["seen_seconds"]
        count = int(rate * seconds)
        producer = self.started_producer(system, "pushed", count, rate)
        base = self.records.total()
        pages = [Page(MOPQ_QUEUE) for _ in range(self.size["pages"])]
        try:
            for page in pages:
                page.open(system.live_url)
            self.wait_for(system, lambda: all(page.done() == base for page in pages),
                          lambda: f"every page to be pushed {base} done before the phase",
                          BASELINE_TIMEOUT)
            producer.go()
            producer.result(PHASE_TIMEOUT)
            rows = self.wait_phase(system, "pushed", count)
            self.wait_for(system, lambda: all((page.done() or 0) >= base + count
                                              for page in pages),
                          lambda: f"every page to be pushed the phase's {count} done tasks",
                          seconds + 30)
        finally:
            for page in pages:
                page.close()
        ends = [row.end for row in rows]
        found = [value for page in pages for value in latencies(ends, page.pushes, base)]
        return (percentile(found, 0.5), percentile(found, 0.99), count, len(pages))


# -- setting the systems up --------------------------------------------------------------


class Context:
    def __init__(self, processes: Processes, tmp: Path, uri: str, client: MongoClient,
                 peers_python: str | None, peers_problem: str | None, run_id: str) -> None:
        self.processes = processes
        self.tmp = tmp
        self.uri = uri
        self.client = client
        self.peers_python = peers_python
        self.peers_problem = peers_problem
        self.run_id = run_id
        self.base_env = {key: value for key, value in os.environ.items()
                         if key not in AUTH_VARIABLES and key != "MOPQ_MONGODB_URI"}
        self.base_env["PYTHONDONTWRITEBYTECODE"] = "1"

    def database_url(self, name: str) -> str:
        parts = urllib.parse.urlsplit(self.uri)
        return urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/" + name, "", ""))

    def peers(self) -> str:
        if self.peers_python is None:
            raise Unavailable(self.peers_problem or "the peers' virtual environment is missing")
        return self.peers_python

    def peers_bin(self, name: str) -> str:
        return str(Path(self.peers()).parent / name)


@contextlib.contextmanager
def raw_system(ctx: Context) -> Iterator[System]:
    name = f"bench_peers_raw_{ctx.run_id}"
    env = dict(ctx.base_env, PEERS_MONGO_URL=ctx.database_url(name))
    try:
        yield System("raw", sys.executable, env, [sys.executable, "peer_raw.py"])
    finally:
        with contextlib.suppress(Exception):
            ctx.client.drop_database(name)


@contextlib.contextmanager
def mopq_system(ctx: Context) -> Iterator[System]:
    name = f"bench_peers_mopq_{ctx.run_id}"
    env = dict(ctx.base_env, MOPQ_MONGODB_URI=ctx.uri, MOPQ_DATABASE=name)
    processes = ctx.processes
    try:
        collector = processes.start("mopq-collector", [sys.executable, "-m", "mopq", "collect"],
                                    env=env, cwd=ROOT)
        port = free_port()
        dashboard = processes.start("mopq-dashboard", [sys.executable, "-m", "mopq", "serve",
                                                       "--port", str(port)], env=env, cwd=ROOT)
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/healthz", dashboard, processes, "the dashboard (mopq serve)")
        dead = processes.why_dead(collector, "the collector (mopq collect)")
        if dead:
            raise Unavailable(dead)
        monitor = Monitor(
            "mopq's /api/stats", base + "/api/stats",
            lambda stats: int(stats["queues"].get(MOPQ_QUEUE, {}).get("done", 0)),
            lambda records: records.total(),
            {"mopq collect": collector, "mopq serve": dashboard})

        def doorbells(result: dict) -> None:
            """Where the worker's doorbell said writers should ring it (loopback expected)."""
            result["doorbells"] = sorted(
                f"{bell.get('ip')}:{bell.get('port')}"
                for bell in ctx.client[name][schema.DOORBELLS].find({}, {"ip": 1, "port": 1}))

        yield System("mopq", sys.executable, env,
                     [sys.executable, "-m", "mopq", "worker", "--queue", MOPQ_QUEUE,
                      "--handler", "peer_mopq:handle"], monitor, inspect=doorbells,
                     live_url=base)
    finally:
        with contextlib.suppress(Exception):
            ctx.client.drop_database(name)


@contextlib.contextmanager
def kombu_system(ctx: Context) -> Iterator[System]:
    name = f"bench_peers_kombu_{ctx.run_id}"
    ctx.client[name].create_collection("messages.broadcast")  # kombu's would be capped: refused
    env = dict(ctx.base_env, PEERS_MONGO_URL=ctx.database_url(name))
    try:
        yield System("kombu", sys.executable, env, [sys.executable, "peer_kombu.py"])
    finally:
        with contextlib.suppress(Exception):
            ctx.client.drop_database(name)


@contextlib.contextmanager
def redis_server(ctx: Context, key: str) -> Iterator[str]:
    executable = shutil.which("redis-server")
    if executable is None:
        raise Unavailable("redis-server is not installed (apt-get install redis-server; "
                          "make bench does it when run as root)")
    folder = ctx.tmp / f"redis-{key}"
    folder.mkdir()
    port = free_port()
    process = ctx.processes.start(
        f"{key}-redis", [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                         "--appendonly", "no", "--dir", str(folder)], env=ctx.base_env,
        cwd=folder)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        dead = ctx.processes.why_dead(process, "redis-server")
        if dead:
            raise Unavailable(dead)
        with contextlib.suppress(OSError), \
                socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
            connection.sendall(b"PING\r\n")
            if connection.recv(16).startswith(b"+PONG"):
                break
        if time.monotonic() > deadline:
            raise Unavailable(f"redis-server did not answer within {START_TIMEOUT:.0f} s")
        time.sleep(0.05)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        ctx.processes.stop(process)


@contextlib.contextmanager
def celery_system(ctx: Context) -> Iterator[System]:
    python = ctx.peers()
    with redis_server(ctx, "celery") as url:
        env = dict(ctx.base_env, PEERS_REDIS_URL=url)
        port = free_port()
        # Flower 2 opens its API without credentials only when told to, as mopq's is by default
        flower = ctx.processes.start(
            "celery-flower", [python, "-m", "celery", "-A", "peer_celery", "flower",
                              f"--port={port}", "--address=127.0.0.1"],
            env=dict(env, FLOWER_UNAUTHENTICATED_API="true"))
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/healthcheck", flower, ctx.processes, "Flower")
        monitor = Monitor("Flower's /api/tasks",
                          base + "/api/tasks?taskname=peer_celery.seen&state=SUCCESS",
                          lambda tasks: len(tasks), lambda records: 0, {"Flower": flower})
        yield System("celery", python, env,
                     [python, "-m", "celery", "-A", "peer_celery", "worker", "--concurrency",
                      "1", "-E", "-n", "bench@%h"], monitor)


@contextlib.contextmanager
def rq_system(ctx: Context) -> Iterator[System]:
    python = ctx.peers()
    with redis_server(ctx, "rq") as url:
        env = dict(ctx.base_env, PEERS_REDIS_URL=url)
        port = free_port()
        dashboard = ctx.processes.start(
            "rq-dashboard", [ctx.peers_bin("rq-dashboard"), "--bind", "127.0.0.1", "--port",
                             str(port), "--redis-url", url], env=env)
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/0/data/queues.json", dashboard, ctx.processes, "rq-dashboard")

        def finished(document: object) -> int:
            assert isinstance(document, dict)
            return sum(int(q["finished_job_registry_count"]) for q in document["queues"]
                       if q["name"] == "bench")

        monitor = Monitor("rq-dashboard's queues.json", base + "/0/data/queues.json",
                          finished, lambda records: records.total(),
                          {"rq-dashboard": dashboard})
        yield System("rq", python, env, [ctx.peers_bin("rq"), "worker", "--url", url, "bench"],
                     monitor)


@contextlib.contextmanager
def dramatiq_system(ctx: Context) -> Iterator[System]:
    python = ctx.peers()
    with redis_server(ctx, "dramatiq") as url:
        env = dict(ctx.base_env, PEERS_REDIS_URL=url)
        yield System("dramatiq", python, env,
                     [ctx.peers_bin("dramatiq"), "peer_dramatiq", "--processes", "1",
                      "--threads", "1"])


SETUPS = {"raw": raw_system, "mopq": mopq_system, "kombu": kombu_system,
          "celery": celery_system, "rq": rq_system, "dramatiq": dramatiq_system}


# -- the peers' virtual environment ------------------------------------------------------


def peers_venv() -> tuple[str | None, str | None]:
    """The peers' python, created or updated with pip; else None and why."""
    venv = settings().cache_dir / "peers-venv"
    python = venv / "bin" / "python"
    stamp = venv / ".mopq-requirements"
    wanted = hashlib.sha256(REQUIREMENTS.read_bytes() + sys.version.encode()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return str(python), None
    print(f"peers: installing {REQUIREMENTS} into {venv} ...", flush=True)
    try:
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True,
                           capture_output=True, text=True, timeout=300)
        install = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r",
             str(REQUIREMENTS)], capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.SubprocessError) as error:
        return None, short(f"cannot create {venv}: {first_line(error)}")
    if install.returncode != 0:
        said = [line for line in (install.stderr + install.stdout).splitlines()
                if line.startswith("ERROR")] or (install.stderr or install.stdout).splitlines()
        return None, short(f"pip could not install the peers: {said[0] if said else '?'}")
    stamp.write_text(wanted)
    return str(python), None


# -- versions, machine -------------------------------------------------------------------


def command_output(argv: list[str], stderr: bool = False) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=ROOT,
                              env=dict(os.environ, GIT_OPTIONAL_LOCKS="0"))
    except (OSError, subprocess.SubprocessError):
        return ""
    text = done.stderr if stderr else done.stdout
    return text.strip().splitlines()[0] if text.strip() else ""


def machine() -> str:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        memory = f", {kib / 2**20:.0f} GiB RAM"
    return (f"{os.cpu_count()} cores ({model or platform.processor() or 'unknown cpu'})"
            f"{memory}, Linux {platform.release()}")


def versions(peers_python: str | None) -> dict[str, str]:
    found = {"Python": platform.python_version()}
    for name in ("pymongo", "kombu", "psutil", "flask", "gunicorn"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name if name != "kombu" else "kombu (project's .venv)"] = \
                importlib.metadata.version(name)
    pom = (ROOT / "engine" / "pom.xml").read_text()
    engine = re.search(r"<mongo-java-server.version>([^<]+)<", pom)
    found["mongo-java-server"] = engine.group(1) if engine else "?"
    java = re.search(r'version "([^"]+)"', command_output(["java", "-version"], stderr=True))
    found["OpenJDK"] = java.group(1) if java else "?"
    redis = re.search(r"v=(\S+)", command_output(["redis-server", "--version"]))
    found["redis-server"] = redis.group(1) if redis else "not installed"
    if peers_python:
        script = ("import importlib.metadata as m, json, platform, sys; print(json.dumps("
                  "{'Python': platform.python_version(), "
                  "**{name: m.version(name) for name in sys.argv[1:]}}))")
        with contextlib.suppress(ValueError):
            peers = json.loads(command_output([peers_python, "-c", script, *PEER_PACKAGES])
                               or "{}")
            found.update({f"{name} (peers venv)" if name in ("Python", "kombu") else name: value
                          for name, value in peers.items()})
    return found


def commit() -> str:
    head = command_output(["git", "rev-parse", "--short", "HEAD"]) or "unknown"
    dirty = command_output(["git", "status", "--porcelain", "--untracked-files=no"])
    return head + (" plus uncommitted changes" if dirty else "")


# -- reporting ---------------------------------------------------------------------------


def rate(value: float) -> str:
    return f"{value:,.0f}/s"


def ms(value: float) -> str:
    milliseconds = value * 1000
    return f"{milliseconds:,.1f}" if milliseconds < 10 else f"{milliseconds:,.0f}"


def seconds_text(value: float) -> str:
    return f"{value:.3f}" if value < 0.1 else f"{value:.2f}"


ROWS = ("e2e", "pickup", "visible", "pushed", "rss")


def cells(results: dict[str, dict], keys: list[str]) -> list[list[str]]:
    """The rows of the table (``ROWS``), one cell per system in ``keys``."""
    mine = results.get("mopq", {})

    def cell(key: str, row: str) -> str:
        found = results.get(key, {})
        value = found.get(row)
        if row == "pushed" and key != "mopq" and "error" not in found:
            return "— (not measured)"
        if value is None:
            return f"could not run: {found.get('error', 'not measured')}"
        if isinstance(value, str):
            return f"— ({value})" if key in NO_MONITOR else f"could not run: {value}"
        if row == "e2e":
            if key == "mopq" or not isinstance(mine.get("e2e"), float):
                return rate(value)
            return f"{value / mine['e2e']:.2f}× ({rate(value)})"
        if row == "pickup":
            return f"{ms(value[0])} / {ms(value[1])} ms"
        if row in ("visible", "pushed"):
            return f"{seconds_text(value[0])} / {seconds_text(value[1])} s"
        mib, count = value
        return f"{mib:.0f} MiB" + (f" ({count} processes)" if count > 1 else "")

    return [[cell(key, row) for key in keys] for row in ROWS]


ROW_TITLES = ("end to end, no-op handler, 1 worker process, N={n:,} tasks",
              "write → handler start at a steady {steady_rate}/s, p50 / p99",
              "task done → visible in the monitor's JSON ({seen_rate}/s), p50 / p99",
              "task done → pushed to each of {pages} open pages ({seen_rate}/s), p50 / p99",
              "worker RSS")


def markdown_table(results: dict[str, dict], size: dict) -> str:
    keys = [key for key in SYSTEMS if key != "raw" and key in results]
    monitors = {"mopq": "/api/stats", "celery": "Flower", "rq": "rq-dashboard"}
    header = "| | " + " | ".join(TITLES[key] for key in keys) + " |"
    lines = [header, "|---" * (len(keys) + 1) + "|"]
    for title, name, row in zip(ROW_TITLES, ROWS, cells(results, keys), strict=True):
        if name == "visible":
            row = [f"{monitors[key]} {text}" if key in monitors and text[0].isdigit()
                   else text for key, text in zip(keys, row, strict=True)]
        lines.append(f"| {title.format(**size)} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def ceiling_rows(results: dict[str, dict], batch: dict | str) -> list[tuple[str, str, str, str]]:
    raw, mine = results.get("raw", {}), results.get("mopq", {})

    def pair(label: str, raw_value: object, mopq_value: object) -> tuple[str, str, str, str]:
        if isinstance(raw_value, float) and isinstance(mopq_value, float):
            return (label, rate(raw_value), rate(mopq_value), f"{mopq_value / raw_value:.2f}×")
        why = raw.get("error") or mine.get("error") or "not measured"
        return (label, rate(raw_value) if isinstance(raw_value, float) else "—",
                rate(mopq_value) if isinstance(mopq_value, float) else "—", f"— ({why})")

    rows = [pair("one write per call, producer process: `insert_one` / `Queue.write`",
                 raw.get("enqueue"), mine.get("enqueue"))]
    if isinstance(batch, dict):
        rows.append(pair(f"one batch of {batch['n']:,}, in process: `insert_many` / "
                         "`Queue.write_many` (the call)", batch["raw"], batch["mopq"]))
    else:
        rows.append(("one batch, in process: `insert_many` / `Queue.write_many`", "—", "—",
                     f"— ({batch})"))
    rows.append(pair("claim + acknowledge, 1 worker process draining N waiting: "
                     "`find_one_and_update` + `delete_one` / `mopq worker`",
                     raw.get("drain"), mine.get("drain")))
    rows.append(pair("end to end, producer and worker processes at once (row 1)",
                     raw.get("e2e"), mine.get("e2e")))
    if isinstance(raw.get("pickup"), tuple) and isinstance(mine.get("pickup"), tuple):
        (raw_p50, raw_p99, _), (p50, p99, _) = raw["pickup"], mine["pickup"]
        rows.append(("write → handler start at a steady rate (row 2), p50 / p99: `insert_one`, "
                     "a consumer polling every 1 ms / `Queue.write`, `mopq worker`",
                     f"{ms(raw_p50)} / {ms(raw_p99)} ms", f"{ms(p50)} / {ms(p99)} ms",
                     f"{p50 / raw_p50:.2f}× / {p99 / raw_p99:.2f}×"))
    return rows


def details(results: dict[str, dict], size: dict) -> list[str]:
    lines = []
    for key in SYSTEMS:
        found = results.get(key)
        if found is None:
            continue
        lines.append(f"{TITLES[key]}:")
        if "error" in found:
            lines.append(f"   could not run: {found['error']}")
        parts = []
        for label, name in (("producer alone (no worker)", "enqueue"),
                            ("drain", "drain"), ("end to end", "e2e"),
                            ("producer during end to end", "e2e_producer")):
            if isinstance(found.get(name), float):
                parts.append(f"{label} {rate(found[name])}")
        if parts:
            lines.append("   " + ", ".join(parts))
        if isinstance(found.get("pickup"), tuple):
            p50, p99, count = found["pickup"]
            lines.append(f"   write -> start at {size['steady_rate']}/s: p50 {ms(p50)} ms, "
                         f"p99 {ms(p99)} ms ({count} tasks)")
        visible = found.get("visible")
        if isinstance(visible, tuple):
            lines.append(f"   done -> visible: p50 {seconds_text(visible[0])} s, p99 "
                         f"{seconds_text(visible[1])} s ({visible[2]} tasks, "
                         f"{visible[3]} answers read)")
        elif isinstance(visible, str):
            lines.append(f"   done -> visible: {'—' if key in NO_MONITOR else 'failed'} "
                         f"({visible})")
        pushed = found.get("pushed")
        if isinstance(pushed, tuple):
            lines.append(f"   done -> pushed to each of {pushed[3]} open pages: p50 "
                         f"{seconds_text(pushed[0])} s, p99 {seconds_text(pushed[1])} s "
                         f"({pushed[2]} tasks)")
        elif isinstance(pushed, str):
            lines.append(f"   done -> pushed to open pages: failed ({pushed})")
        if "doorbells" in found:
            bells = found["doorbells"]
            away = [bell for bell in bells if not bell.startswith("127.")]
            lines.append(f"   the worker's doorbell: {', '.join(bells) or 'none registered'}"
                         + (" (NOT loopback: the producer's rings went there)" if away else ""))
        if isinstance(found.get("rss"), tuple):
            mib, count = found["rss"]
            monitor = ", ".join(f"{name} {m:.0f} MiB ({c} process{'es' if c > 1 else ''})"
                                for name, (m, c) in found.get("monitor_rss", {}).items())
            lines.append(f"   worker RSS {mib:.1f} MiB ({count} process{'es' if count > 1 else ''})"
                         + (f"; monitor: {monitor}" if monitor else ""))
    return lines


def section(results: dict[str, dict], batch: dict | str, size: dict, info: dict) -> str:
    ceiling = ["| the engine's ceiling, same engine, same run | raw pymongo | mopq | "
               "mopq / raw |", "|---|---|---|---|"]
    ceiling += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in ceiling_rows(results, batch)]
    versions_text = ", ".join(f"{name} {value}" for name, value in info["versions"].items())
    busy = float(info["load_start"].split()[0]) > (os.cpu_count() or 1)
    return "\n".join([
        SECTION_TITLE, "",
        fill("Written by `make bench` (bench/peers.py; its docstring says what each row "
             "measures, how, and what is and is not comparable). Every system runs as its users "
             "run it, one worker process handling one task at a time with a no-op handler, a "
             "producer process beside it, all on 127.0.0.1 of one machine. Row 1: the "
             "end-to-end rate (the worker idle and running, N tasks sent one call each as fast "
             "as the producer can, until the last handler ends), and the other systems as a "
             "ratio to mopq. Row 3: the first answer of the monitor's JSON (read every 5 ms) "
             "whose count of done tasks includes the task, minus the end of its handler; "
             "row 4 the same for the pushes to each open page. "
             "Worker RSS: the worker process and its children. Only the ratios within one run "
             "mean anything; each figure is one measurement."), "",
        markdown_table(results, size), "",
        *[fill(f"- {note}", indent="  ") for note in notes(results, size) + goals(results)],
        *([""] if notes(results, size) + goals(results) else []),
        fill("Every mopq rate beside the same operations done with raw pymongo on the same "
             "engine, in the same run:"), "",
        *ceiling, "",
        fill(f"**When and where:** {info['date']}, {info['machine']}; load average "
             f"{info['load_start']} at the start, {info['load_end']} at the end"
             + (" (other work was running on the machine: the figures are disturbed)"
                if busy else "")
             + f"; the whole run took {info['took']:.0f} s. mopq at commit {info['commit']}; "
             f"engine: {info['engine']}."), "",
        fill(f"**Versions:** {versions_text}."), "",
        f"**Command:** `{info['command']}`", "",
        "Output (the figures behind the table):", "",
        "```", *details(results, size), "```",
    ])


def notes(results: dict[str, dict], size: dict) -> list[str]:
    """What a reader needs to read the table right, found in this run's figures."""
    found = []
    for key in SYSTEMS:
        drain = results.get(key, {}).get("drain")
        if key != "raw" and isinstance(drain, float) and drain < size["steady_rate"]:
            found.append(f"{TITLES[key]} drained {drain:,.0f} tasks/s, fewer than the "
                         f"{size['steady_rate']}/s of row 2, so its queue grew during that "
                         "phase and row 2 shows the backlog.")
    return found


# Issue 16's goals for the rows of this table (items 2 and 3).
PICKUP_GOAL_MS = (10.0, 50.0)          # p50, p99
PICKUP_BEATS_MONGO_PEERS = 10.0        # times better than every MongoDB-based peer
PICKUP_WITHIN_OF_CELERY = 5.0          # times Celery + Redis at most
VISIBLE_GOAL_SECONDS = (0.1, 0.3)      # p50, p99
WHY_PICKUP_TAIL = ("mopq's slowest tasks wait for the engine's commits, which the collector's "
                   "batches multiply (six durable commits each, all under the engine's one "
                   "commit lock): bench/pickup_split.py measured write -> start p99 12-14 ms "
                   "with the collector stopped and 15-24 ms with it running, about half of it "
                   "in the producer's write call and half in the claim after it "
                   "(\"Pickup's tail\" in docs/BENCHMARKS.md)")
WHY_VISIBLE = ("a finished task waits for its worker's publisher to gather (5 ms after a "
               "quiet spell, up to 50 ms under a stream), then for the collector's batch on "
               "H2 and the dashboard's push (\"Seeing is fast\" in docs/BENCHMARKS.md)")
WHY_PUSHED = ("on top of what /api/stats waits for, each dashboard process reads the stats "
              "and the last minute's throughput after the collector's ring and writes one "
              "frame to each of its pages, and the pages here are Socket.IO clients sharing "
              "one Python process (\"Seeing is fast\" in docs/BENCHMARKS.md)")


def goals(results: dict[str, dict]) -> list[str]:
    """Issue 16's pickup and visibility goals, each met or missed by how much, and why."""
    mine = results.get("mopq", {})
    lines = []
    pickup = mine.get("pickup")
    if isinstance(pickup, tuple):
        p50, p99 = pickup[0], pickup[1]
        verdicts = [f"p50 {ms(p50)} ms {_verdict(1000 * p50, PICKUP_GOAL_MS[0], 'ms')}",
                    f"p99 {ms(p99)} ms {_verdict(1000 * p99, PICKUP_GOAL_MS[1], 'ms')}"]
        missed = 1000 * p50 > PICKUP_GOAL_MS[0] or 1000 * p99 > PICKUP_GOAL_MS[1]
        for key in ("kombu", "celery"):
            theirs = results.get(key, {}).get("pickup")
            if not isinstance(theirs, tuple):
                continue
            if key == "kombu":
                better = (theirs[0] / p50, theirs[1] / p99)
                ok = min(better) >= PICKUP_BEATS_MONGO_PEERS
                verdicts.append(f"{TITLES[key]} {better[0]:,.0f}× / {better[1]:,.0f}× slower "
                                f"(goal ≥ {PICKUP_BEATS_MONGO_PEERS:.0f}×: "
                                f"{'met' if ok else 'not met'})")
            else:
                times = (p50 / theirs[0], p99 / theirs[1])
                ok = max(times) <= PICKUP_WITHIN_OF_CELERY
                verdicts.append(
                    f"{times[0]:.1f}× / {times[1]:.1f}× {TITLES[key]}'s (goal ≤ "
                    f"{PICKUP_WITHIN_OF_CELERY:.0f}×: " + ("met" if ok else
                    f"not met, {max(times):.1f}× at {'p50' if times[0] > times[1] else 'p99'}")
                    + ")")
            missed = missed or not ok
        lines.append("Issue 16's pickup goal (row 2): " + "; ".join(verdicts) + "."
                     + (f" Why it is missed: {WHY_PICKUP_TAIL}." if missed else ""))
    for row, what, why in (("visible", "row 3, /api/stats", WHY_VISIBLE),
                           ("pushed", "row 4, pushed to each of {} open pages", WHY_PUSHED)):
        found = mine.get(row)
        if isinstance(found, tuple):
            lines.append(_visibility_goal(what.format(*found[3:]), found[0], found[1], why))
    return lines


def _visibility_goal(what: str, p50: float, p99: float, why: str) -> str:
    missed = p50 > VISIBLE_GOAL_SECONDS[0] or p99 > VISIBLE_GOAL_SECONDS[1]
    return (f"Issue 16's visibility goal ({what}): p50 {seconds_text(p50)} s "
            f"{_verdict(p50, VISIBLE_GOAL_SECONDS[0], 's')}, p99 {seconds_text(p99)} s "
            f"{_verdict(p99, VISIBLE_GOAL_SECONDS[1], 's')}."
            + (f" Why it is missed: {why}." if missed else ""))


def _verdict(value: float, goal: float, unit: str) -> str:
    if value <= goal:
        return f"(goal ≤ {goal:g} {unit}: met)"
    return f"(goal ≤ {goal:g} {unit}: not met, by {value / goal:.2f}×)"


def fill(text: str, indent: str = "") -> str:
    return textwrap.fill(text, width=78, break_long_words=False, break_on_hyphens=False,
                         subsequent_indent=indent)


def write_section(text: str) -> None:
    """Replace the section between the markers, or append it; nothing else changes."""
    block = f"{BEGIN}\n{text.rstrip()}\n{END}"
    document = DOC.read_text()
    start = document.find(BEGIN)
    end = document.find(END, start + 1) if start >= 0 else -1
    if start >= 0 and end >= 0:
        document = document[:start] + block + document[end + len(END):]
    else:
        document = document.rstrip("\n") + "\n\n" + block + "\n"
    DOC.write_text(document)


def print_table(results: dict[str, dict], batch: dict | str, size: dict) -> None:
    print()
    print(markdown_table(results, size))
    print("\nthe engine's ceiling (raw pymongo, same engine, same run):")
    for label, raw_value, mopq_value, ratio in ceiling_rows(results, batch):
        print(f"   {label}\n      raw {raw_value}, mopq {mopq_value}: {ratio}")
    print()
    for line in details(results, size):
        print(line)


# -- the in-process batch ceiling --------------------------------------------------------


def batch_ceiling(client: MongoClient, n: int, run_id: str) -> dict:
    """Best of ``BATCH_ROUNDS`` of one insert_many of n raw documents and one write_many."""
    best_raw = best_mopq = 0.0
    for index in range(BATCH_ROUNDS + 1):  # the first round warms the engine up
        name = f"bench_peers_batch_{run_id}"
        now = dt.datetime.now(dt.UTC)
        documents = [{"state": "pending", "attempts": 0, "created_at": now, "visible_at": now,
                      "body": {"p": "batch", "i": i, "t": 0.0}} for i in range(n)]
        db = client[name]
        began = time.perf_counter()
        db.messages.insert_many(documents)
        raw = n / (time.perf_counter() - began)
        client.drop_database(name)
        target = mopq.Queue("bench", db=client[name])
        bodies = [{"p": "batch", "i": i, "t": 0.0} for i in range(n)]
        began = time.perf_counter()
        target.write_many(bodies)
        written = n / (time.perf_counter() - began)
        mopq.flush()
        client.drop_database(name)
        if index:
            best_raw, best_mopq = max(best_raw, raw), max(best_mopq, written)
    return {"n": n, "raw": best_raw, "mopq": best_mopq}


# -- main --------------------------------------------------------------------------------


class Stop(BaseException):
    """SIGTERM, or the whole run past its time."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="300 tasks and 3 s phases (docs/BENCHMARKS.md is written only by "
                             "a full run of every system)")
    parser.add_argument("--only", default=",".join(SYSTEMS),
                        help=f"systems to run, comma-separated (default {','.join(SYSTEMS)})")
    parser.add_argument("--no-write", action="store_true",
                        help="print only; leave docs/BENCHMARKS.md alone")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary folder (logs, what the handlers recorded)")
    parser.add_argument("--max-minutes", type=float, default=40.0,
                        help="give up after this long (default 40)")
    args = parser.parse_args()
    chosen = [key.strip() for key in args.only.split(",") if key.strip()]
    unknown = sorted(set(chosen) - set(SYSTEMS))
    if unknown:
        parser.error(f"unknown systems {unknown}; choose from {', '.join(SYSTEMS)}")
    size = QUICK if args.quick else FULL
    # Only a full run of every system rewrites the section.
    write = not (args.quick or args.no_write) and set(chosen) == set(SYSTEMS)
    began = time.monotonic()
    deadline = began + args.max_minutes * 60

    def on_signal(signum: int, _frame: object) -> None:
        raise Stop(f"{signal.Signals(signum).name} received")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGALRM, on_signal)
    signal.alarm(int(args.max_minutes * 60) + 120)  # the phases' own deadlines come first

    load_start = loadavg()
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"mopq beside its peers, {date}; {machine()}; load average {load_start}", flush=True)
    print(f"sizes: {size}", flush=True)
    peers_python, peers_problem = (peers_venv() if set(chosen) & {"celery", "rq", "dramatiq"}
                                   else (None, "not chosen"))
    if peers_problem and peers_python is None and set(chosen) & {"celery", "rq", "dramatiq"}:
        print(f"peers: {peers_problem}", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="mopq-peers-"))
    (tmp / "records").mkdir()
    (tmp / "logs").mkdir()
    processes = Processes(tmp / "logs")
    results: dict[str, dict] = {}
    batch: dict | str = "not measured"
    engine: Engine | None = None
    run_id = dt.datetime.now(dt.UTC).strftime("%H%M%S")
    try:
        uri = settings().mongodb_uri
        if uri:
            engine_text = f"MOPQ_MONGODB_URI ({uri})"
        else:
            (tmp / "engine").mkdir()
            engine = Engine(data=tmp / "engine")
            uri = engine.start()
            engine_text = (f"embedded mongo-java-server with H2 storage in a temporary folder "
                           f"(mopq.engine.Engine(data=...), as make run), {uri}")
        print(f"engine: {engine_text}", flush=True)
        # mopq's write concern, so the raw batch pays what mopq's does
        client = MongoClient(uri, tz_aware=True, w="majority", journal=True)
        ctx = Context(processes, tmp, uri, client, peers_python, peers_problem, run_id)
        bench = Bench(processes, Records(tmp / "records"), size, deadline)
        if {"raw", "mopq"} <= set(chosen):
            print("the batch ceiling: insert_many / write_many in this process ...", flush=True)
            try:
                batch = batch_ceiling(client, size["n"], run_id)
            except Exception as error:
                batch = first_line(error)
        for key in chosen:
            if time.monotonic() > deadline:
                results[key] = {"error": f"not run: past --max-minutes {args.max_minutes:g}"}
                continue
            print(f"{TITLES[key]} ...", flush=True)
            result: dict = {}
            results[key] = result
            folder = tmp / "records" / key
            folder.mkdir()
            ctx.base_env["PEERS_RECORD_DIR"] = str(folder)
            bench.records = Records(folder)
            try:
                with SETUPS[key](ctx) as system:
                    try:
                        bench.measure(system, result)
                    finally:
                        if system.worker_process is not None:
                            processes.stop(system.worker_process)
                        if system.monitor is not None:
                            for process in system.monitor.processes.values():
                                processes.stop(process)
            except Exception as error:
                result["error"] = first_line(error)
            processes.stop_all()
            print("   " + "\n   ".join(details({key: result}, size)[1:]), flush=True)
        client.close()
    except (Stop, KeyboardInterrupt) as stop:
        print(f"\nstopped: {stop or 'Ctrl-C'}; stopping every process this run started",
              file=sys.stderr, flush=True)
        processes.stop_all()
        if engine is not None:
            engine.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        return 130
    finally:
        signal.alarm(0)
        processes.stop_all()
        if engine is not None:
            engine.stop()
    if args.keep:
        print(f"kept {tmp} (logs/, records/)")
    else:
        shutil.rmtree(tmp, ignore_errors=True)

    print_table(results, batch, size)
    took = time.monotonic() - began
    load_end = loadavg()
    print(f"\ntotal time {took:,.0f} s, load average at the end: {load_end}")
    if write:
        info = {"date": date, "machine": machine(), "load_start": load_start,
                "load_end": load_end, "took": took, "commit": commit(),
                "engine": engine_text.split(", mongodb://")[0],
                "versions": versions(peers_python), "command": "make bench"
                if os.environ.get("MAKELEVEL") else "python bench/peers.py"}
        write_section(section(results, batch, size, info))
        print(f"wrote the section '{SECTION_TITLE[3:]}' of {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
