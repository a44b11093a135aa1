"""The types every API parameter and body is declared with, and the declarations.

Each type is a pydantic ``Annotated`` type that says, in one place, what a
value may be: pydantic checks requests against it, and ``/openapi.json``
describes it from the same declaration (``dashboard.endpoints``), so the two
cannot drift. An ``Expect`` in a type names what is expected in words, for
the 400 that refuses a value ("queue must be a queue name: ...").

What the schema cannot say is not refused either, so that a request the
document allows is never turned away: a time range wider than a resolution
keeps is narrowed (the answer says which range it covers), and a tag named
twice matches either value.

Strings are matched in full; none may look like a MongoDB operator
(``{"$gt": ...}`` or ``$ne``), even where it is only ever used as text.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    WithJsonSchema,
)

from mopq.business import MAX_NAME_LENGTH
from mopq.collectors.counters import HOUR, MINUTE, RESOLUTIONS, SECOND
from mopq.schema import MAX_QUEUE_NAME_LENGTH
from mopq.search import FIELD

MAX_PAGE = 10_000
MAX_PER_PAGE = 200
DEFAULT_PER_PAGE = 50
MAX_TEXT = 200          # error substrings, tag keys and values
MAX_VALUE = 512         # a searched value
MAX_IDS = 1_000         # ids in one admin request
MAX_TAGS = 16
THROUGHPUT_SECONDS = (10, 3600)
RELATIVE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
EARLIEST = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
LATEST = dt.datetime(9999, 1, 1, tzinfo=dt.UTC)

# Text that is not shaped like an operator: no '{"$x' inside, not '$word' alone.
NOT_AN_OPERATOR = r"""(?!.*\{\s*["']?\$[A-Za-z])(?!\$[A-Za-z]+$)"""


@dataclass(frozen=True)
class Expect:
    """What a value of this type must be, in words, for the 400 that refuses one."""

    text: str


class Strict(BaseModel):
    """A parameter set or body: unknown keys refused, patterns matched as Python does."""

    model_config = ConfigDict(extra="forbid", regex_engine="python-re", frozen=True)


def text_type(pattern: str, expect: str, *, min_length: int = 1,
              max_length: int = MAX_TEXT, example: str | None = None) -> Any:
    """A string type: ``pattern`` over the whole value, never operator-shaped."""
    extra = {"examples": [example]} if example is not None else {}
    return Annotated[str, StringConstraints(
        pattern=f"^{NOT_AN_OPERATOR}(?:{pattern})$", min_length=min_length,
        max_length=max_length), Field(json_schema_extra=extra or None), Expect(expect)]


QueueName = text_type(r"[^$/\x00]+", f"a queue name: 1 to {MAX_QUEUE_NAME_LENGTH} characters "
                      "without '$', '/' or NUL", max_length=MAX_QUEUE_NAME_LENGTH,
                      example="emails")
MessageId = text_type(r"[0-9a-fA-F]{24}", "a message id: 24 hexadecimal characters",
                      max_length=24, example="65f0c0ffee00000000000001")
EventName = text_type(r"(?!\.\.?$)[^$\x00]+", f"an event name as given to emit(): 1 to "
                      f"{MAX_NAME_LENGTH} characters without '$' or NUL",
                      max_length=MAX_NAME_LENGTH, example="order.paid")
ErrorText = text_type(r"[^\x00]*", f"text of at most {MAX_TEXT} characters", min_length=0)


def span_words(delta: dt.timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds % 86400 == 0:
        return f"{seconds // 86400} days"
    if seconds % 3600 == 0:
        return f"{seconds // 3600} hour{'s' if seconds != 3600 else ''}"
    return f"{seconds} seconds"


KEPT = ", ".join(f"{name} (kept {span_words(keep)})" for name, (_, keep) in RESOLUTIONS.items())
Resolution = Annotated[Literal[SECOND, MINUTE, HOUR], Expect(f"a bucket width: {KEPT}")]


def _whole_number(value: Any) -> Any:
    """Query strings carry numbers as text: only plain digits are a number."""
    if isinstance(value, str):
        if not re.fullmatch(r"[+-]?\d{1,12}", value):
            raise ValueError("not a whole number")
        return int(value)
    return value


def _json_integer(value: Any) -> Any:
    """A JSON body's integer: a number without a fraction (JSON Schema counts 5.0), not a bool."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("not a whole number")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("not a whole number")
        return int(value)
    return value


def json_integer(low: int, high: int) -> Any:
    """An integer field of a JSON body, from ``low`` to ``high``."""
    return Annotated[int, Field(ge=low, le=high), BeforeValidator(_json_integer),
                     Expect(f"a whole number from {low} to {high}")]


def whole(low: int, high: int) -> Any:
    return Annotated[int, Field(ge=low, le=high), BeforeValidator(_whole_number),
                     Expect(f"a whole number from {low} to {high}")]


# -- moments ---------------------------------------------------------------------------------

RELATIVE = r"-\d{1,6}[smhdw]"
RFC3339 = re.compile(r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?"
                     r"([Zz]|[+-]\d{2}:\d{2})")


def _moment(value: str) -> str:
    if value == "now" or re.fullmatch(RELATIVE, value) or _absolute(value) is not None:
        return value
    raise ValueError("not a time")


def _absolute(value: str) -> dt.datetime | None:
    """An RFC 3339 date-time as JSON Schema's ``date-time`` format admits it, else None."""
    match = RFC3339.fullmatch(value)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    fraction = (match.group(7) or ".0")[1:7].ljust(6, "0")
    zone = match.group(8).upper()
    offset = dt.timedelta(0) if zone == "Z" else \
        (1 if zone[0] == "+" else -1) * dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:]))
    try:
        # A leap second (:60) is a valid date-time; Python has none, so it is :59.
        moment = dt.datetime(max(year, 1), month, day, hour, minute, min(second, 59),
                             int(fraction), tzinfo=dt.timezone(offset))
    except ValueError:
        return None
    if hour > 23 or minute > 59 or second > 60:
        return None
    try:
        return moment.astimezone(dt.UTC)
    except (OverflowError, ValueError):
        return EARLIEST if year < 1970 else LATEST


Moment = Annotated[str, AfterValidator(_moment), WithJsonSchema({
    "anyOf": [{"type": "string", "format": "date-time"},
              {"type": "string", "pattern": f"^{RELATIVE}$"},
              {"type": "string", "enum": ["now"]}],
    "description": "An RFC 3339 date-time (2026-01-31T12:00:00Z), `now`, or relative to now: "
                   "`-30s`, `-15m`, `-1h`, `-90d`, `-2w`."}),
    Expect("an RFC 3339 time (2026-01-31T12:00:00Z), 'now', or relative like -30s, -15m, "
           "-1h, -90d")]


def moment(value: str, now: dt.datetime) -> dt.datetime:
    """The time a checked ``Moment`` names, kept within 1970..9999."""
    if value == "now":
        return now
    if value.startswith("-"):
        seconds = int(value[1:-1]) * RELATIVE_UNITS[value[-1]]
        return max(EARLIEST, now - dt.timedelta(seconds=min(seconds, (now - EARLIEST)
                                                            .total_seconds())))
    absolute = _absolute(value)
    assert absolute is not None  # checked by the type
    return min(LATEST, max(EARLIEST, absolute))


DEFAULT_RANGE = {SECOND: dt.timedelta(minutes=5), MINUTE: dt.timedelta(hours=1),
                 HOUR: dt.timedelta(days=1)}


def time_range(query: TimeRange, now: dt.datetime) -> tuple[str, dt.datetime, dt.datetime]:
    """The resolution and the range a ``TimeRange`` asks for, narrowed to what is kept.

    A range wider than the resolution's buckets are kept is narrowed to its
    newest part; one that ends before it starts is empty (since = until).
    """
    resolution = query.resolution
    until = now if query.until is None else moment(query.until, now)
    since = until - DEFAULT_RANGE[resolution] if query.since is None else moment(query.since, now)
    since = min(until, max(since, until - RESOLUTIONS[resolution][1]))
    return resolution, since, until


# -- tags and search terms -------------------------------------------------------------------

TAG_KEY = r"[^$.\x00,:][^.\x00,:]{0,199}"
TAG_PAIR = rf"{TAG_KEY}:[^,\x00]{{1,{MAX_TEXT}}}"
Tags = text_type(rf"{TAG_PAIR}(?:,{TAG_PAIR}){{0,{MAX_TAGS - 1}}}",
                 f"key:value pairs separated by commas (region:cn,plan:pro), at most {MAX_TAGS}; "
                 "keys without '$', '.', ',' or ':'; a key named twice matches either value",
                 max_length=MAX_TAGS * (2 * MAX_TEXT + 2), example="region:cn")


def tag_filter(raw: str | None) -> dict[str, list[str]]:
    """``key:value,...`` as the values wanted per key."""
    wanted: dict[str, list[str]] = {}
    for pair in (raw or "").split(",") if raw else []:
        key, _, value = pair.partition(":")
        wanted.setdefault(key, []).append(value)
    return wanted


SEARCH_VALUE = rf"[^\x00]{{1,{MAX_VALUE}}}"
SearchTerm = text_type(rf"[0-9a-fA-F]{{24}}|{FIELD.pattern.strip('^$')}={SEARCH_VALUE}",
                       "a message id (24 hexadecimal characters), or field=value on a body "
                       "field declared searchable (order_id=42)",
                       max_length=MAX_VALUE + 300, example="order_id=42")


def search_values(raw: str) -> list[Any]:
    """What ``field=value`` looks for: the string, and the number it spells if it is one."""
    values: list[Any] = [raw]
    if re.fullmatch(r"[+-]?\d{1,18}", raw):
        values.insert(0, int(raw))
    return values


# -- query strings ---------------------------------------------------------------------------

class NoParameters(Strict):
    pass


class Paged(Strict):
    page: whole(1, MAX_PAGE) = Field(1, description="Page number, from 1.")
    per_page: whole(1, MAX_PER_PAGE) = Field(DEFAULT_PER_PAGE, description="Items per page.")


class PagedByHundred(Paged):
    per_page: whole(1, MAX_PER_PAGE) = Field(100, description="Items per page.")


class PagedFully(Paged):
    per_page: whole(1, MAX_PER_PAGE) = Field(MAX_PER_PAGE, description="Items per page.")


class TimeRange(Strict):
    resolution: Resolution = Field(MINUTE, description=f"Bucket width: {KEPT}.")
    since: Moment = Field(None, description="Start of the range (default: until minus 5 "
                          "minutes, 1 hour or 1 day by resolution). A range wider than the "
                          "resolution keeps is narrowed to its newest part; the answer's "
                          "since and until say which range it covers.",
                          examples=["-1h"])
    until: Moment = Field(None, description="End of the range (default: now).",
                          examples=["now"])


class MetricRange(TimeRange):
    tags: Tags = Field(None, description="Only events with these tags: key:value pairs "
                       "separated by commas; a key named twice matches either value.")


class ThroughputParameters(Strict):
    seconds: whole(*THROUGHPUT_SECONDS) = Field(300, description="How many seconds back.")
    queue: QueueName = Field(None, description="Only this queue (default: all).")


class FailedParameters(Paged):
    queue: QueueName = Field(None, description="Only this queue.")
    error: ErrorText = Field(None, description="Only messages whose last error contains this "
                             "text (any case).")
    state: Annotated[Literal["dead", "failing"], Expect("dead or failing")] = Field(
        "dead", description="dead: out of attempts; failing: waiting for a retry after an "
                            "error.")


class SearchParameters(Strict):
    q: SearchTerm = Field(description="A message id, or field=value on a body field declared "
                          "searchable (mopq.search.declare_search_field); a number also "
                          "matches its string form.")
    queue: QueueName = Field(None, description="Only this queue.")


class QueuePath(Strict):
    name: QueueName = Field(description="The queue's name.")


class MessagePath(Strict):
    message_id: MessageId = Field(description="The message id (24 hexadecimal characters).")


class MetricPath(Strict):
    name: EventName = Field(description="The event name given to emit(), percent-encoded "
                            "(http%2Frequests).")


# -- bodies ----------------------------------------------------------------------------------

DeadOnly = Annotated[Literal["dead"], Expect("dead (only dead messages are acted on)")]


class ChosenIds(Strict):
    """These messages (those of them that are dead)."""

    ids: Annotated[list[MessageId], Field(min_length=1, max_length=MAX_IDS),
                   Expect(f"a list of 1 to {MAX_IDS} message ids")]
    state: DeadOnly = "dead"


class AllMatching(Strict):
    """Every dead message, of one queue and with an error containing a text if given."""

    all_matching: Annotated[Literal[True], Expect("true, to act on every match")]
    queue: QueueName = Field(None, description="Only this queue; leave it out for every queue.")
    error: ErrorText = Field(None, description="Only messages whose last error contains this.")
    state: DeadOnly = "dead"

    def target(self) -> dict[str, Any]:
        return {"all_matching": True, "queue": self.queue, "error": self.error or None,
                "state": self.state}


def _selection_kind(value: Any) -> str:
    """Which form a selection takes: by ids, or every match (the key it carries decides)."""
    return "ids" if isinstance(value, Mapping) and "ids" in value else "all_matching"


FailedSelection = Annotated[
    Annotated[ChosenIds, Tag("ids")] | Annotated[AllMatching, Tag("all_matching")],
    Discriminator(_selection_kind),
    Expect("give ids: [...], or all_matching: true with an optional queue and error, "
           "not both")]


class PurgeConfirmation(Strict):
    confirm: str = Field(description="The queue's name again, to show the purge is meant.")
