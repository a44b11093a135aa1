"""The commands the dashboard adds to ``mopq``: ``serve``, ``run``, ``demo`` and ``schedules``.

Registered through the ``mopq.commands`` entry point (pyproject.toml). This
module imports nothing of Flask, so ``mopq --help`` works where only the
library is installed; the commands themselves say what to install if the
dashboard's packages are missing.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from mopq.dashboard import schedule_commands

INSTALL_DASHBOARD = ("the dashboard's packages are not installed: pip install 'mopq[dashboard]' "
                     "(make install does it in a clone)")


def _dashboard_installed(command: str) -> bool:
    try:
        import flask  # noqa: F401
        import flask_socketio  # noqa: F401
        import gunicorn  # noqa: F401
    except ImportError:
        print(f"mopq {command}: {INSTALL_DASHBOARD}", file=sys.stderr)
        return False
    return True


def _cmd_run(args: argparse.Namespace) -> int:
    if not _dashboard_installed("run"):
        return 2
    from mopq.dashboard import supervisor

    return supervisor.run(host=args.host, port=args.port, data=args.data,
                          engine_port=args.engine_port, collector=not args.no_collector)


def _cmd_serve(args: argparse.Namespace) -> int:
    if not _dashboard_installed("serve"):
        return 2
    from mopq.dashboard.supervisor import gunicorn_command, port_taken

    problem = port_taken("dashboard", args.host, args.port, "mopq serve --port {port}")
    if problem:
        print(problem, file=sys.stderr)
        return 2
    os.environ["MOPQ_BIND"] = f"{args.host}:{args.port}"
    if args.workers is not None:
        os.environ["MOPQ_WEB_WORKERS"] = str(args.workers)
    command = gunicorn_command()
    os.execv(command[0], command)
    return 0  # not reached


def _cmd_demo(args: argparse.Namespace) -> int:
    if not _dashboard_installed("demo"):
        return 2
    from mopq.dashboard import demo

    if args.seconds <= 0 or args.rate <= 0:
        print("mopq demo: --seconds and --rate must be positive", file=sys.stderr)
        return 2
    return demo.run(seconds=args.seconds, rate=args.rate, collector=not args.no_collector)


def register(commands: Any) -> None:
    """Add ``serve``, ``run``, ``demo`` and ``schedules`` to the ``mopq`` command's subcommands."""
    run = commands.add_parser("run", help="engine (unless MOPQ_MONGODB_URI), collector, dashboard")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8000)
    run.add_argument("--data", help="engine data folder (default var/engine)")
    run.add_argument("--engine-port", type=int, default=None,
                     help="engine port (default 27017, or a free one if taken)")
    run.add_argument("--no-collector", action="store_true", help="do not start a collector")
    run.set_defaults(func=_cmd_run)

    serve = commands.add_parser("serve", help="the dashboard under gunicorn")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=None,
                       help="gunicorn processes (default MOPQ_WEB_WORKERS, 2)")
    serve.set_defaults(func=_cmd_serve)

    demo = commands.add_parser("demo", help="producers, workers, events and a collector for a "
                                             "first look at the dashboard")
    demo.add_argument("--seconds", type=float, default=120.0,
                      help="how long to run (default 120); Ctrl-C stops earlier")
    demo.add_argument("--rate", type=float, default=20.0,
                      help="messages written per second (default 20)")
    demo.add_argument("--no-collector", action="store_true",
                      help="do not start a collector (run `mopq collect` yourself)")
    demo.set_defaults(func=_cmd_demo)
    schedule_commands.register(commands)

