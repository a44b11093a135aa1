"""Checks on what callers hand to mopq, done before anything is written."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from typing import Any, cast

import bson

from mopq.errors import InvalidBody, InvalidInput, InvalidQueueName
from mopq.schema import MAX_QUEUE_NAME_LENGTH

_SCALARS = (str, bool, int, float, type(None), dt.datetime)
_MAX_DEPTH = 64


def unicode_text(text: str) -> bool:
    """Whether ``text`` can be stored: a lone surrogate (which JSON's \\ud800 escapes and
    Python's str both allow) has no UTF-8 form, and BSON strings are UTF-8."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _not_unicode(what: str, text: str) -> InvalidInput | None:
    if unicode_text(text):
        return None
    return InvalidInput(f"{what} {text!r} is not valid Unicode (it holds a lone surrogate such "
                        "as \\ud800, which has no UTF-8 form); send well-formed text.")


def queue_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidQueueName(f"A queue name must be a non-empty string, got {name!r}.")
    if len(name) > MAX_QUEUE_NAME_LENGTH:
        raise InvalidQueueName(
            f"Queue name is {len(name)} characters; the limit is {MAX_QUEUE_NAME_LENGTH}."
        )
    if "$" in name or "\x00" in name or "/" in name:
        raise InvalidQueueName(f"Queue name {name!r} holds '$', '/' or NUL; use letters, "
                               "digits, '.', '-', '_' or ':'.")
    if not unicode_text(name):
        raise InvalidQueueName(f"Queue name {name!r} is not valid Unicode (a lone surrogate); "
                               "use letters, digits, '.', '-', '_' or ':'.")
    return name


def _check_value(value: Any, path: str, depth: int, what: str = "Body") -> None:
    """Name the first thing in ``value`` that cannot be stored as JSON-like BSON."""
    if depth > _MAX_DEPTH:
        raise InvalidBody(f"{what} nests deeper than {_MAX_DEPTH} levels at {path}.")
    if isinstance(value, Mapping):
        for key, inner in value.items():
            if not isinstance(key, str):
                raise InvalidBody(f"{what} keys must be strings; {path} has key {key!r}.")
            if key.startswith("$") or "\x00" in key:
                raise InvalidBody(f"{what} key {path}.{key!r} starts with '$' or holds NUL, "
                                  "which MongoDB reads as an operator; rename it.")
            if not unicode_text(key):
                raise InvalidBody(f"{what} key {path}.{key!r} is not valid Unicode (a lone "
                                  "surrogate has no UTF-8 form); send well-formed text.")
            _check_value(inner, f"{path}.{key}", depth + 1, what)
    elif isinstance(value, list | tuple):
        for index, inner in enumerate(value):
            _check_value(inner, f"{path}[{index}]", depth + 1, what)
    elif isinstance(value, str) and not unicode_text(value):
        raise InvalidBody(f"{what} value at {path} is not valid Unicode (a lone surrogate has no "
                          "UTF-8 form); send well-formed text.")
    elif isinstance(value, float) and not math.isfinite(value):
        raise InvalidBody(f"{what} value at {path} is {value!r}; JSON has no NaN or infinity.")
    elif isinstance(value, int) and not isinstance(value, bool) and not -2**63 <= value < 2**63:
        raise InvalidBody(f"{what} value at {path} does not fit in 64 bits.")
    elif not isinstance(value, _SCALARS):
        raise InvalidBody(
            f"{what} value at {path} is a {type(value).__name__}; it may hold only dicts, lists, "
            "str, int, float, bool, None and datetime. Convert it (e.g. str() or .isoformat())."
        )


_INT64 = (-2**63, 2**63)
BODY_FIELD_BYTES = len(bson.encode({"body": {}}))  # what wraps the body in the size check


_NOT_PLAIN = -1


def _plain_size(value: Any, depth: int) -> int:
    """An upper bound of ``value``'s BSON size if it is made of plain built-in types only.

    The fast path for the common body: exact types, no error paths built, no
    encoding (a character takes at most 4 bytes in UTF-8), and the usual
    members of a dict or list (str, int) sized inline rather than by a call
    each. ``_NOT_PLAIN`` sends the body through ``_check_value``, which either
    names what is wrong or accepts what this skips (subclasses, other
    Mappings, tuples).
    """
    kind = type(value)
    if kind is dict or kind is list:
        if depth >= _MAX_DEPTH:
            return _NOT_PLAIN
        size = 5
        if kind is dict:
            named = value.items()
        else:
            named = ((str(index), inner) for index, inner in enumerate(value))
        for key, inner in named:
            if kind is dict and (type(key) is not str or key[:1] == "$" or "\x00" in key
                                 or not key.isascii()):
                return _NOT_PLAIN
            inner_kind = type(inner)
            if inner_kind is str and inner.isascii():
                size += 7 + 4 * (len(key) + len(inner))
            elif inner_kind is int and _INT64[0] <= inner < _INT64[1]:
                size += 10 + 4 * len(key)
            else:
                inner_size = _plain_size(inner, depth + 1)
                if inner_size < 0:
                    return _NOT_PLAIN
                size += 2 + 4 * len(key) + inner_size
        return size
    if kind is str:
        return 5 + 4 * len(value) if value.isascii() else _NOT_PLAIN
    if kind is bool or value is None:
        return 1
    if kind is int:
        return 8 if _INT64[0] <= value < _INT64[1] else _NOT_PLAIN
    if kind is float:
        return 8 if math.isfinite(value) else _NOT_PLAIN
    if kind is dt.datetime:
        return 8
    return _NOT_PLAIN


def body(value: object, max_bytes: int) -> dict:
    """Return the body as a dict after checking its types and its encoded size."""
    if not isinstance(value, Mapping):
        raise InvalidBody(f"A message body must be a dict (a JSON-like document), "
                          f"got {type(value).__name__}.")
    bound = _plain_size(value, 0)
    if bound >= 0 and bound + BODY_FIELD_BYTES <= max_bytes:
        return cast(dict, value)  # a plain dict, surely small enough: stored as it is
    if bound < 0:
        _check_value(value, "body", 0)
    document = dict(value)
    size = len(bson.encode({"body": document}))
    if size > max_bytes:
        raise InvalidBody(f"Body is {size} bytes encoded; the limit is {max_bytes} bytes "
                          "(Queue(..., max_body_bytes=N) raises it, up to 15 MiB). Store large "
                          "payloads elsewhere and send a reference.")
    return document


def json_like(value: Any, name: str, max_bytes: int) -> Any:
    """``value`` (any JSON-like value, not only a dict) checked as a body is, and its size."""
    _check_value(value, name, 0, what=name.capitalize())
    size = len(bson.encode({name: value}))
    if size > max_bytes:
        raise InvalidInput(f"{name.capitalize()} is {size} bytes encoded; at most {max_bytes} "
                           "are kept. Store large values elsewhere and send a reference.")
    return value


def non_negative(name: str, value: object, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(f"{name} must be a number of seconds, got {value!r}.")
    if value < 0:
        raise InvalidInput(f"{name} must not be negative, got {value!r}.")
    return float(value)


def integer(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(f"{name} must be a whole number from {low} to {high}, got {value!r}.")
    return value


def optional_key(name: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 512 or "\x00" in value:
        raise InvalidInput(f"{name} must be a non-empty string of at most 512 characters "
                           f"without NUL, got {value!r}.")
    problem = _not_unicode(name, value)
    if problem:
        raise problem
    return value
