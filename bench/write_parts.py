"""Where the time of ``Queue.write_many`` goes, part by part (issue 3's write goal).

Run:  .venv/bin/python bench/write_parts.py

Starts its own embedded engine unless MOPQ_MONGODB_URI is set. For 10,000
small bodies (the ones bench_queue.py writes) it times, each the best of 15
repetitions in this process:

- ``ObjectId()`` per message next to ``mopq.object_ids.object_ids`` for all;
- the body check (``mopq.validation.body``);
- building the documents as ``write_many`` does (ids, checks, outbox entry,
  the publisher's record);

and, best of 6 rounds on fresh databases, one ``insert_many`` of those
documents: as written (outbox entry included) and without the outbox, into
a collection with mopq's indexes, next to a hand-written queue's documents
into a collection with only ``_id``. Only the ratios within one run mean
anything.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from bson import ObjectId
from pymongo import MongoClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_queue import bodies, raw_document, utcnow  # noqa: E402

from mopq import Queue, schema, validation  # noqa: E402
from mopq.engine import engine_unless_configured  # noqa: E402
from mopq.object_ids import object_ids  # noqa: E402

COUNT = 10_000


def best_ms(work: Callable[[], object], repeats: int = 15) -> float:
    fastest = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        fastest = min(fastest, time.perf_counter() - started)
    return fastest * 1000


def main() -> None:
    with engine_unless_configured() as (uri, _), MongoClient(uri, tz_aware=True) as client:
        items = bodies(COUNT)
        builder = Queue("bench", db=client[f"parts_{uuid.uuid4().hex[:8]}"])
        options = builder._options(None, None, 0, 0, None, utcnow())

        def build() -> list[dict]:
            return [builder._document(body, options, None, message_id)[0]
                    for body, message_id in zip(items, object_ids(COUNT), strict=True)]

        print(f"engine: {uri}\n{COUNT:,} messages; Python parts, best of 15 (ms):")
        for label, work in (
                ("ObjectId() per message", lambda: [ObjectId() for _ in items]),
                ("object_ids(n), all at once", lambda: object_ids(COUNT)),
                ("body check (validation.body)",
                 lambda: [validation.body(body, builder.max_body_bytes) for body in items]),
                ("documents as write_many builds them", build)):
            print(f"   {label:44}{best_ms(work):8.1f}")

        def insert(documents: list[dict], indexed: bool) -> float:
            db = client[f"parts_{uuid.uuid4().hex[:8]}"]
            if indexed:
                schema.ensure_indexes(db)
            started = time.perf_counter()
            db.messages.insert_many(documents, ordered=False)
            elapsed = time.perf_counter() - started
            client.drop_database(db.name)
            return elapsed

        variants: dict[str, list[float]] = {"as written": [], "without the outbox": [],
                                            "hand-written queue, only _id": []}
        for _ in range(6):
            written = build()
            bare = [{k: v for k, v in document.items() if k != "outbox"} for document in build()]
            now = utcnow()
            plain = [raw_document(body, now) for body in items]
            variants["as written"].append(insert(written, True))
            variants["without the outbox"].append(insert(bare, True))
            variants["hand-written queue, only _id"].append(insert(plain, False))
        print("one insert_many of those documents, best of 6 (ms):")
        base = min(variants["as written"])
        for label, times in variants.items():
            print(f"   {label:44}{min(times) * 1000:8.1f}   {min(times) / base:5.2f}x")
        client.drop_database(builder.messages.database.name)


if __name__ == "__main__":
    main()
