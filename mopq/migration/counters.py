"""Counters follow a move: the source's sums are added to the target's, exactly once.

The target's counter documents get the source's values *added* (never
replaced: the target counts its own events into the same documents), and each
remembers what it was given by that source in ``carried.<source id>``
(``as_of`` and the values). Carrying again adds only the difference, and an
older snapshot (an older export) adds nothing, so a rerun or a second import
never counts twice. Each counter's update is one atomic single-document
update guarded by the ``carried`` record it read: a run killed halfway leaves
every counter either carried as of the snapshot or not at all.

The source's ``deleted`` events of messages moved to *this* target are
subtracted first (per counter: the bucket of each move's time, its queue,
``q:*``, its activity, ``c:events``): those messages arrive unfinished and
the target counts them as waiting. So the target then shows the source's
totals as they were before the move.

Moving back counts nothing twice. The target's ``carried.<source>`` record
also keeps ``moves``: every move of the source to it subtracted so far. A
carry the other way (B back to A) takes out of B's sums what A gave B, its
values and its moves (:func:`less_received`): A's own counting is still in
A's counters, and B counts what became of the messages A moved there, so
A's ``deleted`` of them is cancelled. That cancellation is noted in A's
record (``settled``, as of B's snapshot ``settled_as_of``), and each moved
record notes when a carry first subtracted it (``moves_counted_at``): a
later carry from A to B no longer subtracts a cancelled move (its record
may even be gone, replaced by the message that came back) and takes the
settled sum out instead. So any number of hops leaves each side with the
totals its source showed.

What is not carried, and why (the command prints it):

* events the source's collectors had not applied yet (in its ``events``
  collection, or still in outboxes): no counter holds them yet. Run a
  collector on the source and migrate again; the difference is carried.
* with ``--queue``: only those queues' own series (``q:<queue>``,
  ``d:<queue>:*``); all-queue, activity, business and collector series mix
  queues and stay where they are.
* buckets past their retention (the target would drop them anyway).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pymongo import UpdateOne
from pymongo.database import Database
from pymongo.errors import BulkWriteError

from mopq import schema
from mopq.bulk import duplicates_only
from mopq.counter_documents import (
    ALL_QUEUES_SERIES,
    EVENTS_APPLIED_SERIES,
    EXTREMES,
    MARKS,
    VALUE_FIELDS,
    VALUE_GROUPS,
    add_queue_names,
    counter_ids,
    unmarked,
)
from mopq.events import event_id
from mopq.migration.deployments import chunks, to_ms
from mopq.migration.work import MESSAGES

CARRIED = "carried"
# In a document to carry: the source's moves to the target so far, by field path (kept in
# the target's carried record: a carry back cancels those moves).
MOVES = "moves"
# In a document to carry (and the record it leaves): the receiver's own moves this carry
# cancels there (the moves the receiver's last carry here subtracted), and that carry's time.
SETTLED, SETTLED_AS_OF = "settled", "settled_as_of"
# On a moved message of the source: when a carry first subtracted its move. A move counted
# at or before the target's record's settled_as_of was cancelled by a carry back.
COUNTED_AT = "moves_counted_at"
NOT_IDENTITY = {"_id", MARKS, CARRIED, MOVES, SETTLED, SETTLED_AS_OF, *VALUE_GROUPS,
                *VALUE_FIELDS, *EXTREMES}
CARRY_ROUNDS = 10      # a counter whose carried record changed under us is read again


def counter_values(doc: Mapping[str, Any]) -> dict[str, float]:
    """A counter's sums by field path (``counts.written``, ``hist.3``, ``count``, ``sum``)."""
    values: dict[str, float] = {}
    for group in VALUE_GROUPS:
        for key, value in (doc.get(group) or {}).items():
            values[f"{group}.{key}"] = value
    for name in VALUE_FIELDS:
        if name in doc:
            values[name] = doc[name]
    return values


def _counter_query(queues: tuple[str, ...] | None) -> dict[str, Any]:
    if not queues:
        return {}
    return {"$or": [{"series": {"$in": [f"q:{queue}" for queue in queues]}},
                    {"scope": "duration", "queue": {"$in": list(queues)}}]}


def move_event_id(doc: Mapping[str, Any]) -> str:
    """The id of the ``deleted`` event a move pushed (``<message>:<moved_token>:rm``)."""
    return event_id(schema.DELETED, doc["_id"], doc.get("moved_token"))


