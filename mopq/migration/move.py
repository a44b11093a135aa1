"""The move: stage on the target, commit on the source, arrive on the target, per batch.

Why a move killed at any moment (SIGKILL included) and run again neither
loses nor duplicates a message: each message changes owner in one atomic
step, the *commit*, a compare-and-set on the source document as every
transition in mopq is (docs/FORMAT.md §1):
``{_id, state, updated_at as read}`` (for an inflight one also its lease
token, and a lease that ran out) → ``state: "moved"`` with ``moved_to`` (the
target's id), ``moved_version``, ``moved_at``, ``moved_token`` and the events
that count the move (:func:`mopq.migration.work.message_plan`). Before the
commit the target holds at most an invisible staged copy; after it, no
transition of the source can touch the message (each selects the states it
acts on), and the staged copy is made visible by this run or the next.

* Killed before the commit: the source still holds the message; the rerun
  stages again (finding its copy) and commits.
* Killed between commit and arrival: every run first *reconciles* the
  target's staged copies: one whose source says "moved here at my version"
  (or whose arrival is recorded) is made visible, one whose source message
  is unfinished at the same version is left to the pass, any other is
  deleted (its source changed or finished: it can never be committed).
* A message that changed while moving (claimed, acknowledged, retried...):
  the commit matches nothing, its staged copy is deleted, and it is tried
  again with what it is now (a few rounds, then left for the next run).
* Two migrations at once: only one commit per message can match; a staged
  copy is replaced only when the source no longer holds the version it was
  staged from, and a failed stager deletes only the copy of its own version.

The source keeps the moved documents (``moved`` is not a terminal state,
nothing deletes them): that is its record of what moved, what verification
compares, and why a second pass moves only what producers wrote since.
Unpublished events stay on the source (the copy arrives with an empty
outbox): they describe the source's transitions and are counted there,
reaching the target through the source's counters (:mod:`.counters`).
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pymongo import UpdateOne
from pymongo.database import Database
from pymongo.errors import PyMongoError

from mopq import schema, validation
from mopq.activities import fanout
from mopq.activities.recovery import SPAWN_GRACE_SECONDS
from mopq.clock import utcnow
from mopq.events import expanded
from mopq.maintenance import OUTBOX_GRACE_SECONDS
from mopq.migration.counters import (
    COUNTED_AT,
    Carried,
    carried_counters,
    carry,
    not_carried,
)
from mopq.migration.declared import Declared, settle, source_declared
from mopq.migration.deployments import CHUNK, Sides, chunks, insert_new, to_ms
from mopq.migration.receiver import (
    ARRIVE_AS,
    ARRIVE_VERSION,
    PRESENT,
    RETRY,
    STAGED,
    Receiver,
    staged_by,
)
from mopq.migration.work import (
    FINISHED,
    MESSAGES,
    WORK,
    Plan,
    Work,
    finished_selection,
    queue_names,
)
from mopq.publisher import Outbox

BATCH_SIZE = 500
RETRY_ROUNDS = 3                   # a message that changed while moving is tried again
UNREGISTERED = "an unregistered consumer"

Item = tuple[dict[str, Any], Plan, str]     # a source document, its plan, its move token


@dataclass
class Report:
    """What a move found and did, for the command to print."""

    source_id: str | None = None
    target_id: str | None = None
    moved: Counter[tuple[str, str]] = field(default_factory=Counter)      # (queue, label)
    skipped: Counter[tuple[str, str]] = field(default_factory=Counter)    # (queue, label)
    already: Counter[str] = field(default_factory=Counter)   # queue: imported there before
    present: list[Any] = field(default_factory=list)    # on both sides, no arrival record
    left: list[Any] = field(default_factory=list)       # kept changing while moved
    unique_dropped: list[Any] = field(default_factory=list)
    forced: Counter[str] = field(default_factory=Counter)                 # holder
    forced_ids: list[Any] = field(default_factory=list)   # moved from under their holders
    reconciled: int = 0
    history: int = 0
    children_counted: int = 0             # finished children counted into arrived parents
    declared: Declared = field(default_factory=Declared)   # definitions and policies
    carried: Carried = field(default_factory=Carried)
    not_carried: Counter[str] = field(default_factory=Counter)
    unpublished: int = 0                  # commit events left to the next run or the sweep


class Move:
    """One run of a migration from ``sides.source`` to ``sides.target``."""

    def __init__(self, sides: Sides, force: bool = False, batch_size: int = BATCH_SIZE) -> None:
        assert sides.source_id and sides.target_id, "opened with create=True"
        self.sides = sides
        self.source, self.target = sides.source, sides.target
        self.force = force
        self.batch_size = validation.integer("batch_size", batch_size, 1, 10_000)
        self.receiver = Receiver(self.target, sides.source_id, "migrate")
        self.report = Report(sides.source_id, sides.target_id)

    def run(self) -> Report:
        """Finish what an earlier run left, move every unfinished document, then the rest."""
        self.reconcile()
        self._publish_leftovers()
        # Before any message arrives: a paused queue's messages arrive paused.
        self.report.declared = settle(self.target,
                                      *source_declared(self.source, self.sides.queues))
        self._spawn_orphans()
        for work in WORK:
            self._pass(work)
        self.report.unique_dropped = list(self.receiver.unique_dropped)
        self.report.history = self._copy_finished()
        self.report.children_counted = self._count_children()
        as_of = to_ms(utcnow())
        counted: list[Any] = []
        documents = carried_counters(self.source, self.sides.target_id, self.sides.queues,
                                     as_of, counted)
        self._mark_counted(counted, as_of)
        self.report.carried = carry(self.target, self.receiver.source_id, as_of, documents)
        self.report.not_carried = not_carried(self.source, self.sides.target_id,
                                              self.sides.queues)
        return self.report

    def _mark_counted(self, ids: list[Any], as_of: dt.datetime) -> None:
        """Note on moved records when a carry first subtracted their move (before the carry).

        A carry back from the target cancels the moves counted up to its
        snapshot; this time tells them apart from later ones. Marked before
        the carry: a carry that then fails leaves a mark older than any
        snapshot the target holds, which a later carry covers.
        """
        for chunk in chunks(ids):
            self.source[MESSAGES.collection].update_many(
                {"_id": {"$in": chunk}, "state": schema.MOVED, COUNTED_AT: {"$exists": False}},
                {"$set": {COUNTED_AT: as_of}})

    def _spawn_orphans(self) -> None:
        """Write the children of fan-out parents whose spawner died, as the source's sweep would.

        In a disaster the source's sweep may be gone; a parent held back for
        want of its children would then never move. Written here on the
        source (where its spawner would have written them, colliding on their
        ids with any it did), they move with it in this pass.
        """
        late = utcnow() - dt.timedelta(seconds=SPAWN_GRACE_SECONDS)
        query = {"state": schema.WAITING, "sequence.children.spawned": False,
                 "sequence.children.since": {"$lte": late}, **MESSAGES.of_queues(self.sides.queues)}
        for parent in self.source[MESSAGES.collection].find(query, {"_id": 1}):
            fanout.spawn(self.source, parent["_id"])

    # the pass

    def _pass(self, work: Work) -> None:
        collection = self.source[work.collection]
        query = work.selection(self.sides.queues)
        ids = [d["_id"] for d in collection.find(query, {"_id": 1}).sort("_id", 1)]
        retry: list[Any] = []
        for chunk in chunks(ids, self.batch_size):
            retry += self._move_batch(work, list(collection.find({**query, "_id": {"$in": chunk}})))
        for _ in range(RETRY_ROUNDS):
            if not retry:
                break
            docs: list[dict[str, Any]] = []
            for chunk in chunks(retry):
                docs += collection.find({**query, "_id": {"$in": chunk}})
            retry = []
            for chunk in chunks(docs, self.batch_size):
                retry += self._move_batch(work, chunk)
        self.report.left += retry

    def _current_version(self, work: Work) -> Callable[[Any], Any]:
        def current(item_id: Any) -> Any:
            found = self.source[work.collection].find_one({"_id": item_id}, {"updated_at": 1})
            return found.get("updated_at") if found else object()
        return current

    def _plans(self, work: Work, docs: list[dict[str, Any]], now: dt.datetime) -> list[Item]:
        items = []
        for doc in docs:
            if not work.unfinished(doc):
                continue  # finished since it was selected: nothing to move
            token = secrets.token_hex(8)
            plan = work.plan(doc, now, self.force, token)
            if plan.copy is None:
                self.report.skipped[(doc.get(work.queue_field), plan.label)] += 1
            else:
                items.append((doc, plan, token))
        return items

    def _split_received(self, work: Work, items: list[Item]) -> tuple[list[Item], list[Item]]:
        """Items the target recorded as arrived (from an import), and the others.

        A recorded one is committed on the source without copying again: the
        target has, or had, it. One still staged there (an import cut short)
        is made visible first.
        """
        recorded = self.receiver.recorded([doc["_id"] for doc, _, _ in items])
        if not recorded:
            return [], items
        there = {d["_id"]: d for d in self.target[work.collection].find(
            {"_id": {"$in": list(recorded)}}, {"state": 1, ARRIVE_VERSION: 1, ARRIVE_AS: 1})}
        received, others = [], []
        for item in items:
            doc, plan, _ = item
            found = there.get(doc["_id"])
            if doc["_id"] not in recorded or (found is not None
                                              and found["state"] == schema.MOVED):
                others.append(item)
                continue
            if found is not None and found["state"] == schema.ARRIVING:
                assert plan.copy is not None
                self.receiver.arrive(work, [(found["_id"], found.get(ARRIVE_VERSION),
                                             found.get(ARRIVE_AS) or plan.copy["state"],
                                             doc.get(work.queue_field))])
            received.append(item)
        return received, others

    def _move_batch(self, work: Work, docs: list[dict[str, Any]]) -> list[Any]:
        """Stage, commit, arrive one batch; return the ids to try again."""
        now = to_ms(utcnow())
        received, candidates = self._split_received(work, self._plans(work, docs, now))
        outcomes = self.receiver.stage(
            work, [(plan.copy, plan.version) for _, plan, _ in candidates],
            self._current_version(work))
        staged = [candidates[i] for i in outcomes[STAGED]]
        self.report.present += [candidates[i][0]["_id"] for i in outcomes[PRESENT]]
        mine, others, failed = self._commit(work, received + staged, now)
        staged_ids = {doc["_id"] for doc, _, _ in staged}
        self.receiver.arrive(work, [
            (doc["_id"], plan.version, plan.copy["state"], doc.get(work.queue_field))
            for doc, plan, _ in mine + others if doc["_id"] in staged_ids and plan.copy])
        self.receiver.unstage(work, [(doc["_id"], plan.version) for doc, plan, _ in failed
                                     if doc["_id"] in staged_ids])
        self._publish(work, mine)
        for doc, plan, _ in mine:
            queue = doc.get(work.queue_field)
            if doc["_id"] in staged_ids:
                self.report.moved[(queue, plan.label)] += 1
            else:
                self.report.already[queue] += 1
            if plan.forced:
                self.report.forced[doc.get("leased_by") or UNREGISTERED] += 1
                self.report.forced_ids.append(doc["_id"])
        return [candidates[i][0]["_id"] for i in outcomes[RETRY]] + \
            [doc["_id"] for doc, _, _ in failed]

    def _commit(self, work: Work, items: list[Item],
                now: dt.datetime) -> tuple[list[Item], list[Item], list[Item]]:
        """The compare-and-set on the source; return (committed by us, by another run, not)."""
        if not items:
            return [], [], []
        collection = self.source[work.collection]
        operations = []
        for doc, plan, token in items:
            update: dict[str, Any] = {
                "$set": {"state": schema.MOVED, "moved_at": now,
                         "moved_to": self.sides.target_id, "moved_version": plan.version,
                         "moved_token": token, "updated_at": now},
                "$unset": {"dedupe": "", "lease_token": ""}}
            if plan.events:
                update["$push"] = {"outbox": {"$each": plan.events}}
            operations.append(UpdateOne({"_id": doc["_id"], **plan.guard}, update))
        if collection.bulk_write(operations, ordered=False).matched_count == len(items):
            return list(items), [], []
        states = {d["_id"]: d for d in collection.find(
            {"_id": {"$in": [doc["_id"] for doc, _, _ in items]}},
            {"state": 1, "moved_to": 1, "moved_version": 1, "moved_token": 1})}
        mine, others, failed = [], [], []
        for item in items:
            doc, plan, token = item
            now_is = states.get(doc["_id"]) or {}
            if now_is.get("state") != schema.MOVED:
                failed.append(item)
            elif now_is.get("moved_token") == token:
                mine.append(item)
            elif now_is.get("moved_to") == self.sides.target_id and \
                    now_is.get("moved_version") == plan.version:
                others.append(item)
            else:
                failed.append(item)
        return mine, others, failed

    # the source's events

    def _publish(self, work: Work, mine: list[Item]) -> None:
        """Publish on the source the events the commits pushed, and what their outboxes held."""
        if work.publish is None or not mine:
            return
        new = [Outbox(doc["_id"], schema.MOVED, plan.events) for doc, plan, _ in mine
               if plan.events]
        older = [Outbox(doc["_id"], schema.MOVED, [expanded(entry, doc) for entry in
                                                   doc.get("outbox") or []])
                 for doc, _, _ in mine if doc.get("outbox")]
        try:
            work.publish(self.source, new, False)
            work.publish(self.source, older, True)
        except PyMongoError:
            # Still in the moved documents' outboxes: the next run, or the source's
            # sweep, publishes them (flagged as possible repeats).
            self.report.unpublished += sum(len(outbox.events) for outbox in new + older)

    def _publish_leftovers(self) -> None:
        """Publish what an earlier run left in moved documents' outboxes (as the sweep would).

        Only outboxes older than the sweep's grace: a younger one may belong
        to a run still publishing it.
        """
        before = utcnow() - dt.timedelta(seconds=OUTBOX_GRACE_SECONDS)
        for work in WORK:
            if work.publish is None:
                continue
            docs = list(self.source[work.collection].find(
                {**work.moved_to(self.sides.target_id, None),
                 "outbox.0": {"$exists": True}, "updated_at": {"$lte": before}},
                {"queue": 1, "routing_key": 1, "activity": 1, "outbox": 1}))
            if docs:
                work.publish(self.source, [Outbox(d["_id"], schema.MOVED,
                                                  [expanded(e, d) for e in d["outbox"]])
                                           for d in docs], True)

    # what a killed run left

    def reconcile(self) -> int:
        """Make visible or delete what a run killed mid-batch left staged on the target."""
        finished = 0
        for work in WORK:
            staged = list(self.target[work.collection].find(
                staged_by(self.receiver.source_id),
                {ARRIVE_VERSION: 1, ARRIVE_AS: 1, work.queue_field: 1}))
            for chunk in chunks(staged):
                finished += self._reconcile(work, chunk)
        self.report.reconciled = finished
        return finished

    def _reconcile(self, work: Work, staged: list[dict[str, Any]]) -> int:
        ids = [d["_id"] for d in staged]
        recorded = self.receiver.recorded(ids)
        sources = {d["_id"]: d for d in self.source[work.collection].find(
            {"_id": {"$in": ids}}, {"state": 1, "moved_to": 1, "moved_version": 1,
                                    "updated_at": 1})}
        arrive, drop = [], []
        for doc in staged:
            source = sources.get(doc["_id"]) or {}
            version = doc.get(ARRIVE_VERSION)
            committed_here = source.get("state") == schema.MOVED and \
                source.get("moved_to") == self.sides.target_id and \
                source.get("moved_version") == version
            if doc["_id"] in recorded or committed_here:
                arrive.append((doc["_id"], version, doc[ARRIVE_AS], doc.get(work.queue_field)))
            elif source.get("state") in work.states and source.get("updated_at") == version:
                continue  # still committable: the pass reuses this copy
            else:
                drop.append((doc["_id"], version))
        self.receiver.unstage(work, drop)
        return self.receiver.arrive(work, arrive)

    def _count_children(self) -> int:
        """Count into the target's waiting parents the children that finished before they arrived.

        A child acknowledged on the source after its parent left, or on the
        target before its parent arrived, found no waiting parent to count
        into; its history is on the target now. This is the target's sweep's
        count (the same compare-and-set, so each child counts once), done now
        so that a parent whose children are all done moves on at once.
        """
        counted = 0
        query = {"state": schema.WAITING, **MESSAGES.of_queues(self.sides.queues)}
        for parent in self.target[MESSAGES.collection].find(
                query, {"sequence.at": 1, "sequence.children": 1}):
            for child, dead in fanout.finished_children(self.target, parent):
                counted += int(fanout.child_finished(self.target, child,
                                                     result=child.get("result"), dead=dead))
        return counted

    def _copy_finished(self) -> int:
        copied = 0
        query = finished_selection(self.sides.queues)
        for name in FINISHED:
            batch: list[dict[str, Any]] = []
            for doc in self.source[name].find(query).batch_size(CHUNK):
                batch.append(doc)
                if len(batch) >= CHUNK:
                    copied += insert_new(self.target[name], batch)
                    batch = []
            copied += insert_new(self.target[name], batch)
        return copied


def migrate(source: Database, target: Database, queues: Iterable[str] | None = None,
            force: bool = False, batch_size: int = BATCH_SIZE) -> Report:
    """Move unfinished work from ``source`` to ``target``; safe to run again at any time.

    Raises ``InvalidInput`` for one deployment as both sides or a bad queue
    name, ``FormatMismatch`` for a newer storage format, and lets engine
    errors through: whatever stopped a run, running it again finishes it.
    """
    sides = Sides.open(source, target, queue_names(queues), create=True)
    return Move(sides, force, batch_size).run()
