"""The ``mopq`` command.

Commands that need the collector or the dashboard import them inside the
command, so a service that only imports ``mopq`` never loads Flask.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from mopq.engine import EngineError


def _cmd_engine(args: argparse.Namespace) -> int:
    from mopq import engine

    if args.prepare:
        home = engine.prepare(verbose=True)
        print(f"mopq: engine ready in {home}")
        return 0
    return engine.run_foreground(port=args.port, data=args.data, host=args.host)


def _cmd_run(args: argparse.Namespace) -> int:
    from mopq import supervisor

    return supervisor.run(host=args.host, port=args.port, data=args.data,
                          engine_port=args.engine_port, collector=False)


def _cmd_serve(args: argparse.Namespace) -> int:
    from mopq.supervisor import REPO_ROOT

    command = [sys.executable, "-m", "gunicorn", "-c", str(REPO_ROOT / "gunicorn.conf.py"),
               "--bind", f"{args.host}:{args.port}", "--workers", str(args.workers), "app:app"]
    os.chdir(REPO_ROOT)
    os.execv(sys.executable, command)
    return 0  # not reached


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
    serve.add_argument("--workers", type=int, default=1)
    serve.set_defaults(func=_cmd_serve)

    for register in _EXTRA_COMMANDS:
        register(commands)
    return parser


_EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except EngineError as error:
        print(f"mopq: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
