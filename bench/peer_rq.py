"""RQ with Redis for bench/peers.py (run in the peers' virtual environment).

Worker: ``rq worker --url $PEERS_REDIS_URL bench`` in bench/: RQ's default
worker, which forks a work horse for every job. Monitor: ``rq-dashboard``,
whose ``/0/data/queues.json`` gives each queue's finished-job count.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from peer_common import record
from redis import Redis
from rq import Queue

QUEUE = "bench"


def noop(phase: str, seq: int, sent: float) -> None:
    record(phase, seq, sent)


def sender() -> Callable[[str, int, float], object]:
    queue = Queue(QUEUE, connection=Redis.from_url(os.environ["PEERS_REDIS_URL"]))
    return lambda phase, seq, sent: queue.enqueue(noop, phase, seq, sent)
