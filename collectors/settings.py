"""The collectors' settings: how workers are classified, how long history is kept.

Read from the environment (``MOPQ_WORKER_*_SECONDS``, ``MOPQ_HISTORY_SECONDS``,
``MOPQ_DEAD_SECONDS``); each default is written once, as the field's default.
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


@dataclass(frozen=True)
class Retention(FromEnvironment):
    """How long the monitor keeps finished messages (history) and dead ones."""

    finished: float = setting("MOPQ_HISTORY_SECONDS", 86400.0, seconds)
    dead: float = setting("MOPQ_DEAD_SECONDS", 30 * 86400.0, seconds)
