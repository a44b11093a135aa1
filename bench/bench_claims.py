"""Claim rate with finished work kept (issues 15 and 16): ordered index vs plain engine.

Run:  .venv/bin/python bench/bench_claims.py [--quick] [--kept 100000] [--claims 2000]
      [--rounds 3] [--storage memory|h2]

It starts two embedded engines side by side: ours, whose non-unique indexes are
kept in order so that the claim's sorted candidate read walks the "claim" index
(engine/OrderedIndex.java), and the plain engine (``MOPQ_ENGINE_PLAIN_INDEXES=1``,
mongo-java-server's own empty indexes: every such read scans and sorts). With
``MOPQ_MONGODB_URI`` set it measures that server alone. On each engine, each
condition lives in a database of its own:

- none: nothing kept, only the messages being claimed;
- history: ``--kept`` finished messages kept in ``history``, as mopq keeps an
  acknowledged message (its publisher copies it there, then deletes it from
  ``messages``: mopq/history.py);
- dead: ``--kept`` dead messages of the same queue kept in ``messages``, where
  mopq keeps them for ``MOPQ_DEAD_SECONDS`` (30 days);
- waiting: ``--kept`` more messages waiting in the same queue (the backlog).

The kept documents are copies (new ids) of one that mopq itself made in that
state (written, claimed, then acknowledged or failed for good), inserted with
``insert_many``, so filling takes seconds rather than minutes; they are filled
once and kept through the rounds (a round adds ``--claims`` finished messages to
history). Each round, on each engine in turn, runs an untimed warm-up of
``WARM_UP`` claims and then each condition (in an order that rotates from
round to round), measuring:

- mopq: ``--claims`` messages written (``write_many`` + flush, not timed), then
  a timed loop of ``q.read(limit=1)`` + ``m.delete()`` over them;
- raw: the same number of documents of the same shape inserted, then a timed
  hand-written priority queue over the same index: a sorted
  ``find_one_and_update`` (mopq's candidate filter and sort, sets state and a
  lease) + ``delete_one`` per message, stopped after ``RAW_SECONDS`` on an
  engine that scans (the rate is what it did by then);
- cand.: one sorted candidate read as ``Queue.read`` runs it (the median of 5);
- cpu: the engine process's CPU time (all its threads, GC included, from
  /proc) during the mopq loop, per claim: unlike a rate, it hardly moves when
  other work on the machine delays the loop.

Rates are claims (claim + acknowledge) per second, the best of the rounds
(other load on a shared machine only slows a round down). "vs none" is the
median over the rounds of the rate divided by the same engine's rate with
nothing kept in the same round (conditions of one round on one engine run
back to back, so a swing of the machine's speed between rounds does not
enter a ratio). The goal (issue 15): mopq's rate with 100,000 finished
messages kept at least 0.8x its rate with none (issue 16 asks the same of
100,000 waiting). Only ratios within one run mean anything; absolute rates
depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator

from bench_queue import FLUSH_TIMEOUT, best, bodies, ratio, utcnow
from bson import ObjectId
from pymongo import MongoClient, ReturnDocument
from pymongo.database import Database

import mopq
from mopq import schema
from mopq.engine import Engine
from mopq.queue import CANDIDATE_FIELDS, MIN_CANDIDATES

PLAIN = "MOPQ_ENGINE_PLAIN_INDEXES"
QUEUE = "bench"
CONDITIONS = ("none", "history", "dead", "waiting")
FULL = {"kept": 100_000, "claims": 2_000, "rounds": 3}
QUICK = {"kept": 30_000, "claims": 500, "rounds": 1}
RAW_SECONDS = 10.0
WARM_UP = 300
FILL_CHUNK = 10_000
GOAL = 0.8
CLAIM_FILTER_STATES = ["pending", "inflight"]
CLAIM_SORT = [("priority", -1), ("_id", 1)]
clock = time.perf_counter


def claim_filter(now: dt.datetime | None = None) -> dict:
    """mopq's candidate filter (Queue._candidate_filter), which the raw loop claims with too."""
    return {"queue": QUEUE, "state": {"$in": CLAIM_FILTER_STATES},
            "visible_at": {"$lte": now or utcnow()}}


def cpu_seconds(pid: int | None) -> float:
    """CPU time the engine's process has used so far (all its threads, GC included), or NaN."""
    if pid is None:
        return float("nan")
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def flush() -> None:
    if not mopq.flush(FLUSH_TIMEOUT):
        sys.exit(f"mopq.flush() did not finish within {FLUSH_TIMEOUT} s")


