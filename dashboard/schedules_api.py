"""The schedules over HTTP: list them, and (admins) define, pause, resume, run now, delete.

Every endpoint is declared once with ``dashboard.endpoints.endpoint``, its body
checked against the same cron grammar, time zones and limits as the library
(``mopq.schedules``), so what ``/openapi.json`` documents is what is accepted.
Admin actions go through ``dashboard.api.audited``: recorded in the audit log
before they run and completed after, CSRF-checked for browsers like every
admin action (``dashboard.auth``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from flask import Blueprint, jsonify
from pydantic import AfterValidator, Discriminator, Field, Tag, WithJsonSchema

from mopq import schedules
from mopq.dashboard import errors, openapi, store
from mopq.dashboard.api import audited, paged
from mopq.dashboard.endpoints import ADMIN, endpoint
from mopq.dashboard.openapi import INTEGER, MESSAGE_ID, STRING, TIME, nullable, ref
from mopq.dashboard.parameters import (
    Expect,
    PagedByHundred,
    QueueName,
    Strict,
    json_integer,
    text_type,
)
from mopq.dashboard.queue_api import BODY_BYTES, BODY_DEPTH, Body, JSONBody, Key
from mopq.dashboard.schedule_commands import ACTIONS
from mopq.queue import MAX_PRIORITY, MAX_VISIBILITY_TIMEOUT

blueprint = Blueprint("schedules_api", __name__)
errors.answer_in_json(blueprint)

ScheduleName = text_type(schedules.NAME_PATTERN, f"a schedule name: {schedules.NAME_WORDS}",
                         max_length=100, example="nightly-report")
Cron = text_type(schedules.CRON_PATTERN, schedules.CRON_WORDS,
                 max_length=schedules.MAX_CRON_LENGTH, example="0 3 * * *")


def _time_zone(value: str) -> str:
    if value not in schedules.time_zones():
        raise ValueError("not a time zone")
    return value


TimeZone = Annotated[str, AfterValidator(_time_zone),
                     WithJsonSchema({"type": "string",
                                     "enum": sorted(schedules.time_zones()),
                                     "examples": ["Europe/Paris"]}),
                     Expect("an IANA time zone name such as Europe/Paris or UTC")]
Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class ScheduleOptions(JSONBody):
    """What every schedule gives: the message, its options and the catch-up policy."""

    queue: QueueName = Field(description="The queue the message is written to.")
    body: Body = Field(default_factory=dict, description="The message body written each tick.")
    catch_up: Annotated[Literal[schedules.CATCH_UP_POLICIES],
                        Expect(f"one of {', '.join(schedules.CATCH_UP_POLICIES)}")] = Field(
        schedules.DEFAULT_CATCH_UP,
        description="Ticks missed while no scheduler ran: latest fires the most recent once; "
                    "skip fires none (the most recent only if at most grace_seconds late); "
                    "all fires each, up to max_catch_up.")
    max_catch_up: json_integer(1, schedules.MAX_CATCH_UP) = Field(
        schedules.DEFAULT_MAX_CATCH_UP, description="catch_up all: at most this many.")
    grace_seconds: json_integer(0, schedules.MAX_GRACE_SECONDS) = Field(
        schedules.DEFAULT_GRACE_SECONDS, description="catch_up skip: how late a tick may fire.")
    routing_key: Key = None
    priority: json_integer(-MAX_PRIORITY, MAX_PRIORITY) = 0
    expire: Annotated[Seconds, Field(le=schedules.MAX_EXPIRE_SECONDS), Expect(
        f"a number of seconds from 0 to {schedules.MAX_EXPIRE_SECONDS}")] = None
    delay: Annotated[Seconds, Field(le=MAX_VISIBILITY_TIMEOUT), Expect(
        f"a number of seconds from 0 to {MAX_VISIBILITY_TIMEOUT}")] = 0
    activity: Key = None

    def schedule(self, name: str, **timing: Any) -> schedules.Schedule:
        return schedules.Schedule(
            name, self.queue, self.body, catch_up=self.catch_up,
            max_catch_up=self.max_catch_up, grace_seconds=self.grace_seconds,
            routing_key=self.routing_key, priority=self.priority, expire=self.expire,
            delay=self.delay, activity=self.activity, source="dashboard", **timing)


class CronDefinition(ScheduleOptions):
    """A schedule on a cron expression, in a time zone."""

    cron: Cron = Field(description="Five fields: minute hour day-of-month month day-of-week.")
    timezone: TimeZone = Field("UTC", description="The IANA time zone the cron reads in.")

    def definition(self, name: str) -> schedules.Schedule:
        return self.schedule(name, cron=self.cron, timezone=self.timezone)


class IntervalDefinition(ScheduleOptions):
    """A schedule every so many seconds (on whole multiples since 1970, UTC)."""

    every: json_integer(1, schedules.MAX_EVERY_SECONDS) = Field(
        description="Seconds between ticks.")

    def definition(self, name: str) -> schedules.Schedule:
        return self.schedule(name, every=self.every)


def _timing_kind(value: Any) -> str:
    return "every" if isinstance(value, Mapping) and "every" in value else "cron"


Definition = Annotated[
    Annotated[CronDefinition, Tag("cron")] | Annotated[IntervalDefinition, Tag("every")],
    Discriminator(_timing_kind),
    Expect("give cron (with an optional timezone) or every (seconds), not both")]


class Empty(JSONBody):
    """{}: the action takes nothing more than the schedule's name."""


