"""Migration benchmark (issue 13, item 2): ``mopq migrate`` beside a raw copy of the same documents.

Run:  .venv/bin/python bench/bench_migrate.py [--quick]

It starts two embedded engines (memory storage, loopback), a source and a
target deployment, unless MOPQ_MONGODB_URI is set (then two databases of that
server play both parts). Each round, in fresh databases:

1. fills the source with N unfinished messages (``Queue.write_many``; 90 %
   pending, 5 % delayed, 5 % dead) and lets a collector apply their events,
   so the source has counters to carry;
2. **raw copy**: reads those message documents from the source (a cursor,
   500 a batch) and inserts them unchanged into the target's ``messages``
   (``insert_many``, 500 a batch) in a fresh database with the same indexes
   (``mopq.schema``): the least any migration must do;
3. **mopq migrate**: ``mopq.migration.migrate`` of the same documents into
   another fresh target database (default batch of 500): per batch, stage on
   the target, compare-and-set on the source, publish the source's events,
   record the arrivals, make the copies visible; then history and counters.
   Where its time goes is printed per round (each step's share, summed
   over its batches).
4. **export / import**: ``mopq.migration.export`` of a second source filled
   the same way to a file, and ``import_lines`` of that file into a fresh
   target (timed apart).

Rates are messages per second; ``vs raw`` is the rate over the raw copy's in
the same round, and the summary takes the median of the per-round ratios
(this machine's speed swings between rounds, see docs/BENCHMARKS.md). Only
ratios from one run mean anything.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
import uuid

import pymongo
from pymongo import MongoClient

import mopq
from mopq import Queue, flush, migration, schema
from mopq.collectors import Collector
from mopq.engine import Engine
from mopq.migration import move, receiver

FULL = {"messages": 20_000, "rounds": 5}
QUICK = {"messages": 5_000, "rounds": 1}
BATCH = 500
clock = time.perf_counter


def fill(db, count: int) -> None:
    """N unfinished messages: 90 % pending, 5 % delayed, 5 % dead; their events applied."""
    queue = Queue("bench", db=db, max_attempts=1)
    dead = count // 20
    delayed = count // 20
    pending = count - dead - delayed
    for start in range(0, pending, 5_000):
        queue.write_many([{"n": n, "to": f"user{n}@example.com"}
                          for n in range(start, min(pending, start + 5_000))])
    queue.write_many([{"later": n} for n in range(delayed)], delay=3600)
    dying = Queue("bench-dead", db=db, max_attempts=1)
    dying.write_many([{"d": n} for n in range(dead)])
    while True:
        claimed = dying.read(limit=500)
        if not claimed:
            break
        for message in claimed:
            message.fail("benchmark")
    assert flush(120)
    collector = Collector(db=db, monitor=False)
    collector.partitions.rebalance({})
    while collector.step().applied:
        pass


def raw_copy(source, target) -> int:
    schema.ensure_indexes(target)
    copied = 0
    batch = []
    query = {"state": {"$in": ["pending", "inflight", "dead"]}}
    for doc in source[schema.MESSAGES].find(query).batch_size(BATCH):
        batch.append(doc)
        if len(batch) == BATCH:
            target[schema.MESSAGES].insert_many(batch, ordered=False)
            copied += len(batch)
            batch = []
    if batch:
        target[schema.MESSAGES].insert_many(batch, ordered=False)
        copied += len(batch)
    return copied


PHASES = {  # what each step of a migration costs, summed over its batches
    "read the source's documents": (move.Move, "_pass"),
    "stage on the target": (receiver.Receiver, "stage"),
    "commit on the source": (move.Move, "_commit"),
    "record arrivals, make visible": (receiver.Receiver, "arrive"),
    "publish the source's events": (move.Move, "_publish"),
    "copy history": (move.Move, "_copy_finished"),
    "carry counters": (move, "carry"),
    "read counters to carry": (move, "carried_counters"),
    "look for uncounted events": (move, "not_carried"),
}
# The steps _pass calls: its own time is what is left once they are taken out.
INSIDE_PASS = ("stage on the target", "commit on the source", "record arrivals, make visible",
               "publish the source's events")


def time_phases(spent: dict[str, float]) -> None:
    """Wrap the migration's steps so that each adds its time to ``spent``."""
    for name, (owner, attribute) in PHASES.items():
        original = getattr(owner, attribute)

        def wrapper(*args, _original=original, _name=name, **kwargs):
            started = clock()
            try:
                return _original(*args, **kwargs)
            finally:
                spent[_name] = spent.get(_name, 0.0) + clock() - started
        setattr(owner, attribute, wrapper)


