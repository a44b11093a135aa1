"""The scheduler: fires every due tick of every schedule once, however many run at once.

``Scheduler`` runs in a daemon thread of any process (like ``Collector``) or as
``mopq schedule`` in the foreground; any number may run against one database.
Each pass reads the schedules and, for each one whose next run has come, claims
one tick by a compare-and-set on the schedule's document, writes its message
under the tick's key (``store.tick_key``, so a second write finds the first),
and releases the claim with the outcome. How and why: ``mopq.schedules``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import secrets
import socket
import sys
from collections.abc import Callable, Iterable
from typing import Any

from pymongo import ReturnDocument
from pymongo.database import Database
from pymongo.errors import PyMongoError

from mopq import validation
from mopq.background import Background, retry_delay
from mopq.clock import utcnow
from mopq.connection import get_database, prepared
from mopq.errors import InvalidInput
from mopq.queue import Queue
from mopq.schedules.definition import Schedule, load_file
from mopq.schedules.store import (
    SCHEDULED,
    Fired,
    collection,
    define,
    recorded,
    tick_key,
    timing_of,
    write_message,
)
from mopq.schedules.timing import (
    DEFAULT_CATCH_UP,
    DEFAULT_GRACE_SECONDS,
    DEFAULT_MAX_CATCH_UP,
    MAX_CATCH_UP,
    plan,
)

log = logging.getLogger("mopq.schedules")

FIRE_LEASE_SECONDS = 5.0
POLL_SECONDS = 1.0
AGAIN = object()  # Scheduler._step: the schedule changed, look at it again


# -- the scheduler --------------------------------------------------------------------------

class Scheduler(Background):
    """Fire the due ticks of every schedule in the database; any number may run at once.

    ``schedules`` (and those of ``file``) are defined when it starts. ``clock``
    gives the time (tests move it); ``lease_seconds`` is how long a claimed
    tick stays this scheduler's before another may finish it.
    """

    thread_name = "mopq-scheduler"

    def __init__(self, schedules: Iterable[Schedule] = (), *, file: str | None = None,
                 uri: str | None = None, database: str | None = None,
                 db: Database | None = None, poll_interval: float = POLL_SECONDS,
                 lease_seconds: float = FIRE_LEASE_SECONDS,
                 clock: Callable[[], dt.datetime] = utcnow) -> None:
        super().__init__()
        self.db = prepared(db) if db is not None else get_database(uri, database)
        self.schedules = list(schedules) + (load_file(file) if file else [])
        self.poll_interval = validation.non_negative("poll_interval", poll_interval)
        self.lease = dt.timedelta(seconds=validation.non_negative("lease_seconds",
                                                                  lease_seconds))
        self.clock = clock
        self.id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.fired: list[Fired] = []     # the last passes' (kept short)
        self.last_error: str | None = None
        self._queues: dict[str, Queue] = {}
        self._defined = False

    def __repr__(self) -> str:
        return f"Scheduler({self.id!r}, database={self.db.name!r})"

    def define_all(self) -> None:
        """Define this scheduler's own schedules (done once, at the first pass)."""
        for schedule in self.schedules:
            define(self.db, schedule, self.clock())
        self._defined = True

    def run(self) -> None:
        """The loop: fire what is due, then sleep until the next tick (or the poll interval)."""
        failures = 0
        while not self.stopping.is_set():
            try:
                if not self._defined:
                    self.define_all()
                wake = self.run_once()
                failures = 0
                self.last_error = None
                wait = self.poll_interval if wake is None else \
                    (wake - self.clock()).total_seconds()
                self.stopping.wait(min(self.poll_interval, max(0.005, wait)))
            except PyMongoError as error:
                failures += 1
                self.last_error = str(error)
                wait = retry_delay(failures)
                log.warning("mopq scheduler: %s; retrying in %.1f s", error, wait)
                self.stopping.wait(wait)

    def run_once(self, now: dt.datetime | None = None) -> dt.datetime | None:
        """One pass over every schedule; returns when the next one is due (None: unknown).

        What it fired is in ``self.fired``. A schedule this scheduler cannot
        read (a document edited by hand) is logged and passed over; the others
        still fire. The engine failing raises (``run`` retries).
        """
        now = now or self.clock()
        wake: dt.datetime | None = None
        for document in collection(self.db).find({}):
            try:
                due = self._settle(document, now)
            except PyMongoError:
                raise
            except Exception as error:
                log.error("mopq schedule %s cannot be fired: %s: %s; define it again (in code, "
                          "its file or the Schedules page)", document.get("_id"),
                          type(error).__name__, error)
                continue
            if due is not None and (wake is None or due < wake):
                wake = due
        return wake

    def _settle(self, document: dict[str, Any], now: dt.datetime) -> dt.datetime | None:
        """Fire each of a schedule's due ticks (catch-up "all" may have many); when next due."""
        for _ in range(MAX_CATCH_UP + 2):  # each step fires at most one tick
            due = self._step(document, now)
            if due is not AGAIN:
                return due
            document = collection(self.db).find_one({"_id": document["_id"]})
            if document is None:  # deleted meanwhile
                return None
        return now

    def _step(self, document: dict[str, Any], now: dt.datetime) -> Any:
        """Fire at most one due tick of a schedule.

        Returns AGAIN when it changed the schedule (look at it again), else when
        it is next due (None: not known; paused, or it never fires).
        """
        firing = document.get("firing")
        if firing:
            if firing.get("by") != self.id and firing["until"] > now:
                return firing["until"]            # another scheduler is writing a tick
            document = self._take_over(document, firing, now)
            if document is not None:
                self._finish(document, now)
            return AGAIN
        next_run = document.get("next_run")
        if document.get("paused") or next_run is None:
            return None
        if next_run > now:
            return next_run
        timing = timing_of(document)
        chosen = plan(timing, next_run, now, document.get("catch_up", DEFAULT_CATCH_UP),
                      document.get("max_catch_up", DEFAULT_MAX_CATCH_UP),
                      document.get("grace_seconds", DEFAULT_GRACE_SECONDS))
        update: dict[str, Any] = {"$set": {"next_run": chosen.next_run}}
        if chosen.fire is not None:
            update["$set"]["firing"] = self._claim(chosen.fire, now)
        if chosen.skipped_first is not None:
            count = timing.count_between(chosen.skipped_first, chosen.skipped_last)
            update["$set"]["last_skipped"] = {"first": chosen.skipped_first,
                                              "last": chosen.skipped_last, "count": count,
                                              "at": now}
            update["$inc"] = {"skipped": count}
            log.info("mopq schedule %s: skipped %d missed tick(s) from %s to %s (catch_up %s)",
                     document["_id"], count, chosen.skipped_first, chosen.skipped_last,
                     document.get("catch_up"))
        claimed = collection(self.db).find_one_and_update(
            {"_id": document["_id"], "next_run": next_run, "firing": None, "paused": False,
             "timing": timing.key},
            update, return_document=ReturnDocument.AFTER)
        if claimed is not None and chosen.fire is not None:
            self._finish(claimed, now)
        return AGAIN  # fired, skipped, or another scheduler moved it on: look again

    def _claim(self, tick: dt.datetime, now: dt.datetime) -> dict[str, Any]:
        """A claim on ``tick``: this scheduler's until its lease ends, under a fresh token."""
        return {"tick": tick, "by": self.id, "token": secrets.token_hex(8),
                "until": now + self.lease}

    def _take_over(self, document: dict[str, Any], firing: dict[str, Any],
                   now: dt.datetime) -> dict[str, Any] | None:
        """Claim anew a tick whose scheduler's lease passed (it died), or this one's own.

        A compare-and-set on the claim as read, with a new token: of several
        schedulers that find the same lapsed claim one takes it, and the one
        that lapsed (if only stalled) can no longer record its outcome.
        """
        return collection(self.db).find_one_and_update(
            {"_id": document["_id"], "firing.token": firing["token"],
             "firing.until": firing["until"]},
            {"$set": {"firing": self._claim(firing["tick"], now)}},
            return_document=ReturnDocument.AFTER)

    def _finish(self, document: dict[str, Any], now: dt.datetime) -> Fired:
        """Write the claimed tick's message (idempotent), then release the claim."""
        firing = document["firing"]
        fired = self._write(document, firing["tick"])
        update = recorded(fired, now, SCHEDULED, self.id)
        update["$set"]["firing"] = None
        collection(self.db).update_one({"_id": document["_id"], "firing.token": firing["token"]},
                                       update)
        self.fired = (self.fired + [fired])[-1000:]
        log.debug("mopq schedule %s: tick %s %s", fired.schedule, fired.tick, fired.outcome)
        return fired

    def _write(self, document: dict[str, Any], tick: dt.datetime) -> Fired:
        return write_message(self.db, self._queues, document, tick_key(document["_id"], tick),
                             tick)


