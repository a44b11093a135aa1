"""Open dashboard pages, as the benchmarks see them: Socket.IO clients on ``/live``.

Shared by bench/bench_seeing.py and bench/peers.py (``make bench``): a page
connects as the dashboard's own script does (websocket transport) and notes
when each ``stats`` push arrived and the count of done tasks it carried.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from typing import Any


def iso_time(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


class Page:
    """One open page: a Socket.IO client on /live noting (time, done) of each push."""

    def __init__(self, queue: str) -> None:
        import socketio

        self.queue = queue
        self.sio = socketio.Client(reconnection=False, request_timeout=5,
                                   websocket_extra_options={"skip_utf8_validation": True})
        self.pushes: list[tuple[float, int]] = []
        self.ages: list[float] = []  # each push's arrival minus its stats' generated_at
        self.arrivals: dict[str, float] = {}  # generated_at -> arrival
        self.sio.on("stats", self._on_stats, namespace="/live")

    def _on_stats(self, snapshot: dict[str, Any]) -> None:
        done = (snapshot.get("queues") or {}).get(self.queue, {}).get("done", 0)
        self.pushes.append((time.time(), int(done)))
        if "generated_at" in snapshot:
            self.ages.append(self.pushes[-1][0] - iso_time(snapshot["generated_at"]))
            self.arrivals.setdefault(snapshot["generated_at"], self.pushes[-1][0])

    def done(self) -> int | None:
        """The done count of the last push (None before the first)."""
        return self.pushes[-1][1] if self.pushes else None

    def open(self, url: str) -> None:
        self.sio.connect(url, namespaces=["/live"], transports=["websocket"], wait_timeout=10)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.sio.disconnect()


def latencies(ends: list[float], samples: list[tuple[float, int]], base: int) -> list[float]:
    """For the k-th end, the first sample (time, count) whose count reached base + k, minus it."""
    found, cursor = [], 0
    ordered = sorted(samples)
    for k, end in enumerate(sorted(ends), start=1):
        while cursor < len(ordered) and ordered[cursor][1] - base < k:
            cursor += 1
        if cursor == len(ordered):
            break
        found.append(ordered[cursor][0] - end)
    return found


def fan_out(pages: list[Page]) -> list[float]:
    """Per push, its last arrival at a page minus its first (pages of one process share it)."""
    arrivals: dict[str, list[float]] = {}
    for page in pages:
        for key, arrival in page.arrivals.items():
            arrivals.setdefault(key, []).append(arrival)
    return [max(times) - min(times) for times in arrivals.values() if len(times) > 1]