def samples(db: Database) -> dict[str, dict]:
    """One message of each kind as mopq stores it: waiting, finished (history), dead."""
    queue = mopq.Queue(QUEUE, db=db, max_attempts=1)
    queue.write_many(bodies(3))
    flush()
    waiting = db.messages.find_one({"state": "pending"})
    done, dead = queue.read(limit=2)
    done.delete(result={"ok": True})
    dead.fail("for the benchmark")
    flush()
    kinds = {"waiting": waiting, "history": db[schema.HISTORY].find_one({}),
             "dead": db.messages.find_one({"state": "dead"})}
    for kind, document in kinds.items():
        if document is None:
            sys.exit(f"mopq made no {kind} message to copy")
        document.pop("dedupe", None)  # unique when present: none of these has one anyway
    return kinds


def copies(sample: dict, n: int) -> Iterator[list[dict]]:
    """``n`` copies of a document with new ids, in chunks for insert_many."""
    for start in range(0, n, FILL_CHUNK):
        yield [{**sample, "_id": ObjectId()} for _ in range(min(FILL_CHUNK, n - start))]


class Side:
    """One engine: a database per condition, filled once."""

    def __init__(self, label: str, uri: str, pid: int | None, kinds: dict[str, dict],
                 kept: int) -> None:
        self.label = label
        self.pid = pid
        self.client = MongoClient(uri, tz_aware=True)
        self.kinds = kinds
        self.dbs: dict[str, Database] = {}
        self.fill_seconds: dict[str, float] = {}
        for condition in CONDITIONS:
            db = self.client[f"claims_{condition}_{secrets.token_hex(4)}"]
            schema.ensure_indexes(db)
            started = clock()
            if condition != "none":
                target = db[schema.HISTORY] if condition == "history" else db.messages
                for chunk in copies(kinds[condition], kept):
                    target.insert_many(chunk, ordered=False)
            self.fill_seconds[condition] = clock() - started
            self.dbs[condition] = db

    def close(self) -> None:
        flush()
        for db in self.dbs.values():
            self.client.drop_database(db.name)
        self.client.close()

    def round(self, condition: str, claims: int) -> dict:
        if condition == "none":  # a fresh database: not even the last round's finished ones
            self.client.drop_database(self.dbs["none"].name)
            self.dbs["none"] = self.client[f"claims_none_{secrets.token_hex(4)}"]
        db = self.dbs[condition]
        queue = mopq.Queue(QUEUE, db=db)
        queue.write_many(bodies(claims))
        flush()
        reads = []
        for _ in range(5):
            started = clock()
            list(db.messages.find(claim_filter(), CANDIDATE_FIELDS).sort(CLAIM_SORT)
                 .limit(MIN_CANDIDATES))
            reads.append(clock() - started)
        started, cpu = clock(), cpu_seconds(self.pid)
        for _ in range(claims):
            [message] = queue.read(limit=1)
            message.delete()
        loop = clock() - started
        cpu = cpu_seconds(self.pid) - cpu
        flush()

        raw_ids = []
        for chunk in copies(self.kinds["waiting"], claims):
            for document in chunk:
                document.pop("outbox", None)
            db.messages.insert_many(chunk)
            raw_ids += [document["_id"] for document in chunk]
        done, started = 0, clock()
        while done < claims and (done < 50 or clock() - started < RAW_SECONDS):
            token, now = secrets.token_hex(8), utcnow()
            taken = db.messages.find_one_and_update(
                claim_filter(now),
                {"$set": {"state": "inflight", "lease_token": token,
                          "visible_at": now + dt.timedelta(seconds=30)}, "$inc": {"attempts": 1}},
                sort=CLAIM_SORT, projection={"_id": 1}, return_document=ReturnDocument.AFTER)
            if taken is None:
                break
            db.messages.delete_one({"_id": taken["_id"], "lease_token": token})
            done += 1
        raw = done / (clock() - started)
        db.messages.delete_many({"_id": {"$in": raw_ids}})  # what the time limit left
        if condition == "waiting":
            # The raw claims took the oldest, i.e. kept ones (mopq's left as many of its own
            # waiting): put back as many as they took.
            for chunk in copies(self.kinds["waiting"], done):
                db.messages.insert_many(chunk)
        return {"mopq": claims / loop, "raw": raw, "candidates_ms": statistics.median(reads) * 1000,
                "cpu_us": cpu / claims * 1e6}