def _moved_here(db: Database, target_id: str | None, queues: tuple[str, ...] | None,
                fields: Mapping[str, int]) -> list[dict[str, Any]]:
    if target_id is None:
        return []
    return list(db[MESSAGES.collection].find(MESSAGES.moved_to(target_id, queues),
                                             dict(fields)))


def _counted_moves(db: Database, target_id: str | None, queues: tuple[str, ...] | None,
                   settled: Mapping[str, dt.datetime] | None = None,
                   counted: list[Any] | None = None) -> Counter[tuple[str, str]]:
    """What the source's counters hold of the moves to ``target_id``, by (counter, field).

    A move's ``deleted`` event is in the counters once it left both its
    outbox and the ``events`` collection (collectors delete an event only
    after every counter carries it). Read after the counters, so a move
    applied in between is subtracted without being in what was read: the
    carry comes out short, never long, and the next run makes it exact.
    """
    moved = _moved_here(db, target_id, queues,
                        {"queue": 1, "activity": 1, "moved_at": 1, "moved_token": 1,
                         "outbox.id": 1, COUNTED_AT: 1})
    published = {}
    for doc in moved:
        move = move_event_id(doc)
        if move not in {entry.get("id") for entry in doc.get("outbox") or []}:
            published[move] = doc
    waiting: set[str] = set()
    for chunk in chunks(list(published)):
        waiting.update(d["_id"] for d in db[schema.EVENTS].find({"_id": {"$in": chunk}},
                                                                 {"_id": 1}))
    minus: Counter[tuple[str, str]] = Counter()
    deleted = f"counts.{schema.DELETED}"
    for move, doc in published.items():
        if move in waiting:
            continue
        series = [(f"q:{doc['queue']}", deleted)]
        if not queues:
            series.append((ALL_QUEUES_SERIES, deleted))
            if doc.get("activity"):
                series.append((f"a:{doc['activity']}", deleted))
            series.append((EVENTS_APPLIED_SERIES, "count"))
        if counted is not None:
            counted.append(doc["_id"])
        for name, path in series:
            for counter in counter_ids(name, doc["moved_at"]):
                cancelled = (settled or {}).get(counter)
                if cancelled is None or doc.get(COUNTED_AT) is None or \
                        doc[COUNTED_AT] > cancelled:
                    minus[(counter, path)] += 1
    return minus


def _set_value(doc: dict[str, Any], path: str, value: float) -> None:
    group, _, key = path.partition(".")
    if key:
        doc.setdefault(group, {})[key] = value
    else:
        doc[group] = value


def received_back(record: Mapping[str, Any] | None) -> dict[str, float]:
    """What a carried record says its sender holds of the receiver's own counting, by path.

    ``record`` is ``carried.<receiver>`` on the sender's counter: the values
    the receiver gave it, the receiver's moves to it (subtracted from those
    values, yet still in the receiver's own counters), and the sender's own
    moves the receiver's carry cancelled (taken out of what the receiver gave,
    yet no longer in the sender's counters).
    """
    record = record or {}
    back: Counter[str] = Counter()
    for part in ("values", MOVES, SETTLED):
        for key, value in (record.get(part) or {}).items():
            back[_decode(key)] += value
    return dict(back)


def less_received(doc: dict[str, Any], target_id: str) -> None:
    """Take out of ``doc``'s sums what ``target_id`` gave it (its ``carried.<target_id>``).

    Those sums came from the target's own counters, which still hold them:
    carried back, they would count twice (a round trip A -> B -> A). The
    moves the target made to this side are taken out too: this side counts
    what became of those messages, so the target's ``deleted`` of them goes.
    """
    record = (doc.get(CARRIED) or {}).get(target_id) or {}
    back = received_back(record)
    if record.get(MOVES):   # the target's moves (all, so far) this carry cancels there
        doc[SETTLED] = {_decode(key): value for key, value in record[MOVES].items()}
        doc[SETTLED_AS_OF] = record.get("as_of")
    # The moves this side made to the target, all so far: those the target cancelled here
    # (no longer subtracted one by one) and those subtracted now.
    moves = Counter(doc.get(MOVES) or {})
    for key, value in (record.get(SETTLED) or {}).items():
        moves[_decode(key)] += value
    doc[MOVES] = dict(moves)
    values = counter_values(doc)
    for path, value in back.items():
        _set_value(doc, path, values.get(path, 0) - value)


