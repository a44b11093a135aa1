"""The dashboard's settings, read from the environment in one place.

Who may read and act (tokens, users), the secret that signs CSRF tokens,
which host names and origins are served (DNS rebinding and cross-site
WebSocket hijacking are refused), whether a TLS proxy is in front, and how
gunicorn runs it. Each default is written once, as the field's default.
"""

from __future__ import annotations

from dataclasses import dataclass

from mopq.config import ConfigError, Env, FromEnvironment, at_least, seconds, setting, words

# Threads of a dashboard process kept for plain HTTP whatever the live pages hold.
LIVE_THREAD_RESERVE = 20
DEFAULT_PORT = 8000
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def _lower_words(env: Env, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(word.lower() for word in words(env, name, default))


def _origins(env: Env, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    origins = _lower_words(env, name, default)
    for origin in origins:
        if "://" not in origin or origin.endswith("/"):
            raise ConfigError(f"{name} holds {origin!r}; give origins as scheme://host[:port] "
                              "without a path, e.g. https://ops.example.com")
    return origins


@dataclass(frozen=True)
class DashboardSettings(FromEnvironment):
    read_token: str | None = setting("MOPQ_READ_TOKEN", None)
    admin_token: str | None = setting("MOPQ_ADMIN_TOKEN", None)
    basic_auth_users: str | None = setting("MOPQ_BASIC_AUTH_USERS", None)
    admin_users: str | None = setting("MOPQ_ADMIN_USERS", None)
    # The HTTP queue's producer and consumer tokens (dashboard/grants.py).
    producer_tokens: str | None = setting("MOPQ_PRODUCER_TOKENS", None)
    consumer_tokens: str | None = setting("MOPQ_CONSUMER_TOKENS", None)
    # Signs the CSRF tokens. Unset: gunicorn_config.py draws one for all workers of
    # an instance; set it when several instances serve one site.
    secret_key: str | None = setting("MOPQ_SECRET_KEY", None)
    # host:port gunicorn binds (`mopq serve --host/--port` and `mopq run` set it).
    bind: str = setting("MOPQ_BIND", f"127.0.0.1:{DEFAULT_PORT}")
    # Host names answered besides the loopback names and the bind address; a
    # leading dot admits subdomains (.example.com).
    allowed_hosts: tuple[str, ...] = setting("MOPQ_ALLOWED_HOSTS", (), _lower_words)
    # Origins (scheme://host[:port]) whose pages may open the live socket,
    # besides the dashboard's own.
    allowed_origins: tuple[str, ...] = setting("MOPQ_ALLOWED_ORIGINS", (), _origins)
    # Proxies in front that set X-Forwarded-For/-Proto/-Host/-Port (0: none trusted).
    trusted_proxies: int = setting("MOPQ_TRUSTED_PROXIES", 0, at_least(0))
    # Each dashboard process reads the stats at most this often (dashboard/stats_cache.py).
    stats_max_age_seconds: float = setting("MOPQ_STATS_MAX_AGE_SECONDS", 1.0, seconds)
    # gunicorn threads per process; each open live page holds one, so live pages
    # are refused beyond web_threads - LIVE_THREAD_RESERVE.
    web_threads: int = setting("MOPQ_WEB_THREADS", 300, at_least(LIVE_THREAD_RESERVE + 1))
    # gunicorn processes; they share nothing (each reads MongoDB and pushes to its
    # own pages), and two answer /api/stats at 50 connections in under 100 ms.
    web_workers: int = setting("MOPQ_WEB_WORKERS", 2, at_least(1))

    @property
    def bind_host(self) -> str:
        host = self.bind.rsplit(":", 1)[0] if ":" in self.bind else self.bind
        return host.strip("[]").lower()

    @property
    def live_max_clients(self) -> int:
        return self.web_threads - LIVE_THREAD_RESERVE