@contextlib.contextmanager
def engines(storage: str) -> Iterator[list[tuple[str, str, int | None]]]:
    """(label, uri, pid) of each engine: ours and the plain one, or the configured server."""
    configured = os.environ.get("MOPQ_MONGODB_URI")
    if configured:
        yield [("configured server", configured, None)]
        return
    with contextlib.ExitStack() as stack:
        started = []
        for label, plain in (("ordered index (ours)", "0"), ("plain engine", "1")):
            data = stack.enter_context(tempfile.TemporaryDirectory()) if storage == "h2" else None
            engine = Engine(data=data, env={PLAIN: plain})
            started.append((label, engine.start(), engine.pid))
            stack.callback(engine.stop)
        yield started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30,000 kept, 500 claims, 1 round")
    parser.add_argument("--kept", type=int, help="documents kept per condition (100,000)")
    parser.add_argument("--claims", type=int, help="claims per round and condition (2,000)")
    parser.add_argument("--rounds", type=int, help="rounds, each figure the best (3)")
    parser.add_argument("--storage", choices=("memory", "h2"), default="memory")
    args = parser.parse_args()
    size = dict(QUICK if args.quick else FULL)
    for key in size:
        if getattr(args, key) is not None:
            size[key] = getattr(args, key)
    began = clock()
    print(f"cpus: {os.cpu_count()}, load average at start: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"sizes: {size}, storage: {args.storage}")
    with engines(args.storage) as uris:
        sides = []
        for label, uri, pid in uris:
            with MongoClient(uri, tz_aware=True) as client:
                kinds = samples(client["claims_samples"])
                client.drop_database("claims_samples")
            print(f"{label}: {uri}; filling {size['kept']:,} per condition ...", flush=True)
            side = Side(label, uri, pid, kinds, size["kept"])
            print("   fill (s): " + ", ".join(f"{c} {s:.1f}" for c, s in side.fill_seconds.items()))
            side.round("none", WARM_UP)  # the engine's JIT warms up
            sides.append(side)
        runs: dict[tuple[str, str], list[dict]] = {}
        for number in range(size["rounds"]):
            print(f"round {number + 1} of {size['rounds']} ...", flush=True)
            # Each round starts where the last left off: its conditions in another order.
            order = CONDITIONS[number % len(CONDITIONS):] + CONDITIONS[:number % len(CONDITIONS)]
            for side in sides:
                side.round("none", WARM_UP)  # after the other engine's turn, not timed
                for condition in order:
                    runs.setdefault((side.label, condition), []).append(
                        side.round(condition, size["claims"]))
        report(sides, runs, size)
        for side in sides:
            side.close()
    print(f"\ntotal time {clock() - began:,.0f} s, load average at the end: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def per_round(runs: dict[tuple[str, str], list[dict]], side: Side, condition: str,
              key: str) -> list[float]:
    """A condition's rate over the same engine's rate with nothing kept, round by round."""
    return [run[key] / none[key] for run, none in
            zip(runs[(side.label, condition)], runs[(side.label, "none")], strict=True)]


def report(sides: list[Side], runs: dict[tuple[str, str], list[dict]], size: dict) -> None:
    kept = f"{size['kept']:,}"
    labels = {"none": "nothing kept", "history": f"{kept} finished in history",
              "dead": f"{kept} dead in messages", "waiting": f"{kept} more waiting"}
    print(f"\nclaim+ack per second, {size['claims']:,} claims, best of {size['rounds']} round(s); "
          "vs none = median of the rounds' ratios to nothing kept (same engine, same round); "
          "cand. = one sorted candidate read (ms, best); cpu = the engine's CPU time per mopq "
          "claim+ack (us, median of the rounds)")
    print(f"   {'':32}" + "".join(f"{side.label:>50}" for side in sides))
    columns = f"{'mopq':>10}{'vs none':>9}{'raw':>8}{'vs none':>9}{'cand.':>7}{'cpu':>7}"
    print(f"   {'':32}" + columns * len(sides))
    for condition in CONDITIONS:
        line = f"   {labels[condition]:32}"
        for side in sides:
            b = best(runs[(side.label, condition)])
            cpu = statistics.median(run["cpu_us"] for run in runs[(side.label, condition)])
            line += (f"{b['mopq']:>10,.0f}"
                     f"{statistics.median(per_round(runs, side, condition, 'mopq')):>8.2f}x"
                     f"{b['raw']:>8,.0f}"
                     f"{statistics.median(per_round(runs, side, condition, 'raw')):>8.2f}x"
                     f"{b['candidates_ms']:>7.1f}"
                     f"{cpu:>7,.0f}")
        print(line)
    if len(sides) == 2:
        print("\n   ours / plain, best mopq rates: " + ", ".join(
            f"{condition} {ratio(*(best(runs[(side.label, condition)])['mopq'] for side in sides))}"
            for condition in CONDITIONS))
    for side in sides:
        for condition in ("history", "dead", "waiting"):
            shares = per_round(runs, side, condition, "mopq")
            share = statistics.median(shares)
            print(f"   goal on {side.label}: mopq with {labels[condition]} / nothing kept, "
                  f"rounds {', '.join(f'{x:.2f}' for x in shares)}: median {share:.2f}x "
                  f">= {GOAL}x: {'MET' if share >= GOAL else 'NOT MET'}")


if __name__ == "__main__":
    main()
