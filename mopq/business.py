"""``emit()``: business events, never blocking and never raising.

Why it cannot block or raise: it is called from business code (``order.paid``)
that must not slow down or fail because statistics are unavailable. Events
go to the process's publisher buffer and are written in the background; see
``mopq.publisher`` for what happens when the engine is down.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

from mopq.clock import utcnow
from mopq.connection import get_database
from mopq.events import business_event
from mopq.publisher import publisher_for
from mopq.validation import unicode_text

log = logging.getLogger("mopq.emit")

MAX_NAME_LENGTH = 200
MAX_TAGS = 16
MAX_TAG_CHARS = 200
rejected = 0


def _valid(name: object, value: object, tags: object) -> str | None:
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_LENGTH or "$" in name \
            or "\x00" in name or name in (".", "..") or not unicode_text(name):
        # "." and ".." alone could not be a URL path segment (/api/metrics/<name>).
        return (f"event name must be a non-empty string of at most {MAX_NAME_LENGTH} characters "
                f"of well-formed text without '$' or NUL, and not '.' or '..', got {name!r}")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return f"value must be a finite number, got {value!r}"
    if not isinstance(tags, Mapping) or len(tags) > MAX_TAGS:
        return f"tags must be a dict of at most {MAX_TAGS} string pairs, got {tags!r}"
    for key, tag in tags.items():
        if not isinstance(key, str) or not isinstance(tag, str) or not key \
                or key.startswith("$") or "\x00" in key + tag or "." in key \
                or len(key) > MAX_TAG_CHARS or len(tag) > MAX_TAG_CHARS \
                or not unicode_text(key + tag):
            return (f"tag {key!r}={tag!r} must be short, well-formed strings without '$', '.' "
                    "or NUL")
    return None


def emit(name: str, value: float = 1, tags: Mapping[str, str] | None = None, *,
         uri: str | None = None, database: str | None = None) -> bool:
    """Record a business event; return False (and log why) if it was refused.

    Returns at once: the event is buffered and written in the background.
    """
    try:
        tags = {} if tags is None else tags
        problem = _valid(name, value, tags)
        if problem:
            global rejected
            rejected += 1
            log.warning("mopq.emit refused an event: %s", problem)
            return False
        event = business_event(name, float(value), dict(tags), utcnow())
        publisher_for(get_database(uri, database)).add_business(event)
        return True
    except Exception:  # emit must never break business code
        log.exception("mopq.emit failed; the event was dropped")
        return False
