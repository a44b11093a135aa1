"""The collectors' settings: how workers are classified from their heartbeats.

Read from the environment (``MOPQ_WORKER_*_SECONDS``); each default is
written once, as the field's default below.
"""

from __future__ import annotations

from dataclasses import dataclass

from mopq.config import FromEnvironment, seconds, setting


@dataclass(frozen=True)
class Thresholds(FromEnvironment):
    """Seconds that separate alive, stale, dead and zombie workers (workers beat every 5 s)."""

    stale: float = setting("MOPQ_WORKER_STALE_SECONDS", 15.0, seconds)
    dead: float = setting("MOPQ_WORKER_DEAD_SECONDS", 60.0, seconds)
    # A worker that still beats is a zombie if it holds a message this long past
    # its lease, or works on one this long without reporting progress.
    zombie: float = setting("MOPQ_WORKER_ZOMBIE_SECONDS", 60.0, seconds)
    no_progress: float = setting("MOPQ_WORKER_NO_PROGRESS_SECONDS", 1800.0, seconds)
    # Dead or stopped workers are forgotten after this long.
    forget: float = setting("MOPQ_WORKER_FORGET_SECONDS", 86400.0, seconds)
