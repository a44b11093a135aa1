"""Who may use the HTTP queue: producer and consumer tokens, each limited to queues.

Separate from the dashboard's read and admin credentials (``dashboard.auth``):
a service that writes orders gets a producer token for ``orders`` and can
neither consume, nor read the dashboard, nor act as an admin; a consumer
token likewise. Configured from the environment, one entry per token::

    MOPQ_PRODUCER_TOKENS="orders-api=Zx9...@orders|emails, billing=Qr2..."
    MOPQ_CONSUMER_TOKENS="mailer=Ab7...@emails"

``name=token`` admits every queue; ``@q1|q2`` limits it to those. The name
identifies the caller in errors and in ``leased_by`` (``http:<name>``).
Tokens are sent as ``Authorization: Bearer <token>`` and compared in
constant time. With no token of a kind configured, that half of the API is
refused with a message that says how to enable it.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

from flask import Response, current_app, g, jsonify, request

from mopq.config import ConfigError
from mopq.dashboard import auth
from mopq.dashboard.settings import DashboardSettings

PRODUCER, CONSUMER = "producer", "consumer"
VARIABLES = {PRODUCER: "MOPQ_PRODUCER_TOKENS", CONSUMER: "MOPQ_CONSUMER_TOKENS"}
WHAT = {PRODUCER: "write to", CONSUMER: "consume from"}


@dataclass(frozen=True)
class Grant:
    name: str
    token: str
    queues: frozenset[str] | None  # None: every queue

    def admits(self, queue: str) -> bool:
        return self.queues is None or queue in self.queues


def parse(raw: str | None, variable: str) -> tuple[Grant, ...]:
    """``name=token[@queue|queue...]`` entries, comma-separated; ConfigError if malformed."""
    grants = []
    for entry in (raw or "").split(","):
        entry = entry.strip()
        if not entry:
            continue
        name, equals, rest = entry.partition("=")
        token, at, queues = rest.partition("@")
        names = frozenset(q.strip() for q in queues.split("|") if q.strip()) if at else None
        if not equals or not name.strip() or len(token.strip()) < 16 or (at and not names):
            raise ConfigError(f"{variable} holds {entry[:40]!r}…; each entry is "
                              "name=token or name=token@queue|queue, with a token of at least "
                              "16 characters (python -c 'import secrets; "
                              "print(secrets.token_urlsafe(24))' makes one)")
        grants.append(Grant(name.strip(), token.strip(), names))
    return tuple(grants)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class Grants:
    producers: tuple[Grant, ...]
    consumers: tuple[Grant, ...]
    # Each role's grants by their token's SHA-256, so a request finds its grant in one
    # lookup; the token is then still compared in constant time (a digest says nothing
    # usable about a token it does not match).
    _by_digest: dict[str, dict[bytes, Grant]] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for role, grants in ((PRODUCER, self.producers), (CONSUMER, self.consumers)):
            self._by_digest[role] = {_digest(grant.token): grant for grant in grants}

    @classmethod
    def from_settings(cls, settings: DashboardSettings) -> Grants:
        return cls(parse(settings.producer_tokens, VARIABLES[PRODUCER]),
                   parse(settings.consumer_tokens, VARIABLES[CONSUMER]))

    def of(self, role: str) -> tuple[Grant, ...]:
        return self.producers if role == PRODUCER else self.consumers

    def holding(self, role: str, token: str) -> Grant | None:
        """The grant of ``role`` whose token is ``token``, if any."""
        found = self._by_digest[role].get(_digest(token))
        if found is not None and hmac.compare_digest(token.encode(), found.token.encode()):
            return found
        return None


def init_app(app: object, settings: DashboardSettings) -> None:
    app.extensions["mopq_grants"] = Grants.from_settings(settings)  # type: ignore[attr-defined]


def _grants() -> Grants:
    return current_app.extensions["mopq_grants"]


def grant(role: str) -> Grant | None:
    """The grant of ``role`` this request's bearer token carries, if any."""
    cache = g.setdefault("mopq_grants", {})
    if role not in cache:
        scheme, _, token = (request.headers.get("Authorization") or "").partition(" ")
        cache[role] = _grants().holding(role, token) \
            if scheme.lower() == "bearer" and token else None
    return cache[role]


def _error(status: int, message: str) -> Response:
    response = jsonify({"error": message})
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="mopq"'
    return response


def refuse(role: str) -> Response | None:
    """Why this request may not act as ``role`` at all, or None."""
    if not _grants().of(role):
        return _error(403, f"The HTTP queue's {role} half is disabled: set "
                           f"{VARIABLES[role]}=name=token[@queue|...] in the dashboard's "
                           "environment and restart it.")
    if grant(role) is None:
        if request.headers.get("Authorization"):
            return _error(403, f"these credentials may not {WHAT[role]} queues; a {role} "
                               f"token ({VARIABLES[role]}) is needed.")
        return _error(401, f"a {role} token is needed: 'Authorization: Bearer <token>'.")
    return None


def refuse_queue(role: str, queue: str) -> Response | None:
    """Why this request's ``role`` grant does not admit ``queue``, or None."""
    held = grant(role)
    if held is None or held.admits(queue):
        return None
    return _error(403, f"{held.name} may not {WHAT[role]} queue {queue!r}; it may: "
                       f"{', '.join(sorted(held.queues or ()))}.")


def refuse_outcome(queue: str) -> Response | None:
    """Who may see a message's outcome: its queue's producers and consumers, and readers."""
    for role in (PRODUCER, CONSUMER):
        held = grant(role)
        if held is not None and held.admits(queue):
            return None
    return auth.refuse_reader()