# -- the command ----------------------------------------------------------------------------

def _cmd_schedule(args: argparse.Namespace) -> int:
    try:
        loaded = load_file(args.file) if args.file else []
    except InvalidInput as error:
        print(f"mopq schedule: {error}", file=sys.stderr)
        return 2
    if args.check:
        for schedule in loaded:
            timing = f"every {schedule.every} s" if schedule.every else \
                f"cron {schedule.cron!r} in {schedule.timezone}"
            print(f"{schedule.name}: {timing} -> queue {schedule.queue} "
                  f"(catch_up {schedule.catch_up})")
        print(f"mopq schedule: {len(loaded)} schedule(s) in {args.file or 'no file'} are valid.")
        return 0
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    scheduler = Scheduler(loaded, poll_interval=args.poll_interval,
                          lease_seconds=args.lease_seconds)
    try:
        scheduler.define_all()
    except PyMongoError as error:
        print(f"mopq schedule: cannot reach MongoDB: {error}", file=sys.stderr)
        return 1
    print(f"mopq schedule: scheduler {scheduler.id} on database {scheduler.db.name}; "
          f"{len(loaded)} schedule(s) defined from {args.file or 'no file'}; Ctrl-C stops it",
          flush=True)
    scheduler.run_in_foreground()
    return 0


def register(commands: Any) -> None:
    """Add ``schedule`` to the ``mopq`` command (entry point ``mopq.commands``)."""
    command = commands.add_parser("schedule", help="fire the schedules' ticks in the foreground")
    command.add_argument("--file", metavar="PATH",
                         help="define the schedules of this YAML (or .json) file at start")
    command.add_argument("--poll-interval", type=float, default=POLL_SECONDS,
                         metavar="SECONDS",
                         help=f"longest sleep between looks at the schedules (default "
                              f"{POLL_SECONDS:g})")
    command.add_argument("--lease-seconds", type=float, default=FIRE_LEASE_SECONDS,
                         metavar="SECONDS",
                         help="how long a tick this scheduler claimed stays its own before "
                              f"another may write it (default {FIRE_LEASE_SECONDS:g})")
    command.add_argument("--check", action="store_true",
                         help="only check the file and list its schedules, then exit")
    command.set_defaults(func=_cmd_schedule)
