"""Seeing is fast (issue 16, item 2): done -> visible in /api/stats and on open pages at 100/s.

Run:  .venv/bin/python bench/bench_seeing.py [--quick] [--pages 1,50] [--rate 100]

Everything runs as ``make run`` runs it, on 127.0.0.1: the embedded engine with
H2 storage in a temporary folder (unless MOPQ_MONGODB_URI is set), ``mopq
collect`` and ``mopq serve`` (gunicorn, its defaults) with their defaults, and
one ``mopq worker`` whose handler (``bench/seeing_handler.py``) records the
end of each task. For each number of open pages (``--pages``, default 1 and
50) the script opens that many Socket.IO clients on ``/live`` (websocket, as
the pages' own script connects), then a producer process writes at a steady
``--rate`` tasks a second (default 100) for 10 s (4 s with --quick), while this
script reads ``/api/stats`` in a loop (the next request 5 ms after the
previous answer), after an unreported warm-up phase (one page, 4 s). The
latency of the k-th task to finish is:

* **/api/stats**: the first answer whose ``queues.seen.done`` reached k, minus
  the end of that task's handler;
* **pushed**: for every open page, the first ``stats`` push whose done count
  reached k, minus the same end (all pages' latencies together).

Goals: p50 under 100 ms and p99 under 300 ms for both.

Where the time goes, per task (p50 / p99), each step from the one before:
**acknowledged**, the message's ``done_at`` (its history record) minus the
end of its handler; **published**, when the worker's insert of its ``acked``
event into the business log answered (the publisher's gathering); **read**,
the ``at`` of the collector's receipt that holds that event (the ring, the
collector's wake-up and read); **applied**, when the collector's counter
update for that batch answered (the count is then readable). The last two
come from the listener below in the worker and the collector. The rest, to
the first answer or push that shows it, is the dashboard's: **shown**, the
first /api/stats answer showing k done minus the applied time of the k-th task
to finish, and **sent**, the same for pushes (every page's). Last, how old
the stats are when they arrive: an answer's or a push's arrival minus its
``generated_at`` (when the dashboard began that stats read), for the first
answer of each read and for every push.

The engine's load from the monitor: every command the collector and the
dashboard's processes send to the engine is counted (a pymongo command
listener, installed through ``bench/counting/sitecustomize.py`` in those
processes only) and shown per second of the phase, the collector's and the
dashboard's apart, with the ratio to the first row. The goal is that it does
not grow with the pages: one stats read per change per process, whatever the
pages. (The dashboard's count includes this script's ``/api/stats`` reads:
about one every 20 ms, the same in every row; and a stats read happens only
when the collector counted something, so the dashboard's count follows the
collector's batches.)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))

from bson import ObjectId  # noqa: E402
from live_pages import Page, fan_out, iso_time, latencies  # noqa: E402 - bench/ is this folder
from peers import free_port, percentile  # noqa: E402
from pymongo import MongoClient  # noqa: E402

from mopq import schema  # noqa: E402
from mopq.config import settings  # noqa: E402
from mopq.engine import Engine  # noqa: E402

QUEUE = "seen"
POLL_SECONDS = 0.005
ROLES = ("collector", "dashboard")
WARM_UP_SECONDS = 4.0
GOAL_P50, GOAL_P99 = 0.100, 0.300
PRODUCER = """
import sys, time
from mopq import Queue, flush
rate, count = float(sys.argv[1]), int(sys.argv[2])
queue = Queue(sys.argv[3])
started = time.monotonic()
for n in range(count):
    time.sleep(max(0.0, started + n / rate - time.monotonic()))
    queue.write({"n": n})
flush(30)
"""


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


class Processes:
    """The processes this run started; each in its own group, all stopped at the end."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[subprocess.Popen] = []

    def start(self, name: str, argv: list[str], env: dict[str, str],
              cwd: Path = ROOT) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.started):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in self.started:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def commands_sent(folder: Path, role: str) -> int:
    """Every command the counted processes of ``role`` sent so far (each has its own file)."""
    total = 0
    for path in folder.glob(f"{role}-*.count"):
        with contextlib.suppress(ValueError, OSError):
            total += int(path.read_text() or 0)
    return total


def step_times(folder: Path, kind: str) -> dict[str, float]:
    """Per message id, when the counted processes noted ``kind`` (the first time)."""
    found: dict[str, float] = {}
    for path in folder.glob("*.times"):
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                parts = line.split()
                if len(parts) == 3 and parts[0] == kind:
                    found.setdefault(parts[2], float(parts[1]))
    return found


STAGES = ("acknowledged", "published", "read", "applied")


