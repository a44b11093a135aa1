"""Pickup latency: from a write to the start of its handler, with and without rings.

Run:  .venv/bin/python bench/bench_pickup.py [--quick] [--h2]

Starts its own embedded engine (memory storage; ``--h2``: durable H2 storage
in a temporary folder, as ``make run`` and ``make bench`` use) unless
MOPQ_MONGODB_URI is set. A ``mopq worker`` process (one thread, ``bench/pickup_handler.py``)
consumes queue ``pickup``; this script writes to it from another process
(this one), each body carrying the writer's clock, and the handler records
``handler start - write``. Three loads, each run twice side by side: with
rings (the default, ``mopq.doorbell``) and with ``MOPQ_RINGS=0`` (polling
alone: the worker looks once per ``poll_interval``, 1 s, which is what the
worker did before rings at its slowest):

1. an idle worker: one write every 0.5 s (the worker is waiting each time);
2. a steady 100 writes a second for 10 s (3 s with --quick);
3. the engine's load from an idle worker: commands per second a worker with
   4 threads on 2 queues sends while nothing is written, counted by a pymongo
   command listener in the worker's own process.

Beside them, the engine's floor in the same run: raw pymongo at the same
steady 100/s, ``insert_one`` of a message and at once ``find_one_and_update``
of it by ``_id`` (what any consumer that learnt of the write instantly would
still wait for), timed from before the insert to the claim's answer. No
pickup through this engine can be faster than that.

Goals (issue 12): write -> handler start p50 under 10 ms and p99 under 50 ms
with an idle worker, while an idle worker sends at most 5 queries a second.
Only one run's figures mean anything together: this machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pymongo import MongoClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mopq import Queue  # noqa: E402
from mopq.engine import engine_unless_configured  # noqa: E402

IDLE_COUNTER = """
import json, sys, time
from tests.commands_counted import Counter as Count
from mopq import Worker
worker = Worker(["idle_a", "idle_b"], print, concurrency=4)
worker.start()
time.sleep(3)
before, started = Count.commands, time.monotonic()
time.sleep(float(sys.argv[1]))
print(json.dumps((Count.commands - before) / (time.monotonic() - started)))
worker.stop(timeout=30)
"""


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run_worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    worker = subprocess.Popen(
        [sys.executable, "-m", "mopq", "worker", "--queue", "pickup",
         "--handler", "pickup_handler:handle"],
        cwd=ROOT / "bench", env={**env, "MOPQ_PICKUP_LOG": str(log)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(2.0)  # started and waiting
    return worker


def delays(log: Path) -> list[float]:
    return [float(line) for line in log.read_text().split()]


def measure(env: dict[str, str], database: str, writes: int, interval: float) -> list[float]:
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "pickup.log"
        log.touch()
        worker = run_worker({**env, "MOPQ_DATABASE": database}, log)
        try:
            queue = Queue("pickup", database=database)
            next_at = time.monotonic()
            for _ in range(writes):
                queue.write({"t": time.time()})
                next_at += interval
                time.sleep(max(0.0, next_at - time.monotonic()))
            deadline = time.monotonic() + 10
            while len(delays(log)) < writes and time.monotonic() < deadline:
                time.sleep(0.05)
            return delays(log)
        finally:
            worker.terminate()
            worker.wait(30)


def idle_rate(env: dict[str, str], database: str, seconds: float) -> float:
    result = subprocess.run([sys.executable, "-c", IDLE_COUNTER, str(seconds)], cwd=ROOT,
                            env={**env, "MOPQ_DATABASE": database}, capture_output=True,
                            text=True, timeout=120)
    return json.loads(result.stdout.strip().splitlines()[0])


def engine_floor(uri: str, database: str, writes: int, interval: float) -> list[float]:
    """Raw insert + claim by ``_id`` of one message at a time, at the steady rate."""
    with MongoClient(uri) as client:
        collection = client[database]["floor"]
        collection.insert_one({"warm": True})
        took = []
        next_at = time.monotonic()
        for number in range(writes):
            started = time.perf_counter()
            written = collection.insert_one({"n": number, "state": "pending"})
            collection.find_one_and_update({"_id": written.inserted_id, "state": "pending"},
                                           {"$set": {"state": "inflight"}})
            took.append(time.perf_counter() - started)
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
        return took


def row(name: str, values: list[float], expected: int) -> str:
    if not values:
        return f"   {name:<34} no handler ran"
    return (f"   {name:<34}{len(values):>5}/{expected:<5}"
            f"{statistics.median(values) * 1000:>9.1f}{percentile(values, 0.99) * 1000:>9.1f}"
            f"{max(values) * 1000:>9.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter loads")
    parser.add_argument("--h2", action="store_true",
                        help="durable H2 storage in a temporary folder instead of memory")
    args = parser.parse_args()
    idle_writes, steady_seconds, idle_seconds = (10, 3, 5) if args.quick else (40, 10, 10)
    with tempfile.TemporaryDirectory(prefix="mopq-pickup-") as folder, \
            engine_unless_configured(folder if args.h2 else None) as (uri, embedded):
        env = {**os.environ, "MOPQ_MONGODB_URI": uri}
        os.environ["MOPQ_MONGODB_URI"] = uri
        storage = "H2, durable" if args.h2 else "memory"
        print(f"engine: {f'embedded mongo-java-server ({storage})' if embedded else uri}, {uri}")
        print(f"cpus: {os.cpu_count()}, load average at start: "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        results = {}
        for label, rings in (("rings", "1"), ("polling only (MOPQ_RINGS=0)", "0")):
            mode_env = {**env, "MOPQ_RINGS": rings}
            os.environ["MOPQ_RINGS"] = rings
            stamp = f"{rings}_{int(time.time())}"
            results[label] = {
                "idle": measure(mode_env, f"pickup_idle_{stamp}", idle_writes, 0.5),
                "steady": measure(mode_env, f"pickup_steady_{stamp}", 100 * steady_seconds,
                                  0.01),
                "queries": idle_rate(mode_env, f"pickup_q_{stamp}", idle_seconds),
            }
        os.environ.pop("MOPQ_RINGS", None)
        floor = engine_floor(uri, f"pickup_floor_{int(time.time())}", 100 * steady_seconds, 0.01)
        print("\nwrite -> handler start (ms)              handled    p50      p99      max")
        for label, found in results.items():
            print(f" {label}")
            print(row("idle worker, a write every 0.5 s", found["idle"], idle_writes))
            print(row("steady 100 writes/s", found["steady"], 100 * steady_seconds))
            print(f"   {'idle worker (4 threads, 2 queues)':<34} "
                  f"{found['queries']:.2f} engine commands/s")
        print(" the engine's floor (raw pymongo)")
        print(row("insert + claim by _id, 100/s", floor, 100 * steady_seconds))
        ringing = results["rings"]
        idle = ringing["idle"]
        p50, p99 = statistics.median(idle) * 1000, percentile(idle, 0.99) * 1000
        met = p50 < 10 and p99 < 50 and ringing["queries"] <= 5
        print(f"\ngoal: idle worker p50 < 10 ms ({p50:.1f}), p99 < 50 ms ({p99:.1f}), "
              f"<= 5 queries/s ({ringing['queries']:.2f}): {'MET' if met else 'NOT MET'}")
        polling = results["polling only (MOPQ_RINGS=0)"]["idle"]
        print(f"idle p50 with rings / polling only: {p50:.1f} / "
              f"{statistics.median(polling) * 1000:.1f} ms = "
              f"{p50 / (statistics.median(polling) * 1000):.3f}x")
        print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
