"""The ``mopq`` command, assembled from what each installed part registers.

The library's own commands are here: ``engine``, ``worker``, ``workers``
(``mopq.control``), ``queue`` (``mopq.queue_commands``), ``failed`` and
``retry``. Every function registered under the ``mopq.commands`` entry point
adds its part's (the collectors: ``collect``, ``stats``; the dashboard:
``serve``, ``run``, ``demo``), so the library never imports the parts built
on it, and a part that is not installed adds nothing.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
import os
import sys
from collections.abc import Callable

from mopq import control, queue_commands, schema
from mopq.config import ConfigError
from mopq.engine import EngineError
from mopq.errors import InvalidInput


def _cmd_engine(args: argparse.Namespace) -> int:
    from mopq import engine

    if args.prepare:
        home = engine.prepare(verbose=True)
        print(f"mopq: engine ready in {home}")
        return 0
    return engine.run_foreground(port=args.port, data=args.data, host=args.host)


HANDLER_FORM = "package.module:function"


class BadHandler(ValueError):
    """A ``--handler`` string that does not name a callable."""


def load_handler(spec: str) -> Callable[..., object]:
    """The callable ``package.module:function`` names (``function`` may be dotted)."""
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name.strip() or not attribute.strip() or ":" in attribute:
        raise BadHandler("it is not of the form module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise BadHandler(f"cannot import module {module_name!r} ({error})") from error
    except Exception as error:  # the module itself raised while importing
        raise BadHandler(f"importing module {module_name!r} raised "
                         f"{type(error).__name__}: {error}") from error
    target: object = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise BadHandler(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not callable(target):
        raise BadHandler(f"{module_name}:{attribute} is a {type(target).__name__}, "
                         "not a function")
    return target


def _cmd_worker(args: argparse.Namespace) -> int:
    from pymongo.errors import PyMongoError

    from mopq.errors import InvalidInput
    from mopq.worker import Worker

    # Like gunicorn and celery: handlers are found relative to where the command runs.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        handler = load_handler(args.handler)
    except BadHandler as error:
        reason = " ".join(str(error).split())
        print(f"mopq worker: bad --handler {args.handler!r}: {reason}; expected the form "
              f"{HANDLER_FORM}", file=sys.stderr)
        return 2
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        worker = Worker(args.queue, handler, args.concurrency,
                        visibility_timeout=args.visibility_timeout,
                        heartbeat_interval=args.heartbeat_interval,
                        routing_key=args.routing_key, max_attempts=args.max_attempts,
                        poll_interval=args.poll_interval)
    except InvalidInput as error:
        print(f"mopq worker: {error}", file=sys.stderr)
        return 2
    except PyMongoError as error:
        print(f"mopq worker: cannot reach MongoDB: {error}", file=sys.stderr)
        return 1
    worker.run()
    return 0


MAX_LISTED = 10_000


def _filters(args: argparse.Namespace) -> str:
    parts = [f"queue {args.queue!r}" if args.queue else "",
             f"error containing {args.error!r}" if args.error else ""]
    return " and ".join(part for part in parts if part)


def _cmd_failed(args: argparse.Namespace) -> int:
    from mopq import admin
    from mopq.connection import get_database

    if not 1 <= args.limit <= MAX_LISTED:
        print(f"mopq failed: --limit must be from 1 to {MAX_LISTED}, got {args.limit}",
              file=sys.stderr)
        return 2
    chosen = admin.selection(queue=args.queue, error_contains=args.error)
    messages = get_database()[schema.MESSAGES]
    total = messages.count_documents(chosen.query())
    where = f" with {_filters(args)}" if _filters(args) else ""
    if not total:
        print(f"mopq failed: no dead messages{where}.")
        return 0
    for document in messages.find(chosen.query()).sort([("dead_at", -1)]).limit(args.limit):
        print(f"{document['_id']}  {document['queue']:<20} attempts={document['attempts']} "
              f"{(document.get('last_error') or '')[:100]}")
    shown = min(total, args.limit)
    more = f" (--limit {min(total, MAX_LISTED)} shows more)" if shown < total else ""
    print(f"mopq failed: {shown} of {total} dead message(s){where}, newest first{more}.")
    return 0


def _cmd_retry(args: argparse.Namespace) -> int:
    from mopq import admin
    from mopq.connection import get_database

    if not (args.ids or args.queue or args.error or args.all):
        print("mopq retry: name message ids, --queue or --error, or pass --all to retry "
              "every dead message", file=sys.stderr)
        return 2
    chosen = admin.selection(queue=args.queue, error_contains=args.error,
                             ids=args.ids or None)
    db = get_database()
    before = {document["_id"]: document for document in db[schema.MESSAGES].find(
        {"_id": {"$in": list(chosen.ids)}}, {"state": 1, "queue": 1})} if chosen.ids else {}
    count = admin.retry(db, chosen)
    print(f"mopq retry: {count} message(s) back to pending.")
    if chosen.ids is not None:
        refused = []
        for message_id in chosen.ids:
            found = before.get(message_id)
            if found is None:
                refused.append(f"{message_id}: no such message (acknowledged and removed, or "
                               "a wrong id)")
            elif found["state"] != schema.DEAD:
                refused.append(f"{message_id}: {found['state']} in queue {found['queue']!r}, "
                               "not dead; only dead messages are retried")
            elif args.queue and found["queue"] != args.queue:
                refused.append(f"{message_id}: in queue {found['queue']!r}, not {args.queue!r}")
        for line in refused:
            print(f"mopq retry: not retried: {line}", file=sys.stderr)
        return 1 if refused or count < len(chosen.ids) else 0
    if count == 0:
        where = f" with {_filters(args)}" if _filters(args) else ""
        print(f"mopq retry: no dead message{where}; nothing was retried.", file=sys.stderr)
        return 1
    if count >= admin.MAX_SELECTION:
        left = db[schema.MESSAGES].count_documents(chosen.query())
        if left:
            print(f"mopq retry: one call retries at most {admin.MAX_SELECTION}; {left} more "
                  "match: run it again.", file=sys.stderr)
            return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mopq",
        description="A message queue in MongoDB with a live business log and dashboard.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    engine = commands.add_parser("engine", help="run the embedded engine in the foreground")
    engine.add_argument("--port", type=int, default=0,
                        help="port to listen on (default: a free one)")
    engine.add_argument("--data", help="folder for H2 storage (default: memory only)")
    engine.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    engine.add_argument("--prepare", action="store_true",
                        help="only fetch the jars and compile the launcher, then exit")
    engine.set_defaults(func=_cmd_engine)

    worker = commands.add_parser("worker", help="run a handler over the messages of queues")
    worker.add_argument("--queue", action="append", required=True, metavar="NAME",
                        help="queue to consume (repeat for several, taken in turn)")
    worker.add_argument("--handler", required=True, metavar=HANDLER_FORM,
                        help="the function called with each message")
    worker.add_argument("--concurrency", type=int, default=1,
                        help="messages handled at once, one thread each (default 1)")
    worker.add_argument("--visibility-timeout", type=float, default=None, metavar="SECONDS",
                        help="lease of a claimed message (default: the queue's policy, 30 "
                             "unless stored)")
    worker.add_argument("--routing-key", default=None, help="only messages with this key")
    worker.add_argument("--max-attempts", type=int, default=None,
                        help="failed attempts before a message is dead, where the queue's policy "
                             "stores none (default 5)")
    worker.add_argument("--heartbeat-interval", type=float, default=5.0, metavar="SECONDS",
                        help="seconds between heartbeats (default 5)")
    worker.add_argument("--poll-interval", type=float, default=1.0, metavar="SECONDS",
                        help="longest wait between claims when idle (default 1)")
    worker.set_defaults(func=_cmd_worker)

    failed = commands.add_parser("failed", help="list dead messages")
    failed.add_argument("--queue", help="only this queue")
    failed.add_argument("--error", help="only messages whose error contains this text")
    failed.add_argument("--limit", type=int, default=50,
                        help=f"at most this many, 1 to {MAX_LISTED} (default 50)")
    failed.set_defaults(func=_cmd_failed)

    retry = commands.add_parser("retry", help="put dead messages back to pending")
    retry.add_argument("ids", nargs="*", help="message ids (default: all that match)")
    retry.add_argument("--queue", help="only this queue")
    retry.add_argument("--error", help="only messages whose error contains this text")
    retry.add_argument("--all", action="store_true",
                       help="needed to retry every dead message when no id or filter is given")
    retry.set_defaults(func=_cmd_retry)
    control.register(commands)
    queue_commands.register(commands)
    add_registered_commands(commands)
    return parser


COMMANDS_ENTRY_POINT = "mopq.commands"


def add_registered_commands(commands: argparse._SubParsersAction) -> None:
    """Let each installed part add its commands (entry point group ``mopq.commands``)."""
    for entry in sorted(importlib.metadata.entry_points(group=COMMANDS_ENTRY_POINT),
                        key=lambda entry: entry.name):
        entry.load()(commands)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (EngineError, ConfigError, InvalidInput) as error:
        print(f"mopq: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
