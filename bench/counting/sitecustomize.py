"""Counts the engine commands of a process bench/bench_seeing.py starts, and times two steps.

Python imports ``sitecustomize`` at start-up when it is on the path, before any
pymongo client exists, so the listener sees every command. Each process
(gunicorn's workers too, which fork after this ran) writes its own running
total to ``$MOPQ_BENCH_COUNTS/<role>-<pid>.count`` at most every 0.2 s, where
``<role>`` is ``$MOPQ_BENCH_ROLE``.

It also notes, in ``<role>-<pid>.times`` (``<kind> <time> <message id>`` a line),
when an ``acked`` event (id ``<message>:...:a``) reached the business log
(``published``: the worker's insert answered) and when the collector's counter
update that applied it answered (``applied``: the last ``counters`` update
before the ``delete`` of those events), so bench_seeing can say where the time
goes between an acknowledgement and a count.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from pymongo import monitoring

FOLDER = os.environ.get("MOPQ_BENCH_COUNTS")
EVENTS, COUNTERS = "events", "counters"


def _acked_ids(documents: list[Any], key: str) -> list[str]:
    ids = [str(document.get(key, "")) for document in documents or []]
    return [i.split(":")[0] for i in ids if i.endswith(":a")]


class _Counted(monitoring.CommandListener):
    def __init__(self) -> None:
        self.pid = 0
        self.commands = 0
        self._inserting: dict[int, list[str]] = {}
        self._counting: set[int] = set()
        self._counted_at = 0.0
        self._times: list[str] = []
        self._lock = threading.Lock()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self.pid != os.getpid():  # a forked child: its own total and writer
            self.pid, self.commands = os.getpid(), 0
            threading.Thread(target=self._write, args=(self.pid,), daemon=True).start()
        self.commands += 1
        command = event.command
        if command.get("insert") == EVENTS:
            ids = _acked_ids(command.get("documents"), "_id")
            if ids:
                self._inserting[event.request_id] = ids
        elif command.get("update") == COUNTERS:
            self._counting.add(event.request_id)
        elif command.get("delete") == EVENTS:
            ids = [i.split(":")[0] for i in (str(s["q"].get("_id", ""))
                                             for s in command.get("deletes") or [])
                   if i.endswith(":a")]
            with self._lock:
                self._times.extend(f"applied {self._counted_at:.6f} {i}" for i in ids)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        now = time.time()
        ids = self._inserting.pop(event.request_id, None)
        if ids:
            with self._lock:
                self._times.extend(f"published {now:.6f} {i}" for i in ids)
        if event.request_id in self._counting:
            self._counting.discard(event.request_id)
            self._counted_at = now

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._inserting.pop(event.request_id, None)
        self._counting.discard(event.request_id)

    def _write(self, pid: int) -> None:
        role = os.environ.get("MOPQ_BENCH_ROLE", "process")
        path = Path(FOLDER or ".") / f"{role}-{pid}.count"
        times = Path(FOLDER or ".") / f"{role}-{pid}.times"
        scratch = path.with_suffix(".tmp")
        while True:
            scratch.write_text(str(self.commands))
            scratch.replace(path)  # whole: a reader never sees it empty mid-write
            with self._lock:
                lines, self._times = self._times, []
            if lines:
                with times.open("a") as out:
                    out.write("\n".join(lines) + "\n")
            time.sleep(0.2)


if FOLDER:
    monitoring.register(_Counted())
