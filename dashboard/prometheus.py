"""``/metrics``: the stats snapshot in Prometheus' text format, by ``prometheus_client``.

A custom collector turns one ``read_stats`` document (the same numbers as
``/api/stats`` and the pages) into metric families; the client library
writes the exposition text, escaping included. Counters are the collectors'
all-time totals, so they survive dashboard restarts and agree across
gunicorn workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # what generate_latest writes by default

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
COLLECTOR_METRICS = (
    # (name, kind, field of stats["collector"], help)
    ("mopq_collector_lag_seconds", GaugeMetricFamily, "lag_seconds",
     "Age of the oldest event not yet applied to the counters."),
    ("mopq_collector_events", CounterMetricFamily, "events_total",
     "Events applied to the counters by the collectors."),
    ("mopq_collector_events_waiting", GaugeMetricFamily, "events_waiting",
     "Events in the business log waiting for a collector."),
    ("mopq_collectors_alive", GaugeMetricFamily, "collectors_alive",
     "Collectors holding a live lease on the business log."),
)


class StatsCollector:
    """A ``prometheus_client`` collector over one stats snapshot."""

    def __init__(self, stats: dict[str, Any]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        queues: dict[str, dict[str, Any]] = self.stats.get("queues") or {}
        for kinds, family in ((QUEUE_GAUGES, GaugeMetricFamily),
                              (QUEUE_COUNTERS, CounterMetricFamily)):
            for field, help_text in kinds:
                metric = family(f"mopq_queue_{field}", help_text, labels=["queue"])
                for name, row in queues.items():
                    metric.add_metric([name], float(row.get(field) or 0))
                yield metric
        workers = GaugeMetricFamily("mopq_workers", "Registered workers by state.",
                                    labels=["state"])
        for state, count in (self.stats.get("workers") or {}).items():
            workers.add_metric([state], float(count))
        yield workers
        collector = self.stats.get("collector") or {}
        for name, family, field, help_text in COLLECTOR_METRICS:
            yield family(name, help_text, value=float(collector.get(field) or 0))


def render(stats: dict[str, Any]) -> bytes:
    """The exposition text for one ``read_stats`` document."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(stats))
    return generate_latest(registry)
