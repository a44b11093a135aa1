"""Imported first by a script, it counts every command that process sends to the engine.

``pymongo.monitoring.register`` applies to clients made after it, so this must
be imported before mopq makes its client. Used to measure an idle worker's
load on the engine (tests/test_pickup.py, bench/bench_pickup.py).
"""

from __future__ import annotations

from pymongo import monitoring


class Counter(monitoring.CommandListener):
    commands = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        Counter.commands += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


monitoring.register(Counter())
