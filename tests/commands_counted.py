"""Imported first by a script, it counts every command that process sends to the engine.

``pymongo.monitoring.register`` applies to clients made after it, so this must
be imported before mopq makes its client. Used to measure an idle worker's
load on the engine (tests/test_pickup.py, bench/bench_pickup.py) and how often
a worker looks for candidates in a queue (tests/test_worker_empty_queues.py).
"""

from __future__ import annotations

import collections

from pymongo import monitoring


class Counter(monitoring.CommandListener):
    commands = 0
    # Candidate reads (a find whose filter has visible_at), by the filter's queue as text.
    candidate_reads: collections.Counter[str] = collections.Counter()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        Counter.commands += 1
        if event.command_name == "find":
            looked_for = event.command.get("filter") or {}
            if "visible_at" in looked_for:
                Counter.candidate_reads[str(looked_for.get("queue"))] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


monitoring.register(Counter())