class SchedulePath(Strict):
    name: ScheduleName = Field(description="The schedule's name.")


# -- answers --------------------------------------------------------------------------------

SCHEDULE = {
    "type": "object",
    "required": ["name", "queue", "body", "paused", "next_run", "last_run", "last_message",
                 "last_outcome"],
    "properties": {
        "name": STRING, "queue": STRING, "body": {"type": "object"},
        "every": nullable(INTEGER), "cron": nullable(STRING), "timezone": nullable(STRING),
        "catch_up": {"type": "string", "enum": list(schedules.CATCH_UP_POLICIES)},
        "max_catch_up": INTEGER, "grace_seconds": INTEGER,
        "routing_key": nullable(STRING), "priority": INTEGER,
        "expire": nullable({"type": "number"}), "delay": {"type": "number"},
        "activity": nullable(STRING),
        "source": {"type": "string", "enum": list(schedules.SOURCES)},
        "paused": {"type": "boolean"}, "paused_at": nullable(TIME),
        "next_run": {"description": "The next tick to fire; null: it never comes.",
                     **nullable(TIME)},
        "last_run": {"description": "The tick last fired (the time, for run now).",
                     **nullable(TIME)},
        "last_fired_at": nullable(TIME),
        "last_message": nullable(MESSAGE_ID),
        "last_outcome": nullable({"type": "string", "enum": [
            schedules.WRITTEN, schedules.ALREADY_WRITTEN, schedules.ERROR]}),
        "last_error": nullable(STRING),
        "last_trigger": nullable({"type": "string",
                                   "enum": [schedules.SCHEDULED, schedules.MANUAL]}),
        "last_by": {"description": "The scheduler that fired the last run, or who ran it now.",
                    **nullable(STRING)},
        "fired": INTEGER, "skipped": INTEGER,
        "last_skipped": nullable({"type": "object", "properties": {
            "first": TIME, "last": TIME, "count": INTEGER, "at": TIME}}),
        "firing": nullable({"type": "object", "properties": {
            "tick": TIME, "by": STRING, "until": TIME}}),
        "created_at": nullable(TIME), "updated_at": nullable(TIME)}}
NOT_FOUND = {404: "No schedule of that name is defined."}


def _schedule_or_404(name: str) -> dict[str, Any] | Any:
    found = schedules.get(store.database(), name)
    if found is None:
        return errors.error(404, f"no schedule named {name!r} is defined.", parameter="name")
    return found


