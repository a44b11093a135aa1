"""Declaring an activity: its ordered steps, each a queue and a handler; starting instances.

A step's queue belongs to that step (and its compensation's queue to its
compensation): that is what lets any consumer of the queue serve the step,
and what makes the queue's counters the step's counters. ``define`` stores
the definition in ``activities`` (the dashboard draws the chain from there)
and refuses a queue another activity already uses.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pymongo.database import Database

from mopq import schema, validation
from mopq.activities import instances
from mopq.activities.document import COMPENSATED, COMPLETED, FORWARD, STUCK, step_body
from mopq.clock import utcnow
from mopq.connection import get_database, prepared
from mopq.errors import InvalidInput, ResultTimeout
from mopq.message import Message
from mopq.queue import Queue, Written
from mopq.worker import Worker

Handler = Callable[[Message], object]
COMPENSATION_SUFFIX = ".compensate"
MAX_NAME_CHARS = 200


@dataclass(frozen=True)
class Step:
    """One step: its ``name``, the ``queue`` its messages wait in, and its ``handler``.

    ``compensate`` (optional) undoes the step's effect when a later step goes
    dead; it runs as a message of ``compensation_queue`` (default
    ``<queue>.compensate``) with retries. ``fan_out=True``: the step runs
    ``handler`` once per item of the previous step's result (a list), and the
    next step gets ``{results: [...], dead: [indexes]}`` once all are done or
    dead.
    """

    name: str
    queue: str
    handler: Handler
    compensate: Handler | None = None
    fan_out: bool = False
    compensation_queue: str | None = None

    @property
    def undo_queue(self) -> str | None:
        if self.compensate is None:
            return None
        return self.compensation_queue or f"{self.queue}{COMPENSATION_SUFFIX}"

    def stored(self) -> dict[str, Any]:
        """The step as every instance and the definition store it."""
        return {"name": self.name, "queue": self.queue, "compensation": self.undo_queue,
                "fan_out": self.fan_out}


def _name(what: str, value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME_CHARS \
            or "\x00" in value or value.startswith("$") or "." in value:
        raise InvalidInput(f"{what} must be a string of 1 to {MAX_NAME_CHARS} characters "
                           f"without NUL or '.', not starting with '$'; got {value!r}.")
    return value


class Activity:
    """An activity: ordered ``steps``; ``start(key, input)`` runs one instance per key.

    Step N+1 is claimable only once step N is acknowledged, and in the same
    update (``mopq.activities.transitions`` says why it can be neither skipped
    nor recorded twice). Each step's handler gets a message whose body is
    ``{key, input, previous}``; what it returns is the next step's
    ``previous``. When a step runs out of attempts the compensations of the
    steps already done run in reverse order; the instance ends ``completed``,
    ``compensated`` or, if a compensation runs out of attempts, ``stuck``.
    """

    def __init__(self, name: str, steps: Sequence[Step], *, uri: str | None = None,
                 database: str | None = None, db: Database | None = None,
                 define: bool = True) -> None:
        self.name = _name("An activity's name", name)
        self.steps = list(steps)
        if not self.steps or not all(isinstance(step, Step) for step in self.steps):
            raise InvalidInput("An activity needs one or more Step(name, queue, handler).")
        names = [_name("A step's name", step.name) for step in self.steps]
        if len(set(names)) != len(names):
            raise InvalidInput(f"Step names must differ within an activity, got {names}.")
        for step in self.steps:
            if not callable(step.handler) or (step.compensate is not None
                                              and not callable(step.compensate)):
                raise InvalidInput(f"Step {step.name!r}: handler and compensate must be "
                                   "functions taking a Message.")
        if self.steps[0].fan_out:
            raise InvalidInput("The first step cannot fan out: it has no step before it "
                               "whose result lists the items.")
        queues = self.queues
        for queue in queues:
            validation.queue_name(queue)
        if len(set(queues)) != len(queues):
            raise InvalidInput(f"Each step (and each compensation) needs a queue of its own; "
                               f"got {queues}.")
        self._uri, self._database = uri, database
        self.db = prepared(db) if db is not None else get_database(uri, database)
        schema.ensure_indexes(self.db)
        if define:
            self.define()

    def __repr__(self) -> str:
        return f"Activity({self.name!r}, steps={[step.name for step in self.steps]})"

    @property
    def queues(self) -> list[str]:
        """Every queue the activity's steps and compensations use."""
        found = [step.queue for step in self.steps]
        return found + [step.undo_queue for step in self.steps if step.undo_queue]

    def define(self) -> None:
        """Store the definition (the dashboard shows it); refuse queues another one uses.

        Instances keep the steps they started with, so redefining an activity
        changes only instances started afterwards.
        """
        definitions = self.db[schema.ACTIVITIES]
        for other in definitions.find({"_id": {"$ne": self.name}}, {"steps": 1}):
            theirs = {step["queue"] for step in other["steps"]} | \
                {step["compensation"] for step in other["steps"] if step.get("compensation")}
            shared = sorted(theirs & set(self.queues))
            if shared:
                raise InvalidInput(f"Queue(s) {shared} already serve activity {other['_id']!r};"
                                   " give each step a queue of its own.")
        now = utcnow()
        definitions.update_one({"_id": self.name},
                               {"$set": {"steps": [step.stored() for step in self.steps],
                                         "updated_at": now},
                                "$setOnInsert": {"defined_at": now}}, upsert=True)

    def start(self, key: str, input: Mapping[str, Any] | None = None) -> tuple[Written, bool]:
        """Start the instance of ``key``; return its id and whether this call started it.

        Idempotent: the same key starts one instance, also after it finished,
        for as long as history keeps it (``Queue.write_once``).
        """
        now = utcnow()
        first = self.steps[0]
        stored = [step.stored() for step in self.steps]
        stored[0]["started_at"] = now
        sequence = {"name": self.name, "key": validation.optional_key("key", key),
                    "input": validation.body(dict(input or {}), schema.DEFAULT_MAX_BODY_BYTES),
                    "phase": FORWARD, "at": 0, "started_at": now, "steps": stored}
        if sequence["key"] is None:
            raise InvalidInput("An activity instance needs a key: a non-empty string.")
        return Queue(first.queue, db=self.db).write_once(
            sequence["key"], step_body(sequence, None), fields={"sequence": sequence})

    def handle(self, message: Message) -> object:
        """Run the handler the message is for: a step's, a child's or a compensation's."""
        document = message.document
        if "parent" in document:
            return self._step(document["parent"]["name"], message).handler(message)
        sequence = document.get("sequence")
        if sequence is None or sequence.get("name") != self.name:
            raise InvalidInput(f"{message!r} is not a step of activity {self.name!r}.")
        at = sequence["at"]
        # By name: an instance keeps the steps it started with, even if redefined since.
        step = self._step(sequence["steps"][at]["name"], message)
        if sequence["phase"] == FORWARD:
            result = step.handler(message)
            following = sequence["steps"][at + 1] if at + 1 < len(sequence["steps"]) else {}
            if following.get("fan_out") and not isinstance(result, list):
                # Refused here, the attempt fails and is retried; nothing moves.
                raise InvalidInput(f"Step {step.name!r} must return a list: step "
                                   f"{following['name']!r} runs once per item of it.")
            return result
        if step.compensate is None:
            raise InvalidInput(f"Step {step.name!r} of {self.name!r} has no compensation.")
        return step.compensate(message)

    def _step(self, name: str, message: Message) -> Step:
        found = next((step for step in self.steps if step.name == name), None)
        if found is None:
            raise InvalidInput(f"{message!r} is for step {name!r}, which activity "
                               f"{self.name!r} no longer has.")
        return found

    def worker(self, concurrency: int = 1, **options: Any) -> Worker:
        """A ``Worker`` serving every step and compensation queue of this activity.

        It connects where the activity was told to (``uri``, ``database``), else
        as the environment says, to the activity's database; ``options`` are
        the ``Worker``'s.
        """
        options.setdefault("uri", self._uri)
        options.setdefault("database", self._database or self.db.name)
        return Worker(self.queues, self.handle, concurrency, **options)

    def instance(self, key: str) -> dict[str, Any] | None:
        """Where the instance of ``key`` is: its status, each step's attempts and result."""
        return instances.find(self.db, self.name, key)

    def wait(self, key: str, timeout: float = 30.0) -> dict[str, Any]:
        """The instance once it has ended (completed, compensated) or is stuck.

        Raises ``ResultTimeout`` if it has not after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        pause = 0.01
        while True:
            found = self.instance(key)
            if found is not None and found["status"] in (COMPLETED, COMPENSATED, STUCK):
                return found
            if time.monotonic() >= deadline:
                raise ResultTimeout(f"Activity {self.name!r} instance {key!r} is "
                                    f"{found and found['status']} after {timeout:g} s.")
            time.sleep(pause)
            pause = min(pause * 2, 0.25)


__all__ = ["Activity", "Step"]
