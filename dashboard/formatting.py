"""Jinja filters that make figures readable at a glance.

Why here and not in templates: numbers get thousands separators, durations
get units and times get a relative form ("3 s ago") with the absolute time
beside it, the same way on every page; static/mopq.js formats live updates
by the same rules so a value does not change shape when a push arrives.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from flask import Blueprint

from mopq.clock import utcnow

DASH = "—"


def number(value: Any, decimals: int | None = None) -> str:
    """``1234567`` → ``1,234,567``; floats keep at most two decimals."""
    if value is None or isinstance(value, bool):
        return DASH
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if decimals is None:
            decimals = 0 if value.is_integer() else (2 if abs(value) < 100 else 1)
        return f"{value:,.{decimals}f}"
    return str(value)


def percent(fraction: Any) -> str:
    if fraction is None:
        return DASH
    return f"{float(fraction) * 100:.1f} %"


def seconds(value: Any) -> str:
    """A duration in the two largest units that matter: ``3 min 20 s``, ``2 h 5 min``."""
    if value is None:
        return DASH
    total = float(value)
    if total < 10:
        return f"{total:.1f} s"
    whole = int(round(total))
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def iso(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return _aware(value).isoformat()
    return "" if value is None else str(value)


def absolute(value: Any) -> str:
    """The full UTC time, for ``title`` attributes."""
    if isinstance(value, dt.datetime):
        return _aware(value).astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return "" if value is None else str(value)


def ago(value: Any, now: dt.datetime | None = None) -> str:
    """``3 s ago`` / ``in 5 min``; JS keeps it current while the page stays open."""
    if not isinstance(value, dt.datetime):
        return DASH
    now = now or utcnow()
    delta = (now - _aware(value)).total_seconds()
    if abs(delta) < 1:
        return "just now"
    text = seconds(abs(delta)).replace(".0 s", " s")
    return f"{text} ago" if delta > 0 else f"in {text}"


def pretty_json(value: Any) -> str:
    """A message body as indented JSON (autoescaped by the template that shows it)."""
    return json.dumps(value, indent=2, ensure_ascii=False, default=str, sort_keys=False)


def compact_json(value: Any, limit: int = 300) -> str:
    """A body on one line, cut at ``limit`` characters (the full one is a click away)."""
    text = json.dumps(value, ensure_ascii=False, default=str, separators=(", ", ": "))
    return text if len(text) <= limit else text[:limit - 1] + "…"


FILTERS = {"number": number, "percent": percent, "seconds": seconds, "iso": iso,
           "absolute": absolute, "ago": ago, "pretty_json": pretty_json,
           "compact_json": compact_json}


def register(blueprint: Blueprint) -> None:
    """Make the filters available to every template of the app."""
    for name, function in FILTERS.items():
        blueprint.add_app_template_filter(function, name)