def carried_counters(db: Database, target_id: str | None, queues: tuple[str, ...] | None,
                     now: dt.datetime, counted: list[Any] | None = None
                     ) -> list[dict[str, Any]]:
    """The source's counters as they are to be carried: its sums less its moves to the target.

    Each document keeps its identity fields and sums, and under ``moves``
    what its sums were lessened by for the moves to the target. What the
    target itself gave the source (its ``carried.<target>`` record) is taken
    out (:func:`less_received`), so a round trip counts nothing twice. The
    source collectors' marks stay behind. Buckets past their retention are
    left out. ``target_id`` None (an export) subtracts nothing and keeps each
    counter's ``carried`` records: the importing side takes out its own.

    A move whose ``deleted`` a carry back from the target already cancelled
    (counted at or before the source's ``settled_as_of`` for that counter) is
    not subtracted again: that is what keeps a third hop exact, once the
    moved records of messages that came back are gone. ``counted`` (a list)
    receives the ids of the moves subtracted, for the move to mark them
    (:data:`COUNTED_AT`).
    """
    documents = []
    for doc in db[schema.COUNTERS].find(_counter_query(queues), {MARKS: 0}):
        expires = doc.get("expires_at")
        if expires is None or expires > now:
            documents.append(doc)
    settled = {doc["_id"]: doc[CARRIED][target_id][SETTLED_AS_OF] for doc in documents
               if ((doc.get(CARRIED) or {}).get(target_id) or {}).get(SETTLED_AS_OF)}
    minus = _counted_moves(db, target_id, queues, settled, counted)
    for doc in documents:
        moves: dict[str, float] = {}
        for group in VALUE_GROUPS:
            for key in list(doc.get(group) or {}):
                taken = minus.get((doc["_id"], f"{group}.{key}"))
                if taken:
                    moves[f"{group}.{key}"] = min(taken, doc[group][key])
                    doc[group][key] = max(0, doc[group][key] - taken)
        for name in VALUE_FIELDS:
            taken = minus.get((doc["_id"], name))
            if taken and name in doc:
                moves[name] = min(taken, doc[name])
                doc[name] = max(0, doc[name] - taken)
        if target_id is not None:
            doc[MOVES] = moves
            less_received(doc, target_id)
            doc.pop(CARRIED, None)
    return documents


# Field paths are stored as keys of carried.<source>.values; a key may not hold a dot.
def _encode(path: str) -> str:
    return path.replace(".", "/")


def _decode(key: str) -> str:
    return key.replace("/", ".")


def given_values(counter: Mapping[str, Any], source_id: str) -> dict[str, float]:
    """What ``counter`` (a target's) was given by ``source_id``, by field path."""
    record = ((counter.get(CARRIED) or {}).get(source_id) or {}).get("values") or {}
    return {_decode(key): value for key, value in record.items()}


def _carry_update(doc: Mapping[str, Any], source_id: str, as_of: dt.datetime,
                  prior: Mapping[str, Any] | None) -> UpdateOne | None:
    """The update adding ``doc``'s sums to the target's counter, less what it was given before."""
    if prior and prior.get("as_of") is not None and prior["as_of"] >= as_of:
        return None  # carried as of this snapshot or a later one already
    new = counter_values(doc)
    old = {_decode(key): value for key, value in ((prior or {}).get("values") or {}).items()}
    inc = {path: new.get(path, 0) - old.get(path, 0) for path in set(new) | set(old)}
    record: dict[str, Any] = {"as_of": as_of,
                              "values": {_encode(path): value for path, value in new.items()}}
    for part in (MOVES, SETTLED):
        if doc.get(part):
            record[part] = {_encode(path): value for path, value in doc[part].items()}
    if doc.get(SETTLED_AS_OF) is not None:
        record[SETTLED_AS_OF] = doc[SETTLED_AS_OF]
    update: dict[str, Any] = {"$set": {f"{CARRIED}.{source_id}": record}}
    inc = {path: change for path, change in inc.items() if change}
    if inc:
        update["$inc"] = inc
    for name, operator in zip(EXTREMES, ("$min", "$max"), strict=True):
        if doc.get(name) is not None:
            update[operator] = {name: doc[name]}
    if prior is None:
        identity = {key: value for key, value in doc.items() if key not in NOT_IDENTITY}
        # A counter the target's collectors have not made yet: born with a 0 mark
        # for every partition, as theirs are.
        update["$setOnInsert"] = {**identity, **unmarked()}
        return UpdateOne({"_id": doc["_id"], f"{CARRIED}.{source_id}": {"$exists": False}},
                         update, upsert=True)
    return UpdateOne({"_id": doc["_id"], f"{CARRIED}.{source_id}.as_of": prior["as_of"]},
                     update)


