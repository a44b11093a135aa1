"""The dashboard's settings, read from the environment in one place.

Who may read and act (tokens, users), the secret that signs CSRF tokens,
which host names and origins are served (DNS rebinding and cross-site
WebSocket hijacking are refused), whether a TLS proxy is in front, and how
gunicorn runs it. Each default is written once, as the field's default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from mopq.config import ConfigError, Env, count, seconds, text, words

# Threads of a dashboard process kept for plain HTTP whatever the live pages hold.
LIVE_THREAD_RESERVE = 20
DEFAULT_PORT = 8000
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class DashboardSettings:
    read_token: str | None = None
    admin_token: str | None = None
    basic_auth_users: str | None = None
    admin_users: str | None = None
    # Signs the CSRF tokens. Unset: gunicorn.conf.py draws one for all workers of
    # an instance; set it when several instances serve one site.
    secret_key: str | None = None
    # host:port gunicorn binds (MOPQ_BIND; `mopq serve --host/--port` set it).
    bind: str = f"127.0.0.1:{DEFAULT_PORT}"
    # Host names answered besides the loopback names and the bind address; a
    # leading dot admits subdomains (.example.com).
    allowed_hosts: tuple[str, ...] = ()
    # Origins (scheme://host[:port]) whose pages may open the live socket,
    # besides the dashboard's own.
    allowed_origins: tuple[str, ...] = ()
    # Proxies in front that set X-Forwarded-For/-Proto/-Host/-Port (0: none trusted).
    trusted_proxies: int = 0
    # Each dashboard process reads the stats at most this often (dashboard/stats_cache.py).
    stats_max_age_seconds: float = 1.0
    # gunicorn threads per process; each open live page holds one, so live pages
    # are refused beyond web_threads - LIVE_THREAD_RESERVE.
    web_threads: int = 300
    # gunicorn processes; they share nothing (each reads MongoDB and pushes to its
    # own pages), and two answer /api/stats at 50 connections in under 100 ms.
    web_workers: int = 2

    @classmethod
    def from_env(cls, env: Env | None = None) -> DashboardSettings:
        env = os.environ if env is None else env
        origins = words(env, "MOPQ_ALLOWED_ORIGINS")
        for origin in origins:
            if "://" not in origin or origin.endswith("/"):
                raise ConfigError(f"MOPQ_ALLOWED_ORIGINS holds {origin!r}; give origins as "
                                  "scheme://host[:port] without a path, e.g. "
                                  "https://ops.example.com")
        return cls(
            read_token=text(env, "MOPQ_READ_TOKEN"),
            admin_token=text(env, "MOPQ_ADMIN_TOKEN"),
            basic_auth_users=text(env, "MOPQ_BASIC_AUTH_USERS"),
            admin_users=text(env, "MOPQ_ADMIN_USERS"),
            secret_key=text(env, "MOPQ_SECRET_KEY"),
            bind=text(env, "MOPQ_BIND") or cls.bind,
            allowed_hosts=tuple(host.lower() for host in words(env, "MOPQ_ALLOWED_HOSTS")),
            allowed_origins=tuple(origin.lower() for origin in origins),
            trusted_proxies=count(env, "MOPQ_TRUSTED_PROXIES", cls.trusted_proxies, minimum=0),
            stats_max_age_seconds=seconds(env, "MOPQ_STATS_MAX_AGE_SECONDS",
                                          cls.stats_max_age_seconds),
            web_threads=count(env, "MOPQ_WEB_THREADS", cls.web_threads,
                              minimum=LIVE_THREAD_RESERVE + 1),
            web_workers=count(env, "MOPQ_WEB_WORKERS", cls.web_workers, minimum=1),
        )

    @property
    def bind_host(self) -> str:
        host = self.bind.rsplit(":", 1)[0] if ":" in self.bind else self.bind
        return host.strip("[]").lower()

    @property
    def live_max_clients(self) -> int:
        return self.web_threads - LIVE_THREAD_RESERVE
