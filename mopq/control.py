"""Worker control: ask a running worker to stop, or to stop and resume taking messages.

Why through the worker's own document: a worker already rewrites its heartbeat
document (``workers``, ``_id`` its identity) every few seconds, so a request is
one field there, ``control``, and the worker reads it back with the very
command that writes its beat (``find_one_and_update`` returning the document).
No collection, socket or signal is added, the request survives a dashboard
restart, and a worker in any language that beats this way honours it
(docs/FORMAT.md §7.4)::

    control: {command: "stop" | "quiet" | "resume",
              at: datetime,              # when it was asked for
              by: {name, via}}           # who asked: a dashboard user, or "cli"

* ``quiet`` — stop claiming messages (Sidekiq's *quiet*): running handlers
  finish, the worker keeps beating and reports ``state: "quiet"``;
* ``resume`` — claim messages again (``state: "running"``);
* ``stop`` — stop gracefully, as on SIGTERM: no more claims, running handlers
  finish and their messages are settled, ``state: "stopping"``, then
  ``"stopped"``, and ``Worker.run()`` returns (``mopq worker`` exits 0).

``control`` holds what was asked last, a state rather than a command to
consume: nobody clears it, and a worker that missed a beat reads it again at
the next. A stop is final: once asked, quiet and resume are refused. A
restarted worker is a new process with a new identity, so an old request never
reaches it. Every request is one compare-and-set on the worker's document.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import os
import re
import socket
import sys
from typing import Any

from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.database import Database

from mopq import schema
from mopq.clock import utcnow
from mopq.connection import get_database
from mopq.errors import InvalidInput, MopqError

FIELD = "control"
STOP, QUIET, RESUME = "stop", "quiet", "resume"
COMMANDS = (STOP, QUIET, RESUME)
# What each command does, in the words `mopq workers` answers with.
MEANING = {STOP: "stop gracefully: finish the messages it holds, then exit",
           QUIET: "stop taking new messages (it keeps running and beating)",
           RESUME: "take messages again after quiet"}
# ip:port:start_time:pid (mopq.worker; docs/FORMAT.md §7.1).
IDENTITY_PATTERN = r"\d{1,3}(?:\.\d{1,3}){3}:\d{1,5}:\d{1,12}:\d{1,10}"
IDENTITY_WORDS = "a worker identity ip:port:start_time:pid, e.g. 10.0.0.5:5672:1700000000:4242"
_IDENTITY = re.compile(IDENTITY_PATTERN)


class UnknownWorker(MopqError):
    """No worker of that identity is registered (it never ran here, or was forgotten)."""


class ControlRefused(MopqError):
    """The worker cannot do what was asked: it has stopped, or a stop was asked already."""


def identity(value: object) -> str:
    """``value`` if it is a worker identity ``ip:port:start_time:pid``; InvalidInput otherwise."""
    if not isinstance(value, str) or not _IDENTITY.fullmatch(value):
        raise InvalidInput(f"not {IDENTITY_WORDS}: {value!r}.")
    return value


def ask(db: Database, worker_id: str, command: str, by: dict[str, str],
        now: dt.datetime | None = None) -> bool:
    """Record ``command`` for the worker to honour at its next beat; True if that changed it.

    False when it already stands (quiet asked twice, resume of a worker that
    was never quiet, stop asked again: the first request and its author are
    kept). Raises ``UnknownWorker`` if no such worker is registered and
    ``ControlRefused`` if it has stopped, or if a stop was asked and the
    command is quiet or resume.
    """
    worker_id = identity(worker_id)
    if command not in COMMANDS:
        raise InvalidInput(f"command must be one of {', '.join(COMMANDS)}, got {command!r}.")
    current = f"{FIELD}.command"
    # The commands this one would replace (a missing control counts as "taking messages").
    replaces = {STOP: {"$ne": STOP}, QUIET: {"$nin": [QUIET, STOP]}, RESUME: QUIET}[command]
    asked = {"command": command, "at": now or utcnow(),
             "by": {"name": str(by.get("name", "")), "via": str(by.get("via", ""))}}
    changed = db[schema.WORKERS].find_one_and_update(
        {"_id": worker_id, "state": {"$ne": schema.WORKER_STOPPED}, current: replaces},
        {"$set": {FIELD: asked}}, projection={"_id": 1},
        return_document=ReturnDocument.AFTER)
    if changed is not None:
        return True
    found = db[schema.WORKERS].find_one({"_id": worker_id}, {"state": 1, FIELD: 1})
    if found is None:
        raise UnknownWorker(f"no worker {worker_id} is registered (`mopq workers list` shows "
                            "those that are).")
    reason = refusal(found, command)
    if reason:
        raise ControlRefused(reason)
    return False


def refusal(worker: dict[str, Any], command: str) -> str | None:
    """Why ``command`` cannot be asked of this worker document, or None if it can."""
    if worker.get("state") == schema.WORKER_STOPPED:
        return f"worker {worker['_id']} has stopped; there is nothing to {command}."
    if requested(worker) == STOP and command != STOP:
        return (f"worker {worker['_id']} was asked to stop; a stop cannot be undone (start a "
                "new worker instead).")
    return None


def requested(document: dict[str, Any] | None) -> str | None:
    """The command a worker's document holds for it, or None (take messages as usual)."""
    control = (document or {}).get(FIELD)
    command = control.get("command") if isinstance(control, dict) else None
    return command if command in COMMANDS else None


