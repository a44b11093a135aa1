"""All of mopq's configuration, read from the environment in one place.

Every setting has an environment variable; commands may override it with a
flag. Nothing else in the code base reads ``os.environ`` for settings.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_DATABASE = "mopq"


def _cache_dir() -> Path:
    explicit = os.environ.get("MOPQ_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mopq"


class ConfigError(ValueError):
    """A setting in the environment has a value mopq cannot use."""


Env = os._Environ[str] | dict[str, str]


def _parsed(env: Env, name: str, default: Any, parse: Callable[[str], Any],
            fine: Callable[[Any], bool], expected: str) -> Any:
    """``env[name]`` parsed, ``default`` when unset; a ConfigError saying what was expected."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = parse(raw)
    except ValueError:
        value = None
    if value is None or not fine(value):
        raise ConfigError(f"{name}={raw!r} {expected}.")
    return value


def _seconds(env: Env, name: str, default: float) -> float:
    return _parsed(env, name, default, float, lambda value: value > 0,
                   "is not a positive number of seconds")


def _count(env: Env, name: str, default: int, minimum: int) -> int:
    return _parsed(env, name, default, int, lambda value: value >= minimum,
                   f"must be a whole number of at least {minimum}")


# Threads of a dashboard process kept for plain HTTP whatever the live pages hold.
LIVE_THREAD_RESERVE = 20


@dataclass(frozen=True)
class Settings:
    """A snapshot of the environment's settings.

    ``mongodb_uri`` is None when ``MOPQ_MONGODB_URI`` is unset: callers that
    need a server then start the embedded engine (see ``mopq.engine``).
    """

    mongodb_uri: str | None = None
    database: str = DEFAULT_DATABASE
    cache_dir: Path = field(default_factory=_cache_dir)
    admin_token: str | None = None
    read_token: str | None = None
    basic_auth_users: str | None = None
    admin_users: str | None = None
    secret_key: str | None = None
    # Worker monitoring (seconds since the last heartbeat; workers beat every 5 s).
    worker_stale_seconds: float = 15.0
    worker_dead_seconds: float = 60.0
    # A worker that still beats is a zombie if it holds a message this long past
    # its lease, or works on one this long without reporting progress.
    worker_zombie_seconds: float = 60.0
    worker_no_progress_seconds: float = 1800.0
    # Dead or stopped workers are forgotten after this long.
    worker_forget_seconds: float = 86400.0
    # Each dashboard process reads the stats at most this often (dashboard/stats_cache.py).
    stats_max_age_seconds: float = 1.0
    # gunicorn threads per dashboard process; each open live page holds one, so
    # live pages are refused beyond web_threads - LIVE_THREAD_RESERVE.
    web_threads: int = 300
    # gunicorn worker processes; they share nothing (each reads MongoDB and pushes
    # to its own pages), and two answer /api/stats at 50 connections in under 100 ms.
    web_workers: int = 2

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        return cls(
            mongodb_uri=env.get("MOPQ_MONGODB_URI") or None,
            database=env.get("MOPQ_DATABASE") or DEFAULT_DATABASE,
            cache_dir=_cache_dir(),
            admin_token=env.get("MOPQ_ADMIN_TOKEN") or None,
            read_token=env.get("MOPQ_READ_TOKEN") or None,
            basic_auth_users=env.get("MOPQ_BASIC_AUTH_USERS") or None,
            admin_users=env.get("MOPQ_ADMIN_USERS") or None,
            secret_key=env.get("MOPQ_SECRET_KEY") or None,
            worker_stale_seconds=_seconds(env, "MOPQ_WORKER_STALE_SECONDS", 15.0),
            worker_dead_seconds=_seconds(env, "MOPQ_WORKER_DEAD_SECONDS", 60.0),
            worker_zombie_seconds=_seconds(env, "MOPQ_WORKER_ZOMBIE_SECONDS", 60.0),
            worker_no_progress_seconds=_seconds(env, "MOPQ_WORKER_NO_PROGRESS_SECONDS", 1800.0),
            worker_forget_seconds=_seconds(env, "MOPQ_WORKER_FORGET_SECONDS", 86400.0),
            stats_max_age_seconds=_seconds(env, "MOPQ_STATS_MAX_AGE_SECONDS", 1.0),
            web_threads=_count(env, "MOPQ_WEB_THREADS", 300, minimum=LIVE_THREAD_RESERVE + 1),
            web_workers=_count(env, "MOPQ_WEB_WORKERS", 2, minimum=1),
        )


def settings() -> Settings:
    """The current settings (re-read each call, so tests can change the env)."""
    return Settings.from_env()
