"""Handlers that tests run inside ``mopq worker`` processes (``tests.handlers:NAME``).

Each handled message is recorded as one line ``<id> <attempts> <claimed_at epoch>``
in ``$MOPQ_TEST_RECORD_DIR/<pid>.txt``, so a test can tell which process
handled what, on which attempt, and when it was claimed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from mopq.message import Message

GATE_TIMEOUT_SECONDS = 120
NOT_CALLABLE = 42


def _record(message: Message) -> None:
    folder = os.environ.get("MOPQ_TEST_RECORD_DIR")
    if not folder:
        return
    line = f"{message.id} {message.attempts} {message.claimed_at.timestamp():.3f}\n"
    with open(Path(folder) / f"{os.getpid()}.txt", "a") as record:
        record.write(line)


def record(message: Message) -> None:
    """Record the message and return (so it is acknowledged)."""
    _record(message)


def gated(message: Message) -> None:
    """Wait until the file named by ``body["gate"]`` exists (if any), then record."""
    gate = message.body.get("gate")
    if gate:
        deadline = time.monotonic() + GATE_TIMEOUT_SECONDS
        while not os.path.exists(gate):
            if time.monotonic() > deadline:
                raise TimeoutError(f"gate {gate} never opened")
            time.sleep(0.02)
    _record(message)


def read_records(folder: Path) -> dict[int, list[tuple[str, int, float]]]:
    """``{pid: [(message id, attempts, claimed_at epoch), ...]}`` from a record folder."""
    records: dict[int, list[tuple[str, int, float]]] = {}
    for path in folder.glob("*.txt"):
        lines = path.read_text().splitlines()
        records[int(path.stem)] = [(mid, int(attempts), float(at))
                                   for mid, attempts, at in (line.split() for line in lines)]
    return records


def block_forever(message: Message) -> None:
    """Never return (for tests that kill the worker while it holds a message)."""
    while True:
        time.sleep(3600)
