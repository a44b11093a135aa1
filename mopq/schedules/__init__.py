"""Schedules: a given message written to a given queue on a cron expression or an interval.

A schedule is defined in code, in a YAML (or JSON) file a scheduler loads at
start, or by an admin on the dashboard's Schedules page; either way it is one
document of the ``schedules`` collection, keyed by its name::

    from mopq.schedules import Schedule, Scheduler
    nightly = Schedule("nightly-report", "reports", {"kind": "nightly"},
                       cron="0 3 * * *", timezone="Europe/Paris", catch_up="latest")
    ping = Schedule("ping", "pings", {}, every=60)
    scheduler = Scheduler([nightly, ping]).start()   # a daemon thread, like Collector
    ...
    scheduler.stop()

``mopq schedule [--file schedules.yaml]`` runs one in the foreground. Any
number of schedulers may run at once, in any processes.

The parts: ``timing`` (cron and intervals, the catch-up policies),
``definition`` (``Schedule``, ``load_file``), ``store`` (the collection:
define, pause, resume, run now, delete, and writing a tick), ``scheduler``
(``Scheduler`` and the ``mopq schedule`` command).

Why each tick fires once. A tick is one scheduled time of one schedule. Its
message is written with ``Queue.write_once(key="schedule:<name>:<tick, ISO UTC>")``,
so writing the same tick twice writes one message (while it is unfinished, and
for as long as history keeps it once done: ``MOPQ_HISTORY_SECONDS``). Around
that write, the schedule's document is the entity every scheduler changes by
compare-and-set only (DESIGN.md: one document, one atomic update):

1. *claim*: ``{_id: name, next_run: T, firing: null, paused: false, timing: ...}``
   becomes ``{next_run: <the tick after>, firing: {tick: T, by, token, until}}``.
   One scheduler's update matches; the others' match nothing and move on.
2. *write* the tick's message with its key.
3. *finish*: ``{_id: name, "firing.token": token}`` gets ``firing: null`` and
   ``last_run``, ``last_message``, ``last_outcome``.

A scheduler killed between 1 and 3 leaves ``firing`` set; once its ``until``
(the fire lease, ``FIRE_LEASE_SECONDS``) has passed, one scheduler takes the
claim over (a compare-and-set on the claim, with a new token) and writes the
same tick again: the key makes that write find the first one's message
(outcome "already written") if there was one. So a claim is never lost, a
tick is written by one scheduler at a time, and once. The leases compare
each scheduler's clock with the others': keep the machines' clocks in step
(NTP) to well within the lease. The one gap: a tick's message that expired
(``expire``) or was removed by an operator before a takeover re-wrote it
frees its key, so a scheduler stalled past its lease and then resumed could
write it again.

Ticks missed while every scheduler was down follow the schedule's
``catch_up``: "latest" (the default) fires the most recent once, "skip" fires
none (unless at most ``grace_seconds`` late), "all" fires each up to
``max_catch_up`` (``timing`` says exactly). Skipped ticks are recorded
(``skipped``, ``last_skipped``), never written. While a schedule is paused
its ticks are not missed but dropped: resuming starts from the next tick
after now.

The ``schedules`` document::

    {_id: name, queue, body, routing_key, priority, expire, delay, activity,
     every, cron, timezone,          # every (seconds) or cron + timezone
     timing,                         # "every 60" | "cron 0 3 * * * Europe/Paris"
     catch_up, max_catch_up, grace_seconds,
     source,                         # "code" | "file" | "dashboard"
     paused, paused_at, created_at, updated_at,
     next_run,                       # the next tick to fire (None: never)
     firing: {tick, by, token, until} | None,   # a claimed tick being written
     last_run,                       # the tick (or, run now, the time) last fired
     last_fired_at, last_message, last_outcome,  # "written" | "already written" | "error"
     last_error, last_trigger,       # "schedule" | "manual"
     last_by,                        # the scheduler's id, or who ran it now
     fired, skipped, last_skipped: {first, last, count, at}}

Defining a schedule again (a scheduler restarted with the same file) keeps its
next run when its timing is unchanged, so ticks missed meanwhile are caught up
by its policy, and keeps it paused if an admin paused it.
"""

from mopq.schedules.definition import (
    MAX_EVERY_SECONDS,
    MAX_EXPIRE_SECONDS,
    MAX_GRACE_SECONDS,
    NAME_PATTERN,
    NAME_WORDS,
    SOURCES,
    Schedule,
    load_file,
)
from mopq.schedules.scheduler import FIRE_LEASE_SECONDS, POLL_SECONDS, Scheduler, register
from mopq.schedules.store import (
    ALREADY_WRITTEN,
    ERROR,
    MANUAL,
    SCHEDULED,
    WRITTEN,
    Fired,
    ScheduleNotFound,
    define,
    delete,
    get,
    listing,
    pause,
    resume,
    run_now,
    tick_key,
    view,
)
from mopq.schedules.timing import (
    CATCH_UP_POLICIES,
    CRON_PATTERN,
    CRON_WORDS,
    DEFAULT_CATCH_UP,
    DEFAULT_GRACE_SECONDS,
    DEFAULT_MAX_CATCH_UP,
    MAX_CATCH_UP,
    MAX_CRON_LENGTH,
    Plan,
    Timing,
    plan,
    time_zones,
)

__all__ = [
    "ALREADY_WRITTEN", "CATCH_UP_POLICIES", "CRON_PATTERN", "CRON_WORDS", "DEFAULT_CATCH_UP",
    "DEFAULT_GRACE_SECONDS", "DEFAULT_MAX_CATCH_UP", "ERROR", "FIRE_LEASE_SECONDS", "MANUAL",
    "MAX_CATCH_UP", "MAX_CRON_LENGTH", "MAX_EVERY_SECONDS", "MAX_EXPIRE_SECONDS",
    "MAX_GRACE_SECONDS", "NAME_PATTERN", "NAME_WORDS", "POLL_SECONDS", "SCHEDULED", "SOURCES",
    "WRITTEN", "Fired", "Plan", "Schedule", "ScheduleNotFound", "Scheduler", "Timing", "define",
    "delete", "get", "listing", "load_file", "pause", "plan", "register", "resume", "run_now",
    "tick_key", "time_zones", "view",
]
