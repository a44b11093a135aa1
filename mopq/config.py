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
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

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


Parser = Callable[[Env, str, Any], Any]


def seconds(env: Env, name: str, default: float) -> float:
    return parsed(env, name, default, float, lambda value: value > 0,
                  "is not a positive number of seconds")


def at_least(minimum: int) -> Parser:
    """A parser of whole numbers no smaller than ``minimum``."""
    def count(env: Env, name: str, default: int) -> int:
        return parsed(env, name, default, int, lambda value: value >= minimum,
                      f"must be a whole number of at least {minimum}")
    return count


def boolean(env: Env, name: str, default: bool) -> bool:
    return parsed(env, name, default, lambda raw: {"1": True, "true": True, "yes": True,
                                                   "0": False, "false": False,
                                                   "no": False}.get(raw.lower()),
                  lambda value: True, "must be 1 or 0 (true/false, yes/no)")


def text(env: Env, name: str, default: str | None = None) -> str | None:
    return env.get(name) or default


def words(env: Env, name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
    """A comma-separated list (blanks dropped): ``MOPQ_ALLOWED_HOSTS=a.example,b.example``."""
    found = tuple(word.strip() for word in (env.get(name) or "").split(",") if word.strip())
    return found or default


def setting(variable: str, default: Any, parse: Parser = text) -> Any:
    """A settings field read from ``variable``; its default written here, once."""
    return field(default=default, metadata={"variable": variable, "parse": parse})


Read = TypeVar("Read", bound="FromEnvironment")


class FromEnvironment:
    """A frozen dataclass of ``setting(...)`` fields, read from the environment."""

    @classmethod
    def from_env(cls: type[Read], env: Env | None = None) -> Read:
        env = os.environ if env is None else env
        values = {item.name: item.metadata["parse"](env, item.metadata["variable"],
                                                     item.default)
                  for item in fields(cls)  # type: ignore[arg-type]
                  if "variable" in item.metadata}
        return cls(**values)


def _cache_dir(env: Env) -> Path:
    explicit = env.get("MOPQ_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mopq"


def _cache_dir_setting(env: Env, name: str, default: Path | None) -> Path:
    return _cache_dir(env)


@dataclass(frozen=True)
class Settings(FromEnvironment):
    """Where the library finds MongoDB, and where it caches the engine.

    ``mongodb_uri`` is None when ``MOPQ_MONGODB_URI`` is unset: callers that
    need a server then start the embedded engine (see ``mopq.engine``).
    """

    mongodb_uri: str | None = setting("MOPQ_MONGODB_URI", None)
    database: str = setting("MOPQ_DATABASE", DEFAULT_DATABASE)
    # MOPQ_CACHE_DIR, else $XDG_CACHE_HOME/mopq, else ~/.cache/mopq
    cache_dir: Path = setting("MOPQ_CACHE_DIR", None, _cache_dir_setting)
    # Writers ring waiting consumers over UDP after a write (mopq/doorbell.py); 0 leaves
    # consumers to poll (once a second), e.g. where UDP between hosts is filtered.
    rings: bool = setting("MOPQ_RINGS", True, boolean)


def settings() -> Settings:
    """The current settings (re-read each call, so tests can change the env)."""
    return Settings.from_env()