def stages(db: Any, ends: dict[str, float], counts: Path) -> dict[str, list[float]]:
    """Per task, each step's time since the one before it (see the module's docstring)."""
    done_at = {str(d["_id"]): d["done_at"].timestamp() for d in db[schema.HISTORY].find(
        {"_id": {"$in": [ObjectId(i) for i in ends]}}, {"done_at": 1})}
    read_at: dict[str, float] = {}
    for receipt in db[schema.RECEIPTS].find({"committed": True}, {"ids": 1, "at": 1}):
        for event_id in receipt["ids"]:
            message_id, _, kind = event_id.rpartition(":")
            message_id = message_id.split(":")[0]
            if kind == "a" and message_id in ends:
                read_at[message_id] = receipt["at"].timestamp()
    published, applied = step_times(counts, "published"), step_times(counts, "applied")
    steps = (ends, done_at, published, read_at, applied)
    return {stage: [later[i] - earlier[i] for i in ends if i in earlier and i in later]
            for stage, earlier, later in zip(STAGES, steps[:-1], steps[1:], strict=True)}


def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def phase(db: Any, url: str, env: dict[str, str], processes: Processes, ends_file: Path,
          counts: Path, pages: int, rate: float, seconds: float) -> dict[str, Any]:
    """One row: ``pages`` open pages while ``rate`` tasks a second run for ``seconds``."""
    count = int(rate * seconds)
    stats_url = url + "/api/stats"

    generations: dict[str, float] = {}  # generated_at -> age at its first answer

    def done_now() -> int:
        answer = get_json(stats_url)
        generations.setdefault(answer["generated_at"],
                               time.time() - iso_time(answer["generated_at"]))
        return int(answer["queues"].get(QUEUE, {}).get("done", 0))

    base = done_now()
    opened = [Page(QUEUE) for _ in range(pages)]
    for page in opened:
        page.open(url)
    ends_before = len(ends_file.read_text().splitlines()) if ends_file.exists() else 0
    time.sleep(1.0)  # let the pages' first pushes arrive before counting the engine's load
    commands_before = {role: commands_sent(counts, role) for role in ROLES}
    started = time.monotonic()
    producer = processes.start(f"producer-{pages}", [sys.executable, "-c", PRODUCER, str(rate),
                                                      str(count), QUEUE], env)
    samples: list[tuple[float, int]] = []
    deadline = time.monotonic() + seconds + 60
    while time.monotonic() < deadline:
        samples.append((time.time(), done_now()))
        if samples[-1][1] - base >= count:
            break
        time.sleep(POLL_SECONDS)
    elapsed = time.monotonic() - started
    commands = {role: commands_sent(counts, role) - commands_before[role] for role in ROLES}
    producer.wait(60)
    wait_until(lambda: all(p.pushes and p.pushes[-1][1] - base >= count for p in opened), 30,
               "every page to be pushed the last count")
    for page in opened:
        page.close()
    lines = [line.split() for line in ends_file.read_text().splitlines()[ends_before:]]
    ends = [float(end) for end, _ in lines]
    if len(ends) != count:
        raise RuntimeError(f"{len(ends)} handler ends recorded, {count} expected")
    seen = latencies(ends, samples, base)
    per_page = [latencies(ends, page.pushes, base) for page in opened]
    pushed = [value for page in per_page for value in page]
    by_end = sorted((float(end), message_id) for end, message_id in lines)
    applied = step_times(counts, "applied")

    def after_applied(found: list[float]) -> list[float]:
        """The k-th task's first answer (or push) showing k done, minus its count's time."""
        return [end + value - applied[message_id]
                for (end, message_id), value in zip(by_end[:len(found)], found, strict=True)
                if message_id in applied]

    return {"pages": pages, "tasks": count, "stats": seen, "pushed": pushed,
            "shown": after_applied(seen),
            "sent": [v for page in per_page for v in after_applied(page)],
            "answer_age": list(generations.values()),
            "push_age": [age for page in opened for age in page.ages],
            "fan_out": fan_out(opened),
            **stages(db, {message_id: float(end) for end, message_id in lines}, counts),
            "answers": len(samples), "pushes": sum(len(p.pushes) for p in opened) / pages,
            **{f"{role}_commands_per_second": commands[role] / elapsed for role in ROLES}}


@contextlib.contextmanager
def monitor(uri: str, database: str, tmp: Path,
            processes: Processes) -> Iterator[tuple[str, dict[str, str], Path, Path]]:
    """A collector, a dashboard and a worker for ``database``, as users run them."""
    counts = tmp / "counts"
    counts.mkdir()
    ends_file = tmp / "ends.txt"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("MOPQ_")}
    env = dict(base_env, MOPQ_MONGODB_URI=uri, MOPQ_DATABASE=database)
    counted = dict(env, PYTHONPATH=os.pathsep.join([str(BENCH / "counting"), str(ROOT)]),
                   MOPQ_BENCH_COUNTS=str(counts))
    processes.start("collector", [sys.executable, "-m", "mopq", "collect"],
                    dict(counted, MOPQ_BENCH_ROLE="collector"))
    port = free_port()
    processes.start("dashboard", [sys.executable, "-m", "mopq", "serve", "--port", str(port)],
                    dict(counted, MOPQ_BENCH_ROLE="dashboard"))
    processes.start("worker", [sys.executable, "-m", "mopq", "worker", "--queue", QUEUE,
                               "--handler", "seeing_handler:handle"],
                    dict(counted, MOPQ_BENCH_ROLE="worker", MOPQ_SEEING_ENDS=str(ends_file)),
                    cwd=BENCH)
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        with contextlib.suppress(OSError, ValueError):
            return bool(get_json(url + "/api/stats"))
        return False

    wait_until(answers, 60, "the dashboard to answer")
    yield url, env, ends_file, counts


