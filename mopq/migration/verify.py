"""Verification: compare both sides of a move and list every difference.

What must hold once a move has run to the end:

* every document the source marked moved to the target arrived there (an
  ``arrivals`` record), and nothing arrived that the source still holds
  unfinished: the two sets are the same, each message on one side only;
* nothing is left staged (invisible) on the target;
* each arrived message still there has the content it left with (queue,
  routing key, body, priority, creation and expiry times, activity, keys);
  one no longer there finished on the target (found in its history, or
  forgotten after its retention);
* no fan-out child of a parent waiting on the target finished on the source
  since the last run (its parent would wait for it until the next run);
* every activity definition and queue policy of the source is on the target,
  or the target keeps its own by the rules of :mod:`.declared` (listed);
* every counter the source has is carried to the target with the sums it
  has now (less its moves to the target, :mod:`.counters`), and no event of
  the source waits to be counted (the target's totals would lack it).

Unfinished work still on the source (a held lease, or what producers wrote
since) is listed, not a difference: the next run moves it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pymongo.database import Database

from mopq import schema
from mopq.activities import fanout
from mopq.clock import utcnow
from mopq.counter_documents import TOTAL
from mopq.migration.counters import carried_counters, counter_values, given_values, not_carried
from mopq.migration.declared import Declared, settle, source_declared
from mopq.migration.deployments import Sides, chunks, to_ms
from mopq.migration.receiver import staged_by
from mopq.migration.work import MESSAGES, WORK, Work, queue_names

# What a move never changes in a message; verification compares these.
UNCHANGED = ("routing_key", "body", "priority", "created_at", "expire_at", "activity",
             "dedupe_key", "once")
# An activity instance moves on from step to step on the target (its queue, body and
# expiry change with each step): what no step changes is compared.
INSTANCE_UNCHANGED = ("priority", "created_at", "activity", "once", "sequence.name",
                      "sequence.key")


def _field(doc: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        doc = doc.get(part) if isinstance(doc, dict) else None  # type: ignore[assignment]
    return doc


@dataclass
class Verification:
    """Both sides compared: counts per queue and state, and each difference as a sentence."""

    source_id: str | None
    target_id: str | None
    moved: Counter[str] = field(default_factory=Counter)
    arrived: Counter[str] = field(default_factory=Counter)
    on_target: Counter[tuple[str, str]] = field(default_factory=Counter)
    still_on_source: Counter[tuple[str, str]] = field(default_factory=Counter)
    counters_same: int = 0
    counters_differ: int = 0
    not_carried: Counter[str] = field(default_factory=Counter)
    declared: Declared = field(default_factory=Declared)   # as a carry would judge them now
    differences: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not self.differences


def verify(source: Database, target: Database,
           queues: Iterable[str] | None = None) -> Verification:
    """Compare both sides of moves from ``source`` to ``target``; writes nothing."""
    sides = Sides.open(source, target, queue_names(queues), create=False)
    result = Verification(sides.source_id, sides.target_id)
    if not sides.source_id or not sides.target_id:
        result.differences.append("nothing was ever moved between these deployments "
                                  "(one of them has no deployment id yet)")
        return result
    for work in WORK:
        _compare_work(sides, work, result)
    _compare_waiting_parents(sides, result)
    result.declared = settle(sides.target, *source_declared(sides.source, sides.queues),
                             write=False)
    for (name, what), _ in sorted(result.declared.carried.items()):
        result.differences.append(f"{what} of {name}: the source's is not on the target "
                                  "(run migrate again)")
    _compare_counters(sides, result)
    return result


def _compare_work(sides: Sides, work: Work, result: Verification) -> None:
    qf = work.queue_field
    name = work.collection
    compared = {qf: 1, **dict.fromkeys(UNCHANGED, 1), **dict.fromkeys(INSTANCE_UNCHANGED, 1)}
    moved = {d["_id"]: d for d in sides.source[name].find(
        work.moved_to(sides.target_id, sides.queues), compared)}
    arrived_query: dict[str, Any] = {"source": sides.source_id, "collection": name}
    if sides.queues:
        arrived_query["queue"] = {"$in": list(sides.queues)}
    arrived = {d["_id"] for d in sides.target[schema.ARRIVALS].find(arrived_query, {"_id": 1})}
    for doc in sides.source[name].find(work.selection(sides.queues), {qf: 1, "state": 1}):
        result.still_on_source[(doc.get(qf), doc.get("state"))] += 1
        if doc["_id"] in arrived:
            result.differences.append(f"{name} {doc['_id']} ({doc.get(qf)}): arrived on the "
                                      f"target but still {doc.get('state')} on the source")
    for doc in sides.target[name].find(staged_by(sides.source_id), {qf: 1}):
        result.differences.append(f"{name} {doc['_id']} ({doc.get(qf)}): staged on the "
                                  "target, not visible yet (run migrate again)")
    for item_id in sorted(set(moved) - arrived):
        result.differences.append(f"{name} {item_id} ({moved[item_id].get(qf)}): moved on "
                                  "the source, no arrival on the target")
    present: dict[Any, dict[str, Any]] = {}
    for chunk in chunks(sorted(set(moved) & arrived)):
        for doc in sides.target[name].find({"_id": {"$in": chunk}},
                                           {**compared, "state": 1, "visible_at": 1}):
            present[doc["_id"]] = doc
    gone = sorted(set(moved) & arrived - set(present))
    in_history: set[Any] = set()
    if name == schema.MESSAGES:
        for chunk in chunks(gone):
            in_history.update(d["_id"] for d in sides.target[schema.HISTORY].find(
                {"_id": {"$in": chunk}}, {"_id": 1}))
    now = utcnow()
    for item_id, source in moved.items():
        queue = source.get(qf)
        result.moved[queue] += 1
        if item_id not in arrived:
            continue
        result.arrived[queue] += 1
        doc = present.get(item_id)
        if doc is None:
            label = "done" if item_id in in_history else "finished, no longer kept"
            result.on_target[(queue, label)] += 1
            continue
        state = str(doc.get("state"))
        if state == schema.PENDING and doc.get("visible_at") and doc["visible_at"] > now:
            state = "delayed"
        result.on_target[(queue, state)] += 1
        fields = INSTANCE_UNCHANGED if "sequence" in source else (qf, *UNCHANGED)
        for field_name in fields:
            if _field(source, field_name) != _field(doc, field_name):
                result.differences.append(
                    f"{name} {item_id} ({queue}): {field_name} differs (source "
                    f"{_field(source, field_name)!r}, target {_field(doc, field_name)!r})")


def _compare_waiting_parents(sides: Sides, result: Verification) -> None:
    """List the children a parent waiting on the target lacks because they finished on the source.

    A child held by a source consumer when its parent moved stays there; once
    acknowledged there, only the next run brings its history over and counts
    it into the parent (``Move._count_children``).
    """
    query = {"state": schema.WAITING, **MESSAGES.of_queues(sides.queues)}
    for parent in sides.target[MESSAGES.collection].find(
            query, {"queue": 1, "sequence.at": 1, "sequence.children": 1}):
        for child, dead in fanout.finished_children(sides.source, parent):
            result.differences.append(
                f"{MESSAGES.collection} {child['_id']} ({parent.get('queue')}): a fan-out child "
                f"of {parent['_id']} finished {'dead ' if dead else ''}on the source after its "
                "parent moved; its parent on the target waits for it (run migrate again)")


def _compare_counters(sides: Sides, result: Verification) -> None:
    documents = carried_counters(sides.source, sides.target_id, sides.queues, to_ms(utcnow()))
    given: dict[str, dict[str, float]] = {}
    assert sides.source_id is not None
    for chunk in chunks([doc["_id"] for doc in documents]):
        for doc in sides.target[schema.COUNTERS].find(
                {"_id": {"$in": chunk}}, {f"carried.{sides.source_id}": 1}):
            given[doc["_id"]] = given_values(doc, sides.source_id)
    for doc in documents:
        carried = given.get(doc["_id"], {})
        values = counter_values(doc)
        differ = sorted(path for path in set(values) | set(carried)
                        if values.get(path, 0) != carried.get(path, 0))
        if not differ:
            result.counters_same += 1
            continue
        result.counters_differ += 1
        if doc.get("resolution") == TOTAL:
            for path in differ:
                result.differences.append(
                    f"counter {doc.get('series')} (total) {path}: source {values.get(path, 0):g}, "
                    f"carried {carried.get(path, 0):g}")
    if result.counters_differ:
        result.differences.append(
            f"{result.counters_differ} counter document(s) carry other sums than the "
            "source has now: run migrate again to carry the difference")
    result.not_carried = not_carried(sides.source, sides.target_id, sides.queues)
    if result.not_carried:
        result.differences.append(
            f"{sum(result.not_carried.values())} event(s) of the source are in no counter yet, "
            "so the target's totals lack them: run a collector on the source, then migrate "
            "again")
