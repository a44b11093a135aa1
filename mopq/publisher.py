"""The background publisher: moves events into the business log off the hot path.

Two kinds of work reach it, both from this process:

* outboxes of messages this process just changed. Their events are already
  durable in the message document (written in the same atomic update as the
  transition), so the in-memory copy is only a shortcut: if it is lost, the
  sweep (``mopq.maintenance``) publishes them from the document later.
* business events from ``emit()``. They live only here until inserted, so the
  buffer is bounded: when it is full the oldest are dropped, the drop is
  counted (``Publisher.dropped``) and, once the engine answers again, reported
  as a business event named ``mopq.events_dropped``.

Publishing an outbox is: insert the events one transition pushed (duplicate
ids are ignored: the event is already there), then pull them from the
message's outbox, and delete the message if it is in a terminal state and its
outbox is now empty (no transition follows a terminal one); a done message
is copied into history first (``mopq.history``).
"""

from __future__ import annotations

import atexit
import collections
import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from pymongo import DeleteMany, DeleteOne, UpdateMany
from pymongo.database import Database
from pymongo.errors import BulkWriteError, InvalidOperation, OperationFailure, PyMongoError

from mopq import history, schema, write_intents
from mopq.bulk import insert_events
from mopq.clock import utcnow
from mopq.doorbell import LOG, ringer_for
from mopq.events import as_document, business_event, expanded

log = logging.getLogger("mopq.publisher")

MAX_BUFFERED_EVENTS = 100_000
MAX_PENDING_OUTBOXES = 100_000
BATCH = 5_000
IDLE_WAIT_SECONDS = 0.2
# Batches start at least this far apart, so that under a steady stream events go
# out in batches, not one outbox at a time competing with the caller for the engine.
GATHER_SECONDS = 0.05
# After a quiet spell a batch gathers only this long (see Publisher._gather): enough
# for a quick handler's acknowledgement to join its claim (one clearing instead of two).
QUIET_GATHER_SECONDS = 0.005
RETRY_WAIT_MAX_SECONDS = 5.0
# Messages per outbox-clearing statement: the embedded engine tests a ``$in`` list
# element by element, so a group much larger than this costs more than it saves.
CLEAR_GROUP = 50
EXIT_FLUSH_SECONDS = 5.0
MAX_OUTBOX_REFUSALS = 3
# An outbox event published later than this after its transition may have been published
# by the sweep too (mopq.maintenance.OUTBOX_GRACE_SECONDS, 5 s; the margin covers clocks
# a little apart): it goes out flagged republished.
LATE_SECONDS = 2.0
DROPPED_EVENT_NAME = "mopq.events_dropped"


class Outbox(NamedTuple):
    """The unpublished events of one message, as its last transition left them.

    A named tuple: ``write_many`` makes one per message, and a frozen
    dataclass costs twice as much to create.
    """

    message_id: Any
    state: str
    events: list[dict[str, Any]]
    # The message fields stored events leave out (queue, routing_key, activity);
    # None when the events are already full (see mopq.events.written_entry).
    source: dict[str, Any] | None = None

    def full(self) -> Outbox:
        """This outbox with every event complete, as the business log stores it."""
        if self.source is None:
            return self
        message = {**self.source, "_id": self.message_id}
        return Outbox(self.message_id, self.state, [expanded(e, message) for e in self.events])


def _merged(outboxes: list[Outbox]) -> list[Outbox]:
    """One outbox per message: its events in order, and the state of its last transition.

    A claim and its ack often reach one batch; merged, they cost one pull (or
    one delete) instead of two pulls and a delete.
    """
    merged: dict[Any, Outbox] = {}
    for outbox in outboxes:
        if not outbox.events:
            continue
        outbox = outbox.full()
        earlier = merged.get(outbox.message_id)
        if earlier is None:
            merged[outbox.message_id] = outbox
            continue
        known = {event["id"] for event in earlier.events}
        events = earlier.events + [e for e in outbox.events if e["id"] not in known]
        merged[outbox.message_id] = Outbox(outbox.message_id, outbox.state, events)
    return list(merged.values())


