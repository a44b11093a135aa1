"""Collectors: consume the business log into counters, monitor workers, reclaim lost work."""

from mopq.collectors.collector import Collector

__all__ = ["Collector"]
