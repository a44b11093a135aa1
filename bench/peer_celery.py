"""Celery with Redis for bench/peers.py (run in the peers' virtual environment).

Worker: ``python -m celery -A peer_celery worker --concurrency 1 -E`` in
bench/ (prefork pool, one pool process; ``-E`` sends the task events Flower
shows). Monitor: ``python -m celery -A peer_celery flower``. No result backend
(the tasks return nothing). ``seen`` is the same no-op as ``noop`` under
another name, so Flower's ``/api/tasks?taskname=peer_celery.seen`` lists only
the tasks of the "done -> visible" row.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from celery import Celery
from peer_common import record

app = Celery("peer_celery", broker=os.environ.get("PEERS_REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(task_ignore_result=True, broker_connection_retry_on_startup=True)


@app.task(name="peer_celery.noop")
def noop(phase: str, seq: int, sent: float) -> None:
    record(phase, seq, sent)


@app.task(name="peer_celery.seen")
def seen(phase: str, seq: int, sent: float) -> None:
    record(phase, seq, sent)


def sender() -> Callable[[str, int, float], object]:
    return lambda phase, seq, sent: (seen if phase == "seen" else noop).delay(phase, seq, sent)
