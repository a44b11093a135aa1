"""gunicorn's threaded worker, keeping a busy keep-alive connection on its thread a moment.

Why: gthread hands every keep-alive request across threads twice — the
thread that answered gives the connection back to the main thread's poller,
which, when the next request arrives, submits it to the pool again. A queue
client sends its next request (claim after write, ack after claim) within a
millisecond or two, so those handoffs cost more CPU per request than many of
the queue API's own steps (measured: bench/bench_clients.py, docs/BENCHMARKS.md).
This worker lets the thread that answered wait up to ``LINGER_SECONDS`` for
the connection's next request and serve it itself; a quiet connection goes
back to the poller as before, with gunicorn's keep-alive timeout unchanged.

Everything else is gthread's, Socket.IO's websockets included (the thread
that upgrades a connection keeps it until it closes, as before). TLS
connections are left to gthread: bytes already decrypted do not make the
socket readable.
"""

from __future__ import annotations

import select
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

LINGER_SECONDS = 0.005


class LingeringThreadWorker(ThreadWorker):
    """gthread, serving a connection's next request on the same thread if it comes soon."""

    def handle(self, conn: Any) -> Any:
        keep = super().handle(conn)
        while keep is True and self.alive and not self.cfg.is_ssl and not _buffered(conn):
            try:
                readable, _, _ = select.select([conn.sock], [], [], LINGER_SECONDS)
            except (OSError, ValueError):  # closed meanwhile: gthread's own path decides
                return keep
            if not readable:
                return keep
            keep = super().handle(conn)
        return keep


def _buffered(conn: Any) -> bool:
    """Whether the parser already read part of the next request (gthread re-queues those)."""
    unreader = getattr(getattr(conn, "parser", None), "unreader", None)
    buffer = getattr(unreader, "buf", None)
    return buffer is None or bool(buffer.getvalue())