def timed(function, *args):
    started = clock()
    value = function(*args)
    return value, clock() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5,000 messages, one round")
    sizes = QUICK if parser.parse_args().quick else FULL
    n = sizes["messages"]
    with contextlib.ExitStack() as stack:
        configured = os.environ.get("MOPQ_MONGODB_URI")
        if configured:
            source_uri = target_uri = configured
            print(f"engine: {configured} (both sides, two databases each round)")
        else:
            source_uri = stack.enter_context(Engine()).uri
            target_uri = stack.enter_context(Engine()).uri
            print(f"engines: embedded mongo-java-server (memory), source {source_uri}, "
                  f"target {target_uri}")
        print(f"cpus: {os.cpu_count()}, load average at start: "
              + " ".join(f"{x:.2f}" for x in os.getloadavg()))
        print(f"python {sys.version.split()[0]}, pymongo {pymongo.version}, mopq "
              f"{mopq.__version__}")
        print(f"sizes: {n:,} unfinished messages per round (90 % pending, 5 % delayed, "
              f"5 % dead), {sizes['rounds']} round(s), batches of {BATCH}")
        source_client = MongoClient(source_uri, tz_aware=True, w="majority", journal=True)
        target_client = MongoClient(target_uri, tz_aware=True, w="majority", journal=True)
        rows: dict[str, list[float]] = {"raw": [], "mopq": [], "export": [], "import": []}
        ratios: dict[str, list[float]] = {"mopq": [], "export": [], "import": []}
        spent: dict[str, float] = {}
        time_phases(spent)
        started_all = clock()
        for round_ in range(1, sizes["rounds"] + 1):
            tag = uuid.uuid4().hex[:6]
            source = source_client[f"bench_src_{tag}"]
            spare = source_client[f"bench_src2_{tag}"]
            raw_target = target_client[f"bench_raw_{tag}"]
            mopq_target = target_client[f"bench_mig_{tag}"]
            import_target = target_client[f"bench_imp_{tag}"]
            try:
                fill(source, n)
                fill(spare, n)
                copied, raw_seconds = timed(raw_copy, source, raw_target)
                assert copied == n, copied
                spent.clear()
                report, mopq_seconds = timed(migration.migrate, source, mopq_target)
                shares = dict(spent)
                moved = sum(report.moved.values())
                assert moved == n and not report.left, (moved, report.left)
                assert mopq_target[schema.MESSAGES].count_documents(
                    {"state": {"$in": ["pending", "dead"]}}) == n
                with tempfile.NamedTemporaryFile("w+", suffix=".jsonl") as file:
                    _, export_seconds = timed(migration.export, spare, file)
                    file.flush()
                    file.seek(0)
                    imported, import_seconds = timed(migration.import_lines, import_target,
                                                     file)
                assert sum(c for (name, _), c in imported.added.items()
                           if name == schema.MESSAGES) == n
                rates = {"raw": n / raw_seconds, "mopq": n / mopq_seconds,
                         "export": n / export_seconds, "import": n / import_seconds}
                for name, rate in rates.items():
                    rows[name].append(rate)
                for name in ratios:
                    ratios[name].append(rates[name] / rates["raw"])
                print(f"round {round_}: raw {rates['raw']:,.0f}/s, migrate "
                      f"{rates['mopq']:,.0f}/s ({rates['mopq'] / rates['raw']:.2f}x), export "
                      f"{rates['export']:,.0f}/s, import {rates['import']:,.0f}/s; counters "
                      f"carried {report.carried.counters}", flush=True)
                # The pass's own reads are its time less the steps it calls.
                shares["read the source's documents"] = \
                    shares.get("read the source's documents", 0.0) - sum(
                        shares.get(name, 0.0) for name in INSIDE_PASS)
                print("   migrate's time: " + ", ".join(
                    f"{name} {seconds / mopq_seconds:.0%}" for name, seconds in shares.items()
                    if seconds > 0), flush=True)
            finally:
                flush(30)
                for client, db in ((source_client, source), (source_client, spare),
                                   (target_client, raw_target), (target_client, mopq_target),
                                   (target_client, import_target)):
                    client.drop_database(db.name)
        print()
        print(f"{n:,} messages, best of {sizes['rounds']} round(s)   best msg/s   median "
              "of per-round ratios to raw")
        labels = {"raw": "raw copy (find + insert_many, same documents)",
                  "mopq": "mopq migrate (stage, commit, arrive)",
                  "export": "mopq export (to a JSON Lines file)",
                  "import": "mopq import (that file)"}
        for name, label in labels.items():
            ratio = f"{statistics.median(ratios[name]):.2f}x" if name in ratios else "1.00x"
            print(f"   {label:<46}{max(rows[name]):>9,.0f}   {ratio}")
        print("   migrate / raw, each round: "
              + ", ".join(f"{r:.2f}" for r in ratios["mopq"]))
        print(f"total time {clock() - started_all:.0f} s, load average at the end: "
              + " ".join(f"{x:.2f}" for x in os.getloadavg()))
        source_client.close()
        target_client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
