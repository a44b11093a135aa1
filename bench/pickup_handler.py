"""The handler bench/bench_pickup.py runs under ``mopq worker``: it records pickup delays.

Each message carries ``t``, the writer's ``time.time()`` just before the
write; the handler appends ``now - t`` (seconds) to the file named by
``MOPQ_PICKUP_LOG``, one line each, flushed at once.
"""

from __future__ import annotations

import os
import time

_log = open(os.environ.get("MOPQ_PICKUP_LOG", os.devnull), "a", buffering=1)  # noqa: SIM115


def handle(message) -> None:
    _log.write(f"{time.time() - message.body['t']:.6f}\n")
