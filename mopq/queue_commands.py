"""``mopq queue``: operate a queue from a shell — policy, pause, resume, browse, cancel, move.

The same library calls as the dashboard's admin actions (``mopq.policy``,
``mopq.admin.cancel``, ``mopq.browse``). Anyone who can reach the database
can run them, so there is no login here; the changes record who asked as
``cli:<user>@<host>``. Each subcommand says what it did and what it did not,
and exits 1 when it did not do what was asked.
"""

from __future__ import annotations

import argparse
import getpass
import socket
import sys
from typing import Any

from mopq import admin, browse, policy
from mopq.connection import get_database
from mopq.doorbell import ringer_for
from mopq.errors import InvalidInput, MessageNotFound


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"


def _value(text: str) -> Any:
    if text.lower() in ("", "none", "null", "default"):
        return None
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise InvalidInput(f"{text!r} is not a number; give a number, or 'default' to "
                               "unset the field.") from None


def _print_policy(name: str) -> None:
    record = policy.read(get_database(), name)
    view = record.describe()
    state = "running" if record.paused is None else (
        f"PAUSED by {record.paused.who} at {record.paused.at:%Y-%m-%d %H:%M:%S} UTC"
        + (f" ({record.paused.reason})" if record.paused.reason else ""))
    print(f"queue {name}: {state}")
    for field_name, shown in view["fields"].items():
        if shown["from"] == "stored":
            source = f"stored by {shown.get('by')}" + (f" {shown['who']}" if shown.get("who")
                                                        else "")
        else:
            source = "default (or each consumer's code)"
        value = "none" if shown["value"] is None else f"{shown['value']:g}"
        print(f"  {field_name:<24} {value:<10} {source}")


def _cmd_policy(args: argparse.Namespace) -> int:
    if args.set:
        changes: dict[str, Any] = {}
        for assignment in args.set:
            field_name, equals, text = assignment.partition("=")
            if not equals:
                raise InvalidInput(f"--set takes field=value, got {assignment!r}.")
            changes[field_name.strip()] = _value(text.strip())
        policy.change(get_database(), args.queue, changes, _who())
        print(f"mopq queue policy: {', '.join(changes)} changed for {args.queue!r}.")
    _print_policy(args.queue)
    return 0


def _cmd_pause(args: argparse.Namespace) -> int:
    if policy.pause(get_database(), args.queue, _who(), args.reason):
        print(f"mopq queue pause: {args.queue!r} paused; no claims until it is resumed "
              "(writes are still accepted).")
        return 0
    print(f"mopq queue pause: {args.queue!r} was already paused; nothing changed.")
    return 1


def _cmd_resume(args: argparse.Namespace) -> int:
    db = get_database()
    resumed = policy.resume(db, args.queue)
    ringer_for(db).ring(args.queue)
    if resumed:
        print(f"mopq queue resume: {args.queue!r} resumed.")
        return 0
    print(f"mopq queue resume: {args.queue!r} was not paused; nothing changed.")
    return 1


def _cmd_browse(args: argparse.Namespace) -> int:
    page = browse.browse(get_database(), args.queue, args.state, args.routing_key,
                         args.after, args.limit)
    for row in page["items"]:
        extra = ""
        if args.state == "inflight":
            extra = f" held by {row.get('worker')} until {row.get('lease_ends_at'):%H:%M:%S}"
        elif args.state == "dead":
            extra = f" {(row.get('last_error') or '')[:60]}"
        print(f"{row['id']}  prio={row.get('priority')} attempts={row.get('attempts')}"
              f"{extra}  {row['preview']}")
    more = f"; more with --after {page['next']}" if page["next"] else ""
    print(f"mopq queue browse: {len(page['items'])} {args.state} message(s) of "
          f"{args.queue!r}{more}.")
    return 0


def _cmd_cancel(args: argparse.Namespace) -> int:
    result = admin.cancel(get_database(), args.ids, args.reason, _who(), queue=args.queue)
    print(f"mopq queue cancel: {len(result['cancelled'])} cancelled.")
    for message_id in result["not_cancelled"]:
        print(f"mopq queue cancel: not cancelled: {message_id} (not pending, delayed or "
              f"inflight in {args.queue!r})")
    return 1 if result["not_cancelled"] else 0


def _cmd_front(args: argparse.Namespace) -> int:
    priority = browse.to_front(get_database(), args.queue, args.id)
    print(f"mopq queue front: {args.id} is next in {args.queue!r} (priority {priority}).")
    return 0


def _cmd_move(args: argparse.Namespace) -> int:
    browse.to_queue(get_database(), args.queue, args.id, args.to)
    print(f"mopq queue move: {args.id} moved from {args.queue!r} to {args.to!r}.")
    return 0


def _guarded(command: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except MessageNotFound as problem:
            print(f"mopq queue {args.action}: {problem}", file=sys.stderr)
            return 1
    return run


def register(commands: argparse._SubParsersAction) -> None:
    queue = commands.add_parser("queue", help="operate a queue: policy, pause, resume, "
                                              "browse, cancel, front, move")
    actions = queue.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    def action(name: str, run: Any, help_text: str) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=help_text)
        parser.add_argument("queue", help="the queue's name")
        parser.set_defaults(func=_guarded(run))
        return parser

    shown = action("policy", _cmd_policy, "show the policy (and set fields with --set)")
    shown.add_argument("--set", action="append", metavar="FIELD=VALUE",
                       help=f"store a value ('default' unsets it); fields: "
                            f"{', '.join(policy.FIELDS)}")
    paused = action("pause", _cmd_pause, "stop claims (writes are still accepted)")
    paused.add_argument("--reason", help="why, shown on the dashboard")
    action("resume", _cmd_resume, "allow claims again")
    browsed = action("browse", _cmd_browse, "list messages of a state, oldest first")
    browsed.add_argument("--state", choices=browse.BROWSE_STATES, default="pending")
    browsed.add_argument("--routing-key")
    browsed.add_argument("--after", metavar="ID", help="the last id of the previous page")
    browsed.add_argument("--limit", type=int, default=50)
    cancelled = action("cancel", _cmd_cancel, "cancel pending, delayed or inflight messages")
    cancelled.add_argument("ids", nargs="+", metavar="ID")
    cancelled.add_argument("--reason", required=True, help="kept and told to the holder")
    front = action("front", _cmd_front, "make a pending message the next one claimed")
    front.add_argument("id")
    moved = action("move", _cmd_move, "move a pending, delayed or dead message to another queue")
    moved.add_argument("id")
    moved.add_argument("--to", required=True, metavar="QUEUE")
