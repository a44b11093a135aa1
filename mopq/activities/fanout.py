"""Fan-out and fan-in: a step that runs one child message per item, counted in the parent.

A fan-out step's parent waits (state ``waiting``, unclaimable) holding the
ids chosen for its children when it entered the step (``sequence.children``).
The children are ordinary messages of the step's queue with ``parent: {id, name,
step, index}``, so any consumer serves them and acknowledges them the plain
way. Each finished child (done, or dead) is counted into the parent by one
update whose filter excludes the child's id from the ``counted`` list and
names the count it read: a child delivered twice, counted by its acker and by
the sweep, or counted by two sweeps, is counted once. The update that counts
the last child also moves the parent on (``document.entering``), with the
step's result ``{results: [...], dead: [indexes]}`` in child order.

Writing the children is a second step after the parent's move (no
multi-document transaction): ``spawn`` inserts them with the chosen ids
(a repeat collides on ``_id``), skipping any already counted or finished
into history, then marks the parent ``spawned``. A process killed in between
leaves ``spawned: false``, and the sweep spawns again (``recovery``).
"""

from __future__ import annotations

from typing import Any

from pymongo import ReturnDocument
from pymongo.database import Database
from pymongo.errors import BulkWriteError

from mopq import history, schema
from mopq.activities.document import Move, child_body, entering
from mopq.bulk import duplicates_only
from mopq.clock import utcnow
from mopq.doorbell import ringer_for
from mopq.publisher import Outbox, publisher_for

# Counting retries when other children are counted at the same moment.
MAX_COUNT_TRIES = 1_000


def after_move(db: Database, instance_id: Any, move: Move) -> None:
    """After a move: wake the next queue's consumers, or write a fan-out's children.

    An end needs nothing here when its update pushed an event (an
    acknowledgement's ``acked``): whoever publishes that event archives the
    instance with the other finished messages of its batch.
    """
    if move.state == schema.PENDING:
        ringer_for(db).ring(move.queue)
    elif move.state == schema.WAITING:
        spawn(db, instance_id)


def finish_quietly(db: Database, instance_id: Any) -> None:
    """Archive and drop an instance that ended by a move with no event of its own.

    A parent that ends with the count of its last child was in no queue, so no
    event (no publisher) archives it; the sweep would, a few seconds later.
    """
    history.archive(db, [instance_id])
    db[schema.MESSAGES].delete_one({"_id": instance_id, "state": schema.DONE,
                                    "outbox.0": {"$exists": False}})


def spawn(db: Database, parent_id: Any) -> int:
    """Write the children of a waiting parent that are not written yet; return how many.

    Safe to call again and from several processes: a child already written
    collides on its id; one already counted or finished (in history) is not
    written again.
    """
    from mopq.queue import Queue  # the queue module imports mopq.message, which imports us

    parent = db[schema.MESSAGES].find_one({"_id": parent_id, "state": schema.WAITING,
                                           "sequence.children.spawned": False})
    if parent is None:
        return 0
    sequence = parent["sequence"]
    index = sequence["at"]
    children = sequence["children"]
    items = sequence["steps"][index - 1].get("result") or []
    ids = children["ids"]
    done = set(children["counted"]) | {d["_id"] for d in db[schema.HISTORY].find(
        {"_id": {"$in": ids}}, {"_id": 1})}
    queue = Queue(sequence["steps"][index]["queue"], db=db)
    options = queue._options(None, None, 0, parent.get("priority", 0), None, utcnow())
    made = []
    for position, (child_id, item) in enumerate(zip(ids, items, strict=True)):
        if child_id in done:
            continue
        document, outbox = queue._document(child_body(sequence, item, position), options,
                                           None, child_id)
        document["parent"] = {"id": parent_id, "step": index, "index": position,
                              "name": sequence["steps"][index]["name"]}
        made.append((document, outbox))
    written = made
    if made:
        try:
            db[schema.MESSAGES].insert_many([document for document, _ in made], ordered=False)
        except BulkWriteError as error:
            repeated = set(duplicates_only(error))
            written = [pair for position, pair in enumerate(made) if position not in repeated]
    publisher_for(db).add_outboxes([outbox for _, outbox in written])
    if written:
        ringer_for(db).ring(queue.name)
    db[schema.MESSAGES].update_one(
        {"_id": parent_id, "state": schema.WAITING, "sequence.at": index,
         "sequence.children.spawned": False}, {"$set": {"sequence.children.spawned": True}})
    return len(written)