def publish_outboxes(db: Database, outboxes: list[Outbox], republished: bool = False,
                     inserted: Callable[[], None] | None = None) -> list[Any]:
    """Publish the events of ``outboxes``, then clear them from their messages.

    Returns the finished messages left undeleted because their write intent may
    still count them (``mopq.write_intents``): try them again later with
    ``write_intents.release``.

    ``republished`` marks events that may have been published before (a retry
    after an error, or a sweep): collectors check those against their receipts.
    ``inserted`` is called as soon as the events are in the log, before the
    outboxes are cleared (the publisher rings the collectors then: clearing
    and archiving take several round trips the count need not wait for).
    """
    outboxes = _merged(outboxes)
    if not outboxes:
        return []
    documents = [as_document(e) for outbox in outboxes for e in outbox.events]
    # The sweep may already have published an event this old (it takes outboxes a few
    # seconds old), and a collector applied and deleted it: a copy not flagged would be
    # counted twice. Flagged, the collectors check it against their receipts.
    late = utcnow() - dt.timedelta(seconds=LATE_SECONDS)
    for document in documents:
        if republished or document["at"] < late:
            document["republished"] = True
    insert_events(db, documents)
    if inserted is not None:
        inserted()
    messages = db[schema.MESSAGES]
    # A finished message whose outbox holds exactly the events just published
    # is deleted at once (its outbox would be empty after the pull).
    finished = [outbox for outbox in outboxes if outbox.state in schema.TERMINAL_STATES]
    undeleted: list[Outbox] = []  # finished messages a write intent may hold
    if finished:
        history.archive(db, [o.message_id for o in finished if o.state == schema.DONE])
        ids = [[e["id"] for e in outbox.events] for outbox in finished]
        removed = messages.bulk_write([
            DeleteOne({"_id": outbox.message_id, "state": outbox.state,
                       "outbox": {"$size": len(event_ids)}, "outbox.id": {"$all": event_ids},
                       **write_intents.not_held()})
            for outbox, event_ids in zip(finished, ids, strict=True)], ordered=False)
        if removed.deleted_count == len(finished):
            outboxes = [outbox for outbox in outboxes
                        if outbox.state not in schema.TERMINAL_STATES]
            if not outboxes:
                return []
        else:
            undeleted = finished
    # Every pull, then every delete, in one ordered bulk write, so each
    # message's pull runs before its delete. Each statement covers a group of
    # messages (``_id: {$in}``): pulling any id of the group from any of its
    # messages removes only events just inserted, so it is exact; and the
    # engine's cost is the documents it changes, not the statements, while
    # the driver's cost is one object per statement (issue 16: a pull per
    # message took more time than the insert of the events).
    groups = [outboxes[i:i + CLEAR_GROUP] for i in range(0, len(outboxes), CLEAR_GROUP)]
    writes: list[UpdateMany | DeleteMany] = []
    for group in groups:
        event_ids = [e["id"] for outbox in group for e in outbox.events]
        writes.append(UpdateMany({"_id": {"$in": [outbox.message_id for outbox in group]},
                                  "outbox.id": {"$in": event_ids}},
                                 {"$pull": {"outbox": {"id": {"$in": event_ids}}}}))
    # A finished message goes once its outbox is empty, whichever publisher
    # empties it: another process (or client) may have published its last
    # transition while this one held an earlier one. A done one goes only by a
    # publisher that knows it is done (above: it copies it into history first),
    # or by the sweep. If events still wait (their publisher is slower, or
    # died), the sweep publishes them and deletes it.
    archived = list(schema.TERMINAL_STATES)  # done ones among these were copied above
    for group in groups:
        for states, ids in ((archived, [o.message_id for o in group if o.state == schema.DONE]),
                            ([schema.EXPIRED, schema.REMOVED],
                             [o.message_id for o in group if o.state != schema.DONE])):
            if ids:
                writes.append(DeleteMany({"_id": {"$in": ids}, "state": {"$in": states},
                                          "outbox.0": {"$exists": False},
                                          **write_intents.not_held()}))
    messages.bulk_write(writes, ordered=True)
    return write_intents.release(db, [outbox.message_id for outbox in undeleted])


def publish_batch(db: Database, batch: write_intents.WrittenBatch, republished: bool = False,
                  inserted: Callable[[], None] | None = None) -> None:
    """Publish the "written" events of one write intent (``mopq.write_intents``, step 2).

    Nothing is published if the sweep took the intent first: it counts those
    messages one by one.
    """
    if not write_intents.take(db, batch):
        return
    # As for outboxes: the sweep takes an intent left publishing once it is a few seconds old.
    late = utcnow() - dt.timedelta(seconds=LATE_SECONDS) > batch.at
    insert_events(db, write_intents.batch_events(
        batch, republished=republished or batch.republished or late))
    if inserted is not None:
        inserted()
    write_intents.finish(db, batch.intent_id)