def holding(db: Database, workers: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The progress of the messages these workers hold, by message id (those that report one).

    So an admin sees what a stop would wait for: ``Message.progress()`` writes
    ``progress: {fraction, note, at}`` on the message, while the worker's
    ``current`` names the message (as of its last beat).
    """
    ids = []
    for worker in workers:
        for item in worker.get("current") or []:
            text = item.get("message_id") if isinstance(item, dict) else None
            if isinstance(text, str) and ObjectId.is_valid(text):
                ids.append(ObjectId(text))
    if not ids:
        return {}
    found = db[schema.MESSAGES].find({"_id": {"$in": ids}, "state": schema.INFLIGHT},
                                     {"progress": 1})
    return {str(document["_id"]): document["progress"] for document in found
            if isinstance(document.get("progress"), dict)}


# -- mopq workers ----------------------------------------------------------------------------

def _who() -> dict[str, str]:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        user = str(os.getuid())
    return {"name": f"{user}@{socket.gethostname()}", "via": "cli"}


def _age(then: dt.datetime | None, now: dt.datetime) -> str:
    return f"{(now - then).total_seconds():.1f} s ago" if then else "never"


def _cmd_list(args: argparse.Namespace) -> int:
    db = get_database()
    workers = list(db[schema.WORKERS].find().sort([("_id", 1)]))
    if not args.all:
        workers = [w for w in workers if w.get("state") != schema.WORKER_STOPPED]
    if not workers:
        print("mopq workers: no worker is registered" + ("" if args.all else
              " that has not stopped (--all lists stopped ones too)") + ".")
        return 0
    now = utcnow()
    progress = holding(db, workers)
    for worker in workers:
        asked = worker.get(FIELD) or {}
        line = (f"{worker['_id']}  {worker.get('state', '?'):<8} beat "
                f"{_age(worker.get('heartbeat_at'), now):<12} "
                f"queues={','.join(worker.get('queues') or [])} "
                f"processed={int(worker.get('processed') or 0)} "
                f"failed={int(worker.get('failed') or 0)}")
        if requested(worker):
            line += (f"  asked: {asked['command']} by {(asked.get('by') or {}).get('name')} "
                     f"{_age(asked.get('at'), now)}")
        print(line)
        for item in worker.get("current") or []:
            report = progress.get(str(item.get("message_id"))) or {}
            done = report.get("fraction")
            shown = f" {done * 100:.0f} %" if isinstance(done, int | float) else ""
            note = f" {report['note']}" if report.get("note") else ""
            print(f"    handling {item.get('message_id')} of {item.get('queue')} since "
                  f"{_age(item.get('since'), now)}{shown}{note}")
    print(f"mopq workers: {len(workers)} worker(s); a worker's state is as of its last beat "
          "(`mopq stats` says which are alive).")
    return 0


def _cmd_ask(args: argparse.Namespace) -> int:
    db = get_database()
    failed = 0
    for worker_id in args.ids:
        try:
            changed = ask(db, worker_id, args.command, _who())
        except (UnknownWorker, ControlRefused) as refusal:
            print(f"mopq workers {args.command}: {refusal}", file=sys.stderr)
            failed += 1
            continue
        outcome = "asked to" if changed else "had already been asked to"
        print(f"mopq workers {args.command}: {worker_id} {outcome} {MEANING[args.command]}; "
              "it acts at its next heartbeat.")
    return 1 if failed else 0


def register(commands: argparse._SubParsersAction) -> None:
    """``mopq workers list|stop|quiet|resume`` (called by ``mopq.cli``)."""
    workers = commands.add_parser("workers", help="list workers; ask them to stop, go quiet "
                                                  "or resume")
    actions = workers.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    listing = actions.add_parser("list", help="registered workers, what they hold, what was "
                                              "asked of them")
    listing.add_argument("--all", action="store_true", help="stopped workers too")
    listing.set_defaults(func=_cmd_list)
    for command in COMMANDS:
        action = actions.add_parser(command, help=MEANING[command])
        action.add_argument("ids", nargs="+", metavar="WORKER",
                            help="identity ip:port:start_time:pid (see mopq workers list)")
        action.set_defaults(func=_cmd_ask, command=command)