@dataclass
class Carried:
    """How many counters got the source's values (or their growth), and how many had them."""

    counters: int = 0
    unchanged: int = 0

    def add(self, other: Carried) -> None:
        self.counters += other.counters
        self.unchanged += other.unchanged


def carry(target: Database, source_id: str, as_of: dt.datetime,
          documents: list[dict[str, Any]]) -> Carried:
    """Add the source's counter sums (``documents``, as of ``as_of``) to the target's, once.

    Safe to repeat and to run beside the target's collectors (their updates
    and these are single-document ``$inc``s on different guards). Raises
    ``RuntimeError`` only if counters keep changing under it (another carry
    of the same source at the same moment): run again.
    """
    as_of = to_ms(as_of)
    result = Carried()
    counters = target[schema.COUNTERS]
    for chunk in chunks(documents):
        todo = {doc["_id"]: doc for doc in chunk}
        for _ in range(CARRY_ROUNDS):
            if not todo:
                break
            prior = {d["_id"]: (d.get(CARRIED) or {}).get(source_id)
                     for d in counters.find({"_id": {"$in": list(todo)}},
                                            {f"{CARRIED}.{source_id}": 1})}
            operations = []
            for counter_id, doc in list(todo.items()):
                operation = _carry_update(doc, source_id, as_of, prior.get(counter_id))
                if operation is None:
                    result.unchanged += 1
                    del todo[counter_id]
                else:
                    operations.append(operation)
            if not operations:
                break
            try:
                counters.bulk_write(operations, ordered=False)
            except BulkWriteError as error:
                duplicates_only(error)  # an upsert that met a counter made meanwhile: again
            done = {d["_id"] for d in counters.find(
                {"_id": {"$in": list(todo)}, f"{CARRIED}.{source_id}.as_of": as_of}, {"_id": 1})}
            result.counters += len(done)
            for counter_id in done:
                del todo[counter_id]
        if todo:
            raise RuntimeError(f"{len(todo)} counters kept changing while being carried; "
                               "run again")
    add_queue_names(target, [d.get("queue") for d in documents if d.get("scope") == "queue"])
    return result


def not_carried(db: Database, target_id: str | None,
                queues: tuple[str, ...] | None) -> Counter[str]:
    """Events of the source no counter holds yet (unapplied, or still in outboxes), by kind.

    Keys are ``"<queue> <kind>"`` or ``"business <name>"``. The moves' own
    ``deleted`` events are left out: they are subtracted from what is
    carried whether or not they were applied.
    """
    moves = {move_event_id(doc) for doc in _moved_here(db, target_id, queues,
                                                       {"moved_token": 1})}
    found: Counter[str] = Counter()

    def note(event: Mapping[str, Any], event_key: Any) -> None:
        if event_key in moves:
            return
        if event.get("kind") == schema.BUSINESS:
            if not queues:
                found[f"business {event.get('name')}"] += 1
        elif not queues or event.get("queue") in queues:
            found[f"{event.get('queue')} {event.get('kind')}"] += event.get("count", 1)

    for event in db[schema.EVENTS].find({}, {"kind": 1, "queue": 1, "name": 1, "count": 1}):
        note(event, event["_id"])
    # Messages whose write intent has not published their batch's events yet.
    intents = [d["_id"] for d in db[schema.WRITE_INTENTS].find({}, {"_id": 1})]
    if intents:
        for doc in db[MESSAGES.collection].find({"batch": {"$in": intents},
                                                 **MESSAGES.of_queues(queues)}, {"queue": 1}):
            note({"kind": schema.WRITTEN, "queue": doc.get("queue")}, None)
    query = {"outbox.0": {"$exists": True}, **MESSAGES.of_queues(queues)}
    for doc in db[MESSAGES.collection].find(query, {"queue": 1, "outbox.id": 1,
                                                    "outbox.kind": 1}):
        for entry in doc.get("outbox") or []:
            note({"kind": entry.get("kind"), "queue": doc.get("queue")}, entry.get("id"))
    return found
