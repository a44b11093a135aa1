"""Counts the engine commands of a process bench/bench_seeing.py starts (collector, dashboard).

Python imports ``sitecustomize`` at start-up when it is on the path, before any
pymongo client exists, so the listener sees every command. Each process
(gunicorn's workers too, which fork after this ran) writes its own running
total to ``$MOPQ_BENCH_COUNTS/<role>-<pid>.count`` at most every 0.2 s, where
``<role>`` is ``$MOPQ_BENCH_ROLE``.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from pymongo import monitoring

FOLDER = os.environ.get("MOPQ_BENCH_COUNTS")


class _Counted(monitoring.CommandListener):
    def __init__(self) -> None:
        self.pid = 0
        self.commands = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self.pid != os.getpid():  # a forked child: its own total and writer
            self.pid, self.commands = os.getpid(), 0
            threading.Thread(target=self._write, args=(self.pid,), daemon=True).start()
        self.commands += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def _write(self, pid: int) -> None:
        role = os.environ.get("MOPQ_BENCH_ROLE", "process")
        path = Path(FOLDER or ".") / f"{role}-{pid}.count"
        while True:
            path.write_text(str(self.commands))
            time.sleep(0.2)


if FOLDER:
    monitoring.register(_Counted())
