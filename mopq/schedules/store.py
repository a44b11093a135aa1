"""The ``schedules`` collection: define, read, pause, resume, run now, delete; and writing a tick.

One document per schedule, ``_id`` its name (its shape is in ``mopq.schedules``).
Every change is one single-document update; the ones a scheduler races with
are compare-and-sets. A tick's message is written with ``Queue.write_once``
under a key made of the schedule's name and the tick's time (``tick_key``), so
writing it twice, from any process, writes one message.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from dataclasses import dataclass
from typing import Any

from bson import ObjectId
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError, PyMongoError

from mopq import schema
from mopq.clock import utcnow
from mopq.errors import MopqError
from mopq.queue import Queue
from mopq.schedules.definition import Schedule
from mopq.schedules.timing import (
    DEFAULT_CATCH_UP,
    DEFAULT_GRACE_SECONDS,
    DEFAULT_MAX_CATCH_UP,
    Timing,
)

log = logging.getLogger("mopq.schedules")

WRITTEN, ALREADY_WRITTEN, ERROR = "written", "already written", "error"
SCHEDULED, MANUAL = "schedule", "manual"


class ScheduleNotFound(MopqError):
    """No schedule of that name is defined."""


# -- what the collection holds --------------------------------------------------------------

def collection(db: Database) -> Collection:
    """The schedules collection of ``db``."""
    return db[schema.SCHEDULES]


def define(db: Database, schedule: Schedule, now: dt.datetime | None = None) -> dict[str, Any]:
    """Create or replace ``schedule``; return it as stored (``view``).

    Replacing keeps the next run when the timing is the same (so a restart
    catches up what it missed, by the policy), and keeps a paused schedule
    paused; a new timing starts from its next tick after now. The replacement
    is a compare-and-set on the timing it replaces, so a scheduler never
    claims a tick of the new timing from the old timing's next run.
    """
    now = now or utcnow()
    timing = schedule.timing
    fields = {**schedule.definition(), "timing": timing.key, "updated_at": now}
    while True:  # each round that changes nothing lost to another definition, which happened
        before = collection(db).find_one({"_id": schedule.name}, {"timing": 1})
        if before is None:
            try:
                collection(db).insert_one({
                    "_id": schedule.name, **fields, "created_at": now, "paused": False,
                    "firing": None, "next_run": timing.after(now), "fired": 0, "skipped": 0})
                break
            except DuplicateKeyError:  # defined at the same moment elsewhere: replace it
                continue
        change = dict(fields)
        if before.get("timing") != timing.key:
            change["next_run"] = timing.after(now)
        if collection(db).update_one({"_id": schedule.name, "timing": before.get("timing")},
                                      {"$set": change}).matched_count:
            break
    return view(collection(db).find_one({"_id": schedule.name}))


def get(db: Database, name: str) -> dict[str, Any] | None:
    """One schedule as shown (``view``), or None."""
    document = collection(db).find_one({"_id": name})
    return view(document) if document else None


def listing(db: Database) -> list[dict[str, Any]]:
    """Every schedule as shown, by name."""
    return [view(document) for document in collection(db).find({}).sort([("_id", 1)])]


def timing_of(document: dict[str, Any]) -> Timing:
    """A stored schedule's timing."""
    return Timing(document.get("every"), document.get("cron"), document.get("timezone"))


def _existing(db: Database, name: str) -> dict[str, Any]:
    document = collection(db).find_one({"_id": name})
    if document is None:
        raise ScheduleNotFound(f"No schedule named {name!r} is defined.")
    return document


def pause(db: Database, name: str, now: dt.datetime | None = None) -> bool:
    """Stop firing ``name``'s ticks; True if it was running (a tick being written finishes)."""
    _existing(db, name)
    return collection(db).update_one(
        {"_id": name, "paused": False},
        {"$set": {"paused": True, "paused_at": now or utcnow()}}).modified_count == 1


def resume(db: Database, name: str, now: dt.datetime | None = None) -> bool:
    """Fire ``name`` again from its next tick after now; True if it was paused."""
    document = _existing(db, name)
    now = now or utcnow()
    return collection(db).update_one(
        {"_id": name, "paused": True},
        {"$set": {"paused": False, "paused_at": None, "next_run": timing_of(document).after(now)}}
    ).modified_count == 1


def delete(db: Database, name: str) -> bool:
    """Forget ``name``; True if it was defined (deleting twice is no error)."""
    return collection(db).delete_one({"_id": name}).deleted_count == 1


@dataclass(frozen=True)
class Fired:
    """One tick (or run now) written, found already written, or failed."""

    schedule: str
    tick: dt.datetime
    outcome: str                 # WRITTEN, ALREADY_WRITTEN or ERROR
    message_id: ObjectId | None
    error: str | None = None


