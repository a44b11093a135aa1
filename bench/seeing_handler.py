"""The handler bench/bench_seeing.py runs under ``mopq worker``: it records each task's end.

Appends ``time.time()`` at the end of the handler and the message id to the
file named by ``MOPQ_SEEING_ENDS``, one line each, flushed at once.
"""

from __future__ import annotations

import os
import time

_ends = open(os.environ.get("MOPQ_SEEING_ENDS", os.devnull), "a", buffering=1)  # noqa: SIM115


def handle(message) -> None:
    _ends.write(f"{time.time():.6f} {message.id}\n")
