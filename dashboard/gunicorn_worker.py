"""gunicorn's threaded worker, keeping a busy keep-alive connection on its thread a moment.

Why: gthread hands every keep-alive request across threads twice. The
thread that answered gives the connection back to the main thread's poller
(a wake-up through a pipe, a register), and when the next request arrives the
poller unregisters it and submits it to the pool again. A queue client sends
its next request (the claim after the write, the acknowledgement after the
claim) within a millisecond or two, so it pays those handoffs, and the GIL
handoffs between the threads that make them, on every request: in a profile
of gthread serving a trivial app they took more samples than parsing the
request (docs/BENCHMARKS.md, "The queue API's worker").

This worker lets the thread that answered wait up to ``LINGER_SECONDS`` for
that connection's next request and serve it itself. A connection that stays
quiet goes back to the poller exactly as under gthread, with gunicorn's
keep-alive timeout unchanged, so a thread is never held longer than that per
request. Everything else is gthread's: a Socket.IO websocket keeps the thread
that upgraded it until it closes, as before; TLS connections are left to
gthread (bytes already decrypted do not make the socket readable), and so is
a connection whose next request was already partly read.
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
        while keep is True and self.alive and not self.cfg.is_ssl \
                and not _read_ahead(conn) and _readable_soon(conn.sock):
            keep = super().handle(conn)
        return keep


def _readable_soon(sock: Any) -> bool:
    """Whether ``sock`` has bytes (or its peer closed it) within ``LINGER_SECONDS``."""
    try:
        waiting = select.poll()
        waiting.register(sock.fileno(), select.POLLIN)
        return bool(waiting.poll(LINGER_SECONDS * 1000))
    except (OSError, ValueError):  # closed meanwhile: gthread's own path decides
        return False


def _read_ahead(conn: Any) -> bool:
    """Whether the parser already holds bytes of the next request (gthread queues those).

    Unknown internals (another gunicorn) count as read ahead: no lingering then.
    """
    unreader = getattr(getattr(conn, "parser", None), "unreader", None)
    buffer = getattr(unreader, "buf", None)
    return buffer is None or bool(buffer.getvalue())
