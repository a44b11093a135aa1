"""Activity instances completed per second against the same work as 3 independent queues.

Run:  .venv/bin/python bench/bench_activities.py [--instances N] [--rounds R]

Starts its own embedded engine (memory storage) unless MOPQ_MONGODB_URI is
set. Each round, in a fresh database:

* sequence: N instances of a 3-step activity (no-op handlers) are started,
  then one ``Activity.worker`` (4 threads, serving the 3 step queues) runs
  them to the end; the rate is instances completed per second;
* queues: the same 3 N handler calls as 3 independent queues (N messages
  written to each, one ``Worker`` with 4 threads over the 3); the rate is
  N / seconds, the "sequences" the same work would have been.

The ratio sequence / queues is the issue's measure (goal: at least 0.7).
An unreported warm-up round of each runs first (``--warmup N`` instances).
Only one run's figures mean anything together: this machine is shared.

``--count`` also prints, per round and side, the engine commands this process
sent from the worker's start to the end of the work (a pymongo command
listener): candidate reads (a ``find`` of claimable messages), other finds,
``update`` commands and the engine time each kind took.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pymongo import monitoring  # noqa: E402

from mopq import Queue, Worker, flush, schema  # noqa: E402
from mopq.activities import Activity, Step  # noqa: E402
from mopq.connection import get_database  # noqa: E402
from mopq.engine import engine_unless_configured  # noqa: E402

QUEUES = ("bench-a", "bench-b", "bench-c")
THREADS = 4


class Commands(monitoring.CommandListener):
    """Counts the commands sent (and the engine time of each kind) since ``reset``."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.seconds: collections.Counter[str] = collections.Counter()
        self.reads: collections.Counter[str] = collections.Counter()  # candidate reads by queue
        self._kinds: dict[int, str] = {}

    def reset(self) -> None:
        self.counts.clear()
        self.seconds.clear()
        self.reads.clear()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        kind = event.command_name
        looked_for = event.command.get("filter") or {}
        if kind == "find" and "visible_at" in looked_for:
            kind = "candidate read"
            self.reads[str(looked_for.get("queue"))] += 1
        self._kinds[event.request_id] = kind
        self.counts[kind] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        kind = self._kinds.pop(event.request_id, event.command_name)
        self.seconds[kind] += event.duration_micros / 1e6

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._kinds.pop(event.request_id, None)

    def summary(self) -> str:
        kinds = ", ".join(f"{kind} {count} ({self.seconds[kind]:.2f} s)"
                          for kind, count in self.counts.most_common())
        return f"{kinds}, all {sum(self.counts.values())}; " \
            f"candidate reads by queue {dict(sorted(self.reads.items()))}"


COMMANDS = Commands()  # what the workers send, from their start to the end of their work


def nothing(message: object) -> dict:
    return {"ok": True}


def _until(done: object, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError("the work did not finish")
        time.sleep(0.02)


def sequence_rate(uri: str, database: str, instances: int) -> float:
    flow = Activity("bench", [Step(name, name, nothing) for name in QUEUES], uri=uri,
                    database=database)
    for n in range(instances):
        flow.start(f"k{n}")
    history = get_database(uri, database)[schema.HISTORY]
    worker = flow.worker(THREADS, poll_interval=0.05)
    COMMANDS.reset()
    started = time.monotonic()
    worker.start()
    # Only a finished instance reaches history: counted the same cheap way as the queues'.
    _until(lambda: history.count_documents({}) >= instances)
    elapsed = time.monotonic() - started
    worker.stop(timeout=30)
    return instances / elapsed


def queues_rate(uri: str, database: str, instances: int) -> float:
    for name in QUEUES:
        Queue(name, uri=uri, database=database).write_many([{"n": n} for n in range(instances)])
    history = get_database(uri, database)[schema.HISTORY]
    worker = Worker(list(QUEUES), nothing, THREADS, uri=uri, database=database,
                    poll_interval=0.05)
    COMMANDS.reset()
    started = time.monotonic()
    worker.start()
    _until(lambda: history.count_documents({}) >= 3 * instances)
    elapsed = time.monotonic() - started
    worker.stop(timeout=30)
    return instances / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=100,
                        help="instances of an unreported first round of each (0: none)")
    parser.add_argument("--count", action="store_true",
                        help="print the engine commands of each side per round")
    args = parser.parse_args()
    if args.count:
        monitoring.register(COMMANDS)  # before any client exists
    with engine_unless_configured() as (uri, _):
        if args.warmup:  # a fresh engine's first run is slower, whichever side runs it
            sequence_rate(uri, f"bench_{uuid.uuid4().hex[:8]}", args.warmup)
            queues_rate(uri, f"bench_{uuid.uuid4().hex[:8]}", args.warmup)
        ratios = []
        for round_number in range(1, args.rounds + 1):
            sequence = sequence_rate(uri, f"bench_{uuid.uuid4().hex[:8]}", args.instances)
            counted = COMMANDS.summary()
            queues = queues_rate(uri, f"bench_{uuid.uuid4().hex[:8]}", args.instances)
            if args.count:
                print(f"  sequence: {counted}\n  queues:   {COMMANDS.summary()}")
            ratios.append(sequence / queues)
            print(f"round {round_number}: {args.instances} instances of 3 steps: "
                  f"{sequence:.1f} completed/s; as 3 queues: {queues:.1f}/s; "
                  f"ratio {sequence / queues:.2f}x", flush=True)
        print(f"median ratio {statistics.median(ratios):.2f}x (goal: at least 0.7x)")
        flush(30)


if __name__ == "__main__":
    main()