def child_finished(db: Database, child: dict[str, Any], result: Any = None,
                   dead: bool = False) -> bool:
    """Count a finished child into its parent once; True if this call counted it.

    ``child`` is the child's document (or any document with its ``_id`` and
    ``parent``). If it is the last child, the same update moves the parent
    to the next step (or to its end).
    """
    reference = child.get("parent")
    if not reference:
        return False
    parent_id, index, position = reference["id"], reference["step"], reference["index"]
    messages = db[schema.MESSAGES]
    for _ in range(MAX_COUNT_TRIES):
        parent = messages.find_one({"_id": parent_id, "state": schema.WAITING,
                                    "sequence.at": index})
        if parent is None:
            return False
        children = parent["sequence"]["children"]
        if child["_id"] in children["counted"]:
            return False
        now = utcnow()
        where = {"_id": parent_id, "state": schema.WAITING, "sequence.at": index,
                 "sequence.children.finished": children["finished"],
                 "sequence.children.counted": {"$ne": child["_id"]}}
        if children["finished"] + 1 < children["total"]:
            update: dict[str, Any] = {
                "$push": {"sequence.children.counted": child["_id"]},
                "$inc": {"sequence.children.finished": 1},
                "$set": {f"sequence.children.results.{position}": result, "updated_at": now}}
            if dead:
                update["$push"]["sequence.children.dead"] = position
            if messages.update_one(where, update).modified_count:
                return True
            continue
        step_result = _step_result(parent, position, result, dead)
        move = entering(parent, index + 1, step_result, now)
        prefix = f"sequence.steps.{index}"
        recorded = {f"{prefix}.result": step_result, f"{prefix}.done_at": now,
                    f"{prefix}.children": {"total": children["total"],
                                           "dead": len(step_result["dead"])}}
        changed = messages.find_one_and_update(
            where, _outboxed(move.update(recorded, {"sequence.children": ""}), move.events),
            projection={"state": 1}, return_document=ReturnDocument.AFTER)
        if changed is None:
            continue
        if move.events:
            publisher_for(db).add_outbox(Outbox(parent_id, changed["state"], move.events))
        elif move.state == schema.DONE:
            finish_quietly(db, parent_id)
        after_move(db, parent_id, move)
        return True
    raise RuntimeError(f"could not count child {child['_id']} into {parent_id}")


def _step_result(parent: dict[str, Any], position: int, result: Any,
                 dead: bool) -> dict[str, Any]:
    children = parent["sequence"]["children"]
    results = dict(children["results"])
    results[str(position)] = result
    dead_ones = sorted(set(children["dead"]) | ({position} if dead else set()))
    return {"results": [results.get(str(i)) for i in range(children["total"])],
            "dead": dead_ones}


def _outboxed(update: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
    if events:
        update.setdefault("$push", {})["outbox"] = {"$each": events}
    return update


def finished_children(db: Database, parent: dict[str, Any]) -> list[tuple[dict[str, Any], bool]]:
    """The parent's children that finished and are not counted yet: (document, dead) each."""
    children = parent["sequence"]["children"]
    counted = set(children["counted"])
    waiting = [child_id for child_id in children["ids"] if child_id not in counted]
    if not waiting:
        return []
    found: dict[Any, tuple[dict[str, Any], bool]] = {}
    for document in db[schema.HISTORY].find({"_id": {"$in": waiting}}, {"result": 1}):
        found[document["_id"]] = (document, False)
    for document in db[schema.MESSAGES].find(
            {"_id": {"$in": waiting}, "state": {"$in": [schema.DONE, schema.DEAD]}},
            {"state": 1, "result": 1, "last_error": 1}):
        found.setdefault(document["_id"], (document, document["state"] == schema.DEAD))
    positions = {child_id: position for position, child_id in enumerate(children["ids"])}
    reference = {"id": parent["_id"], "step": parent["sequence"]["at"]}
    return [({**document, "parent": {**reference, "index": positions[child_id]}}, dead)
            for child_id, (document, dead) in found.items()]