class Publisher:
    """One background thread per process and database that publishes events."""

    def __init__(self, db: Database, max_buffered: int = MAX_BUFFERED_EVENTS) -> None:
        self.db = db
        self.max_buffered = max_buffered
        self.dropped = 0
        self._dropped_unreported = 0
        self._business: collections.deque[dict[str, Any]] = collections.deque()
        self._outboxes: collections.deque[Outbox] = collections.deque()
        self._batches: collections.deque[write_intents.WrittenBatch] = collections.deque()
        # Finished messages a write intent still held when they were published.
        self._held: list[Any] = []
        self._held_tried = 0.0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        # Set by flush(): someone waits, so publish without gathering first.
        self._hurry = threading.Event()
        self._retired = False
        self._batch_started = -GATHER_SECONDS  # time.monotonic() of the last batch taken
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self._outbox_refusals = 0

    def add_outbox(self, outbox: Outbox) -> None:
        self.add_outboxes([outbox])

    def add_outboxes(self, outboxes: list[Outbox]) -> None:
        outboxes = [outbox for outbox in outboxes if outbox.events]
        if not outboxes:
            return
        with self._lock:
            if self._retired:  # its client is closed; the messages keep them for the sweep
                return
            self._outboxes.extend(outboxes)
            while len(self._outboxes) > MAX_PENDING_OUTBOXES:
                self._outboxes.popleft()  # still durable in its message; the sweep publishes it
            self._idle.clear()
        self._ensure_thread()
        self._wake.set()

    def add_batch(self, batch: write_intents.WrittenBatch) -> None:
        """A write intent whose messages were inserted: publish its batch events."""
        with self._lock:
            if self._retired:  # its client is closed; the sweep counts the messages
                return
            self._batches.append(batch)
            self._idle.clear()
        self._ensure_thread()
        self._wake.set()

    def add_business(self, event: dict[str, Any]) -> None:
        with self._lock:
            if self._retired:  # its client is closed: nothing can be sent any more
                self.dropped += 1
                return
            if len(self._business) >= self.max_buffered:
                self._business.popleft()
                self.dropped += 1
                self._dropped_unreported += 1
            self._business.append(event)
            self._idle.clear()
        self._ensure_thread()
        self._wake.set()

    def pending(self) -> int:
        with self._lock:
            return len(self._business) + len(self._outboxes) + len(self._batches)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything buffered is published; False if the deadline passed."""
        self._hurry.set()
        self._wake.set()
        return self._idle.wait(timeout)

    def _gather(self) -> None:
        """Let more work arrive until ``GATHER_SECONDS`` after the last batch began.

        Why from the last batch and not from this wake-up: the pause is there
        to bound how often a busy process publishes, and a window since the
        last batch bounds it as well (at most one batch per ``GATHER_SECONDS``)
        while events that follow a quiet spell, such as a task's claim and
        acknowledgement at a steady 100 tasks/s, go out after
        ``QUIET_GATHER_SECONDS`` instead of the whole pause (issue 16: how
        soon a finished task is seen). Nobody waits when someone is in flush().
        """
        window_left = self._batch_started + GATHER_SECONDS - time.monotonic()
        self._hurry.wait(max(QUIET_GATHER_SECONDS, window_left))

    def _idle_if_empty(self) -> bool:
        with self._lock:
            if self._outboxes or self._business or self._batches:
                return False
            self._idle.set()
            self._hurry.clear()
            return True

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._run, name="mopq-publisher",
                                                    daemon=True)
                    self._thread.start()

    def _retire(self, outboxes: list[Outbox], business: list[dict[str, Any]],
                error: InvalidOperation) -> None:
        with self._lock:
            business_lost = len(business) + len(self._business)
            outboxes_left = len(outboxes) + len(self._outboxes)
            self._business.clear()
            self._outboxes.clear()
            self._batches.clear()
            self.dropped += business_lost
            self._retired = True
            self.last_error = str(error)
            self._idle.set()
        with _publishers_lock:
            for key, publisher in list(_publishers.items()):
                if publisher is self:
                    del _publishers[key]
        log.error("mopq: the MongoClient of database %r was closed (%s); %d emitted event(s) "
                  "dropped, %d outbox(es) left to the sweep. Close clients only after "
                  "mopq.flush().", self.db.name, error, business_lost, outboxes_left)

    def _full(self) -> bool:
        with self._lock:
            return len(self._outboxes) >= BATCH or len(self._business) >= BATCH

    def _take(self) -> tuple[list[Outbox], list[dict[str, Any]], list[write_intents.WrittenBatch]]:
        with self._lock:
            outboxes = [self._outboxes.popleft() for _ in range(min(BATCH, len(self._outboxes)))]
            business = [self._business.popleft() for _ in range(min(BATCH, len(self._business)))]
            batches = list(self._batches)
            self._batches.clear()
            return outboxes, business, batches

    def _hold(self, message_ids: list[Any]) -> None:
        """Keep finished messages an intent held, to delete them once it is gone."""
        self._held.extend(message_ids)
        del self._held[:-MAX_PENDING_OUTBOXES]  # beyond that, the sweep deletes them

    def _release_held(self) -> None:
        if not self._held or time.monotonic() - self._held_tried < IDLE_WAIT_SECONDS:
            return
        self._held_tried = time.monotonic()
        try:
            self._held = write_intents.release(self.db, self._held)
        except PyMongoError as error:  # kept: tried again on the next round
            log.debug("mopq: cannot delete finished messages yet (%s)", error)

    def _ring_collectors(self) -> None:
        """Wake the collectors waiting for events: these are in the log now."""
        ringer_for(self.db).ring(LOG)

    def _report_drops(self) -> None:
        """Once the engine answers again, record how many events were dropped meanwhile."""
        with self._lock:
            dropped = self._dropped_unreported
        if not dropped:
            return
        report = business_event(DROPPED_EVENT_NAME, dropped, {}, utcnow())
        insert_events(self.db, [as_document(report)])
        with self._lock:
            self._dropped_unreported -= dropped

    def _give_back(self, outboxes: list[Outbox], business: list[dict[str, Any]],
                   batches: list[write_intents.WrittenBatch]) -> None:
        # The failed attempt may have inserted some of them: mark them as possible repeats.
        for event in business:
            event["republished"] = True
        outboxes = [Outbox(o.message_id, o.state, [dict(e, republished=True) for e in o.events],
                           o.source) for o in outboxes]
        batches = [batch._replace(republished=True) for batch in batches]
        with self._lock:
            self._batches.extendleft(reversed(batches))
            self._outboxes.extendleft(reversed(outboxes))
            self._business.extendleft(reversed(business))
            while len(self._business) > self.max_buffered:
                self._business.popleft()
                self.dropped += 1
                self._dropped_unreported += 1

    def _run(self) -> None:
        wait = 0.1
        while not self._retired:
            outboxes, business, batches = self._take()
            if outboxes or business or batches:
                self._batch_started = time.monotonic()
            else:
                self._release_held()
                self._idle_if_empty()
                self._wake.wait(IDLE_WAIT_SECONDS)
                self._wake.clear()
                self._gather()
                continue
            try:
                try:
                    for batch in list(batches):
                        publish_batch(self.db, batch, inserted=self._ring_collectors)
                        batches.remove(batch)
                    self._hold(publish_outboxes(self.db, outboxes,
                                                inserted=self._ring_collectors))
                except (BulkWriteError, OperationFailure) as refused:
                    # The server answered, but refused: retrying the same writes may
                    # never succeed. Their events stay in the messages' outboxes (or
                    # their write intents), so give up on this copy; the sweep
                    # publishes them from there.
                    self._outbox_refusals += 1
                    if self._outbox_refusals < MAX_OUTBOX_REFUSALS:
                        raise
                    log.error("mopq: the server refuses to publish %d outbox(es) and %d "
                              "write intent(s) (%s); leaving them to the sweep",
                              len(outboxes), len(batches), refused)
                self._outbox_refusals = 0
                outboxes, batches = [], []
                self._release_held()
                if business:
                    insert_events(self.db, [as_document(event) for event in business])
                    business = []
                    self._ring_collectors()
                self._report_drops()
                self.last_error = None
                wait = 0.1
                if not self._idle_if_empty() and not self._full():
                    # Let the next batch gather: under a steady stream, publishing
                    # each few outboxes at once costs the engine (and the caller's
                    # own claims and acks) more round trips than events.
                    self._gather()
            except InvalidOperation as error:
                # The client was closed under us: nothing sent through it can succeed.
                # Outbox events stay in their messages (the sweep publishes them);
                # emitted events only lived here, so they count as dropped.
                self._retire(outboxes, business, error)
                return
            except PyMongoError as error:
                self.last_error = str(error)
                log.warning("mopq: cannot publish events yet (%s); retrying in %.1f s",
                            error, wait)
                self._give_back(outboxes, business, batches)
                time.sleep(wait)
                wait = min(wait * 2, RETRY_WAIT_MAX_SECONDS)
            except Exception:  # never let the thread die: events would pile up silently
                log.exception("mopq: publisher error; events are retried")
                self._give_back(outboxes, business, batches)
                time.sleep(wait)


_publishers: dict[tuple[int, int, str], Publisher] = {}
_publishers_lock = threading.Lock()


def publisher_for(db: Database) -> Publisher:
    """The publisher of this process for ``db`` (a new one after a fork)."""
    key = (os.getpid(), id(db.client), db.name)
    with _publishers_lock:
        publisher = _publishers.get(key)
        if publisher is None:
            publisher = Publisher(db)
            _publishers[key] = publisher
        return publisher


def flush_all(timeout: float = 10.0) -> bool:
    """Wait for every publisher of this process; False if any is still busy at the deadline."""
    deadline = time.monotonic() + timeout
    with _publishers_lock:
        publishers = [p for (pid, _, _), p in _publishers.items() if pid == os.getpid()]
    return all(p.flush(max(0.0, deadline - time.monotonic())) for p in publishers)


atexit.register(flush_all, EXIT_FLUSH_SECONDS)
