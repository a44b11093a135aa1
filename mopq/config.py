"""The library's settings, read from the environment, and the parsers every part uses.

Each part owns its settings in one module of its own: the library's are here
(where MongoDB is, the cache folder); the collectors' are in
``collectors/settings.py`` and the dashboard's in ``dashboard/settings.py``.
All of them read ``os.environ`` through the parsers below, so a bad value is
refused the same way everywhere, with the variable's name and what it expects.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_DATABASE = "mopq"

Env = Mapping[str, str]


class ConfigError(ValueError):
    """A setting in the environment has a value mopq cannot use."""


def parsed(env: Env, name: str, default: Any, parse: Callable[[str], Any],
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


def seconds(env: Env, name: str, default: float) -> float:
    return parsed(env, name, default, float, lambda value: value > 0,
                  "is not a positive number of seconds")


def count(env: Env, name: str, default: int, minimum: int) -> int:
    return parsed(env, name, default, int, lambda value: value >= minimum,
                  f"must be a whole number of at least {minimum}")


def text(env: Env, name: str) -> str | None:
    return env.get(name) or None


def words(env: Env, name: str) -> tuple[str, ...]:
    """A comma-separated list (blanks dropped): ``MOPQ_ALLOWED_HOSTS=a.example,b.example``."""
    return tuple(word.strip() for word in (env.get(name) or "").split(",") if word.strip())


def _cache_dir(env: Env) -> Path:
    explicit = env.get("MOPQ_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mopq"


@dataclass(frozen=True)
class Settings:
    """Where the library finds MongoDB, and where it caches the engine.

    ``mongodb_uri`` is None when ``MOPQ_MONGODB_URI`` is unset: callers that
    need a server then start the embedded engine (see ``mopq.engine``).
    """

    mongodb_uri: str | None = None
    database: str = DEFAULT_DATABASE
    cache_dir: Path = field(default_factory=lambda: _cache_dir(os.environ))

    @classmethod
    def from_env(cls, env: Env | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            mongodb_uri=text(env, "MOPQ_MONGODB_URI"),
            database=text(env, "MOPQ_DATABASE") or DEFAULT_DATABASE,
            cache_dir=_cache_dir(env),
        )


def settings() -> Settings:
    """The current settings (re-read each call, so tests can change the env)."""
    return Settings.from_env()
