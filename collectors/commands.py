"""The commands the collectors add to ``mopq``: ``collect`` and ``stats``.

Registered through the ``mopq.commands`` entry point (pyproject.toml), so the
library's command knows nothing of the collectors; it finds them installed.
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from mopq.collectors import Collector
from mopq.collectors.stats import read_stats
from mopq.connection import get_database


def _cmd_collect(args: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    collector = Collector(batch_size=args.batch_size, lease_seconds=args.lease_seconds,
                          monitor=not args.no_monitor)
    print(f"mopq collect: collector {collector.id} on database {collector.db.name}; "
          "Ctrl-C stops it", flush=True)
    collector.run_in_foreground()
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    stats = read_stats(get_database())
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print(f"{'queue':<24}{'pending':>9}{'inflight':>9}{'delayed':>9}{'dead':>7}"
          f"{'written':>9}{'done':>9}{'failed':>8}  oldest")
    for name, row in stats["queues"].items():
        print(f"{name[:23]:<24}{row['pending']:>9}{row['inflight']:>9}{row['delayed']:>9}"
              f"{row['dead']:>7}{row['written']:>9}{row['done']:>9}{row['failed']:>8}"
              f"  {row['oldest_pending_age_seconds']:.0f} s")
    workers = ", ".join(f"{count} {state}" for state, count in stats["workers"].items())
    collector = stats["collector"]
    print(f"workers: {workers}")
    print(f"collector: lag {collector['lag_seconds']:.1f} s, {collector['events_waiting']} "
          f"events waiting, {collector['events_total']} applied, "
          f"{collector['collectors_alive']} collector(s) alive")
    return 0


def register(commands: Any) -> None:
    """Add ``collect`` and ``stats`` to the ``mopq`` command's subcommands."""
    collect = commands.add_parser("collect", help="consume the business log in the foreground")
    collect.add_argument("--batch-size", type=int, default=2000,
                         help="most events applied in one batch (default 2000)")
    collect.add_argument("--lease-seconds", type=float, default=10.0, metavar="SECONDS",
                         help="how long a dead collector's partitions stay held (default 10)")
    collect.add_argument("--no-monitor", action="store_true",
                         help="do not take part in worker monitoring and sweeps")
    collect.set_defaults(func=_cmd_collect)

    stats = commands.add_parser("stats", help="queue, worker and collector figures")
    stats.add_argument("--json", action="store_true", help="print the /api/stats document")
    stats.set_defaults(func=_cmd_stats)

