"""Strict checks of what API callers send: query strings and JSON bodies.

Every endpoint names the keys it accepts; anything else is refused, and so is
anything shaped like a MongoDB operator (``?queue[$ne]=x``, a JSON body with
``{"$gt": ""}`` where a string belongs). Values are type-checked and kept in
range so no request can ask for unbounded work (millions of buckets, a page
of a million rows). Nothing here touches the database except the check that
a search field was declared for its queue.

A refusal raises :class:`BadParameter`; the API turns it into
``400 {"error": "<what was wrong and what is expected>", "parameter": name}``.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from werkzeug.datastructures import MultiDict

from collectors.counters import HOUR, MINUTE, SECOND
from mopq import validation
from mopq.business import MAX_NAME_LENGTH
from mopq.errors import InvalidInput
from mopq.search import check_field

MAX_PAGE = 10_000
MAX_PER_PAGE = 200
DEFAULT_PER_PAGE = 50
MAX_TEXT = 200          # error substrings, tag keys and values
MAX_VALUE = 512         # a searched value
MAX_IDS = 1_000         # ids in one admin request
MAX_TAGS = 16
THROUGHPUT_SECONDS = (10, 3600)
RESOLUTIONS = (SECOND, MINUTE, HOUR)
# Widest range one request may ask for, per resolution (at most a few
# thousand buckets, and no wider than what the collectors keep).
MAX_RANGE = {SECOND: dt.timedelta(hours=1), MINUTE: dt.timedelta(days=2),
             HOUR: dt.timedelta(days=90)}
# The range when ``since`` is not given: ``until`` minus this.
DEFAULT_RANGE = {SECOND: dt.timedelta(minutes=5), MINUTE: dt.timedelta(hours=1),
                 HOUR: dt.timedelta(days=1)}
RELATIVE = re.compile(r"^-(\d{1,6})([smhdw])$")
RELATIVE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
OBJECT_ID = re.compile(r"^[0-9a-fA-F]{24}$")
TAG_KEY = re.compile(r"^[^$.\x00,:][^.\x00,:]{0,199}$")
# A JSON object with an operator key, or a bare operator name: ``{"$gt": ""}``, ``$ne``.
OPERATOR_VALUE = re.compile(r"""\{\s*["']?\$[A-Za-z]|^\$[A-Za-z]+$""")
EARLIEST = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
LATEST = dt.datetime(9999, 1, 1, tzinfo=dt.UTC)


class BadParameter(ValueError):
    """A request parameter or body field was refused."""

    def __init__(self, parameter: str | None, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.message = message


# -- plain values ---------------------------------------------------------------------------

def text(name: str, value: object, max_length: int = MAX_TEXT, *, empty: bool = False) -> str:
    """A short string: not an operator, no NUL, valid UTF-8, at most ``max_length``."""
    if isinstance(value, Mapping):
        raise BadParameter(name, f"{name} must be a string, not an object; operators such as "
                                 "{\"$gt\": ...} are not accepted.")
    if not isinstance(value, str):
        raise BadParameter(name, f"{name} must be a string, got {type(value).__name__}.")
    if not value and not empty:
        raise BadParameter(name, f"{name} must not be empty.")
    if len(value) > max_length:
        raise BadParameter(name, f"{name} is {len(value)} characters; at most {max_length} "
                                 "are accepted.")
    if "\x00" in value:
        raise BadParameter(name, f"{name} must not contain NUL.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadParameter(name, f"{name} is not valid UTF-8 text.") from None
    if OPERATOR_VALUE.search(value):
        raise BadParameter(name, f"{name} looks like a query operator ({value[:40]!r}); "
                                 "send a plain value.")
    return value


def integer(name: str, raw: object, low: int, high: int) -> int:
    if isinstance(raw, bool):
        raise BadParameter(name, f"{name} must be a whole number from {low} to {high}.")
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, str) and re.fullmatch(r"[+-]?\d{1,12}", raw.strip()):
        value = int(raw)
    else:
        raise BadParameter(name, f"{name} must be a whole number from {low} to {high}, "
                                 f"got {str(raw)[:40]!r}.")
    if not low <= value <= high:
        raise BadParameter(name, f"{name} must be from {low} to {high}, got {value}.")
    return value


def choice(name: str, raw: object, allowed: tuple[str, ...]) -> str:
    if not isinstance(raw, str) or raw not in allowed:
        raise BadParameter(name, f"{name} must be one of {', '.join(allowed)}, "
                                 f"got {str(raw)[:40]!r}.")
    return raw


def queue(raw: object, name: str = "queue") -> str:
    value = text(name, raw, max_length=validation.MAX_QUEUE_NAME_LENGTH)
    try:
        return validation.queue_name(value)
    except InvalidInput as error:
        raise BadParameter(name, str(error)) from None


def object_id(name: str, raw: object) -> str:
    if isinstance(raw, Mapping):
        raise BadParameter(name, f"{name} must be a message id string, not an object.")
    if not isinstance(raw, str) or not OBJECT_ID.match(raw):
        raise BadParameter(name, f"{name} must be a message id: 24 hexadecimal characters, "
                                 f"got {str(raw)[:40]!r}.")
    return raw.lower()


def metric_name(raw: object, name: str = "name") -> str:
    value = text(name, raw, max_length=MAX_NAME_LENGTH)
    if "$" in value:
        raise BadParameter(name, f"{name} is an event name as given to emit(): no '$'.")
    return value


def moment(name: str, raw: object, now: dt.datetime) -> dt.datetime:
    """ISO-8601 (naive means UTC), ``now``, or relative to now: ``-30s``, ``-1h``, ``-90d``."""
    value = text(name, raw, max_length=40)
    if value == "now":
        return now
    relative = RELATIVE.match(value)
    if relative:
        seconds = int(relative.group(1)) * RELATIVE_UNITS[relative.group(2)]
        if seconds > 10 * 366 * 86400:
            raise BadParameter(name, f"{name} reaches back more than 10 years.")
        return now - dt.timedelta(seconds=seconds)
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise BadParameter(name, f"{name} must be an ISO-8601 time (2026-01-31T12:00:00Z), "
                                 f"'now', or relative like -30s, -15m, -1h, -90d; "
                                 f"got {value!r}.") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    try:
        parsed = parsed.astimezone(dt.UTC)
    except (OverflowError, ValueError):
        raise BadParameter(name, f"{name} is out of range.") from None
    if not EARLIEST <= parsed <= LATEST:
        raise BadParameter(name, f"{name} must be between 1970 and 9999.")
    return parsed


def tags(raw: object, name: str = "tags") -> dict[str, str]:
    """``key:value,key2:value2`` — at most 16 short pairs; keys without '$' or '.'."""
    value = text(name, raw, max_length=MAX_TAGS * (2 * MAX_TEXT + 2), empty=True)
    parsed: dict[str, str] = {}
    if not value:
        return parsed
    pairs = value.split(",")
    if len(pairs) > MAX_TAGS:
        raise BadParameter(name, f"{name} holds {len(pairs)} pairs; at most {MAX_TAGS}.")
    for pair in pairs:
        key, colon, tag = pair.partition(":")
        if not colon or not TAG_KEY.match(key) or not tag or len(tag) > MAX_TEXT:
            raise BadParameter(name, f"{name} must be key:value pairs separated by commas "
                                     "(region:cn,plan:pro); keys are short strings without "
                                     f"'$' or '.', values at most {MAX_TEXT} characters; "
                                     f"got {pair[:60]!r}.")
        if key in parsed:
            raise BadParameter(name, f"{name} names {key!r} twice.")
        parsed[key] = tag
    return parsed



def search_term(raw: object, name: str = "q") -> tuple[str, list[Any]]:
    """``field=value``: a well-formed body field, and the values to look for."""
    value = text(name, raw, max_length=MAX_VALUE + 80)
    field, equals, wanted = value.partition("=")
    if not equals or not wanted:
        raise BadParameter(name, f"{name} must be field=value, e.g. {name}=order_id=42.")
    try:
        field = check_field(field)
    except InvalidInput as error:
        raise BadParameter(name, str(error)) from None
    return field, search_value(text(name, wanted, max_length=MAX_VALUE))


def search_value(raw: str) -> list[Any]:
    """What ``field=value`` looks for: the string, and the number it spells if it is one."""
    values: list[Any] = [raw]
    if re.fullmatch(r"[+-]?\d{1,18}", raw):
        values.insert(0, int(raw))
    return values


# -- query strings --------------------------------------------------------------------------

Checker = Callable[[str, str], Any]


@dataclass(frozen=True)
class Field:
    check: Checker
    default: Any = None


def _operator_key(key: str) -> bool:
    return any(mark in key for mark in ("[", "]", "$", "."))


def query(args: MultiDict[str, str], fields: Mapping[str, Field]) -> dict[str, Any]:
    """Check a query string against the endpoint's allowlist; return the typed values."""
    for key in args:
        if _operator_key(key):
            raise BadParameter(key, f"{key!r} is not a parameter; operators and nested keys "
                                    "are not accepted. Accepted: "
                                    f"{', '.join(fields) or 'none'}.")
        if key not in fields:
            raise BadParameter(key, f"unknown parameter {key!r}; accepted: "
                                    f"{', '.join(fields) or 'none'}.")
        if len(args.getlist(key)) > 1:
            raise BadParameter(key, f"{key} is given more than once; give it once.")
    values = {}
    for key, spec in fields.items():
        values[key] = spec.check(key, args[key]) if key in args else spec.default
    return values


def page_fields(per_page: int = DEFAULT_PER_PAGE) -> dict[str, Field]:
    return {"page": Field(lambda n, v: integer(n, v, 1, MAX_PAGE), 1),
            "per_page": Field(lambda n, v: integer(n, v, 1, MAX_PER_PAGE), per_page)}


def time_range(values: Mapping[str, Any], now: dt.datetime,
               default_resolution: str = MINUTE) -> tuple[str, dt.datetime, dt.datetime]:
    """``resolution``, ``since`` and ``until`` (raw strings or None) checked together."""
    resolution = values.get("resolution")
    resolution = default_resolution if resolution is None else choice("resolution", resolution,
                                                                      RESOLUTIONS)
    raw_until, raw_since = values.get("until"), values.get("since")
    until = now if raw_until is None else moment("until", raw_until, now)
    since = until - DEFAULT_RANGE[resolution] if raw_since is None else moment("since",
                                                                               raw_since, now)
    if since >= until:
        raise BadParameter("since", "since must be earlier than until.")
    widest = MAX_RANGE[resolution]
    if until - since > widest:
        raise BadParameter("since", f"the range since..until is wider than {_span(widest)}, "
                                    f"the most resolution={resolution} allows; narrow it or use "
                                    "a coarser resolution (s, m, h).")
    return resolution, since, until


def _span(delta: dt.timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds % 86400 == 0:
        return f"{seconds // 86400} days"
    return f"{seconds // 3600} hours" if seconds % 3600 == 0 else f"{seconds} seconds"


RANGE_FIELDS = {"resolution": Field(lambda n, v: v), "since": Field(lambda n, v: v),
                "until": Field(lambda n, v: v)}


# -- JSON bodies ----------------------------------------------------------------------------

MAX_BODY_BYTES = 64 * 1024   # an admin body: 1,000 ids take about 27 KB
MAX_BODY_DEPTH = 16          # objects and arrays inside one another
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET = re.compile(rb"[\[\]{}]")


class BodyTooLarge(BadParameter):
    """A request body over the size limit (answered 413)."""


def nesting(raw: bytes) -> int:
    """How deeply objects and arrays nest in a JSON text, counted without parsing it.

    Why not parse and then look: Python's parser recurses, so about a thousand
    levels (ten kilobytes) end in a RecursionError instead of an answer.
    Brackets inside strings do not count.
    """
    deepest = depth = 0
    for bracket in _JSON_BRACKET.findall(_JSON_STRING.sub(b'""', raw)):
        if bracket in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def json_body(mimetype: str, raw: bytes, max_bytes: int = MAX_BODY_BYTES) -> Any:
    """The parsed body of a JSON request, after its size and depth limits."""
    if mimetype != "application/json":
        raise BadParameter("body", "send a JSON object with Content-Type: application/json.")
    if len(raw) > max_bytes:
        raise BodyTooLarge("body", f"the request body is too large ({len(raw)} bytes); at most "
                                   f"{max_bytes} are accepted here.")
    depth = nesting(raw)
    if depth > MAX_BODY_DEPTH:
        raise BadParameter("body", f"the JSON body nests {depth} levels deep; at most "
                                   f"{MAX_BODY_DEPTH} are accepted.")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise BadParameter("body", "the request body is not valid JSON.") from None

def _no_operators(value: Any, path: str, depth: int = 0) -> None:
    if depth > 8:
        raise BadParameter(path, "the JSON body nests too deeply.")
    if isinstance(value, Mapping):
        for key, inner in value.items():
            if not isinstance(key, str) or key.startswith("$") or "\x00" in key:
                raise BadParameter(path or str(key), f"{key!r} looks like a query operator; "
                                                     "operators are not accepted.")
            _no_operators(inner, f"{path}.{key}" if path else key, depth + 1)
    elif isinstance(value, list):
        for inner in value:
            _no_operators(inner, path, depth + 1)


def body(raw: Any, allowed: tuple[str, ...]) -> dict[str, Any]:
    """A JSON object body with only ``allowed`` keys and no operator anywhere."""
    if not isinstance(raw, dict):
        raise BadParameter("body", "the request body must be a JSON object "
                                 "(Content-Type: application/json).")
    _no_operators(raw, "")
    for key in raw:
        if key not in allowed:
            raise BadParameter(key, f"unknown field {key!r} in the body; accepted: "
                                    f"{', '.join(allowed)}.")
    return raw


@dataclass(frozen=True)
class FailedSelection:
    """What an admin action on failed messages applies to."""

    ids: tuple[str, ...] | None
    queue: str | None
    error: str | None
    state: str

    def target(self) -> dict[str, Any]:
        if self.ids is not None:
            return {"ids": list(self.ids)}
        return {"all_matching": True, "queue": self.queue, "error": self.error,
                "state": self.state}


def failed_selection(raw: Any) -> FailedSelection:
    """``{"ids": [...]}`` or ``{"all_matching": true, "queue"?, "error"?, "state": "dead"}``."""
    document = body(raw, ("ids", "all_matching", "queue", "error", "state"))
    for key, meaning in (("queue", "to act on every queue"), ("error", "not to filter by error"),
                         ("state", "for dead messages")):
        if key in document and document[key] is None:
            raise BadParameter(key, f"{key} must be a string, not null; leave it out {meaning}.")
    state = choice("state", document.get("state", "dead"), ("dead",))
    if "ids" in document:
        if any(key in document for key in ("all_matching", "queue", "error")):
            raise BadParameter("ids", "give either ids, or all_matching with optional queue "
                                      "and error, not both.")
        ids = document["ids"]
        if not isinstance(ids, list) or not ids or len(ids) > MAX_IDS:
            raise BadParameter("ids", f"ids must be a list of 1 to {MAX_IDS} message ids.")
        checked = tuple(dict.fromkeys(object_id("ids", value) for value in ids))
        return FailedSelection(checked, None, None, state)
    if document.get("all_matching") is not True:
        raise BadParameter("all_matching", "give ids: [...], or all_matching: true (with "
                                           "optional queue and error) to act on every match.")
    queue_name = document.get("queue")
    error = document.get("error")
    return FailedSelection(
        None,
        None if queue_name is None else queue(queue_name),
        None if error is None else text("error", error, empty=True) or None,
        state,
    )
