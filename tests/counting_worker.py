"""A gunicorn app for tests/test_gunicorn_worker.py: the dashboard's worker class, counted.

``CountingWorker`` is ``LingeringThreadWorker`` counting how often a
connection was handed to its thread pool (``enqueue_req``: a new connection,
or a keep-alive one the poller saw readable again); ``app`` answers each
request with that count, so a test sees from outside which requests went
through the poller.
"""

from __future__ import annotations

import json
from typing import Any

from mopq.dashboard.gunicorn_worker import LingeringThreadWorker

handed_to_pool = 0


class CountingWorker(LingeringThreadWorker):
    def enqueue_req(self, conn: Any) -> None:
        global handed_to_pool
        handed_to_pool += 1
        super().enqueue_req(conn)


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    body = environ["wsgi.input"].read()
    answer = json.dumps({"handed_to_pool": handed_to_pool, "received": len(body)}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(answer)))])
    return [answer]
