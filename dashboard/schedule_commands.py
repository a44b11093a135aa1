"""``mopq schedules``: list the schedules, and pause, resume, run now or delete one.

The same admin actions as the Schedules page and ``/api/schedules``, for a
shell with access to the database, and recorded in the same audit log
(``dashboard.audit``) as done by the operating-system user, ``via: cli``. It
lives with the dashboard because the audit log does; it imports nothing of
Flask, so it works where only the library and this package are installed.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from typing import Any

from pymongo.database import Database
from pymongo.errors import PyMongoError

from mopq import schedules
from mopq.connection import get_database
from mopq.dashboard import audit


def _who() -> dict[str, str]:
    try:
        name = getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (a container)
        name = "unknown"
    return {"name": name, "via": "cli"}


def _run_now(db: Database, name: str, by: str) -> bool:
    return schedules.run_now(db, name, by=by).outcome == schedules.WRITTEN


# The admin actions on one schedule, shared with the API (dashboard.schedules_api): the word
# on the command line and in the URL -> (the audit action, run(db, name, by), the verb done).
ACTIONS: dict[str, tuple[str, Callable[[Database, str, str], bool], str]] = {
    "pause": ("schedule.pause", lambda db, name, by: schedules.pause(db, name), "paused"),
    "resume": ("schedule.resume", lambda db, name, by: schedules.resume(db, name), "resumed"),
    "run": ("schedule.run", _run_now, "run now"),
    "delete": ("schedule.delete", lambda db, name, by: schedules.delete(db, name), "deleted"),
}


def _timing(row: dict[str, Any]) -> str:
    return f"every {row['every']} s" if row["every"] else f"{row['cron']} {row['timezone']}"


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"


def _listing(db: Database) -> int:
    rows = schedules.listing(db)
    if not rows:
        print("mopq schedules: none defined (define them in code, a file given to "
              "`mopq schedule --file`, or the dashboard's Schedules page).")
        return 0
    for row in rows:
        state = "paused" if row["paused"] else "active"
        print(f"{row['name']:<24} {_timing(row):<30} -> {row['queue']:<16} {state:<6} "
              f"next {_when(row['next_run']) if not row['paused'] else '-'}  "
              f"last {_when(row['last_run'])} {row['last_outcome'] or 'not run yet'}"
              f"{' ' + row['last_message'] if row['last_message'] else ''}")
    print(f"mopq schedules: {len(rows)} schedule(s).")
    return 0


def _act(db: Database, word: str, name: str) -> int:
    action, run, done = ACTIONS[word]
    found = schedules.get(db, name)
    if found is None:
        print(f"mopq schedules: no schedule named {name!r} is defined; `mopq schedules` lists "
              "them.", file=sys.stderr)
        return 1
    target = {"schedule": name} if word == "delete" else {"schedule": name,
                                                          "queue": found["queue"]}
    who = _who()
    count, record = audit.recorded(db, action, target, who,
                                   lambda db: int(run(db, name, f"{who['name']} (cli)")),
                                   user_agent="mopq schedules")
    if count:
        message = schedules.get(db, name)["last_message"] if word == "run" else None
        print(f"mopq schedules: {name} {done}" + (f": message {message}" if message else "")
              + f" (audit record {record}).")
        return 0
    if word == "run":
        print(f"mopq schedules: {name}: the message could not be written: "
              f"{schedules.get(db, name)['last_error']} (audit record {record}).",
              file=sys.stderr)
        return 1
    print(f"mopq schedules: {name} was {done} already; nothing changed (audit record "
          f"{record}).")
    return 0


def _cmd_schedules(args: argparse.Namespace) -> int:
    try:
        db = get_database()
        if args.action is None:
            return _listing(db)
        return _act(db, args.action, args.name)
    except PyMongoError as error:
        print(f"mopq schedules: cannot reach MongoDB: {error}", file=sys.stderr)
        return 1


def register(commands: Any) -> None:
    """Add ``schedules`` to the ``mopq`` command (called by ``dashboard.commands``)."""
    command = commands.add_parser(
        "schedules", help="list the schedules; pause, resume, run now or delete one (audited)",
        description="Without an action, list every schedule. Each action is recorded in the "
                    "dashboard's audit log as yours (via cli).")
    actions = command.add_subparsers(dest="action", metavar="ACTION")
    for word, (_, _, done) in ACTIONS.items():
        action = actions.add_parser(word, help=f"the schedule is {done}")
        action.add_argument("name", help="the schedule's name")
    command.set_defaults(func=_cmd_schedules)
