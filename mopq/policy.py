"""Queue policy: what every consumer of a queue follows, stored with the queue.

Why stored: ``max_attempts`` and the backoff used to belong to each
consumer's ``Queue(...)`` object, so two consumers of one queue could
disagree about when a message is dead (SQS keeps its redrive policy on the
queue for the same reason). A queue's policy is one document of the
``queues`` collection that every consumer reads, cached for
``CACHE_SECONDS``; a value it does not hold falls back to the consumer's own
code, then to the built-in default. The same document says whether the
queue is paused, by whom and since when.

A ``queues`` document, ``_id`` the queue's name::

    {_id, policy: {<field>: value, ...},          # only the fields set
     set_by: {<field>: {by: "code" | "admin", who, at}},
     paused: {who, at, reason},                   # absent while not paused
     updated_at}

Fields (``FIELDS`` declares each once: type, bounds, meaning): max_attempts,
backoff_first_seconds, backoff_factor, backoff_cap_seconds,
visibility_timeout, rate_limit_max with rate_limit_per_seconds (both or
neither: at most *max* claims per *per_seconds*, ``mopq.rate_limit``),
keep_finished_seconds and keep_dead_seconds (history and dead-message
retention, enforced by the monitor; unset: the collectors' settings).

Every change is a single-document update of that document. Code sets a
policy at creation with ``Queue(name, policy={...})``: each field is written
only if nobody stored it yet, so an admin's later edit is never overwritten
by a consumer restarting with older code.
"""

from __future__ import annotations

import datetime as dt
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from mopq import schema, validation
from mopq.clock import utcnow
from mopq.errors import InvalidInput

# A consumer sees a change (a pause, a new max_attempts) at most this late.
CACHE_SECONDS = 0.5
CODE, ADMIN, DEFAULT = "code", "admin", "default"


@dataclass(frozen=True)
class Field:
    """One policy field: its kind, bounds, built-in default (None: none) and meaning."""

    kind: type
    low: float
    high: float
    default: Any
    meaning: str


DAY = 86_400.0
FIELDS: dict[str, Field] = {
    "max_attempts": Field(int, 1, 1000, 5, "attempts before a message is dead"),
    "backoff_first_seconds": Field(float, 0, DAY, 1.0,
                                   "wait after the first failed attempt"),
    "backoff_factor": Field(float, 1, 10, 2.0, "each further wait is this many times longer"),
    "backoff_cap_seconds": Field(float, 0, DAY, 300.0, "longest wait between attempts"),
    "visibility_timeout": Field(float, 0.001, 12 * 3600, 30.0,
                                "seconds a claim holds a message unless the claim says"),
    "rate_limit_max": Field(int, 1, 1_000_000, None,
                            "claims allowed per rate_limit_per_seconds, across all workers"),
    "rate_limit_per_seconds": Field(float, 0.001, DAY, None, "the rate limit's window"),
    "keep_finished_seconds": Field(float, 1, 365 * DAY, None,
                                   "how long finished messages stay in history"),
    "keep_dead_seconds": Field(float, 1, 365 * DAY, None,
                               "how long dead messages wait for an operator"),
}
RATE_LIMIT_FIELDS = ("rate_limit_max", "rate_limit_per_seconds")


def check(values: Mapping[str, Any], *, partial: bool = True) -> dict[str, Any]:
    """``values`` checked field by field; ``None`` (with ``partial``) means "unset it"."""
    if not isinstance(values, Mapping):
        raise InvalidInput(f"A policy is a mapping of field to value, got {values!r}.")
    checked: dict[str, Any] = {}
    for name, value in values.items():
        spec = FIELDS.get(name)
        if spec is None:
            raise InvalidInput(f"Unknown policy field {name!r}; the fields are "
                               f"{', '.join(FIELDS)}.")
        if value is None and partial:
            checked[name] = None
            continue
        if spec.kind is int:
            checked[name] = validation.integer(name, value, int(spec.low), int(spec.high))
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value) or not spec.low <= value <= spec.high:
            raise InvalidInput(f"{name} must be a number from {spec.low:g} to {spec.high:g}, "
                               f"got {value!r}.")
        checked[name] = float(value)
    return checked


def _rate_limit_whole(policy: Mapping[str, Any]) -> None:
    present = [name for name in RATE_LIMIT_FIELDS if policy.get(name) is not None]
    if len(present) == 1:
        raise InvalidInput("A rate limit needs both rate_limit_max and rate_limit_per_seconds "
                           "(e.g. 10 claims per 1 second); set both, or unset both.")


@dataclass(frozen=True)
class Paused:
    who: str
    at: dt.datetime
    reason: str | None = None