def row(result: dict[str, Any], first: dict[str, Any]) -> str:
    stats, pushed = result["stats"], result["pushed"]
    loads = " | ".join(
        f"{result[key]:,.1f}/s ({result[key] / first[key]:.2f}×)"
        for key in (f"{role}_commands_per_second" for role in ROLES))
    return (f"| {result['pages']} | {percentile(stats, 0.5) * 1000:.0f} / "
            f"{percentile(stats, 0.99) * 1000:.0f} ms | {percentile(pushed, 0.5) * 1000:.0f} / "
            f"{percentile(pushed, 0.99) * 1000:.0f} ms | {loads} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--pages", default="1,50")
    parser.add_argument("--rate", type=float, default=100.0)
    args = parser.parse_args()
    seconds = 4.0 if args.quick else 10.0
    page_counts = [int(p) for p in args.pages.split(",")]
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    with tempfile.TemporaryDirectory(prefix="mopq-seeing-") as folder:
        tmp = Path(folder)
        processes = Processes(tmp)
        engine = None
        try:
            uri = settings().mongodb_uri
            if not uri:
                (tmp / "engine").mkdir()
                engine = Engine(data=tmp / "engine")
                uri = engine.start()
            database = f"bench_seeing_{os.getpid()}"
            client = MongoClient(uri, tz_aware=True)
            results = []
            with monitor(uri, database, tmp, processes) as (url, env, ends_file, counts):
                # Unreported: the first seconds of a fresh engine and processes are always
                # the slowest (the JVM compiling, H2's files growing), whatever the pages.
                phase(client[database], url, env, processes, ends_file, counts, 1, args.rate,
                      WARM_UP_SECONDS)
                for pages in page_counts:
                    result = phase(client[database], url, env, processes, ends_file, counts,
                                   pages, args.rate, seconds)
                    results.append(result)
                    print(f"{pages} page(s): /api/stats p50 "
                          f"{percentile(result['stats'], 0.5) * 1000:.0f} ms, p99 "
                          f"{percentile(result['stats'], 0.99) * 1000:.0f} ms; pushed p50 "
                          f"{percentile(result['pushed'], 0.5) * 1000:.0f} ms, p99 "
                          f"{percentile(result['pushed'], 0.99) * 1000:.0f} ms; "
                          f"{result['tasks']} tasks, {result['answers']} answers read, "
                          f"{result['pushes']:.0f} pushes a page; engine commands/s: collector "
                          f"{result['collector_commands_per_second']:,.1f}, dashboard "
                          f"{result['dashboard_commands_per_second']:,.1f}", flush=True)
                    print("   where the time goes, p50 / p99: "
                          + "; ".join(f"{stage} {percentile(result[stage], 0.5) * 1000:.0f} / "
                                      f"{percentile(result[stage], 0.99) * 1000:.0f} ms "
                                      f"({len(result[stage])} tasks)"
                                      for stage in (*STAGES, "shown", "sent")), flush=True)
                    print("   stats read to answer (each read's first answer) / to push "
                          "(every push), p50 / p99: " + "; ".join(
                              f"{percentile(result[key], 0.5) * 1000:.0f} / "
                              f"{percentile(result[key], 0.99) * 1000:.0f} ms"
                              for key in ("answer_age", "push_age")), flush=True)
                    if result["fan_out"]:
                        print("   one push's arrival at the last page minus at the first, "
                              "p50 / p99: "
                              f"{percentile(result['fan_out'], 0.5) * 1000:.0f} / "
                              f"{percentile(result['fan_out'], 0.99) * 1000:.0f} ms "
                              f"({len(result['fan_out'])} pushes)", flush=True)
        finally:
            processes.stop_all()
            if engine is not None:
                engine.stop()
    print()
    print(f"{args.rate:.0f} tasks/s for {seconds:.0f} s per row; latencies p50 / p99 "
          f"(goal {GOAL_P50 * 1000:.0f} / {GOAL_P99 * 1000:.0f} ms)")
    print("| open pages | done → visible in /api/stats | done → pushed to every page | "
          "engine commands from the collector | from the dashboard (2 processes) |")
    print("|---|---|---|---|---|")
    for result in results:
        print(row(result, results[0]))
    every = [v for r in results for v in r["stats"]], [v for r in results for v in r["pushed"]]
    for label, values in zip(("/api/stats", "pushed"), every, strict=True):
        met = percentile(values, 0.5) < GOAL_P50 and percentile(values, 0.99) < GOAL_P99
        print(f"{label}: {'met' if met else 'NOT met'} (median of all rows "
              f"{statistics.median(values) * 1000:.0f} ms)")
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    threading.current_thread().name = "bench-seeing"
    main()