# -- reading --------------------------------------------------------------------------------

@endpoint(blueprint, "/api/schedules", summary="Every schedule with its next and last run",
          query=PagedByHundred, ok=openapi.page_of(SCHEDULE), safe=True, idempotent=True,
          ok_description="A page of schedules, by name.")
def schedule_list(query: PagedByHundred) -> Any:
    return jsonify(paged(schedules.listing(store.database()), query.page, query.per_page))


@endpoint(blueprint, "/api/schedules/<name>", summary="One schedule", path=SchedulePath,
          errors=(404,), error_descriptions=NOT_FOUND, ok=SCHEDULE, safe=True,
          idempotent=True, ok_description="The schedule.")
def schedule_detail(name: str) -> Any:
    found = _schedule_or_404(name)
    return jsonify(found) if isinstance(found, dict) else found


# -- admin actions --------------------------------------------------------------------------

@endpoint(blueprint, "/api/schedules/<name>", "PUT", access=ADMIN,
          summary="Define a schedule: create it, or replace its definition",
          path=SchedulePath, body=Definition, safe=False, idempotent=True, ok=ref("Count"),
          ok_description="1: the schedule is defined as given.", body_limit=BODY_BYTES,
          body_depth=BODY_DEPTH,
          description="Replacing keeps the next run when the timing is unchanged, and keeps a "
                      "paused schedule paused; a new timing starts from its next tick.")
def define_schedule(name: str, body: CronDefinition | IntervalDefinition) -> Any:
    schedule = body.definition(name)   # checked before anything is recorded
    target = {"schedule": name, "queue": schedule.queue}
    return audited("schedule.define", target,
                   lambda db: int(bool(schedules.define(db, schedule))))


def _act(word: str, name: str) -> Any:
    """Pause, resume or run ``name`` now (``schedule_commands.ACTIONS``), audited."""
    found = _schedule_or_404(name)
    if not isinstance(found, dict):
        return found
    action, run, _ = ACTIONS[word]

    def changed(db: Any) -> int:
        try:
            return int(run(db, name, "dashboard"))
        except schedules.ScheduleNotFound:  # deleted meanwhile
            return 0

    return audited(action, {"schedule": name, "queue": found["queue"]}, changed)


POSTED = {  # POST /api/schedules/<name>/<word>: (summary, idempotent, what the count says)
    "pause": ("Pause a schedule: its ticks are not fired until it is resumed", True,
              "1 if it was running, 0 if it was paused already."),
    "resume": ("Resume a schedule from its next tick after now (paused ticks are dropped)",
               True, "1 if it was paused, 0 if it was running already."),
    "run": ("Run a schedule now: write its message once more, outside its ticks", False,
            "1 if the message was written (its id is the schedule's last_message), 0 if it "
            "could not be."),
}


def _declare(word: str, summary: str, idempotent: bool, ok_description: str) -> None:
    def view(name: str, body: Empty) -> Any:
        return _act(word, name)

    view.__name__ = f"{word}_schedule"
    endpoint(blueprint, f"/api/schedules/<name>/{word}", "POST", access=ADMIN, summary=summary,
             path=SchedulePath, body=Empty, errors=(404,), error_descriptions=NOT_FOUND,
             safe=False, idempotent=idempotent, ok=ref("Count"),
             ok_description=ok_description)(view)


for _word, (_summary, _idempotent, _ok) in POSTED.items():
    _declare(_word, _summary, _idempotent, _ok)


@endpoint(blueprint, "/api/schedules/<name>", "DELETE", access=ADMIN,
          summary="Delete a schedule (its messages already written stay)",
          path=SchedulePath, safe=False, idempotent=True, ok=ref("Count"),
          ok_description="1 if it was defined, 0 if there was none of that name.")
def delete_schedule(name: str) -> Any:
    action, run, _ = ACTIONS["delete"]
    return audited(action, {"schedule": name}, lambda db: int(run(db, name, "dashboard")))