@dataclass(frozen=True)
class QueueRecord:
    """A queue's stored document, read: its policy, who set each value, and its pause."""

    name: str
    policy: dict[str, Any] = field(default_factory=dict)
    set_by: dict[str, dict[str, Any]] = field(default_factory=dict)
    paused: Paused | None = None

    @classmethod
    def of(cls, name: str, document: Mapping[str, Any] | None) -> QueueRecord:
        document = document or {}
        paused = document.get("paused")
        return cls(name, dict(document.get("policy") or {}), dict(document.get("set_by") or {}),
                   Paused(paused.get("who", "?"), paused.get("at"), paused.get("reason"))
                   if paused else None)

    def value(self, name: str, code: Mapping[str, Any] | None = None) -> Any:
        """The value a consumer with ``code``'s own values follows."""
        if self.policy.get(name) is not None:
            return self.policy[name]
        if code and code.get(name) is not None:
            return code[name]
        return FIELDS[name].default

    def source(self, name: str) -> dict[str, Any]:
        """Where the value comes from: stored (by code or an admin, who, when) or the default."""
        if self.policy.get(name) is not None:
            return {"from": "stored", **(self.set_by.get(name) or {"by": CODE})}
        return {"from": DEFAULT}

    def rate_limit(self) -> tuple[int, float] | None:
        if all(self.policy.get(name) is not None for name in RATE_LIMIT_FIELDS):
            return int(self.policy["rate_limit_max"]), float(self.policy["rate_limit_per_seconds"])
        return None

    def describe(self) -> dict[str, Any]:
        """The JSON-ready view the API and the page show."""
        return {
            "queue": self.name,
            "fields": {name: {"value": self.value(name), "meaning": spec.meaning,
                              "default": spec.default, **self.source(name)}
                       for name, spec in FIELDS.items()},
            "paused": None if self.paused is None else {
                "who": self.paused.who, "at": self.paused.at, "reason": self.paused.reason},
        }


def read(db: Database, name: str) -> QueueRecord:
    """The queue's stored record (empty if nothing was ever stored)."""
    return QueueRecord.of(name, db[schema.QUEUES].find_one({"_id": name}))


def read_all(db: Database) -> dict[str, QueueRecord]:
    return {d["_id"]: QueueRecord.of(d["_id"], d) for d in db[schema.QUEUES].find()}


def define(db: Database, name: str, values: Mapping[str, Any]) -> QueueRecord:
    """Store ``values`` as the queue's policy where no value is stored yet (code's own).

    One conditional upsert per field: a field someone already stored is kept
    (the upsert then collides on ``_id`` and is skipped).
    """
    name = validation.queue_name(name)
    checked = {key: value for key, value in check(values, partial=False).items()}
    _rate_limit_whole(checked)
    now = utcnow()
    for key, value in checked.items():
        try:
            db[schema.QUEUES].update_one(
                {"_id": name, f"policy.{key}": {"$exists": False}},
                {"$set": {f"policy.{key}": value, f"set_by.{key}": {"by": CODE, "at": now},
                          "updated_at": now}}, upsert=True)
        except DuplicateKeyError:
            pass
    return read(db, name)


def checked_change(db: Database, name: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` checked as a change of the stored policy (the rate limit stays whole)."""
    checked = check(values)
    if not checked:
        raise InvalidInput(f"Nothing to change: give some of {', '.join(FIELDS)}.")
    _rate_limit_whole({**read(db, name).policy, **checked})
    return checked


def change(db: Database, name: str, values: Mapping[str, Any], who: str) -> QueueRecord:
    """An admin's edit: set the fields given, unset those given as None; one update."""
    name = validation.queue_name(name)
    checked = checked_change(db, name, values)
    now = utcnow()
    update: dict[str, Any] = {"$set": {"updated_at": now}}
    for key, value in checked.items():
        if value is None:
            update.setdefault("$unset", {}).update({f"policy.{key}": "", f"set_by.{key}": ""})
        else:
            update["$set"][f"policy.{key}"] = value
            update["$set"][f"set_by.{key}"] = {"by": ADMIN, "who": who, "at": now}
    db[schema.QUEUES].update_one({"_id": name}, update, upsert=True)
    return read(db, name)


def pause(db: Database, name: str, who: str, reason: str | None = None) -> bool:
    """Pause the queue (no claims; writes still accepted); False if it was paused already."""
    name = validation.queue_name(name)
    if reason is not None and (not isinstance(reason, str) or len(reason) > 200):
        raise InvalidInput("A pause's reason is a string of at most 200 characters.")
    now = utcnow()
    try:
        result = db[schema.QUEUES].update_one(
            {"_id": name, "paused": {"$exists": False}},
            {"$set": {"paused": {"who": who, "at": now, "reason": reason}, "updated_at": now}},
            upsert=True)
    except DuplicateKeyError:
        return False
    return bool(result.modified_count or result.upserted_id is not None)


def resume(db: Database, name: str) -> bool:
    """Resume a paused queue; False if it was not paused."""
    name = validation.queue_name(name)
    result = db[schema.QUEUES].update_one({"_id": name, "paused": {"$exists": True}},
                                          {"$unset": {"paused": ""},
                                           "$set": {"updated_at": utcnow()}})
    return bool(result.modified_count)


class PolicyCache:
    """One queue's record as a consumer sees it: read again once ``CACHE_SECONDS`` old."""

    def __init__(self, db: Database, name: str) -> None:
        self._db = db
        self._name = name
        self._record: QueueRecord | None = None
        self._read_at = 0.0
        self._lock = threading.Lock()

    def current(self) -> QueueRecord:
        with self._lock:
            if self._record is None or time.monotonic() - self._read_at >= CACHE_SECONDS:
                self._record = read(self._db, self._name)
                self._read_at = time.monotonic()
            return self._record

    def forget(self) -> None:
        with self._lock:
            self._record = None
