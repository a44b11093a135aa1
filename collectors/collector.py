"""The collector: consumes the business log into counters and runs the monitor.

Embedding one in a service takes three lines::

    from mopq.collectors import Collector
    collector = Collector().start()      # a daemon thread; uri/database from env
    ...                                  # at shutdown: collector.stop()

``mopq collect`` runs one in the foreground. Any number may run at once: they
share the log's partitions through leases (``collectors.leases``) and apply
each batch exactly once (``collectors.batch``); one of them at a time, under
its own lease, also runs the monitor (``collectors.monitor``).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from typing import Any

from pymongo.database import Database
from pymongo.errors import PyMongoError

from mopq import schema
from mopq.background import Background, retry_delay
from mopq.collectors import leases
from mopq.collectors.batch import BatchResult, apply_batch
from mopq.collectors.monitor import Monitor, Thresholds
from mopq.config import settings
from mopq.connection import get_database, prepared
from mopq.doorbell import COUNTED, LOG, Doorbell, doorbell_for, ringer_for

log = logging.getLogger("mopq.collector")

MONITOR_LEASE = "monitor"


class Collector(Background):
    """Consume events in batches of up to ``batch_size`` or every ``poll_interval`` s."""

    thread_name = "mopq-collector"

    def __init__(self, uri: str | None = None, database: str | None = None, *,
                 db: Database | None = None, batch_size: int = 2000,
                 poll_interval: float = 0.2, rebalance_interval: float = 1.0,
                 monitor: bool = True, monitor_interval: float = 2.0,
                 lease_seconds: float = leases.LEASE_SECONDS,
                 thresholds: Thresholds | None = None) -> None:
        super().__init__()
        self.db = prepared(db) if db is not None else get_database(uri, database)
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        # Leases are renewed several times per lease period, so a busy moment
        # does not hand them to another collector.
        self.rebalance_interval = min(rebalance_interval, lease_seconds / 4)
        self.monitor_interval = monitor_interval
        self.lease_seconds = lease_seconds
        self.id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.partitions = leases.PartitionLeases(self.db, self.id, lease_seconds)
        self.monitor = Monitor(self.db, thresholds) if monitor else None
        self.events_applied = 0
        self.monitor_passes = 0
        self.last_error: str | None = None
        self.holds_monitor = False
        self._bell: Doorbell | None = None  # made by run(): step() alone needs none

    def __repr__(self) -> str:
        return f"Collector({self.id!r}, partitions={sorted(self.partitions.held)})"

    def start(self) -> Collector:
        """Run in a daemon thread; returns self."""
        schema.ensure_indexes(self.db)
        return super().start()

    def stop(self, timeout: float = 0.9) -> None:
        """Ask the loop to stop and wait up to ``timeout`` s (leases lapse if it cannot)."""
        super().stop(timeout)

    def run(self) -> None:
        """Rebalance leases and apply batches; the monitor runs beside (``_monitor_loop``)."""
        schema.ensure_indexes(self.db)
        presence: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(),
                                    "started_at": time.time()}
        next_rebalance = 0.0
        if settings().rings:
            self._bell = doorbell_for(self.db)
        monitoring = None
        if self.monitor is not None:
            monitoring = threading.Thread(target=self._monitor_loop, name="mopq-monitor",
                                          daemon=True)
            monitoring.start()
        failures = 0
        try:
            while not self.stopping.is_set():
                try:
                    now = time.monotonic()
                    rings = self._bell.rings([LOG]) if self._bell is not None else 0
                    if now >= next_rebalance:
                        self.partitions.rebalance(presence)
                        next_rebalance = now + self.rebalance_interval
                    result = self.step()
                    failures = 0
                    self.last_error = None
                    if result.lost_partitions:
                        next_rebalance = 0.0
                    if result.applied + result.skipped == 0:
                        self._idle(rings)
                except PyMongoError as error:
                    failures += 1
                    self.last_error = str(error)
                    wait = retry_delay(failures)
                    log.warning("mopq collector: %s; retrying in %.1f s", error, wait)
                    self.stopping.wait(wait)
        finally:
            if monitoring is not None:
                monitoring.join(self.rebalance_interval)
            try:
                self.partitions.release_all()
                if self.monitor is not None:
                    leases.release(self.db, MONITOR_LEASE, self.id)
            except PyMongoError:
                pass  # the leases lapse by themselves

    def _idle(self, rings: int) -> None:
        """Wait for new events: a publisher's ring of the log, or ``poll_interval`` at most.

        The ring is what makes a finished task visible in tens of milliseconds
        rather than up to a poll later; polling stays for publishers that do
        not ring (other languages, other hosts' firewalls).
        """
        if self._bell is None:
            self.stopping.wait(self.poll_interval)
        else:
            self._bell.wait([LOG], rings, self.poll_interval)

    def step(self) -> BatchResult:
        """Apply one batch from the partitions held now."""
        result = apply_batch(self.db, self.id, self.partitions.held, self.batch_size,
                             counted=self._ring_counted if self._bell is not None else None)
        self.events_applied += result.applied
        return result

    def _ring_counted(self) -> None:
        """Wake the dashboards waiting on ``COUNTED``: the counters hold a new batch.

        Why: a dashboard then reads the stats and pushes them to its pages at
        once, instead of at its next look (``dashboard.stats_cache``,
        ``dashboard.live``). Rung only where collectors wait on rings
        themselves (``MOPQ_RINGS``).
        """
        ringer_for(self.db).ring(COUNTED)

    def _monitor_loop(self) -> None:
        """Hold the monitor lease (renewed every ``rebalance_interval``) and run a pass every
        ``monitor_interval`` while holding it, in a thread of its own.

        Why a thread: a pass sends tens of commands (lost leases, dead workers, the
        outbox sweep, purges); run between two batches, it held back every count
        waiting behind it by as long.
        """
        next_pass = 0.0
        failures = 0
        while not self.stopping.is_set():
            wait = self.rebalance_interval
            try:
                self.holds_monitor = self._renew_monitor_lease()
                if self.holds_monitor and time.monotonic() >= next_pass:
                    self._monitor_pass()
                    next_pass = time.monotonic() + self.monitor_interval
                failures = 0
            except Exception as error:  # the thread must outlive any one pass
                failures += 1
                wait = retry_delay(failures)
                log.warning("mopq monitor: %s; retrying in %.1f s", error, wait,
                            exc_info=not isinstance(error, PyMongoError))
            self.stopping.wait(wait)

    def _renew_monitor_lease(self) -> bool:
        if self.monitor is None:
            return False
        return leases.acquire(self.db, MONITOR_LEASE, self.id, self.lease_seconds,
                              {"kind": "monitor"}) is not None

    def _monitor_pass(self) -> None:
        assert self.monitor is not None
        self.monitor.run_once()
        self.monitor_passes += 1
        self.db[schema.LEASES].update_one({"_id": MONITOR_LEASE, "owner": self.id},
                                          {"$inc": {f"passes.{self.id.replace('.', '_')}": 1}})
