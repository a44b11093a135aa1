"""What durable acknowledgements cost the embedded engine's H2 storage (issue 10).

Run:  .venv/bin/python bench/engine_commit.py

Starts two embedded engines with H2 storage, each in a fresh temporary data
folder: one as shipped (a write is answered once it is in the file, concurrent
commits batched; ``engine/Durable.java``) and one with
``MOPQ_ENGINE_ACK_BEFORE_COMMIT=1`` (answered at once, written by H2's
background commit within about 100 ms, as before issue 10). It ignores
MOPQ_MONGODB_URI. For each workload it runs ``ROUNDS`` rounds, each round on
both engines one after the other and on fresh collections, after one warm-up
round:

- ``insert_one`` in a loop, one client thread;
- ``insert_one`` from 8 client threads at once (what group commit is for);
- one ``insert_many`` of 10,000 small documents;
- claim and acknowledge: ``find_one_and_update`` (pending -> inflight) then
  ``delete_one`` by ``_id``, one message at a time, over 1,000 messages.

It prints, per workload, the best rate of each engine, the ratio of the two
best rates, the median of the per-round ratios (durable / background), and
the kilobytes each engine's JVM handed to write(2) per operation, median of
the rounds (from /proc/PID/io, so Linux only; the socket replies are in it
too, but they are tiny): the file writes that commits cost. Then the size of
each engine's H2 file. Only the ratios within one run mean anything.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from pymongo import MongoClient
from pymongo.collection import Collection

from mopq.engine import Engine

ACK_BEFORE_COMMIT = "MOPQ_ENGINE_ACK_BEFORE_COMMIT"
ROUNDS = 5
PAYLOAD = "x" * 64
ONE_THREAD = 2_000
THREADS = 8
PER_THREAD = 300
MANY = 10_000
CLAIMS = 1_000


def insert_one_loop(collection: Collection) -> int:
    for i in range(ONE_THREAD):
        collection.insert_one({"n": i, "payload": PAYLOAD})
    return ONE_THREAD


def insert_one_threads(collection: Collection) -> int:
    start = threading.Barrier(THREADS)

    def work(thread: int) -> None:
        start.wait()
        for i in range(PER_THREAD):
            collection.insert_one({"t": thread, "n": i, "payload": PAYLOAD})

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return THREADS * PER_THREAD


def insert_many(collection: Collection) -> int:
    collection.insert_many([{"n": i, "payload": PAYLOAD} for i in range(MANY)], ordered=False)
    return MANY


def claim_ack(collection: Collection) -> int:
    claimed = 0
    while (message := collection.find_one_and_update({"state": "pending"},
                                                     {"$set": {"state": "inflight"}})):
        collection.delete_one({"_id": message["_id"]})
        claimed += 1
    return claimed


def fill_for_claims(collection: Collection) -> None:
    collection.insert_many([{"n": i, "state": "pending", "payload": PAYLOAD}
                            for i in range(CLAIMS)])


WORKLOADS: list[tuple[str, Callable[[Collection], int], Callable[[Collection], None] | None]] = [
    ("insert_one, 1 thread", insert_one_loop, None),
    (f"insert_one, {THREADS} threads", insert_one_threads, None),
    (f"insert_many of {MANY:,}", insert_many, None),
    ("claim+ack (find_one_and_update + delete_one)", claim_ack, fill_for_claims),
]


def start_engine(data: str, ack_before_commit: bool) -> Engine:
    if ack_before_commit:
        os.environ[ACK_BEFORE_COMMIT] = "1"  # read by the launcher (engine/Launcher.java)
    try:
        engine = Engine(data=data)
        engine.start()
    finally:
        os.environ.pop(ACK_BEFORE_COMMIT, None)
    return engine


def written(pid: int) -> int:
    """Bytes the process has passed to write(2) and similar calls so far."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise RuntimeError(f"no wchar in /proc/{pid}/io")


def measure(engine: Engine, client: MongoClient, run: Callable[[Collection], int],
            prepare: Callable[[Collection], None] | None) -> tuple[float, float]:
    """Operations per second and kilobytes written per operation."""
    collection = client.bench[f"c_{uuid.uuid4().hex[:8]}"]
    if prepare is not None:
        prepare(collection)
    bytes_before = written(engine.pid)
    started = time.perf_counter()
    count = run(collection)
    elapsed = time.perf_counter() - started
    kilobytes = (written(engine.pid) - bytes_before) / 1000
    collection.drop()
    return count / elapsed, kilobytes / count


def main() -> None:
    with tempfile.TemporaryDirectory() as durable_dir, tempfile.TemporaryDirectory() as plain_dir:
        engines = {"durable": start_engine(durable_dir, False),
                   "background": start_engine(plain_dir, True)}
        clients = {name: MongoClient(engine.uri, maxPoolSize=THREADS * 2)
                   for name, engine in engines.items()}
        try:
            print(f"cpus: {os.cpu_count()}, load average at start: "
                  + " ".join(f"{x:.2f}" for x in os.getloadavg()))
            print("durable:    H2, answered after the commit ("
                  f"{engines['durable'].uri})")
            print(f"background: H2, {ACK_BEFORE_COMMIT}=1, answered before the commit "
                  f"({engines['background'].uri})")
            print(f"{ROUNDS} rounds after one warm-up round; rates in operations/s "
                  "(claim+ack: messages/s)\n")
            print(f"   {'':46}{'best rate':>22}{'durable / background':>22}"
                  f"{'KB written per op':>22}")
            print(f"   {'workload':46}{'durable':>10}{'background':>12}"
                  f"{'best/best':>12}{'median':>10}{'durable':>11}{'background':>11}")
            for label, run, prepare in WORKLOADS:
                rates: dict[str, list[float]] = {name: [] for name in engines}
                kilobytes: dict[str, list[float]] = {name: [] for name in engines}
                for round_ in range(ROUNDS + 1):
                    for name, client in clients.items():
                        per_second, per_op = measure(engines[name], client, run, prepare)
                        if round_ > 0:
                            rates[name].append(per_second)
                            kilobytes[name].append(per_op)
                best = {name: max(values) for name, values in rates.items()}
                median = statistics.median(d / b for d, b in zip(rates["durable"],
                                                                  rates["background"],
                                                                  strict=True))
                print(f"   {label:46}{best['durable']:10,.0f}{best['background']:12,.0f}"
                      f"{best['durable'] / best['background']:11.2f}x{median:9.2f}x"
                      f"{statistics.median(kilobytes['durable']):11.1f}"
                      f"{statistics.median(kilobytes['background']):11.1f}")
            print()
            for name, folder in (("durable", durable_dir), ("background", plain_dir)):
                size = (Path(folder) / "mopq.mv.db").stat().st_size
                print(f"H2 file of {name} after the run: {size / 1e6:.1f} MB")
        finally:
            for client in clients.values():
                client.close()
            for engine in engines.values():
                engine.stop()


if __name__ == "__main__":
    main()
