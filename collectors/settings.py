"""The collectors' settings: how workers are classified from their heartbeats.

Read from the environment (``MOPQ_WORKER_*_SECONDS``); each default is
written once, as the field's default below.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from mopq.config import Env, seconds


@dataclass(frozen=True)
class Thresholds:
    """Seconds that separate alive, stale, dead and zombie workers (workers beat every 5 s)."""

    stale: float = 15.0
    dead: float = 60.0
    # A worker that still beats is a zombie if it holds a message this long past
    # its lease, or works on one this long without reporting progress.
    zombie: float = 60.0
    no_progress: float = 1800.0
    # Dead or stopped workers are forgotten after this long.
    forget: float = 86400.0

    @classmethod
    def from_env(cls, env: Env | None = None) -> Thresholds:
        env = os.environ if env is None else env
        return cls(
            stale=seconds(env, "MOPQ_WORKER_STALE_SECONDS", cls.stale),
            dead=seconds(env, "MOPQ_WORKER_DEAD_SECONDS", cls.dead),
            zombie=seconds(env, "MOPQ_WORKER_ZOMBIE_SECONDS", cls.zombie),
            no_progress=seconds(env, "MOPQ_WORKER_NO_PROGRESS_SECONDS", cls.no_progress),
            forget=seconds(env, "MOPQ_WORKER_FORGET_SECONDS", cls.forget),
        )
