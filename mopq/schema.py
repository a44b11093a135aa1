"""The storage schema in one place: collections, document shapes, indexes.

Every collection mopq uses is named here, with the shape of its documents and
the indexes its hot queries need. On MongoDB the indexes serve those queries;
the embedded engine accepts them but only uses unique ones for lookups (see
docs/ENGINE.md), which is why hot collections are kept small: finished
messages and applied events are deleted.

``messages`` — one document per message (the entity; every transition is one
atomic update of it)::

    {_id: ObjectId, queue, routing_key, body, priority, state,
     visible_at,         # pending: claimable from then; inflight: lease deadline
     expire_at,          # dropped as expired if still pending then (NEVER: no expiry)
     created_at, updated_at, attempts, max_attempts,
     lease_token, leased_by, claimed_at, visibility_timeout,   # while inflight
     epoch,              # nonce renewed when an operator retries a dead message
     dedupe,             # "<queue>\\x00<dedupe_key>", only while not done
     once,               # the same, written by Queue.write_once (kept into history)
     dedupe_key, activity, last_error, traceback, errors: [...], dead_at,
     progress: {fraction, note, at}, log: [line, ...],
     outbox: [event, ...],   # events of its transitions not yet published
     batch}              # its write intent's id, while that may still count it

``events`` — the business log, a queue of events that collectors apply to the
counters and then delete; ``_id`` is deterministic (see ``mopq.events``)::

    {_id: str, kind, partition, at, queue, routing_key, message, activity,
     name, value, tags, duration}

``workers`` — the registry, one document per worker process, ``_id`` its
identity ``ip:port:start_time:pid``; written by ``mopq.worker`` (upserted at
start, rewritten every heartbeat, "stopped" on a clean stop)::

    {_id, ip, port, pid, hostname, started_at, heartbeat_at,
     queues: [name, ...], routing_key, concurrency, visibility_timeout,
     state,              # "running", "quiet", "stopping", "stopped"
     current: [{message_id, queue, since}, ...],   # being handled, as of the last beat
     processed, failed,  # acks and failed attempts by this worker
     stopped_at,
     control: {command, at, by},  # what an admin asked of it (mopq.control)
     zombie_reason, checked_at}   # written by the monitor

``write_intents`` — one document per large ``write_many`` whose "written"
events are not published yet (``mopq.write_intents`` has why and the rules)::

    {_id: ObjectId, state: "open" | "publishing" | "swept", queue, at,
     groups: [{routing_key, activity, delayed, count}, ...], swept_at}

``history`` — acknowledged messages, kept for a while with their result
(``mopq.history`` has the shape).

``doorbells`` — where waiting consumers can be rung after a write
(``mopq.doorbell``): ``{_id: identity, ip, port, database, queues, expires_at}``.

``settings`` — ``{_id: "format", version: 1}``: the storage format the
database speaks (docs/FORMAT.md); ``{_id: "search_fields", fields: [{queue, field}, ...]}``:
body fields declared searchable (``mopq.search``), each with an index; and
``{_id: "queues", names: [...]}``: every queue the collectors have seen
(``collectors.batch.register_queues``).

``schedules`` — one document per schedule, ``_id`` its name: a message written
to a queue on a cron expression or an interval; its shape and how each tick
fires once are in ``mopq.schedules``.

``arrivals`` — on a deployment that received work from another one
(``mopq.migration``): one document per message that arrived, ``{_id: the
message id, source: the sending deployment's id, collection, queue, at, via}``,
kept so that importing or moving the same message again adds nothing.

``queues`` — one document per queue that has a stored policy or is paused,
``_id`` its name (``mopq.policy`` has the shape); ``rate_windows`` — claim
slots of rate-limited queues, one document per queue and window
(``mopq.rate_limit``).

``activities`` — one document per activity definition, ``_id`` its name:
``{_id, steps: [{name, queue, compensation, fan_out}], defined_at}``. An
instance of an activity is a message whose ``sequence`` field says where it
is; the message moves from step queue to step queue (``mopq.activities``
has its shape and why a step can neither be skipped nor recorded twice).

``counters``, ``receipts``, ``leases``, ``audit`` — written by the collectors
and the dashboard; their shapes are documented where they are written
(``collectors.counters``, ``collectors.batch``, ``collectors.leases``,
``dashboard.audit``).
"""

from __future__ import annotations

import datetime as dt
import threading
import zlib
from dataclasses import dataclass

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.collection import Collection
from pymongo.database import Database