def tick_key(name: str, tick: dt.datetime) -> str:
    """The write_once key of a schedule's tick: the same in every process."""
    return f"schedule:{name}:{tick.astimezone(dt.UTC):%Y-%m-%dT%H:%M:%SZ}"


def write_message(db: Database, queues: dict[str, Queue], document: dict[str, Any], key: str,
                  tick: dt.datetime) -> Fired:
    """Write a stored schedule's message once under ``key`` (``queues`` caches the Queues).

    A definition that cannot be written (edited by hand into a bad queue name,
    say) is an ERROR outcome, recorded and not retried; the engine failing
    raises, so the caller's claim stays and the tick is written again later.
    """
    name = document["_id"]
    try:
        queue = queues.get(document["queue"])
        if queue is None:
            queue = queues[document["queue"]] = Queue(document["queue"], db=db)
        message_id, wrote = queue.write_once(
            key, document.get("body") or {}, routing_key=document.get("routing_key"),
            priority=document.get("priority") or 0, expire=document.get("expire"),
            delay=document.get("delay") or 0, activity=document.get("activity"))
    except PyMongoError:
        raise  # the claim stays; this scheduler or another writes the tick again
    except Exception as error:  # the definition cannot be written: recorded, not retried
        log.warning("mopq schedule %s: the tick %s was not written: %s", name, tick, error)
        return Fired(name, tick, ERROR, None, f"{type(error).__name__}: {error}"[:500])
    return Fired(name, tick, WRITTEN if wrote else ALREADY_WRITTEN, ObjectId(message_id))


def recorded(fired: Fired, now: dt.datetime, trigger: str, by: str) -> dict[str, Any]:
    """The update that records ``fired`` on its schedule: last run, message, outcome, count."""
    update: dict[str, Any] = {"$set": {
        "last_run": fired.tick, "last_fired_at": now, "last_message": fired.message_id,
        "last_outcome": fired.outcome, "last_error": fired.error, "last_trigger": trigger,
        "last_by": by}}
    if fired.outcome == WRITTEN:
        update["$inc"] = {"fired": 1}
    return update


def run_now(db: Database, name: str, now: dt.datetime | None = None, by: str = "run now",
            queues: dict[str, Queue] | None = None) -> Fired:
    """Write ``name``'s message now, outside its ticks (paused or not); its next run stays.

    Each call writes a message of its own (key ``schedule:<name>:manual:...``).
    """
    document = _existing(db, name)
    now = now or utcnow()
    key = f"schedule:{name}:manual:{now:%Y-%m-%dT%H:%M:%S.%fZ}:{secrets.token_hex(4)}"
    fired = write_message(db, queues if queues is not None else {}, document, key, now)
    collection(db).update_one({"_id": name}, recorded(fired, now, MANUAL, by))
    return fired


def view(document: dict[str, Any]) -> dict[str, Any]:
    """A schedule as the dashboard and the API show it."""
    firing = document.get("firing")
    skipped = document.get("last_skipped")
    message = document.get("last_message")
    return {
        "name": document["_id"], "queue": document.get("queue"),
        "body": document.get("body") or {}, "every": document.get("every"),
        "cron": document.get("cron"), "timezone": document.get("timezone"),
        "catch_up": document.get("catch_up", DEFAULT_CATCH_UP),
        "max_catch_up": document.get("max_catch_up", DEFAULT_MAX_CATCH_UP),
        "grace_seconds": document.get("grace_seconds", DEFAULT_GRACE_SECONDS),
        "routing_key": document.get("routing_key"), "priority": document.get("priority", 0),
        "expire": document.get("expire"), "delay": document.get("delay", 0),
        "activity": document.get("activity"), "source": document.get("source", "code"),
        "paused": bool(document.get("paused")), "paused_at": document.get("paused_at"),
        "next_run": document.get("next_run"), "last_run": document.get("last_run"),
        "last_fired_at": document.get("last_fired_at"),
        "last_message": str(message) if message is not None else None,
        "last_outcome": document.get("last_outcome"), "last_error": document.get("last_error"),
        "last_trigger": document.get("last_trigger"), "last_by": document.get("last_by"),
        "fired": document.get("fired", 0), "skipped": document.get("skipped", 0),
        "last_skipped": {key: skipped.get(key) for key in ("first", "last", "count", "at")}
        if skipped else None,
        "firing": {"tick": firing.get("tick"), "by": firing.get("by"),
                   "until": firing.get("until")} if firing else None,
        "created_at": document.get("created_at"), "updated_at": document.get("updated_at"),
    }
