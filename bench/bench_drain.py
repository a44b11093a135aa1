"""Worker drain (issue 16, item 5): one worker process draining N waiting no-op tasks.

Run:  .venv/bin/python bench/bench_drain.py [--quick] [--h2] [--sizes 500,2000,20000]

One embedded engine (mongo-java-server, memory storage; ``--h2``: H2 storage
in a temporary folder, mopq.engine.Engine(data=...), as ``make run`` uses),
unless MOPQ_MONGODB_URI is set. For each N, N tasks wait (written before the
clock starts, in a fresh database) and one consumer in this process drains
the first ``min(N, 4,000)`` of them (so the rate is the rate with about N
waiting) with a no-op handler, one after the other:

* raw: ``find_one_and_update`` (pending -> inflight with a lease token, no
  sort) + ``delete_one`` by ``_id`` and token, in a loop: two round trips per
  message, the ceiling the issue compares with.
* kombu: kombu's MongoDB transport (what Celery uses with MongoDB), its
  consumer loop (``Connection.Consumer`` with a callback that acknowledges,
  ``drain_events``), kombu's defaults. Its tasks are inserted as kombu's own
  ``_put`` stores them (one ``insert_many``, outside the timing).
* mopq: ``mopq.Worker([queue], handler)`` with the defaults of ``mopq worker``
  (one thread), from ``start()`` until the worker counts them acknowledged;
  "+ flush" also waits until ``mopq.flush()`` returns (every claimed and acked
  event published, the done messages copied to history and deleted).

Each round runs the three in a rotated order; a figure is the median over
rounds, and each ratio is the median of the ratios within a round (mopq next
to the baseline run seconds before or after it). The commands mopq sent the
engine per message (its worker, acknowledger and publisher; counted by a
pymongo command listener on the round's database) are shown for the last
round. Only ratios from one run on one engine mean anything.
"""

from __future__ import annotations

import argparse
import base64
import collections
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import kombu
from bench_queue import raw_claim_and_ack, utcnow  # bench/ is this script's folder
from pymongo import MongoClient, monitoring

import mopq
from mopq.engine import engine_unless_configured

SIZES = (500, 2_000, 20_000)
ROUNDS = {500: 5, 2_000: 5, 20_000: 3}
QUICK_ROUNDS = {500: 2, 2_000: 2, 20_000: 1}
FILL_CHUNK = 5_000
DRAIN_AT_MOST = 4_000
POLL_SECONDS = 0.002
GOAL_PER_SECOND = 2_500
clock = time.perf_counter


class Commands(monitoring.CommandListener):
    """Counts the commands sent to each database, by command and collection."""

    def __init__(self) -> None:
        self.counts: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter)

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        target = event.command.get(event.command_name)
        where = f"{event.command_name} {target}" if isinstance(target, str) else \
            event.command_name
        self.counts[event.database_name][where] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


COMMANDS = Commands()
monitoring.register(COMMANDS)


def bodies(n: int) -> list[dict]:
    return [{"to": f"user{i}@example.com", "template": "welcome", "n": i} for i in range(n)]


class Drain:
    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.client = MongoClient(uri, tz_aware=True)

    @contextmanager
    def fresh(self) -> Iterator[str]:
        name = f"drain_{uuid.uuid4().hex[:10]}"
        try:
            yield name
        finally:
            mopq.flush(600)
            self.client.drop_database(name)

    def raw(self, n: int) -> dict:
        with self.fresh() as name:
            messages = self.client[name].messages
            now = utcnow()
            for start in range(0, n, FILL_CHUNK):
                messages.insert_many([{"state": "pending", "attempts": 0, "created_at": now,
                                       "visible_at": now, "body": body}
                                      for body in bodies(min(FILL_CHUNK, n - start))])
            count = min(n, DRAIN_AT_MOST)
            started = clock()
            for _ in range(count):
                raw_claim_and_ack(messages)
            return {"rate": count / (clock() - started)}

    def kombu(self, n: int) -> dict:
        with self.fresh() as name:
            db = self.client[name]
            db.create_collection("messages.broadcast")  # kombu would make it capped: refused
            parts = urllib.parse.urlsplit(self.uri)
            url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/" + name, "", ""))
            queue = kombu.Queue("bench", kombu.Exchange("bench", type="direct"),
                                routing_key="bench")
            received, count = 0, min(n, DRAIN_AT_MOST)
            done = threading.Event()

            def on_message(body: dict, message: kombu.Message) -> None:
                nonlocal received
                message.ack()
                received += 1
                if received >= count:
                    done.set()

            with kombu.Connection(url) as connection:
                queue.bind(connection.channel()).declare()
                for start in range(0, n, FILL_CHUNK):
                    db.messages.insert_many([kombu_document(body) for body in
                                             bodies(min(FILL_CHUNK, n - start))])
                with connection.Consumer(queue, callbacks=[on_message], accept=["json"]):
                    started = clock()
                    while not done.is_set():
                        try:
                            connection.drain_events(timeout=1)
                        except TimeoutError:
                            pass
                    drained = clock() - started
            assert db.messages.count_documents({}) == n - count
            return {"rate": count / drained}

    def mopq(self, n: int) -> dict:
        with self.fresh() as name:
            queue = mopq.Queue("bench", uri=self.uri, database=name)
            for start in range(0, n, FILL_CHUNK):
                queue.write_many(bodies(min(FILL_CHUNK, n - start)))
            if not mopq.flush(600):
                sys.exit("mopq.flush() did not finish within 600 s")
            worker = mopq.Worker(["bench"], lambda message: None, uri=self.uri, database=name)
            count = min(n, DRAIN_AT_MOST)
            before = collections.Counter(COMMANDS.counts[name])
            started = clock()
            worker.start()
            while worker.processed < count:
                time.sleep(POLL_SECONDS)
            drained = clock() - started
            worker.stop()
            mopq.flush(600)
            flushed = clock() - started
            processed = worker.processed
            commands = COMMANDS.counts[name] - before
            assert queue.count() == n - processed, (queue.count(), n, processed)
            assert self.client[name].history.count_documents({}) == processed
            return {"rate": count / drained, "flushed": count / flushed,
                    "commands": {key: value / processed for key, value in commands.items()}}


