"""Collector benchmark (issue 4): throughput, lag under steady load, memory over many events.

Run:  .venv/bin/python bench/bench_collector.py [--quick]

Starts its own embedded engine (memory storage) unless MOPQ_MONGODB_URI is
set, and measures, each in a fresh database of the same engine:

1. throughput — the collector applying N waiting events (exactly-once
   batches: journal, counters, receipt, delete) next to a raw consume of the
   same events with pymongo (read a batch of events with ``find``, delete
   them by id with ``bulk_write``), alternating, three rounds each (one with
   --quick) on fresh databases, after one uncounted warm-up round of 20,000
   events. The goal (>= 0.5) is judged on the median of the ratios within
   each round (the collector next to the raw consume run just before it),
   the best / best ratio beside it. The raw consume reads whole events, as
   any consumer that uses them must. A second raw consume that reads only
   the ids (projection ``{_id: 1}``: it never sees what it deletes) runs in
   the same rounds and its ratios are shown too; until 2026-11-26 it was the
   baseline.
2. lag — events emitted at a steady 1,000/s for a while with a collector
   running; every 100 ms the age of the oldest event not yet applied is
   sampled; p50 / p99 of those samples (goal: p99 under 1 s).
3. memory — a collector in its own process applies 1,000,000 events
   (100,000 with --quick); its RSS after the first 5% and at the end
   (goal: growth under 20 MB).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
from pymongo import DeleteOne, MongoClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mopq import schema  # noqa: E402
from mopq.collectors import Collector  # noqa: E402
from mopq.engine import engine_unless_configured  # noqa: E402
from mopq.events import as_document, business_event  # noqa: E402
from mopq.publisher import Publisher  # noqa: E402

BATCH = 2000


def make_events(count: int) -> list[dict]:
    now = dt.datetime.now(dt.UTC)
    return [as_document(business_event("bench", i % 10, {"r": ("eu", "us")[i % 2]}, now))
            for i in range(count)]


def fill(db, count: int) -> None:
    for start in range(0, count, 10_000):
        db[schema.EVENTS].insert_many(make_events(min(10_000, count - start)), ordered=False)


def raw_consume(client: MongoClient, name: str, count: int, fields: dict | None) -> float:
    """Events/s of a plain consumer: read a batch (``fields``: projection), delete it by id."""
    raw_db = client[name]
    fill(raw_db, count)
    started = time.perf_counter()
    while True:
        batch = list(raw_db[schema.EVENTS].find({}, fields).limit(BATCH))
        if not batch:
            break
        raw_db[schema.EVENTS].bulk_write([DeleteOne({"_id": e["_id"]}) for e in batch],
                                         ordered=False)
    rate = count / (time.perf_counter() - started)
    client.drop_database(raw_db.name)
    return rate


def throughput(client: MongoClient, count: int,
               rounds: int) -> tuple[list[float], list[float], list[float]]:
    """Rates of the collector, the raw consume and the ids-only raw consume, per round.

    Each round fills fresh databases and runs the three in turn; the best
    round of each counts (other load on a shared machine only ever slows a
    round down).
    """
    rates: list[float] = []
    raw_rates: list[float] = []
    ids_rates: list[float] = []
    for round_number in range(rounds):
        raw_rates.append(raw_consume(client, f"bench_raw_{round_number}", count, None))
        ids_rates.append(raw_consume(client, f"bench_ids_{round_number}", count, {"_id": 1}))

        db = client[f"bench_collector_{round_number}"]
        schema.ensure_indexes(db)
        fill(db, count)
        collector = Collector(db=db, monitor=False, batch_size=BATCH)
        collector.partitions.rebalance({})
        started = time.perf_counter()
        applied = 0
        while True:
            step = collector.step().applied
            if not step:
                break
            applied += step
        rates.append(applied / (time.perf_counter() - started))
        assert applied == count, (applied, count)
        client.drop_database(db.name)
    return rates, raw_rates, ids_rates


def lag(client: MongoClient, seconds: float, per_second: int = 1000) -> list[float]:
    db = client["bench_lag"]
    schema.ensure_indexes(db)
    collector = Collector(db=db, monitor=False, poll_interval=0.05).start()
    publisher = Publisher(db)
    samples: list[float] = []
    stop = threading.Event()

    def produce() -> None:
        started = time.perf_counter()
        sent = 0
        while not stop.is_set():
            due = int((time.perf_counter() - started) * per_second)
            while sent < due:
                publisher.add_business(business_event("lag", 1, {}, dt.datetime.now(dt.UTC)))
                sent += 1
            time.sleep(0.01)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    time.sleep(2)  # warm-up
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        oldest = db[schema.EVENTS].find_one({}, {"at": 1}, sort=[("at", 1)])
        now = dt.datetime.now(dt.UTC)
        samples.append((now - oldest["at"]).total_seconds() if oldest else 0.0)
        time.sleep(0.1)
    stop.set()
    producer.join()
    collector.stop()
    return samples


def memory(uri: str, count: int) -> tuple[float, float, float]:
    client = MongoClient(uri, tz_aware=True)
    db = client["bench_memory"]
    schema.ensure_indexes(db)
    env = dict(os.environ, MOPQ_MONGODB_URI=uri, MOPQ_DATABASE="bench_memory")
    process = subprocess.Popen([sys.executable, "-m", "mopq", "collect", "--no-monitor"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               cwd=Path(__file__).resolve().parent.parent)
    watched = psutil.Process(process.pid)
    first = None
    sent = 0
    started = time.perf_counter()
    try:
        while sent < count:
            chunk = min(20_000, count - sent)
            fill(db, chunk)
            sent += chunk
            while db[schema.EVENTS].estimated_document_count() > 5_000:
                time.sleep(0.05)
            if first is None and sent >= count // 20:
                first = watched.memory_info().rss / 2**20
        while db[schema.EVENTS].estimated_document_count():
            time.sleep(0.05)
        last = watched.memory_info().rss / 2**20
    finally:
        process.terminate()
        process.wait(30)
        client.close()
    return first or 0.0, last, count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, about 2 minutes")
    args = parser.parse_args()
    events = 20_000 if args.quick else 100_000
    lag_seconds = 15 if args.quick else 60
    memory_events = 100_000 if args.quick else 1_000_000

    with engine_unless_configured() as (uri, _), MongoClient(uri, tz_aware=True) as client:
        print(f"engine: {uri}  ({'quick' if args.quick else 'full'} run)")
        rounds = 1 if args.quick else 3
        throughput(client, 20_000, 1)  # warm-up, not counted: the engine's JIT compiles
        rates, raw_rates, ids_rates = throughput(client, events, rounds)
        rate, raw_rate, ids_rate = max(rates), max(raw_rates), max(ids_rates)
        print(f"\n1. throughput, {events:,} events waiting (best of {rounds} "
              f"round{'s' if rounds > 1 else ''}, alternating)")
        print(f"   collector (exactly-once)  {rate:10,.0f} events/s   rounds: "
              + ", ".join(f"{r:,.0f}" for r in rates))
        print(f"   raw consume (find+delete) {raw_rate:10,.0f} events/s   rounds: "
              + ", ".join(f"{r:,.0f}" for r in raw_rates))
        print(f"   raw, reading ids only     {ids_rate:10,.0f} events/s   rounds: "
              + ", ".join(f"{r:,.0f}" for r in ids_rates))
        paired = [mine / raw for mine, raw in zip(rates, raw_rates, strict=True)]
        paired_ids = [mine / raw for mine, raw in zip(rates, ids_rates, strict=True)]
        median = statistics.median(paired)
        print("   collector / raw, each round: " + ", ".join(f"{r:.2f}" for r in paired)
              + "   (/ ids-only: " + ", ".join(f"{r:.2f}" for r in paired_ids) + ")")
        print(f"   goal: median of those {median:.2f} >= 0.5: "
              f"{'met' if median >= 0.5 else 'NOT MET'}   (best / best {rate / raw_rate:.2f}; "
              f"vs ids-only: median {statistics.median(paired_ids):.2f}, "
              f"best / best {rate / ids_rate:.2f})")

        samples = lag(client, lag_seconds)
        cuts = statistics.quantiles(samples, n=100)
        print(f"\n2. lag at a steady 1,000 events/s for {lag_seconds} s "
              f"({len(samples)} samples of the oldest unapplied event's age)")
        print(f"   p50 {cuts[49]:.3f} s   p99 {cuts[98]:.3f} s   max {max(samples):.3f} s"
              "   (goal: p99 < 1 s)")

        first, last, mem_rate = memory(uri, memory_events)
        print(f"\n3. collector RSS over {memory_events:,} events (own process, "
              f"{mem_rate:,.0f} events/s end to end)")
        print(f"   after 5%: {first:.1f} MiB   at the end: {last:.1f} MiB   "
              f"growth {last - first:+.1f} MiB   (goal < 20 MB)")


if __name__ == "__main__":
    main()
