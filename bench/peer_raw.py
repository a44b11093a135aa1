"""The engine's ceiling for bench/peers.py: a queue in raw pymongo, nothing else.

The same operations mopq's producer and worker use, without mopq: the
producer ``insert_one``s a document per task; the consumer (``python
peer_raw.py`` in bench/) claims with ``find_one_and_update`` (pending ->
inflight with a lease token, as bench/bench_queue.py's raw loop does, no
sort), records, and acknowledges with ``delete_one`` by ``_id`` and token.
When nothing is pending it sleeps 1 ms. The client asks for the write
concern mopq's clients ask for (``w="majority", journal=True``).
``PEERS_MONGO_URL`` names the server and the database.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable

from peer_common import body, record_body
from pymongo import MongoClient, ReturnDocument
from pymongo.collection import Collection

IDLE_SLEEP_SECONDS = 0.001


def collection() -> Collection:
    client = MongoClient(os.environ["PEERS_MONGO_URL"], w="majority", journal=True,
                         tz_aware=True)
    return client.get_default_database()["messages"]


def main() -> None:
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    messages = collection()
    while not stopping.is_set():
        token, now = secrets.token_hex(8), dt.datetime.now(dt.UTC)
        document = messages.find_one_and_update(
            {"state": "pending"},
            {"$set": {"state": "inflight", "lease_token": token, "updated_at": now,
                      "visible_at": now + dt.timedelta(seconds=30)},
             "$inc": {"attempts": 1}},
            return_document=ReturnDocument.AFTER)
        if document is None:
            time.sleep(IDLE_SLEEP_SECONDS)
            continue
        record_body(document["body"])
        messages.delete_one({"_id": document["_id"], "lease_token": token})


def sender() -> Callable[[str, int, float], object]:
    messages = collection()

    def send(phase: str, seq: int, sent: float) -> object:
        now = dt.datetime.now(dt.UTC)
        return messages.insert_one({"state": "pending", "attempts": 0, "created_at": now,
                                    "visible_at": now, "body": body(phase, seq, sent)})
    return send


if __name__ == "__main__":
    main()
