"""``/metrics``: the stats document in Prometheus text exposition format (0.0.4).

Built from ``collectors.stats.read_stats`` (the same numbers as ``/api/stats``
and the pages), written by hand so the dashboard needs no client library.
Counters are the collectors' all-time totals, so they survive dashboard
restarts and agree across gunicorn workers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

QUEUE_GAUGES = (
    ("pending", "Messages ready to be claimed."),
    ("inflight", "Messages claimed by a consumer and not yet settled."),
    ("delayed", "Pending messages not visible yet (delay or retry backoff)."),
    ("dead", "Messages that failed max_attempts times and wait for an operator."),
    ("oldest_pending_age_seconds", "Age of the oldest ready message."),
)
QUEUE_COUNTERS = (
    ("written", "Messages written."),
    ("done", "Messages acknowledged."),
    ("failed", "Failed attempts (a message may fail several times)."),
    ("expired", "Messages dropped because they expired while pending."),
    ("removed", "Messages deleted or purged by an operator."),
)


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: Any) -> str:
    number = float(value or 0)
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "+Inf" if number > 0 else "-Inf"
    return str(int(number)) if number.is_integer() and abs(number) < 2**53 else repr(number)


def _family(name: str, kind: str, help_text: str,
            samples: Iterable[tuple[dict[str, str], Any]]) -> list[str]:
    lines = [f"# HELP {name} {escape_help(help_text)}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        if labels:
            rendered = ",".join(f'{key}="{escape_label(str(label))}"'
                                for key, label in labels.items())
            lines.append(f"{name}{{{rendered}}} {_number(value)}")
        else:
            lines.append(f"{name} {_number(value)}")
    return lines


def render(stats: dict[str, Any]) -> str:
    """The exposition text for one ``read_stats`` document."""
    queues: dict[str, dict[str, Any]] = stats.get("queues") or {}
    lines: list[str] = []
    for field, help_text in QUEUE_GAUGES:
        lines += _family(f"mopq_queue_{field}", "gauge", help_text,
                         (({"queue": name}, row.get(field, 0)) for name, row in queues.items()))
    for field, help_text in QUEUE_COUNTERS:
        lines += _family(f"mopq_queue_{field}_total", "counter", help_text,
                         (({"queue": name}, row.get(field, 0)) for name, row in queues.items()))
    workers = stats.get("workers") or {}
    lines += _family("mopq_workers", "gauge", "Registered workers by state.",
                     (({"state": state}, count) for state, count in workers.items()))
    collector = stats.get("collector") or {}
    lines += _family("mopq_collector_lag_seconds", "gauge",
                     "Age of the oldest event not yet applied to the counters.",
                     [({}, collector.get("lag_seconds", 0))])
    lines += _family("mopq_collector_events_total", "counter",
                     "Events applied to the counters by the collectors.",
                     [({}, collector.get("events_total", 0))])
    lines += _family("mopq_collector_events_waiting", "gauge",
                     "Events in the business log waiting for a collector.",
                     [({}, collector.get("events_waiting", 0))])
    lines += _family("mopq_collectors_alive", "gauge",
                     "Collectors holding a live lease on the business log.",
                     [({}, collector.get("collectors_alive", 0))])
    return "\n".join(lines) + "\n"
