"""mopq's side of bench/peers.py: the worker's handler and the producer's sender.

The worker is ``mopq worker --queue bench --handler peer_mopq:handle`` run in
bench/ (the command finds handlers relative to where it runs); the producer
writes one message per task with ``Queue.write``. The queue and the database
come from ``MOPQ_MONGODB_URI`` and ``MOPQ_DATABASE``, as for any mopq process.

Loopback only: a waiting worker registers a doorbell (``mopq.doorbell``) at
this host's first non-loopback address, and writers send their UDP rings
there. The kernel delivers those locally, but the benchmark keeps every
packet on 127.0.0.1, so importing this module makes the worker advertise
127.0.0.1 instead (the same rings, to the same socket, which listens on
every address). bench/peers.py checks the address the doorbell registered.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from peer_common import body, record_body

import mopq

QUEUE = "bench"
LOOPBACK = "127.0.0.1"


def _advertise_loopback() -> None:
    for name in ("mopq.hosts", "mopq.doorbell", "mopq.worker"):
        module = sys.modules.get(name) or __import__(name, fromlist=["host_ip"])
        if hasattr(module, "host_ip"):
            module.host_ip = lambda: LOOPBACK


_advertise_loopback()


def handle(message: mopq.Message) -> None:
    record_body(message.body)


def sender() -> Callable[[str, int, float], object]:
    queue = mopq.Queue(QUEUE)
    return lambda phase, seq, sent: queue.write(body(phase, seq, sent))


def close() -> None:
    """Publish the buffered 'written' events before the producer exits."""
    mopq.flush()
