"""Export and import: unfinished work, history and counters as a JSON Lines file.

An export is JSON Lines in canonical Extended JSON (``bson.json_util``:
dates, ObjectIds, int/long/double round-trip exactly): a header line
``{"mopq": "export", "version": 1, "format": <storage format>, "source":
<deployment id>, "database", "at", "queues"}``, one line per document
``{"collection": ..., "document": ...}`` (activity definitions and queue
policies, then unfinished work without its outbox, then history, then
counters with the values to carry) and an end line
``{"mopq": "end", "documents": {<collection>: <count>}, "not_carried": {...}}``.

Import checks each line completely before writing anything of it, writes in
batches, and at the first refused line stops with ``line N: why``: every
line before it is written, nothing from it on. A file cut short (no end line)
is refused at its end the same way. Messages are imported by the stage /
record / arrive steps of a move (:mod:`.receiver`; the arrival record is the
commit), so importing a file twice, or after the target processed what it
imported, adds nothing. Counters are carried (:mod:`.counters`) with the
header's ``at`` as their snapshot time: the same file twice adds nothing and
a newer export of the same source adds only the difference. Definitions and
policies are settled as a move settles them (:mod:`.declared`): the same file
twice changes nothing. A message
inflight at export time is imported as pending: its holder worked against
the exported deployment, so it may run twice.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from bson import json_util
from bson.json_util import JSONMode, JSONOptions
from pymongo.database import Database

from mopq import schema, validation
from mopq.clock import utcnow
from mopq.connection import prepared
from mopq.counter_documents import EXTREMES, RESOLUTIONS, TOTAL, VALUE_GROUPS
from mopq.migration.counters import (
    CARRIED,
    MOVES,
    SETTLED,
    Carried,
    carried_counters,
    carry,
    counter_values,
    less_received,
    not_carried,
)
from mopq.migration.declared import (
    Declared,
    check_definition,
    check_queue,
    settle,
    source_declared,
)
from mopq.migration.deployments import deployment_id, insert_new, stored_format, to_ms
from mopq.migration.move import BATCH_SIZE
from mopq.migration.receiver import PRESENT, RETRY, STAGED, Receiver
from mopq.migration.work import FINISHED, WORK, Work, finished_selection, queue_names, work_for

EXPORT_VERSION = 1
HEADER, END = "export", "end"      # the "mopq" field of the first and the last line
# Settings carried by the rules of mopq.migration.declared, and how an imported one is checked.
DECLARED = {schema.ACTIVITIES: check_definition, schema.QUEUES: check_queue}
EJSON = JSONOptions(json_mode=JSONMode.CANONICAL, tz_aware=True, tzinfo=dt.UTC)


def _line(value: Mapping[str, Any]) -> str:
    return json_util.dumps(value, json_options=EJSON) + "\n"


@dataclass
class Exported:
    """What an export wrote: documents per collection, messages per (queue, state)."""

    source_id: str
    at: dt.datetime
    documents: Counter[str] = field(default_factory=Counter)
    states: Counter[tuple[str, str]] = field(default_factory=Counter)
    not_carried: Counter[str] = field(default_factory=Counter)
    lines: int = 0


def export(db: Database, out: TextIO, queues: Iterable[str] | None = None) -> Exported:
    """Write the unfinished work, history and counters of ``db`` to ``out`` as JSON Lines.

    Writes nothing to ``db`` but its deployment id (made if it has none:
    the file must name its source so that it is never imported back into it).
    """
    db = prepared(db)
    chosen = queue_names(queues)
    stored_format(db)
    at = to_ms(utcnow())
    result = Exported(deployment_id(db) or "", at)

    def write(value: Mapping[str, Any]) -> None:
        out.write(_line(value))
        result.lines += 1

    write({"mopq": HEADER, "version": EXPORT_VERSION, "format": schema.FORMAT_VERSION,
           "source": result.source_id, "database": db.name, "at": at,
           "queues": list(chosen) if chosen else None})
    definitions, policies = source_declared(db, chosen)
    for name, documents in ((schema.ACTIVITIES, definitions), (schema.QUEUES, policies)):
        for doc in documents:
            write({"collection": name, "document": doc})
            result.documents[name] += 1
    for work in WORK:
        for doc in db[work.collection].find(work.selection(chosen),
                                            {"outbox": 0}).sort("_id", 1):
            if not work.unfinished(doc):
                continue
            write({"collection": work.collection, "document": doc})
            result.documents[work.collection] += 1
            label = str(doc.get("state"))
            if label == schema.PENDING and doc.get("visible_at") and doc["visible_at"] > at:
                label = "delayed"
            result.states[(doc.get(work.queue_field), label)] += 1
    for name in FINISHED:
        for doc in db[name].find(finished_selection(chosen)).sort("_id", 1):
            write({"collection": name, "document": doc})
            result.documents[name] += 1
    for doc in carried_counters(db, None, chosen, at):
        write({"collection": schema.COUNTERS, "document": doc})
        result.documents[schema.COUNTERS] += 1
    result.not_carried = not_carried(db, None, chosen)
    write({"mopq": END, "documents": dict(result.documents),
           "not_carried": dict(result.not_carried)})
    return result


@dataclass
class Imported:
    """What an import did (so far, when it was refused)."""

    source_id: str = ""
    database: str = ""
    at: dt.datetime | None = None
    added: Counter[tuple[str, str]] = field(default_factory=Counter)    # (collection, state)
    already: Counter[str] = field(default_factory=Counter)              # collection
    was_inflight: int = 0
    unique_dropped: list[Any] = field(default_factory=list)
    carried: Carried = field(default_factory=Carried)
    not_carried: dict[str, int] = field(default_factory=dict)   # what the export left out
    declared: Declared = field(default_factory=Declared)        # definitions and policies
    ended: bool = False


class Refused(Exception):
    """A line of an import file that cannot be imported; nothing from it on was written."""

    def __init__(self, line: int, reason: str, imported: Imported) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line = line
        self.reason = reason
        self.imported = imported


def check_counter(doc: dict[str, Any]) -> str | None:
    """Why an imported counter document cannot be carried, or None."""
    counter = doc.get("_id")
    if not isinstance(counter, str) or counter.count("|") < 2:
        return "a counter's _id must be '<series>|<resolution>|<bucket>'"
    if doc.get("resolution") not in (*RESOLUTIONS, TOTAL):
        return f"resolution {doc.get('resolution')!r} is not one of {', '.join(RESOLUTIONS)}, total"
    if doc.get("bucket") is not None and not isinstance(doc["bucket"], dt.datetime):
        return "bucket must be a date or null"
    for group in VALUE_GROUPS:
        if group in doc and not isinstance(doc[group], dict):
            return f"{group} must be a document"
    for path, value in counter_values(doc).items():
        if not isinstance(value, int | float) or isinstance(value, bool) or \
                not math.isfinite(value):
            return f"{path} must be a finite number"
    carried = doc.get(CARRIED)
    if carried is not None and not (isinstance(carried, dict) and all(
            isinstance(record, dict) and all(
                isinstance(record.get(part) or {}, dict) and all(
                    isinstance(value, int | float) and not isinstance(value, bool)
                    and math.isfinite(value) for value in (record.get(part) or {}).values())
                for part in ("values", MOVES, SETTLED))
            for record in carried.values())):
        return f"{CARRIED} must map deployment ids to {{values, {MOVES}}} of finite numbers"
    for name in EXTREMES:
        if doc.get(name) is not None and (not isinstance(doc[name], int | float)
                                          or isinstance(doc[name], bool)):
            return f"{name} must be a number"
    return None


def _parse(text: str) -> Any:
    try:
        return json_util.loads(text, json_options=EJSON)
    except Exception as error:  # json, bson and type errors alike: the line is unreadable
        raise ValueError(f"not Extended JSON ({type(error).__name__}: {error})") from None


class Importer:
    """Read an export line by line: check each fully, write in batches, stop at a bad one."""

    def __init__(self, db: Database, batch_size: int = BATCH_SIZE) -> None:
        self.db = db
        self.batch_size = validation.integer("batch_size", batch_size, 1, 10_000)
        self.result = Imported()
        self.receiver: Receiver | None = None
        self.waiting: dict[str, list[dict[str, Any]]] = {}     # checked, not yet written
        self.counts: Counter[str] = Counter()
        self.own_id: str | None = None

    def run(self, lines: Iterable[str]) -> Imported:
        """Import ``lines``; raise :class:`Refused` at the first bad one (or a missing end)."""
        number = 0
        for number, text in enumerate(lines, start=1):
            try:
                self._take(number, text.rstrip("\r\n"))
            except ValueError as error:
                self._flush()
                raise Refused(number, str(error), self.result) from None
        self._flush()
        if number == 0:
            raise Refused(1, "the file is empty: it holds no export header", self.result)
        if not self.result.ended:
            raise Refused(number + 1, f"the file ends after line {number} without its end "
                          "line: it was cut short (everything before was imported)",
                          self.result)
        return self.result

    def _take(self, number: int, text: str) -> None:
        if self.result.ended:
            raise ValueError("a line after the end line")
        if not text.strip():
            raise ValueError("an empty line")
        value = _parse(text)
        if not isinstance(value, dict):
            raise ValueError("a line must be a JSON object")
        if number == 1:
            self._header(value)
            return
        if value.get("mopq") == END:
            self._end(value)
            return
        collection, document = value.get("collection"), value.get("document")
        if not isinstance(document, dict):
            raise ValueError("a line must be the header, a document "
                             "({\"collection\": ..., \"document\": {...}}) or the end line")
        work = work_for(collection) if isinstance(collection, str) else None
        if work is not None:
            problem = work.check(document)
        elif collection in FINISHED:
            problem = FINISHED[collection](document)
        elif collection in DECLARED:
            problem = DECLARED[collection](document)
        elif collection == schema.COUNTERS:
            problem = check_counter(document)
        else:
            known = [*DECLARED, *(w.collection for w in WORK), *FINISHED, schema.COUNTERS]
            raise ValueError(f"collection {collection!r} is not one an export holds "
                             f"({', '.join(known)})")
        if problem:
            raise ValueError(f"{collection} document {document.get('_id')!r}: {problem}")
        self.counts[collection] += 1
        self.waiting.setdefault(collection, []).append(document)
        if sum(len(docs) for docs in self.waiting.values()) >= self.batch_size:
            self._flush()

    def _header(self, value: dict[str, Any]) -> None:
        if value.get("mopq") != HEADER:
            raise ValueError("the first line is not an mopq export header")
        if value.get("version") != EXPORT_VERSION:
            raise ValueError(f"export version {value.get('version')!r}; this mopq reads "
                             f"version {EXPORT_VERSION}")
        storage = value.get("format")
        if not isinstance(storage, int) or storage > schema.FORMAT_VERSION:
            raise ValueError(f"the export is of storage format {storage!r}; this mopq speaks "
                             f"format {schema.FORMAT_VERSION}")
        if not isinstance(value.get("source"), str) or not value["source"]:
            raise ValueError("the header names no source deployment")
        if not isinstance(value.get("at"), dt.datetime):
            raise ValueError("the header's 'at' must be a date")
        schema.ensure_indexes(self.db)
        self.own_id = deployment_id(self.db)
        if value["source"] == self.own_id:
            raise ValueError(f"this export was taken from this very deployment "
                             f"({value['source']}); imported here, every message finished "
                             "since the export would run again and its counters would count "
                             "twice. Import it into another deployment")
        self.result.source_id = value["source"]
        self.result.database = str(value.get("database"))
        self.result.at = value["at"]
        self.receiver = Receiver(self.db, value["source"], "import")

    def _end(self, value: dict[str, Any]) -> None:
        expected = value.get("documents")
        if not isinstance(expected, dict):
            raise ValueError("the end line holds no document counts")
        counted = {name: count for name, count in self.counts.items() if count}
        wanted = {name: count for name, count in expected.items() if count}
        if counted != wanted:
            raise ValueError(f"the end line counts {wanted}, the file holds {counted}: "
                             "lines are missing or extra")
        if isinstance(value.get("not_carried"), dict):
            self.result.not_carried = dict(value["not_carried"])
        self.result.ended = True

    def _flush(self) -> None:
        waiting, self.waiting = self.waiting, {}
        if not waiting or self.receiver is None:
            return
        if any(name in waiting for name in DECLARED):
            self.result.declared.add(settle(self.db, waiting.pop(schema.ACTIVITIES, []),
                                            waiting.pop(schema.QUEUES, [])))
        for collection, documents in waiting.items():
            work = work_for(collection)
            if work is not None:
                self._import_work(work, documents)
            elif collection in FINISHED:
                added = insert_new(self.db[collection], documents)
                self.result.added[(collection, "finished")] += added
                self.result.already[collection] += len(documents) - added
            else:
                assert self.result.at is not None and self.own_id is not None
                for doc in documents:   # what this deployment gave the exported one
                    less_received(doc, self.own_id)
                    doc.pop(CARRIED, None)
                self.result.carried.add(carry(self.db, self.result.source_id, self.result.at,
                                              documents))
        self.result.unique_dropped = list(self.receiver.unique_dropped)

    def _import_work(self, work: Work, documents: list[dict[str, Any]]) -> None:
        receiver = self.receiver
        assert receiver is not None
        now = to_ms(utcnow())
        recorded = receiver.recorded([doc["_id"] for doc in documents])
        # Planned as a forced move: an inflight one arrives pending (its holder is elsewhere).
        items = [(doc, work.plan(doc, now, True, "import")) for doc in documents]
        # Recorded ones arrived before; one still staged (an import cut short) is shown.
        earlier = [(doc["_id"], plan.version, plan.copy["state"], doc.get(work.queue_field))
                   for doc, plan in items if doc["_id"] in recorded and plan.copy]
        receiver.arrive(work, earlier)
        self.result.already[work.collection] += len(earlier)
        fresh = [(doc, plan) for doc, plan in items if doc["_id"] not in recorded]
        outcomes = receiver.stage(work, [(plan.copy, plan.version) for _, plan in fresh], None)
        if outcomes[RETRY]:
            raise RuntimeError(f"{len(outcomes[RETRY])} documents could not be staged; run "
                               "the import again")
        self.result.already[work.collection] += len(outcomes[PRESENT])
        staged = [fresh[i] for i in outcomes[STAGED]]
        receiver.arrive(work, [(doc["_id"], plan.version, plan.copy["state"],
                                doc.get(work.queue_field)) for doc, plan in staged if plan.copy])
        for doc, plan in staged:
            assert plan.copy is not None
            self.result.added[(work.collection, plan.copy["state"])] += 1
            if doc.get("state") == schema.INFLIGHT:
                self.result.was_inflight += 1


def import_lines(db: Database, lines: Iterable[str], batch_size: int = BATCH_SIZE) -> Imported:
    """Import an export (its lines) into ``db``; raises :class:`Refused` at the first bad line.

    Safe to repeat: what was imported before (even if processed and deleted
    since) is not imported again, and counters are carried once per export.
    """
    return Importer(prepared(db), batch_size).run(lines)
