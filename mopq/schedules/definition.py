"""A schedule's definition: what it writes, where, on which timing; from code or a file.

``Schedule`` checks everything when it is made (``InvalidInput`` naming the
field), so a definition from code, a file or the dashboard is stored only
once it is one the scheduler can fire. ``load_file`` reads a YAML (or JSON)
file as a whole: one bad entry refuses the file, naming it.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from mopq import schema, validation
from mopq.errors import InvalidInput
from mopq.queue import MAX_PRIORITY, MAX_VISIBILITY_TIMEOUT
from mopq.schedules.timing import (
    CATCH_UP_POLICIES,
    CRON,
    CRON_WORDS,
    DEFAULT_CATCH_UP,
    DEFAULT_GRACE_SECONDS,
    DEFAULT_MAX_CATCH_UP,
    MAX_CATCH_UP,
    MAX_CRON_LENGTH,
    Timing,
    time_zones,
)

MAX_GRACE_SECONDS = 7 * 86400
MAX_EVERY_SECONDS = 366 * 86400
MAX_EXPIRE_SECONDS = 366 * 86400
SOURCES = ("code", "file", "dashboard")
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}"
NAME_WORDS = ("1 to 100 letters, digits, '.', '_', ':' or '-', starting with a letter or "
              "a digit")
_NAME = re.compile(NAME_PATTERN)


@dataclass(frozen=True)
class Schedule:
    """A message (``body`` and its options) written to ``queue`` on a timing.

    Give ``every`` (seconds, a whole number) or ``cron`` (with ``timezone``,
    default UTC). ``catch_up`` is "latest", "skip" or "all" (``mopq.schedules.timing``
    says what each does). Checked when made: a bad value raises ``InvalidInput``.
    """

    name: str
    queue: str
    body: Mapping[str, Any] = field(default_factory=dict)
    every: int | None = None
    cron: str | None = None
    timezone: str | None = None
    catch_up: str = DEFAULT_CATCH_UP
    max_catch_up: int = DEFAULT_MAX_CATCH_UP
    grace_seconds: int = DEFAULT_GRACE_SECONDS
    routing_key: str | None = None
    priority: int = 0
    expire: float | None = None
    delay: float = 0
    activity: str | None = None
    source: str = "code"

    def __post_init__(self) -> None:
        set_ = functools.partial(object.__setattr__, self)
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise InvalidInput(f"A schedule name must be {NAME_WORDS}; got {self.name!r}.")
        validation.queue_name(self.queue)
        set_("body", validation.body(self.body, schema.DEFAULT_MAX_BODY_BYTES))
        if (self.every is None) == (self.cron is None):
            raise InvalidInput(f"Schedule {self.name!r}: give every (seconds) or cron, "
                               "not both and not neither.")
        if self.every is not None:
            set_("every", validation.integer("every", self.every, 1, MAX_EVERY_SECONDS))
            if self.timezone not in (None, "UTC"):
                raise InvalidInput(f"Schedule {self.name!r}: a timezone goes with cron; "
                                   "every ticks on UTC seconds since 1970.")
            set_("timezone", None)
        else:
            cron = " ".join(self.cron.split()) if isinstance(self.cron, str) else self.cron
            if not isinstance(cron, str) or len(cron) > MAX_CRON_LENGTH \
                    or not CRON.fullmatch(cron):
                raise InvalidInput(f"Schedule {self.name!r}: cron must be {CRON_WORDS}; "
                                   f"got {self.cron!r}.")
            set_("cron", cron)
            zone = "UTC" if self.timezone is None else self.timezone
            if zone not in time_zones():
                raise InvalidInput(f"Schedule {self.name!r}: timezone must be an IANA time "
                                   f"zone name such as Europe/Paris or UTC; got {zone!r}.")
            set_("timezone", zone)
        if self.catch_up not in CATCH_UP_POLICIES:
            raise InvalidInput(f"Schedule {self.name!r}: catch_up must be one of "
                               f"{', '.join(CATCH_UP_POLICIES)}; got {self.catch_up!r}.")
        validation.integer("max_catch_up", self.max_catch_up, 1, MAX_CATCH_UP)
        validation.integer("grace_seconds", self.grace_seconds, 0, MAX_GRACE_SECONDS)
        validation.optional_key("routing_key", self.routing_key)
        validation.optional_key("activity", self.activity)
        validation.integer("priority", self.priority, -MAX_PRIORITY, MAX_PRIORITY)
        validation.non_negative("delay", self.delay)
        if self.delay > MAX_VISIBILITY_TIMEOUT:
            raise InvalidInput(f"delay must be at most {MAX_VISIBILITY_TIMEOUT} seconds.")
        validation.non_negative("expire", self.expire, allow_none=True)
        if self.expire is not None and self.expire > MAX_EXPIRE_SECONDS:
            raise InvalidInput(f"expire must be at most {MAX_EXPIRE_SECONDS} seconds.")
        if self.source not in SOURCES:
            raise InvalidInput(f"source must be one of {', '.join(SOURCES)}.")

    @property
    def timing(self) -> Timing:
        return Timing(self.every, self.cron, self.timezone)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "file") -> Schedule:
        """A schedule from a file's mapping; unknown keys are refused."""
        if not isinstance(data, Mapping):
            raise InvalidInput(f"A schedule must be a mapping of its fields, got {data!r}.")
        known = {f.name for f in fields(cls)} - {"source"}
        unknown = sorted(str(key) for key in data if key not in known)
        if unknown:
            raise InvalidInput(f"Schedule {data.get('name')!r}: unknown field(s) "
                               f"{', '.join(unknown)}; accepted: {', '.join(sorted(known))}.")
        for needed in ("name", "queue"):
            if needed not in data:
                raise InvalidInput(f"Schedule {data.get('name')!r}: {needed} is required.")
        return cls(**dict(data), source=source)

    def definition(self) -> dict[str, Any]:
        """The fields stored for this definition (what defining again replaces)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "name"}


def load_file(path: str | os.PathLike[str]) -> list[Schedule]:
    """The schedules of a YAML file (``.json``: JSON), as a list or under ``schedules:``.

    YAML needs PyYAML: ``pip install 'mopq[yaml]'``. A file's schedules are
    checked as a whole: one bad entry raises ``InvalidInput`` naming it.
    """
    where = Path(path)
    try:
        text = where.read_text(encoding="utf-8")
    except OSError as error:
        raise InvalidInput(f"Cannot read the schedules file {str(where)!r}: {error}.") from None
    if where.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as error:
            raise InvalidInput(f"{where} is not valid JSON: {error}.") from None
    else:
        try:
            import yaml
        except ImportError:
            raise InvalidInput("Reading a YAML schedules file needs PyYAML: pip install "
                               "'mopq[yaml]' (or give a .json file).") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise InvalidInput(f"{where} is not valid YAML: {error}") from None
    if isinstance(data, Mapping) and set(data) == {"schedules"}:
        data = data["schedules"]
    if data is None:
        return []
    if not isinstance(data, list):
        raise InvalidInput(f"{where}: expected a list of schedules, or a mapping with one "
                           "key, schedules, holding that list.")
    loaded = [Schedule.from_mapping(entry, source="file") for entry in data]
    names = [schedule.name for schedule in loaded]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise InvalidInput(f"{where}: schedule(s) named more than once: {', '.join(twice)}.")
    return loaded

