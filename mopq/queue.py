"""``Queue``: write messages, claim them under a lease.

How a claim works, and why. One message at a time (``read()``, a worker
that has not learnt its pace, the HTTP queue's claims), the engine picks it:
one ``find_one_and_update`` of the queue's first pending message, highest
priority then oldest, answered from the "claim" index (on MongoDB, and on the
embedded engine through its ordered index, docs/ENGINE.md). Consumers in
other processes then never try a message another just took, and a claim
after a quiet spell is one round trip. An expired lease is not claimed that
way (its event needs the old token, which only a read gives): when no
pending message is claimable, a candidate read follows.

Several at once, a queue reads a batch of candidate ids (same order), keeps
them for a short while, and takes them with compare-and-set updates on
``_id`` whose filter re-checks that each message is still claimable *in the
state the candidate was read in*, all in one ``update`` command. Two
consumers racing for one candidate: one update matches, the other matches
nothing and moves on. So no message is ever held by two consumers at once.

Candidates are at most ``CANDIDATE_TTL_SECONDS`` old, or ten times as long
as the read took when reads are slow (a large backlog on the plain
engine: then more candidates are read at once). Under contention (a claim
lost to another consumer) a queue tries its remaining candidates in random
order within each priority, so consumers stop colliding on the same few
messages; order within a priority is then only roughly oldest first.
"""

from __future__ import annotations

import collections
import datetime as dt
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from bson import ObjectId
from pymongo import ReturnDocument, UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError, DuplicateKeyError

from mopq import admin, history, rate_limit, schema, validation, write_intents
from mopq.bulk import duplicates_only
from mopq.clock import utcnow
from mopq.connection import get_database, prepared
from mopq.doorbell import FALLBACK_POLL_SECONDS, doorbell_for, ringer_for
from mopq.errors import (
    InvalidInput,
    LeaseLost,
    MessageCancelled,
    MessageDead,
    MessageNotFound,
    ResultTimeout,
)
from mopq.events import first_claim_entry, message_event, written_entry
from mopq.message import Message
from mopq.object_ids import object_ids
from mopq.policy import PolicyCache, QueueRecord, define
from mopq.publisher import Outbox, Publisher, publisher_for

CANDIDATE_TTL_SECONDS = 1.0
CANDIDATE_FIELDS = {"_id": 1, "queue": 1, "routing_key": 1, "activity": 1, "state": 1,
                    "lease_token": 1, "expire_at": 1, "priority": 1}
MIN_CANDIDATES = 128
MAX_LIMIT = 1000
MAX_VISIBILITY_TIMEOUT = 12 * 3600
MAX_PRIORITY = 2**31 - 1
# Longest read(wait=...): a long poll holds a thread (a worker's, or a dashboard's).
MAX_WAIT_SECONDS = 60.0

Backoff = Callable[[int], float]


@dataclass(frozen=True)
class Envelope:
    """A body with its own options, for ``Queue.write_many``."""

    body: Mapping[str, Any]
    routing_key: str | None = None
    expire: float | None = None
    delay: float | None = None
    priority: int | None = None
    dedupe_key: str | None = None
    activity: str | None = None


def exponential_backoff(first: float = 1.0, factor: float = 2.0, cap: float = 300.0,
                        jitter: float = 0.1) -> Backoff:
    """Seconds before the next attempt after ``n`` failed ones: ``first``, then doubling."""
    def delay(failed_attempts: int) -> float:
        base = min(cap, first * factor ** max(0, failed_attempts - 1))
        return max(0.0, base * (1 + random.uniform(-jitter, jitter)))
    return delay



def claimable_filter(queues: list[str], routing_key: str | None,
                     now: dt.datetime) -> dict[str, Any]:
    """The messages of ``queues`` a consumer could claim at ``now`` (a candidate read's
    filter; ``Worker`` also asks it of several queues at once)."""
    query: dict[str, Any] = {"queue": queues[0] if len(queues) == 1 else {"$in": queues},
                             "state": {"$in": list(schema.CLAIMABLE_STATES)},
                             "visible_at": {"$lte": now}}
    if routing_key is not None:
        query["routing_key"] = routing_key
    return query


def first_claimable(db: Database, queues: list[str], routing_key: str | None
                    ) -> str | None:
    """The name of one of ``queues`` with a message claimable now, or None if none has one.

    Sorted by visibility time, the order of the "queue_state_visible" index's
    last key (schema): the first message walked in that order is claimable if
    any is, so the engine reads one entry when there is work and, when there is
    none, only the queues' inflight and delayed messages. (Unsorted, the
    embedded engine scans the collection: with 20,000 instances waiting in
    another queue, 8 ms to find nothing, against 0.14 ms sorted.)
    """
    found = db[schema.MESSAGES].find_one(claimable_filter(queues, routing_key, utcnow()),
                                         {"queue": 1, "_id": 0}, sort=[("visible_at", 1)])
    return None if found is None else found["queue"]