# The storage format clients in any language follow (docs/FORMAT.md); a database
# records the version it speaks in settings {_id: "format", version: N}.
FORMAT_VERSION = 2
FORMAT_DOCUMENT = "format"

MESSAGES = "messages"
EVENTS = "events"
WORKERS = "workers"
COUNTERS = "counters"
RECEIPTS = "receipts"
LEASES = "leases"
AUDIT = "audit"
SETTINGS = "settings"
DOORBELLS = "doorbells"
HISTORY = "history"
ARRIVALS = "arrivals"
SCHEDULES = "schedules"
ACTIVITIES = "activities"
QUEUES = "queues"
RATE_WINDOWS = "rate_windows"
WRITE_INTENTS = "write_intents"

# Message states. ``done``, ``expired`` and ``removed`` are terminal: the
# document stays only until its outbox is published, then it is deleted.
PENDING = "pending"
INFLIGHT = "inflight"
DEAD = "dead"
DONE = "done"
EXPIRED = "expired"
REMOVED = "removed"
CLAIMABLE_STATES = (PENDING, INFLIGHT)
TERMINAL_STATES = (DONE, EXPIRED, REMOVED)
# Migration (mopq.migration): a message that left for another deployment stays
# ``moved`` on the sending side as the record of the move; its copy waits
# ``arriving`` (invisible) on the receiving side until that record exists. No
# claim, sweep, count or operator action selects either state.
MOVED = "moved"
ARRIVING = "arriving"
# Activities (mopq.activities): an instance whose step fanned out waits ``waiting``,
# unclaimable, until its parent has counted all its children.
WAITING = "waiting"

# A worker's own states, as its heartbeat reports them (quiet: asked to take no new
# messages, mopq.control). The monitor's verdicts (alive, stale, ...) are other words.
WORKER_RUNNING = "running"
WORKER_QUIET = "quiet"
WORKER_STOPPING = "stopping"
WORKER_STOPPED = "stopped"

# Event kinds in the business log.
WRITTEN = "written"
CLAIMED = "claimed"
ACKED = "acked"
FAILED = "failed"
RETRIED = "retried"
DEAD_EVENT = "dead"
EXPIRED_EVENT = "expired"
RECLAIMED = "reclaimed"
DELETED = "deleted"
# An operator cancelled a pending, delayed or inflight message: it is removed (and
# counted among the removed) with its reason; an inflight one's holder is refused.
CANCELLED = "cancelled"
BUSINESS = "business"
MESSAGE_EVENT_KINDS = (WRITTEN, CLAIMED, ACKED, FAILED, RETRIED, DEAD_EVENT,
                       EXPIRED_EVENT, RECLAIMED, DELETED, CANCELLED)

# ``expire_at`` of a message that never expires. A date rather than null so
# that a claim's filter needs no ``$or`` (with one, the embedded engine scans
# the collection instead of using ``_id``: 54 ms instead of 4 at 100,000).
NEVER = dt.datetime(9999, 12, 31, tzinfo=dt.UTC)

# The business log is split into this many partitions; collectors share them.
PARTITIONS = 16

MAX_QUEUE_NAME_LENGTH = 120
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
LOG_LINES_KEPT = 100
ERRORS_KEPT = 20


def partition_of(key: str) -> int:
    """Stable partition of an event key (the same in every process and version)."""
    return zlib.crc32(key.encode()) % PARTITIONS


# Claim order: highest priority, then oldest; the "claim" index's last keys.
CLAIM_ORDER = [("priority", DESCENDING), ("_id", ASCENDING)]


@dataclass(frozen=True)
class CollectionIndexes:
    collection: str
    indexes: tuple[IndexModel, ...]


