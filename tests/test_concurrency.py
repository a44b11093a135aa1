"""Eight `mopq worker` processes drain one queue: each message acked by exactly one of them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from mopq import Queue, schema
from tests.handlers import read_records
from tests.helpers import wait_until

REPO_ROOT = Path(__file__).resolve().parent.parent
CONSUMERS = 8
MESSAGES = 2_000


def test_eight_worker_processes_drain_2000_messages_each_acked_by_exactly_one(db, tmp_path):
    queue = Queue("drain")
    ids = {str(i) for i in queue.write_many([{"n": n} for n in range(MESSAGES)])}
    assert len(ids) == MESSAGES
    records = tmp_path / "records"
    records.mkdir()
    env = {**os.environ, "MOPQ_TEST_RECORD_DIR": str(records)}
    consumers = []
    started = time.monotonic()
    try:
        for index in range(CONSUMERS):
            with open(tmp_path / f"consumer-{index}.log", "w") as log_file:
                consumers.append(subprocess.Popen(
                    [sys.executable, "-m", "mopq", "worker", "--queue", "drain",
                     "--handler", "tests.handlers:record",
                     # Generous: no lease may expire, so no message is delivered twice.
                     "--visibility-timeout", "600",
                     "--heartbeat-interval", "1", "--poll-interval", "0.2"],
                    cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT))
        wait_until(lambda: db[schema.MESSAGES].count_documents(
            {"queue": "drain", "state": {"$in": [schema.PENDING, schema.INFLIGHT]}}) == 0,
            timeout=120, interval=0.5, message="the queue to be drained")
        drained_in = time.monotonic() - started
        for consumer in consumers:
            consumer.send_signal(signal.SIGTERM)
        for consumer in consumers:
            assert consumer.wait(30) == 0
    finally:
        for consumer in consumers:
            if consumer.poll() is None:
                consumer.kill()
                consumer.wait(10)
    print(f"\n{CONSUMERS} worker processes drained {MESSAGES} messages in {drained_in:.1f} s "
          f"({MESSAGES / drained_in:.0f} messages/s, start-up included)")

    handled = read_records(records)
    every = [mid for lines in handled.values() for mid, _, _ in lines]
    twice = [mid for mid, times in Counter(every).items() if times > 1]
    assert not twice, f"{len(twice)} messages handled more than once, e.g. {twice[:3]}"
    assert set(every) == ids
    assert all(attempts == 1 for lines in handled.values() for _, attempts, _ in lines)
    assert len(handled) > 1, "one consumer did all the work: the test proves nothing"
    # Each worker acknowledged exactly what its handler returned from: a handled message
    # whose ack was refused would show as processed < handled.
    for consumer in consumers:
        heartbeat = db[schema.WORKERS].find_one({"pid": consumer.pid})
        assert heartbeat["state"] == "stopped"
        assert heartbeat["failed"] == 0
        assert heartbeat["processed"] == len(handled.get(consumer.pid, []))
    assert db[schema.MESSAGES].count_documents(
        {"queue": "drain", "state": {"$ne": schema.DONE}}) == 0