def new_token() -> str:
    return secrets.token_hex(8)


class Written(ObjectId):
    """A written message's id (an ``ObjectId``) that can also wait for its outcome."""

    __slots__ = ("_queue",)

    def __init__(self, message_id: ObjectId, queue: Queue) -> None:
        super().__init__(message_id)
        self._queue = queue

    def result(self, timeout: float = 30.0) -> Any:
        """The handler's result once the message is done; see ``Queue.result``."""
        return self._queue.result(self, timeout)


@dataclass(frozen=True)
class _Options:
    """Checked fields shared by messages written with the same options."""

    fields: dict[str, Any]
    delayed: bool
    now: dt.datetime
    source: dict[str, Any]  # what the stored "written" entry leaves to the message
    # What a write intent counts these messages under (routing key, activity, delayed).
    group: tuple[str | None, str | None, bool]


class Queue:
    """A named queue in the ``messages`` collection.

    The queue's stored policy (``mopq.policy``: max attempts, backoff, default
    visibility timeout, rate limit, retention) is what every consumer follows;
    ``max_attempts`` and ``backoff`` given here apply only where the policy
    holds no value: after ``max_attempts`` failed attempts a message is dead;
    before that it comes back after ``backoff(attempts)`` seconds (default
    about 1 s, doubling, capped at 5 minutes). ``policy={...}`` stores values
    for the queue where none are stored yet (code's policy at creation).
    """

    def __init__(self, name: str, *, uri: str | None = None, database: str | None = None,
                 db: Database | None = None, max_attempts: int | None = None,
                 backoff: Backoff | None = None,
                 max_body_bytes: int = schema.DEFAULT_MAX_BODY_BYTES,
                 worker: str | None = None, policy: Mapping[str, Any] | None = None) -> None:
        self.name = validation.queue_name(name)
        self._code: dict[str, Any] = {}
        if max_attempts is not None:
            self._code["max_attempts"] = validation.integer("max_attempts", max_attempts, 1,
                                                            1000)
        self.max_body_bytes = validation.integer("max_body_bytes", max_body_bytes, 1,
                                                 15 * 1024 * 1024)
        if backoff is not None and not callable(backoff):
            raise InvalidInput("backoff must be a function of the failed attempts that returns "
                               "seconds, e.g. mopq.exponential_backoff(first=2).")
        self._backoff = backoff
        self.worker = worker
        self.db = prepared(db) if db is not None else get_database(uri, database)
        schema.ensure_indexes(self.db)
        if policy:
            define(self.db, self.name, policy)
        self._policy = PolicyCache(self.db, self.name)
        self._throttled_until = 0.0
        self._candidates: dict[str | None, collections.deque[dict[str, Any]]] = {}
        self._candidates_read_at: dict[str | None, float] = {}
        self._candidates_cost: dict[str | None, float] = {}
        self._found_none: dict[str | None, bool] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Queue({self.name!r}, database={self.db.name!r})"

    @property
    def messages(self) -> Collection:
        return self.db[schema.MESSAGES]

    @property
    def publisher(self) -> Publisher:
        return publisher_for(self.db)

    # -- policy --------------------------------------------------------------------

    @property
    def record(self) -> QueueRecord:
        """The stored policy and pause as this consumer sees them (at most 0.5 s old)."""
        return self._policy.current()

    @property
    def max_attempts(self) -> int:
        return int(self.record.value("max_attempts", self._code))

    @property
    def paused(self) -> bool:
        return self.record.paused is not None

    def retry_delay(self, failed_attempts: int) -> float:
        """Seconds before the next attempt: the stored backoff, else this code's, else 1 s x2."""
        record = self.record
        stored = ("backoff_first_seconds", "backoff_factor", "backoff_cap_seconds")
        if self._backoff is not None and not any(record.policy.get(key) is not None
                                                 for key in stored):
            return float(self._backoff(failed_attempts))
        first, factor, cap = (record.value(key) for key in stored)
        return exponential_backoff(first, factor, cap)(failed_attempts)

    def throttled_for(self) -> float:
        """Seconds until this process may try the queue's rate limit again (0: now)."""
        return max(0.0, self._throttled_until - time.monotonic())

    # -- writing -----------------------------------------------------------------

    def _options(self, routing_key: str | None, expire: float | None, delay: float,
                 priority: int, activity: str | None, now: dt.datetime) -> _Options:
        """Check the options a message is written with; what the body does not change."""
        delay_seconds = validation.non_negative("delay", delay)
        expire_seconds = validation.non_negative("expire", expire, allow_none=True)
        fields: dict[str, Any] = {
            "queue": self.name,
            "routing_key": validation.optional_key("routing_key", routing_key),
            "priority": validation.integer("priority", priority, -MAX_PRIORITY, MAX_PRIORITY),
            "state": schema.PENDING,
            "created_at": now,
            "updated_at": now,
            "attempts": 0,
            "visible_at": now + dt.timedelta(seconds=delay_seconds),
            "expire_at": (now + dt.timedelta(seconds=expire_seconds)
                          if expire_seconds is not None else schema.NEVER),
        }
        activity = validation.optional_key("activity", activity)
        if activity is not None:
            fields["activity"] = activity
        source = {"queue": self.name, "routing_key": fields["routing_key"], "activity": activity}
        return _Options(fields, delay_seconds > 0, now, source,
                        (fields["routing_key"], activity, delay_seconds > 0))

    def _message(self, body: Mapping[str, Any], options: _Options, dedupe_key: str | None,
                 message_id: ObjectId) -> dict[str, Any]:
        """The checked message document, without the record of its "written" event."""
        document: dict[str, Any] = {"_id": message_id,
                                    "body": validation.body(body, self.max_body_bytes),
                                    **options.fields}
        if dedupe_key is not None:
            dedupe_key = validation.optional_key("dedupe_key", dedupe_key)
            document["dedupe_key"] = dedupe_key
            document["dedupe"] = f"{self.name}\x00{dedupe_key}"
        return document

    @staticmethod
    def _with_outbox(document: dict[str, Any], options: _Options) -> Outbox:
        """Put the "written" event in the document's outbox; return that outbox."""
        outbox = [written_entry(document["_id"], options.now, options.delayed)]
        document["outbox"] = outbox
        return Outbox(document["_id"], schema.PENDING, outbox, options.source)

    def _document(self, body: Mapping[str, Any], options: _Options, dedupe_key: str | None,
                  message_id: ObjectId) -> tuple[dict[str, Any], Outbox]:
        """The message document, its outbox holding the "written" event, and that outbox."""
        document = self._message(body, options, dedupe_key, message_id)
        return document, self._with_outbox(document, options)

    def write(self, body: Mapping[str, Any], routing_key: str | None = None,
              expire: float | None = None, delay: float = 0, priority: int = 0,
              dedupe_key: str | None = None, activity: str | None = None) -> Written:
        """Write one message; return its id (the first one's, for a repeated ``dedupe_key``).

        The id is a ``Written``: ``.result(timeout)`` waits for the outcome.
        """
        options = self._options(routing_key, expire, delay, priority, activity, utcnow())
        message_id = self._insert_one(*self._document(body, options, dedupe_key,
                                                      object_ids(1)[0]))
        return Written(message_id, self)

    def write_once(self, key: str, body: Mapping[str, Any], routing_key: str | None = None,
                   expire: float | None = None, delay: float = 0, priority: int = 0,
                   activity: str | None = None, *,
                   fields: Mapping[str, Any] | None = None) -> tuple[Written, bool]:
        """Write a message at most once per ``key``; return its id and whether this call wrote it.

        The talk's idempotent create: repeating the call with the same key (a
        retried request, a producer restarted mid-batch) changes nothing and
        returns the same id, while the message is unfinished and, once it is
        done, for as long as history keeps it (``MOPQ_HISTORY_SECONDS``).
        Unlike ``dedupe_key``, which only holds while the message is unfinished.
        ``fields`` are stored with the message besides the format's own (an
        activity instance's ``sequence``: ``mopq.activities``).
        """
        key = validation.optional_key("key", key)
        if key is None:
            raise InvalidInput("write_once needs a key: a non-empty string.")
        once = f"{self.name}\x00{key}"
        finished = self.db[schema.HISTORY].find_one({"once": once}, {"_id": 1})
        if finished is not None:
            return Written(finished["_id"], self), False
        options = self._options(routing_key, expire, delay, priority, activity, utcnow())
        document, outbox = self._document(body, options, key, object_ids(1)[0])
        document["once"] = once
        document.update(fields or {})
        message_id = self._insert_one(document, outbox)
        if message_id != document["_id"]:
            return Written(message_id, self), False
        # The first message of this key may have finished (and freed the dedupe key)
        # between the look in history and the insert: then this one is a copy.
        finished = self.db[schema.HISTORY].find_one({"once": once}, {"_id": 1})
        if finished is not None:
            admin.remove(self.db, admin.selection(states=(schema.PENDING,), ids=[message_id]),
                         reason="written twice")
            return Written(finished["_id"], self), False
        return Written(message_id, self), True

    def held(self, message_id: ObjectId | str, lease_token: str) -> Message:
        """The message a lease holds, to acknowledge, fail or extend it from anywhere.

        For consumers that do not keep the ``Message`` a claim returned (the HTTP
        API, a process that handed the work on). Raises ``MessageNotFound`` if no
        such message waits in this queue, ``LeaseLost`` if it is not held under
        ``lease_token`` any more.
        """
        document = self.messages.find_one({"_id": ObjectId(str(message_id)),
                                           "queue": self.name})
        cancelled = history.cancellation(self.db, ObjectId(str(message_id))) \
            if document is None or document.get("state") != schema.INFLIGHT else None
        if cancelled is not None:
            raise MessageCancelled(f"Message {message_id} of queue {self.name!r} was cancelled "
                                   f"by {cancelled.get('who')} ({cancelled.get('reason')}); "
                                   "stop working on it. Nothing was changed.")
        if document is None:
            raise MessageNotFound(f"No message {message_id} waits in queue {self.name!r}.")
        if document.get("state") != schema.INFLIGHT or \
                document.get("lease_token") != lease_token or document["visible_at"] <= utcnow():
            raise LeaseLost(f"Message {message_id} of queue {self.name!r} is not held under "
                            f"lease {lease_token} any more (it is {document.get('state')}); "
                            "nothing was changed.")
        return Message(self, document)

    def acknowledged(self, message_id: ObjectId | str, lease_token: str) -> bool:
        """Whether the message was acknowledged under this lease (a repeated ack is no error)."""
        message_id = ObjectId(str(message_id))
        done = self.messages.find_one({"_id": message_id, "queue": self.name,
                                       "state": schema.DONE}, {"acked_lease": 1}) or \
            history.finished(self.db, message_id)
        if bool(done) and done.get("acked_lease") == lease_token:
            return True
        # An activity's step: its acknowledgement moved the instance on (mopq.activities).
        moved_on = {"_id": message_id, "sequence.leases": lease_token}
        return bool(self.messages.find_one(moved_on, {"_id": 1})
                    or self.db[schema.HISTORY].find_one(moved_on, {"_id": 1}))

    def _insert_one(self, document: dict[str, Any], outbox: Outbox) -> ObjectId:
        """Insert, or return the id of the unfinished message holding the same dedupe key."""
        while True:
            try:
                self.messages.insert_one(document)
                break
            except DuplicateKeyError:
                existing = self.messages.find_one({"dedupe": document["dedupe"]}, {"_id": 1})
                if existing is not None:
                    return existing["_id"]
                # The first one finished between our insert and our look-up: write anew.
        self.publisher.add_outbox(outbox)
        if document["visible_at"] <= document["created_at"]:
            ringer_for(self.db).ring(self.name)
        return document["_id"]

    def write_many(self, bodies: Iterable[Mapping[str, Any] | Envelope], *,
                   routing_key: str | None = None, expire: float | None = None,
                   delay: float = 0, priority: int = 0,
                   activity: str | None = None) -> list[ObjectId]:
        """Write many messages in one round trip; return their ids in order.

        Each item is a body, or an :class:`Envelope` to set a message's own options
        (the keyword arguments are the defaults). Every item is checked before
        anything is written.
        """
        now = utcnow()
        shared = self._options(routing_key, expire, delay, priority, activity, now)
        options_of: dict[tuple[Any, ...], _Options] = {}
        made: list[tuple[dict[str, Any], _Options]] = []
        items = list(bodies)
        for item, message_id in zip(items, object_ids(len(items)), strict=True):
            if not isinstance(item, Envelope):
                made.append((self._message(item, shared, None, message_id), shared))
                continue
            own = (item.routing_key if item.routing_key is not None else routing_key,
                   item.expire if item.expire is not None else expire,
                   item.delay if item.delay is not None else delay,
                   item.priority if item.priority is not None else priority,
                   item.activity if item.activity is not None else activity)
            key = tuple((type(value), value) for value in own)  # True == 1, but not as an option
            try:
                options = options_of.get(key)
            except TypeError:  # an unhashable option: validation says what is wrong
                options = None
            if options is None:
                options = self._options(*own, now)
                options_of[key] = options
            made.append((self._message(item.body, options, item.dedupe_key, message_id),
                         options))
        if not made:
            return []
        documents = [document for document, _ in made]
        ids = [document["_id"] for document in documents]
        # A large batch is counted by its write intent's events (mopq.write_intents);
        # a small one by the "written" event in each message's outbox.
        intent_id = None
        if len(made) >= write_intents.MIN_MESSAGES:
            intent_id = write_intents.open_intent(self.db, self.name, now)
            for document in documents:
                document[write_intents.BATCH_FIELD] = intent_id
            outboxes = []
        else:
            outboxes = [self._with_outbox(document, options) for document, options in made]
        try:
            self.messages.insert_many(documents, ordered=False)
            inserted = made
        except BulkWriteError as error:
            duplicate_indexes = set(duplicates_only(error))
            inserted = [pair for i, pair in enumerate(made) if i not in duplicate_indexes]
            outboxes = [outbox for i, outbox in enumerate(outboxes) if i not in duplicate_indexes]
            for index in sorted(duplicate_indexes):
                document, options = made[index]
                document.pop(write_intents.BATCH_FIELD, None)
                ids[index] = self._insert_one(document, self._with_outbox(document, options))
        if intent_id is None:
            self.publisher.add_outboxes(outboxes)
        else:
            self.publisher.add_batch(self._written_batch(intent_id, now, inserted))
        if any(document["visible_at"] <= document["created_at"] for document, _ in inserted):
            ringer_for(self.db).ring(self.name)
        return ids

    def _written_batch(self, intent_id: ObjectId, now: dt.datetime,
                       inserted: list[tuple[dict[str, Any], _Options]]
                       ) -> write_intents.WrittenBatch:
        """What the inserted messages of an intent count: how many per group."""
        counts = collections.Counter(options.group for _, options in inserted)
        return write_intents.WrittenBatch(
            intent_id, self.name, now,
            [write_intents.Group(*key, count) for key, count in counts.items()])

    # -- claiming ------------------------------------------------------------------

    def _candidate_filter(self, routing_key: str | None, now: dt.datetime) -> dict[str, Any]:
        return claimable_filter([self.name], routing_key, now)

    def _next_candidate(self, routing_key: str | None,
                        want: int) -> tuple[dict[str, Any] | None, bool]:
        """The next candidate to try, and whether the candidates were read just now."""
        taken, fresh = self._next_candidates(routing_key, want, 1)
        return (taken[0] if taken else None), fresh

    def _next_candidates(self, routing_key: str | None, want: int,
                         take: int) -> tuple[list[dict[str, Any]], bool]:
        """Up to ``take`` candidates to try, and whether the candidates were read just now."""
        with self._lock:
            candidates = self._candidates.setdefault(routing_key, collections.deque())
            age = time.monotonic() - self._candidates_read_at.get(routing_key, 0.0)
            cost = self._candidates_cost.get(routing_key, 0.0)
            fresh = not candidates or age > max(CANDIDATE_TTL_SECONDS, 10 * cost)
            if fresh:
                candidates.clear()
                started = time.monotonic()
                size = MIN_CANDIDATES if cost < 0.01 else MAX_LIMIT
                cursor = (self.messages
                          .find(self._candidate_filter(routing_key, utcnow()),
                                CANDIDATE_FIELDS)
                          .sort(schema.CLAIM_ORDER)
                          .limit(max(size, want * 4)))
                candidates.extend(cursor)
                self._found_none[routing_key] = not candidates
                self._candidates_read_at[routing_key] = time.monotonic()
                self._candidates_cost[routing_key] = time.monotonic() - started
            return [candidates.popleft() for _ in range(min(take, len(candidates)))], fresh

    def _spread_candidates(self, routing_key: str | None) -> None:
        """After a lost race, try the rest in random order within each priority.

        Consumers that read the same candidates in the same order would keep
        colliding on the first ones; a lone consumer never loses a race, so it
        keeps strict priority-then-age order.
        """
        with self._lock:
            candidates = self._candidates.get(routing_key)
            if candidates:
                spread = list(candidates)
                random.shuffle(spread)
                spread.sort(key=lambda candidate: -candidate.get("priority", 0))
                candidates.clear()
                candidates.extend(spread)

    def _undo_next(self, routing_key: str | None, candidate: dict[str, Any]) -> None:
        """Put back a candidate that was not tried (the rate limit said wait)."""
        with self._lock:
            self._candidates.setdefault(routing_key, collections.deque()).appendleft(candidate)

    def found_none(self, routing_key: str | None = None) -> bool:
        """Whether this consumer's last look for candidates found no claimable message.

        So a caller can tell an empty queue from one whose candidates other
        consumers claimed first (``Worker`` skips a queue found empty until it
        rings: ``Worker._skippable``). Read without the lock, which a candidate
        read holds while it waits for the engine: one flag needs no more.
        """
        return self._found_none.get(routing_key, False)

    def _forget_candidates(self, routing_key: str | None) -> None:
        with self._lock:
            self._candidates.pop(routing_key, None)

    def read(self, routing_key: str | None = None, visibility_timeout: float | None = None,
             limit: int = 1, wait: float = 0) -> list[Message]:
        """Claim up to ``limit`` visible messages; each is hidden for ``visibility_timeout`` s.

        ``visibility_timeout`` defaults to the queue's policy (30 s unless
        stored). Nothing is claimed while the queue is paused, nor beyond its
        rate limit (``mopq.rate_limit``): then the list is empty, or, with
        ``wait``, the call waits for the resume or the next window.

        With ``wait`` (seconds, at most ``MAX_WAIT_SECONDS``), when nothing is
        claimable, wait for a message: return as soon as one is claimed, or an
        empty list once ``wait`` has passed. Writers ring this process when they
        write (``mopq.doorbell``), so the wait ends within milliseconds of a
        write; it also looks once a second in case a ring was lost.

        A claimed message must be deleted (acknowledged), failed or extended
        before the timeout, or it becomes visible again and another consumer
        may claim it.
        """
        routing_key = validation.optional_key("routing_key", routing_key)
        if visibility_timeout is None:
            visibility_timeout = self.record.value("visibility_timeout")
        timeout = validation.non_negative("visibility_timeout", visibility_timeout)
        if timeout == 0 or timeout > MAX_VISIBILITY_TIMEOUT:
            raise InvalidInput(f"visibility_timeout must be more than 0 and at most "
                               f"{MAX_VISIBILITY_TIMEOUT} seconds, got {visibility_timeout!r}.")
        limit = validation.integer("limit", limit, 1, MAX_LIMIT)
        wait = validation.non_negative("wait", wait)
        if wait > MAX_WAIT_SECONDS:
            raise InvalidInput(f"wait must be at most {MAX_WAIT_SECONDS} seconds, got {wait!r}.")
        if not wait:
            return self._read_now(routing_key, timeout, limit)
        bell = doorbell_for(self.db)
        deadline = time.monotonic() + wait
        rang = False
        while True:
            seen = bell.rings([self.name])
            claimed = self._read_now(routing_key, timeout, limit)
            if claimed:
                return claimed
            if rang:
                bell.found_nothing(self.name)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            throttled = self.throttled_for()
            if throttled > 0:  # rings would only wake us into the same full window
                time.sleep(min(throttled, remaining))
                rang = False
                continue
            rang = bell.wait([self.name], seen, min(remaining, FALLBACK_POLL_SECONDS))

    def _read_now(self, routing_key: str | None, timeout: float, limit: int) -> list[Message]:
        claimed: list[Message] = []
        record = self.record
        if record.paused is not None or self.throttled_for() > 0:
            return claimed
        rescanned = read_here = False
        first_in_order = True
        while len(claimed) < limit:
            if limit - len(claimed) > 1 and record.rate_limit() is None:
                if read_here and not self._candidates.get(routing_key):
                    break  # what this call read is used up: the rest are others' for now
                # Several at once: one update command and one find for them all.
                candidates, fresh = self._next_candidates(routing_key, limit - len(claimed),
                                                          limit - len(claimed))
                read_here = read_here or fresh
                if not candidates:
                    if rescanned or fresh:
                        break
                    self._forget_candidates(routing_key)
                    rescanned = True
                    continue
                if len(candidates) == 1:  # one findAndModify, not an update and a find
                    message = self._claim(candidates[0], timeout)
                    got, lost = ([message], 0) if message is not None else ([], 1)
                else:
                    got, lost = self._claim_many(candidates, timeout)
                claimed.extend(got)
                if lost:
                    self._spread_candidates(routing_key)
                continue
            if first_in_order:
                message = self._in_slot(record, partial(self._claim_first, routing_key, timeout))
                if message is False:
                    break
                if message is not None:
                    self._found_none[routing_key] = False
                    claimed.append(message)
                    continue
                # No pending message: look for expired leases (and expired messages)
                # among freshly read candidates.
                first_in_order = False
                self._forget_candidates(routing_key)
                rescanned = True
            candidate, fresh = self._next_candidate(routing_key, limit - len(claimed))
            if candidate is None:
                if rescanned or fresh:  # the candidates were just read: there are none
                    break
                self._forget_candidates(routing_key)
                rescanned = True
                continue
            message = self._in_slot(record, partial(self._claim, candidate, timeout))
            if message is False:
                self._undo_next(routing_key, candidate)
                break
            if message is not None:
                claimed.append(message)
                continue
            self._spread_candidates(routing_key)
        return claimed

    def _in_slot(self, record: QueueRecord,
                 claim: Callable[[dt.datetime | None], Message | None]) -> Message | bool | None:
        """``claim`` in one slot of the queue's rate limit: its message; None if it took
        none (the slot goes back to others); False, without trying, if no slot is free.

        ``claim`` is given when the slot was taken (None without a rate limit), so
        its ``claimed_at`` falls in that slot's window.
        """
        slot = self._slot(record)
        if slot is False:
            return False
        message = claim(slot if isinstance(slot, dt.datetime) else None)
        if message is None and slot is not True:
            rate_limit.give_back(self.db, self.name, record.rate_limit(), slot)
        return message

    def _slot(self, record: QueueRecord) -> dt.datetime | bool:
        """A slot of the queue's rate limit for one claim: when it was taken, or False.

        True when the queue has no rate limit (nothing was taken).
        """
        per = record.rate_limit()
        if per is None:
            return True
        now = utcnow()
        wait = rate_limit.take(self.db, self.name, per, now)
        if wait > 0:
            self._throttled_until = time.monotonic() + wait
            return False
        return now

    def _claim(self, candidate: dict[str, Any], timeout: float,
               slot_taken_at: dt.datetime | None = None) -> Message | None:
        """Claim ``candidate`` as read, or None if it changed; ``claimed_at`` is the time
        its rate-limit slot was taken, if any, so it falls in that slot's window."""
        now = slot_taken_at or utcnow()
        expire_at = candidate.get("expire_at") or schema.NEVER
        if expire_at <= now and candidate["state"] == schema.PENDING:
            self._expire(candidate, now)
            return None
        query, update, events = self._claim_update(candidate, new_token(), timeout, now)
        document = self.messages.find_one_and_update(query, update,
                                                     return_document=ReturnDocument.AFTER)
        if document is None:
            return None
        self.publisher.add_outbox(Outbox(document["_id"], document["state"], events))
        return Message(self, document)

    def _claim_update(self, candidate: dict[str, Any], token: str, timeout: float,
                      now: dt.datetime) -> tuple[dict[str, Any], dict[str, Any],
                                                 list[dict[str, Any]]]:
        """The claim of ``candidate`` under ``token`` (docs/FORMAT.md §4.3): filter, update,
        and the events the update pushes."""
        query: dict[str, Any] = {"_id": candidate["_id"], "queue": self.name,
                                 "state": candidate["state"], "visible_at": {"$lte": now}}
        if candidate["state"] == schema.INFLIGHT:
            query["lease_token"] = candidate.get("lease_token")
        else:
            query["expire_at"] = {"$gt": now}
        events = []
        if candidate["state"] == schema.INFLIGHT:
            events.append(message_event(schema.RECLAIMED, candidate, now,
                                        candidate.get("lease_token"), reason="lease expired"))
        events.append(message_event(schema.CLAIMED, candidate, now, token, worker=self.worker))
        return query, self._lease_update(token, timeout, now, events), events

    def _lease_update(self, token: str, timeout: float, now: dt.datetime,
                      events: list[dict[str, Any]]) -> dict[str, Any]:
        """The update of a claim under ``token``, pushing ``events`` (FORMAT §4.3)."""
        return {"$set": {"state": schema.INFLIGHT, "lease_token": token,
                         "leased_by": self.worker, "claimed_at": now, "updated_at": now,
                         "visibility_timeout": timeout,
                         "visible_at": now + dt.timedelta(seconds=timeout)},
                "$inc": {"attempts": 1},
                "$push": {"outbox": {"$each": events}}}

    def _claim_first(self, routing_key: str | None, timeout: float,
                     slot_taken_at: dt.datetime | None = None) -> Message | None:
        """Claim the first pending message in claim order in one sorted ``findAndModify``,
        or None if no pending message is claimable now (FORMAT §4.3, "The first in order").

        The engine picks the message, so consumers in other processes never lose
        a race for a candidate they read, and a claim after a quiet spell costs
        one round trip instead of a candidate read and a claim. Pending only: an
        expired lease's reclaim needs the old token in its event, which only a
        candidate read gives (``_read_now`` falls back to one).
        """
        now = slot_taken_at or utcnow()
        query = {**self._candidate_filter(routing_key, now), "state": schema.PENDING,
                 "expire_at": {"$gt": now}}
        entry = first_claim_entry(now, self.worker)
        document = self.messages.find_one_and_update(
            query, self._lease_update(new_token(), timeout, now, [entry]),
            sort=schema.CLAIM_ORDER, return_document=ReturnDocument.AFTER)
        if document is None:
            return None
        self.publisher.add_outbox(Outbox(document["_id"], schema.INFLIGHT, [entry], document))
        return Message(self, document)

    def _claim_many(self, candidates: list[dict[str, Any]],
                    timeout: float) -> tuple[list[Message], int]:
        """Claim ``candidates`` as read in two round trips; the messages this call got, and
        how many races it lost.

        Each claim is the very compare-and-set of ``_claim`` (its own token, its
        own filter), sent together in one unordered ``update`` command; one
        ``find`` by ``_id`` then reads the documents back, and a document holds
        this call's token only if this call's claim matched it. A claim that
        lost its race changed nothing, as with ``_claim``.
        """
        now = utcnow()
        claims: list[UpdateOne] = []
        tokens: dict[Any, tuple[str, list[dict[str, Any]]]] = {}
        for candidate in candidates:
            if (candidate.get("expire_at") or schema.NEVER) <= now \
                    and candidate["state"] == schema.PENDING:
                self._expire(candidate, now)
                continue
            token = new_token()
            query, update, events = self._claim_update(candidate, token, timeout, now)
            claims.append(UpdateOne(query, update))
            tokens[candidate["_id"]] = (token, events)
        if not claims:
            return [], 0
        try:
            matched = self.messages.bulk_write(claims, ordered=False).matched_count
        except BulkWriteError as error:  # the others were applied: find them
            matched = error.details.get("nMatched", 0)
        if not matched:
            return [], len(claims)
        found = {document["_id"]: document for document in
                 self.messages.find({"_id": {"$in": list(tokens)}, "queue": self.name})}
        claimed = []
        for message_id, (token, events) in tokens.items():
            document = found.get(message_id)
            if document is not None and document.get("lease_token") == token:
                claimed.append((document, events))
        self.publisher.add_outboxes([Outbox(document["_id"], schema.INFLIGHT, events)
                                     for document, events in claimed])
        return [Message(self, document) for document, _ in claimed], len(claims) - len(claimed)

    def _expire(self, candidate: dict[str, Any], now: dt.datetime) -> bool:
        """Drop a pending message past its expiry (CAS on state); True if this call did."""
        event = message_event(schema.EXPIRED_EVENT, candidate, now)
        document = self.messages.find_one_and_update(
            {"_id": candidate["_id"], "queue": self.name, "state": schema.PENDING,
             "expire_at": {"$lte": now}},
            {"$set": {"state": schema.EXPIRED, "updated_at": now},
             "$unset": {"dedupe": ""}, "$push": {"outbox": event}},
            projection={"state": 1},
            return_document=ReturnDocument.AFTER,
        )
        if document is None:
            return False
        self.publisher.add_outbox(Outbox(document["_id"], schema.EXPIRED, [event]))
        return True

    # -- looking -------------------------------------------------------------------

    def get(self, message_id: ObjectId | str) -> dict[str, Any] | None:
        """The message document (any state), or None."""
        return self.messages.find_one({"_id": ObjectId(str(message_id)), "queue": self.name})

    def result(self, message_id: ObjectId | str, timeout: float = 30.0) -> Any:
        """Wait for a message's outcome: its result once done (None if it returned none).

        Raises ``MessageDead`` if it ran out of attempts, ``MessageNotFound`` if
        it is neither waiting nor in history (expired, removed by an operator,
        finished longer ago than history keeps, or never written here), and
        ``ResultTimeout`` if it is still unfinished after ``timeout`` seconds.
        """
        message_id = ObjectId(str(message_id))
        timeout = validation.non_negative("timeout", timeout)
        deadline = time.monotonic() + timeout
        pause = 0.005
        while True:
            done = history.finished(self.db, message_id)
            if done is not None:
                return self._outcome(message_id, done)
            current = self.messages.find_one({"_id": message_id, "queue": self.name},
                                             {"state": 1, "last_error": 1})
            if current is None:
                done = history.finished(self.db, message_id)  # archived meanwhile?
                if done is not None:
                    return self._outcome(message_id, done)
                raise MessageNotFound(
                    f"Message {message_id} of queue {self.name!r} is neither waiting nor "
                    "finished: it expired, an operator removed it, it finished longer ago "
                    "than history keeps (MOPQ_HISTORY_SECONDS), or it was never written here.")
            if current["state"] == schema.DEAD:
                raise MessageDead(f"Message {message_id} of queue {self.name!r} is dead: "
                                  f"{current.get('last_error')}", current.get("last_error"))
            if time.monotonic() >= deadline:
                raise ResultTimeout(f"Message {message_id} of queue {self.name!r} is still "
                                    f"{current['state']} after {timeout:g} s.")
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 0.25)

    def _outcome(self, message_id: ObjectId, finished: dict[str, Any]) -> Any:
        cancelled = finished.get("cancelled")
        if cancelled:
            raise MessageCancelled(f"Message {message_id} of queue {self.name!r} was cancelled "
                                   f"by {cancelled.get('who')}: {cancelled.get('reason')}")
        return finished.get("result")

    def count(self, state: str | None = None) -> int:
        """Messages of this queue in ``state`` (default: every state not yet finished)."""
        states = [state] if state else [schema.PENDING, schema.INFLIGHT, schema.DEAD]
        return self.messages.count_documents({"queue": self.name, "state": {"$in": states}})
