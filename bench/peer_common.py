"""What every handler of bench/peers.py does: record one line, nothing else.

Imported by the handlers of every system (mopq, kombu, Celery, RQ, Dramatiq,
raw pymongo), in the project's virtual environment and in the peers' one, so
it imports nothing outside the standard library.

A handled task appends ``<phase> <seq> <sent> <start> <end> <pid>`` to
``$PEERS_RECORD_DIR/<pid>.rec``: the time the producer took just before its
send call, the time the handler was entered and the time it was about to
return (epoch seconds, ``time.time()``, the same clock for every process of
the machine). The file is opened, appended to (one ``write`` of a short line,
atomic with ``O_APPEND``) and closed on every call, so a handler run in a
forked child (RQ's work horse, Celery's pool process) records like any other.
That costs about 10-20 microseconds per task, the same for every system.
"""

from __future__ import annotations

import os
import time

RECORD_DIR = "PEERS_RECORD_DIR"


def record(phase: str, seq: int, sent: float) -> None:
    """The no-op handler's whole work: note when it ran."""
    start = time.time()
    folder = os.environ.get(RECORD_DIR)
    if not folder:
        return
    pid = os.getpid()
    line = f"{phase} {seq} {sent:.6f} {start:.6f} {time.time():.6f} {pid}\n".encode()
    descriptor = os.open(os.path.join(folder, f"{pid}.rec"),
                         os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, line)
    finally:
        os.close(descriptor)


def body(phase: str, seq: int, sent: float) -> dict:
    """The message body of the systems that send a document (mopq, kombu, raw)."""
    return {"p": phase, "i": seq, "t": sent}


def record_body(document: dict) -> None:
    record(document["p"], document["i"], document["t"])
