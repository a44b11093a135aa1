"""The dry run: what a move would do now, per queue and state; it writes nothing anywhere.

Each unfinished document is classified by the same plan a move uses
(:mod:`mopq.migration.work`), so the dry run's "would move" and "held" are
what the move would do at this moment (a lease may run out, and producers
may write, before the move itself runs).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pymongo.database import Database

from mopq.clock import utcnow
from mopq.migration.counters import carried_counters, not_carried
from mopq.migration.declared import Declared, settle, source_declared
from mopq.migration.deployments import Sides
from mopq.migration.move import UNREGISTERED
from mopq.migration.receiver import staged_by
from mopq.migration.work import FINISHED, WORK, finished_selection, queue_names

# Fields a plan reads (the body, outbox, log and errors are not needed to classify).
PLAN_FIELDS = {"body": 0, "outbox": 0, "log": 0, "errors": 0, "traceback": 0, "result": 0}


@dataclass
class Census:
    """What a move would do now: per (queue, label) to move and held back, and the rest."""

    source_id: str | None = None
    target_id: str | None = None
    moves: Counter[tuple[str, str]] = field(default_factory=Counter)
    held: Counter[tuple[str, str]] = field(default_factory=Counter)
    forced: Counter[str] = field(default_factory=Counter)      # holder
    forced_ids: list[Any] = field(default_factory=list)
    earlier: Counter[str] = field(default_factory=Counter)     # queue: moved here before
    staged_on_target: int = 0        # left staged by a run that stopped
    history: int = 0                 # finished documents to copy
    counters: int = 0                # counter documents to carry
    not_carried: Counter[str] = field(default_factory=Counter)
    declared: Declared = field(default_factory=Declared)   # definitions and policies


def census(source: Database, target: Database, queues: Iterable[str] | None = None,
           force: bool = False) -> Census:
    """Count what :func:`mopq.migration.migrate` would do now, writing nothing."""
    sides = Sides.open(source, target, queue_names(queues), create=False)
    result = Census(sides.source_id, sides.target_id)
    now = utcnow()
    for work in WORK:
        for doc in sides.source[work.collection].find(work.selection(sides.queues),
                                                      PLAN_FIELDS):
            if not work.unfinished(doc):
                continue
            plan = work.plan(doc, now, force, "dry-run")
            queue = doc.get(work.queue_field)
            if plan.copy is None:
                result.held[(queue, plan.label)] += 1
                continue
            result.moves[(queue, plan.label)] += 1
            if plan.forced:
                result.forced[doc.get("leased_by") or UNREGISTERED] += 1
                result.forced_ids.append(doc["_id"])
        if sides.source_id and sides.target_id:
            for doc in sides.source[work.collection].find(
                    work.moved_to(sides.target_id, sides.queues), {work.queue_field: 1}):
                result.earlier[doc.get(work.queue_field)] += 1
        if sides.source_id:
            result.staged_on_target += sides.target[work.collection].count_documents(
                staged_by(sides.source_id))
    result.declared = settle(sides.target, *source_declared(sides.source, sides.queues),
                             write=False)
    query = finished_selection(sides.queues)
    result.history = sum(sides.source[name].count_documents(query) for name in FINISHED)
    result.counters = len(carried_counters(sides.source, sides.target_id, sides.queues, now))
    result.not_carried = not_carried(sides.source, sides.target_id, sides.queues)
    return result