INDEXES: tuple[CollectionIndexes, ...] = (
    CollectionIndexes(MESSAGES, (
        # Claim: candidates of one queue, claimable state, visible now,
        # highest priority then oldest (Queue.read).
        IndexModel([("queue", ASCENDING), ("state", ASCENDING), *CLAIM_ORDER], name="claim"),
        # Queue depth and the dashboard's per-state counts; expired-lease and
        # delayed lookups by visibility time (stats, maintenance.sweep).
        IndexModel([("queue", ASCENDING), ("state", ASCENDING), ("visible_at", ASCENDING)],
                   name="queue_state_visible"),
        # write(dedupe_key=...): at most one unfinished message per key and queue.
        IndexModel([("dedupe", ASCENDING)], name="dedupe", unique=True, sparse=True),
        # maintenance.sweep: pending messages past their expiry.
        IndexModel([("expire_at", ASCENDING)], name="expire_at", sparse=True),
        # maintenance.sweep: outboxes a crashed process left unpublished.
        IndexModel([("outbox.id", ASCENDING)], name="outbox", sparse=True),
        # Sweep: the messages of a write intent whose writer died (mopq.write_intents).
        IndexModel([("batch", ASCENDING)], name="batch", sparse=True),
        # Monitor: the inflight messages of a dead worker.
        IndexModel([("leased_by", ASCENDING)], name="leased_by", sparse=True),
        # Activities page: progress of one activity.
        IndexModel([("activity", ASCENDING), ("state", ASCENDING)], name="activity",
                   sparse=True),
        # Activities page: the instances of one activity definition, by key.
        IndexModel([("sequence.name", ASCENDING), ("sequence.key", ASCENDING)],
                   name="sequence", sparse=True),
    )),
    CollectionIndexes(EVENTS, (
        # Collectors read the oldest events of the partitions they hold.
        IndexModel([("partition", ASCENDING), ("at", ASCENDING)], name="partition_at"),
    )),
    CollectionIndexes(HISTORY, (
        # Retention (oldest first) and the queue page's recent finished messages.
        IndexModel([("done_at", ASCENDING)], name="done_at"),
        IndexModel([("queue", ASCENDING), ("done_at", DESCENDING)], name="queue_done_at"),
        # Queue.write_once: a key written once is found here after its message finished.
        IndexModel([("once", ASCENDING)], name="once", unique=True, sparse=True),
        # Activities page: finished instances of one activity definition, by key.
        IndexModel([("sequence.name", ASCENDING), ("sequence.key", ASCENDING)],
                   name="sequence", sparse=True),
    )),
    CollectionIndexes(RATE_WINDOWS, (
        # A queue's page: waits for its rate limit lately; the monitor: old windows.
        IndexModel([("queue", ASCENDING), ("starts_at", ASCENDING)], name="queue_starts_at"),
        IndexModel([("starts_at", ASCENDING)], name="starts_at"),
    )),
    CollectionIndexes(WORKERS, (
        # Monitor: workers by last heartbeat.
        IndexModel([("heartbeat_at", ASCENDING)], name="heartbeat_at"),
    )),
)

_ensured: set[tuple[int, str]] = set()
_ensured_lock = threading.Lock()


class FormatMismatch(RuntimeError):
    """The database was written by a newer version of the storage format than this code's."""


def ensure_indexes(db: Database) -> None:
    """Create every index once per process and database (cheap to call again).

    Also records the storage format version (``settings`` ``{_id: "format"}``)
    if the database has none, and refuses a database of a newer format.
    """
    key = (id(db.client), db.name)
    if key in _ensured:
        return
    with _ensured_lock:
        if key in _ensured:
            return
        check_format(db)
        for entry in INDEXES:
            create_missing_indexes(db[entry.collection], list(entry.indexes))
        _ensured.add(key)


def check_format(db: Database) -> int:
    """The database's format version, recorded as ours if it had none or an older one.

    Raised, not only recorded: a client of an older version would get wrong
    what this one writes (docs/FORMAT.md §12), and raising the number is what
    makes such a client refuse the database. Raises if the stored one is newer.
    """
    db[SETTINGS].update_one({"_id": FORMAT_DOCUMENT},
                            {"$setOnInsert": {"version": FORMAT_VERSION}}, upsert=True)
    db[SETTINGS].update_one({"_id": FORMAT_DOCUMENT, "version": {"$lt": FORMAT_VERSION}},
                            {"$set": {"version": FORMAT_VERSION}})
    stored = int((db[SETTINGS].find_one({"_id": FORMAT_DOCUMENT}) or {}).get("version", 1))
    if stored > FORMAT_VERSION:
        raise FormatMismatch(
            f"Database {db.name!r} speaks mopq storage format {stored}; this mopq speaks "
            f"format {FORMAT_VERSION} (docs/FORMAT.md). Upgrade mopq before using it.")
    return stored


def create_missing_indexes(collection: Collection, indexes: list[IndexModel]) -> None:
    """Create only the indexes not there yet.

    Why not just ``create_indexes``: on the embedded engine, building an index
    while other connections change the collection can corrupt its ``_id``
    index (seen here: "Found no position ... in MemoryUniqueIndex"). Every
    worker and collector calls this at start, usually while traffic flows, so
    it must not touch indexes that already exist.
    """
    existing = {index["name"] for index in collection.list_indexes()}
    missing = [index for index in indexes if index.document["name"] not in existing]
    if missing:
        collection.create_indexes(missing)
