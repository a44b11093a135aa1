"""Dramatiq with Redis for bench/peers.py (run in the peers' virtual environment).

Worker: ``dramatiq peer_dramatiq --processes 1 --threads 1`` in bench/ (the
default middleware, the actor's default options).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from peer_common import record

dramatiq.set_broker(RedisBroker(url=os.environ.get("PEERS_REDIS_URL",
                                                   "redis://127.0.0.1:6379/0")))


@dramatiq.actor(queue_name="bench")
def noop(phase: str, seq: int, sent: float) -> None:
    record(phase, seq, sent)


def sender() -> Callable[[str, int, float], object]:
    return lambda phase, seq, sent: noop.send(phase, seq, sent)
