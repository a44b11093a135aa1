"""Small helpers shared by tests: waiting with a deadline, free ports."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable


def wait_until(predicate: Callable[[], object], timeout: float = 10.0,
               interval: float = 0.05, message: str = "condition") -> object:
    """Poll ``predicate`` until it returns something truthy or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def drain_log(db, collector=None) -> int:
    """Publish this process's buffered events, then apply the whole business log.

    With no ``collector`` given, one without a monitor (so no sweep runs) takes
    every partition. Returns how many events were applied.
    """
    from mopq import flush, schema
    from mopq.collectors import Collector

    assert flush(20), "events still unpublished after 20 s"
    collector = collector or Collector(db=db, monitor=False)
    collector.partitions.rebalance({})
    applied = 0
    while (step := collector.step()).applied + step.skipped:
        applied += step.applied
    assert db[schema.EVENTS].count_documents({}) == 0
    return applied


def conserved(row: dict) -> bool:
    """The conservation law of one queue's stats row (DESIGN.md invariant 3)."""
    return row["written"] == sum(row[field] for field in (
        "done", "expired", "removed", "dead", "pending", "inflight", "delayed"))


def run_script(script: str, *args: str, timeout: float = 120) -> dict:
    """Run ``script`` in a child Python (this interpreter, this environment) and return
    the JSON of its last line of output; the child must exit 0."""
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                            text=True, timeout=timeout, env=dict(os.environ))
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