def kombu_document(body: dict) -> dict:
    """A task as kombu's MongoDB transport stores it (``Channel._put``)."""
    payload = {"body": base64.b64encode(json.dumps(body).encode()).decode(),
               "content-encoding": "utf-8", "content-type": "application/json",
               "headers": {},
               "properties": {"delivery_mode": 2,
                              "delivery_info": {"exchange": "bench", "routing_key": "bench"},
                              "priority": 0, "body_encoding": "base64",
                              "delivery_tag": str(uuid.uuid4())}}
    return {"payload": json.dumps(payload), "queue": "bench", "priority": 9}


def median_ratio(rounds: list[dict[str, dict]], mine: str, key: str, baseline: str) -> float:
    return statistics.median(r[mine][key] / r[baseline]["rate"] for r in rounds)


def run(drain: Drain, sizes: tuple[int, ...], rounds_of: dict[int, int]) -> None:
    contenders: dict[str, Callable[[int], dict]] = {
        "raw": drain.raw, "kombu": drain.kombu, "mopq": drain.mopq}
    order = list(contenders)
    print(f"{'waiting':>8} {'raw 2 RT/s':>11} {'kombu/s':>9} {'mopq/s':>8} {'+flush/s':>9}"
          f" {'mopq/raw':>9} {'mopq/kombu':>11} {'(+flush)':>9}  rounds: mopq/s", flush=True)
    for n in sizes:
        rounds = []
        for index in range(rounds_of.get(n, 3)):
            turn = order[index % 3:] + order[:index % 3]
            rounds.append({name: contenders[name](n) for name in turn})
        rate = {name: statistics.median(r[name]["rate"] for r in rounds) for name in order}
        flushed = statistics.median(r["mopq"]["flushed"] for r in rounds)
        print(f"{n:>8,} {rate['raw']:>11,.0f} {rate['kombu']:>9,.0f} {rate['mopq']:>8,.0f}"
              f" {flushed:>9,.0f} {median_ratio(rounds, 'mopq', 'rate', 'raw'):>8.2f}x"
              f" {median_ratio(rounds, 'mopq', 'rate', 'kombu'):>10.2f}x"
              f" {median_ratio(rounds, 'mopq', 'flushed', 'kombu'):>8.2f}x  "
              + ", ".join(f"{r['mopq']['rate']:,.0f}" for r in rounds), flush=True)
        commands = rounds[-1]["mopq"]["commands"]
        print("         mopq's commands per message (last round): " + ", ".join(
            f"{key} {value:.3f}" for key, value in sorted(commands.items(),
                                                          key=lambda kv: -kv[1])
            if value >= 0.001) + f"; total {sum(commands.values()):.3f}", flush=True)
        if n == sizes[0] or rate["mopq"] < GOAL_PER_SECOND:
            verdict = "met" if rate["mopq"] >= GOAL_PER_SECOND else "NOT met"
            print(f"         goal >= {GOAL_PER_SECOND:,}/s for one worker process: {verdict}",
                  flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--h2", action="store_true",
                        help="durable H2 storage in a temporary folder instead of memory")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)),
                        help="comma-separated numbers of waiting tasks")
    args = parser.parse_args()
    sizes = tuple(int(size) for size in args.sizes.split(",") if size.strip())
    rounds = QUICK_ROUNDS if args.quick else ROUNDS
    with tempfile.TemporaryDirectory(prefix="mopq-drain-") as folder, \
            engine_unless_configured(folder if args.h2 else None) as (uri, embedded):
        storage = "H2 (durable)" if args.h2 else "memory"
        print(f"engine: {f'embedded mongo-java-server ({storage}), ' if embedded else ''}{uri}")
        print(f"cpus: {os.cpu_count()}, load average at start: "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
        began = clock()
        drain = Drain(uri)
        for _ in range(3):  # the engine's JIT warms up (mopq's rate rose for 3 or 4 drains)
            drain.raw(1_000), drain.kombu(1_000), drain.mopq(2_000)
        run(drain, sizes, rounds)
        print(f"total time {clock() - began:,.0f} s, load average at the end: "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
