"""When a schedule ticks, and which missed tick fires when a scheduler comes back.

A schedule's timing is ``every=N`` seconds or a cron expression in a time zone.
``every=N`` ticks at whole multiples of N seconds since the Unix epoch (UTC),
so ``every=3600`` fires on the hour in every process alike, whichever started
first. A cron expression (five fields, read by ``cronsim``) ticks in its
``timezone`` (an IANA name, default UTC), with Debian cron's rules at
daylight-saving changes: a time skipped in spring runs at the first minute
after the gap, a time repeated in autumn runs once. A well-formed expression
that names no time that ever comes (``0 0 30 2 *``) is accepted, as crontab
accepts it, and never fires: its next run is None.

What a cron expression may be is one regular expression, ``CRON_PATTERN``:
the library checks definitions with it and the dashboard's API declares it,
so what ``/openapi.json`` documents is exactly what is accepted, and every
expression it matches is one cronsim reads (a property test holds that).

Ticks missed while every scheduler was down are handled by the schedule's
``catch_up`` policy when a scheduler comes back (``plan``):

* ``"latest"`` (the default): the most recent missed tick fires, late, once;
  older missed ticks are skipped.
* ``"skip"``: missed ticks are skipped; the most recent fires only if it is
  at most ``grace_seconds`` (60) late. So after an outage nothing fires until
  the next tick comes.
* ``"all"``: every missed tick fires, oldest first, up to the ``max_catch_up``
  (100) most recent ones; any older are skipped.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import zoneinfo
from dataclasses import dataclass

from cronsim import CronSim, CronSimError

CATCH_UP_POLICIES = ("latest", "skip", "all")
DEFAULT_CATCH_UP = "latest"
DEFAULT_GRACE_SECONDS = 60
DEFAULT_MAX_CATCH_UP = 100
MAX_CATCH_UP = 1000
MAX_CRON_LENGTH = 200
SKIPPED_COUNTED = 10_000   # skipped ticks are counted up to this many per catch-up
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
DST_REACH = dt.timedelta(hours=3)  # more than any clock change moves a zone's time


# -- the cron grammar ---------------------------------------------------------------------
# Five fields (minute hour day-of-month month day-of-week) of *, numbers in range, upward
# ranges, steps (/1 to /99), lists, month and day names (JAN or jan, MON or mon), L and LW
# (last day, last weekday of the month), 5L (last Friday) and 1#2 (second Monday).

MONTH_NAMES = "JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split()
DAY_NAMES = "SUN MON TUE WED THU FRI SAT".split()


def _numbers(low: int, high: int) -> str:
    """Integers from ``low`` to ``high`` (at most 99), without leading zeros."""
    parts = []
    if low <= 9:
        top = min(high, 9)
        parts.append(str(low) if low == top else f"[{low}-{top}]")
    for tens in range(max(1, low // 10), high // 10 + 1):
        first = low % 10 if tens == low // 10 else 0
        last = high % 10 if tens == high // 10 else 9
        parts.append(f"{tens}{first}" if first == last else f"{tens}[{first}-{last}]")
    return "|".join(parts)


def _cron_field(low: int, high: int, names: list[str] | tuple[str, ...] = (),
                extra: tuple[str, ...] = ()) -> str:
    values = [_numbers(low, high)] + [form for name in names for form in (name, name.lower())]
    ranges = [f"{start}-(?:{_numbers(start, high)})" for start in range(low, high + 1)]
    for index, name in enumerate(names):
        ranges.append(f"{name}-(?:{'|'.join(names[index:])})")
        ranges.append(f"{name.lower()}-(?:{'|'.join(n.lower() for n in names[index:])})")
    atom = rf"(?:\*|{'|'.join(ranges)}|{'|'.join(values)})(?:/[1-9][0-9]?)?"
    if extra:
        atom = f"(?:{'|'.join(extra)}|{atom})"
    return f"{atom}(?:,{atom})*"


_DAY_VALUE = f"{_numbers(0, 7)}|{'|'.join(n for d in DAY_NAMES for n in (d, d.lower()))}"
CRON_PATTERN = " ".join((
    _cron_field(0, 59), _cron_field(0, 23), _cron_field(1, 31, extra=("LW", "L")),
    _cron_field(1, 12, MONTH_NAMES),
    _cron_field(0, 7, DAY_NAMES, extra=("[0-7]L", f"(?:{_DAY_VALUE})#[1-5]"))))
CRON_WORDS = (f"a cron expression of at most {MAX_CRON_LENGTH} characters: five fields "
              "(minute hour day-of-month month day-of-week) separated by single spaces, each "
              "*, numbers, upward ranges (1-5), steps (*/15), lists (1,15), names (JAN, mon), "
              "L, LW, 5L or 1#2")
CRON = re.compile(CRON_PATTERN)


@functools.cache
def time_zones() -> frozenset[str]:
    """The IANA time zone names this machine knows (``tzdata`` fills in where it has none)."""
    return frozenset(zoneinfo.available_timezones() | {"UTC"})


# -- ticks ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Timing:
    """When a schedule ticks: every ``every`` seconds, or on ``cron`` in ``timezone``."""

    every: int | None = None
    cron: str | None = None
    timezone: str | None = None

    @property
    def key(self) -> str:
        """What the claims compare: a schedule whose timing changed is claimed anew."""
        return f"every {self.every}" if self.every else f"cron {self.cron} {self.timezone}"

    def _cron(self, start: dt.datetime, reverse: bool = False) -> CronSim | None:
        zone = dt.UTC if self.timezone == "UTC" else zoneinfo.ZoneInfo(self.timezone)
        try:
            return CronSim(self.cron, start.astimezone(zone), reverse=reverse)
        except CronSimError:  # well-formed (the grammar) but no such day: 0 0 30 2 *
            return None

    def after(self, moment: dt.datetime) -> dt.datetime | None:
        """The first tick strictly after ``moment`` (None: there is none)."""
        if self.every:
            step = dt.timedelta(seconds=self.every)
            return EPOCH + ((moment - EPOCH) // step + 1) * step
        ticks = self._cron(moment)
        if ticks is None:
            return None
        for _ in range(1000):
            try:
                tick = next(ticks).astimezone(dt.UTC)
            except StopIteration:  # none in 50 years
                return None
            if tick > moment:  # a time in a repeated autumn hour can read as earlier
                return tick
        return None

    def at_or_before(self, moment: dt.datetime) -> dt.datetime | None:
        """The last tick at or before ``moment`` (None: there is none)."""
        return next(iter(self.back(moment, 1)), None)

    def back(self, moment: dt.datetime, count: int,
             floor: dt.datetime | None = None) -> list[dt.datetime]:
        """Up to ``count`` ticks at or before ``moment`` and not before ``floor``, newest first."""
        found: list[dt.datetime] = []
        if self.every:
            step = dt.timedelta(seconds=self.every)
            tick = EPOCH + ((moment - EPOCH) // step) * step
            while len(found) < count and (floor is None or tick >= floor):
                found.append(tick)
                tick -= step
            return found
        # cronsim's reverse iteration starts at the whole second when given microseconds.
        start = moment if moment.microsecond else moment + dt.timedelta(microseconds=1)
        if self.timezone != "UTC":
            # Near a clock change cronsim counts back in local time, from which a time in
            # a repeated autumn hour misses the first pass of that hour: start past it.
            zone = zoneinfo.ZoneInfo(self.timezone)
            if zone.utcoffset(moment - DST_REACH) != zone.utcoffset(moment + DST_REACH):
                start = moment + DST_REACH
        ticks = self._cron(start, reverse=True)
        if ticks is None:
            return found
        for _ in range(count + 1000):
            try:
                tick = next(ticks).astimezone(dt.UTC)
            except StopIteration:
                break
            if floor is not None and tick < floor:
                break
            if tick <= moment and (not found or tick < found[-1]):
                found.append(tick)
                if len(found) >= count:
                    break
        return found

    def count_between(self, first: dt.datetime, last: dt.datetime,
                      cap: int = SKIPPED_COUNTED) -> int:
        """How many ticks from ``first`` to ``last`` (both ticks), counted up to ``cap``."""
        if last < first:
            return 0
        if self.every:
            return min(cap, (last - first) // dt.timedelta(seconds=self.every) + 1)
        count = 1
        ticks = self._cron(first)
        while ticks is not None and count < cap:
            try:
                tick = next(ticks).astimezone(dt.UTC)
            except StopIteration:
                break
            if tick > last:
                break
            count += tick > first
        return count


# -- catching up ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """What to do with a schedule whose next run has come: a tick to fire, ticks skipped."""

    fire: dt.datetime | None
    next_run: dt.datetime | None
    skipped_first: dt.datetime | None = None
    skipped_last: dt.datetime | None = None


def plan(timing: Timing, next_run: dt.datetime, now: dt.datetime, catch_up: str,
         max_catch_up: int = DEFAULT_MAX_CATCH_UP,
         grace_seconds: float = DEFAULT_GRACE_SECONDS) -> Plan:
    """The tick to fire now, by the catch-up policy, for ticks due from ``next_run`` to ``now``.

    Every tick from ``next_run`` up to the one fired is skipped; the new next run
    is the tick after the one fired (after now, when none is). The scheduler
    calls it again after each tick it fires, so "all" fires its ticks one by one.
    """
    following = timing.after(next_run)
    if following is None or following > now:  # one tick due: the usual case
        due_last = next_run
    else:
        due_last = timing.at_or_before(now) or next_run
    if catch_up == "all":
        oldest = timing.back(now, max_catch_up, floor=next_run)
        fire = oldest[-1] if oldest else next_run
    elif catch_up == "skip" and (now - due_last).total_seconds() > grace_seconds:
        fire = None
    else:
        fire = due_last
    if fire is None:
        return Plan(None, timing.after(max(now, due_last)), next_run, due_last)
    skipped_last = timing.back(fire - dt.timedelta(microseconds=1), 1, floor=next_run) \
        if fire > next_run else []
    return Plan(fire, timing.after(fire), next_run if skipped_last else None,
                skipped_last[0] if skipped_last else None)
