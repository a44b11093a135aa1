"""Who may read the dashboard and who may act on it.

Two roles, configured separately from the environment (``mopq.config``):

* read — ``MOPQ_READ_TOKEN`` (``Authorization: Bearer <token>``) and/or
  ``MOPQ_BASIC_AUTH_USERS`` (``user:password,user2:password2``). With neither
  set, reading is open (the dashboard binds to 127.0.0.1 by default) and a
  warning is logged at start.
* admin — ``MOPQ_ADMIN_TOKEN`` and/or ``MOPQ_ADMIN_USERS`` (same forms). An
  admin may also read. With neither set, admin actions are refused with a
  message that says how to enable them.

Credentials are compared in constant time. Admin requests authenticated by
a browser (basic auth, which the browser resends by itself) must also carry
the CSRF token (double-submit: the ``mopq_csrf`` cookie, SameSite=Strict,
repeated in the ``X-CSRF-Token`` header) and must not come from another
site (``Sec-Fetch-Site``). Bearer tokens are never sent by a browser on its
own, so token-authenticated API calls need no CSRF token.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Response, current_app, g, jsonify, request

from mopq.config import Settings

log = logging.getLogger("mopq.dashboard")

READ, ADMIN = "read", "admin"
CSRF_COOKIE = "mopq_csrf"
CSRF_HEADER = "X-CSRF-Token"
REALM = 'Basic realm="mopq", charset="UTF-8"'
ENABLE_ADMIN = ("Admin actions are disabled: set MOPQ_ADMIN_TOKEN (for API calls with "
                "'Authorization: Bearer <token>') or MOPQ_ADMIN_USERS=user:password (for the "
                "browser) in the dashboard's environment and restart it.")


def _parse_users(raw: str | None) -> dict[str, str]:
    users: dict[str, str] = {}
    for entry in (raw or "").split(","):
        name, colon, password = entry.strip().partition(":")
        if colon and name and password:
            users[name] = password
    return users


@dataclass(frozen=True)
class Policy:
    read_token: str | None
    admin_token: str | None
    read_users: dict[str, str]
    admin_users: dict[str, str]

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(settings.read_token, settings.admin_token,
                   _parse_users(settings.basic_auth_users), _parse_users(settings.admin_users))

    @property
    def read_open(self) -> bool:
        return not (self.read_token or self.read_users or self.admin_token or self.admin_users)

    @property
    def admin_enabled(self) -> bool:
        return bool(self.admin_token or self.admin_users)


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


@dataclass(frozen=True)
class Identity:
    role: str | None
    name: str
    via: str  # "token", "basic", "open" or "none"


def identify(policy: Policy, authorization: str | None) -> Identity:
    """The role the request's credentials give (None if they give none)."""
    scheme, _, value = (authorization or "").partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer" and value:
        if policy.admin_token and _same(value, policy.admin_token):
            return Identity(ADMIN, "admin-token", "token")
        if policy.read_token and _same(value, policy.read_token):
            return Identity(READ, "read-token", "token")
    if scheme == "basic" and value:
        try:
            name, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            name, password = "", ""
        for users, role in ((policy.admin_users, ADMIN), (policy.read_users, READ)):
            expected = users.get(name)
            if expected is not None and _same(password, expected):
                return Identity(role, name, "basic")
    if policy.read_open:
        return Identity(READ, "anonymous", "open")
    return Identity(None, "anonymous", "none")


def policy() -> Policy:
    return current_app.extensions["mopq_auth"]


def current_identity() -> Identity:
    if "mopq_identity" not in g:
        g.mopq_identity = identify(policy(), request.headers.get("Authorization"))
    return g.mopq_identity


def _json_error(status: int, message: str) -> Response:
    response = jsonify({"error": message})
    response.status_code = status
    return response


def unauthorized() -> Response:
    response = _json_error(401, "Authentication required: use HTTP basic auth or "
                                "'Authorization: Bearer <token>'.")
    response.headers["WWW-Authenticate"] = REALM
    return response


def csrf_token() -> str:
    """The token pages put in ``<meta name="csrf-token">`` and send back in the header."""
    if "mopq_csrf" not in g:
        g.mopq_csrf = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(24)
    return g.mopq_csrf


def set_csrf_cookie(response: Response) -> Response:
    if "mopq_csrf" in g and request.cookies.get(CSRF_COOKIE) != g.mopq_csrf:
        response.set_cookie(CSRF_COOKIE, g.mopq_csrf, httponly=True, samesite="Strict",
                            secure=request.is_secure, path="/")
    return response


def csrf_problem() -> str | None:
    """Why a browser-authenticated state-changing request is refused, or None."""
    site = request.headers.get("Sec-Fetch-Site")
    if site and site not in ("same-origin", "none"):
        return "cross-site requests may not change anything"
    cookie = request.cookies.get(CSRF_COOKIE)
    header = request.headers.get(CSRF_HEADER)
    if not cookie or not header or not _same(header, cookie):
        return (f"missing or wrong CSRF token: send the page's csrf-token in the {CSRF_HEADER} "
                "header")
    return None


def require_read(view: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if current_identity().role is None:
            return unauthorized()
        return view(*args, **kwargs)
    return wrapper


def require_admin(view: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not policy().admin_enabled:
            return _json_error(403, ENABLE_ADMIN)
        identity = current_identity()
        if identity.role != ADMIN:
            if identity.via in ("open", "none"):
                return unauthorized()
            return _json_error(403, f"{identity.name} may read but not act; admin "
                                    "credentials are needed.")
        if identity.via == "basic":
            problem = csrf_problem()
            if problem:
                return _json_error(403, problem)
        return view(*args, **kwargs)
    return wrapper


def socket_allowed(authorization: str | None, auth: dict[str, Any] | None) -> bool:
    """Socket.IO connections follow the same read rule (header, or auth={token})."""
    token = (auth or {}).get("token") if isinstance(auth, dict) else None
    if isinstance(token, str) and token:
        authorization = f"Bearer {token}"
    return identify(policy(), authorization).role is not None


def init_app(app: Any, settings: Settings) -> None:
    current = Policy.from_settings(settings)
    app.extensions["mopq_auth"] = current
    app.after_request(set_csrf_cookie)
    app.context_processor(lambda: {"csrf_token": csrf_token, "identity": current_identity,
                                   "admin_enabled": current.admin_enabled})
    if current.read_open:
        log.warning("mopq dashboard: no credentials configured, so anyone who can reach it "
                    "may read it; set MOPQ_BASIC_AUTH_USERS or MOPQ_READ_TOKEN to restrict. "
                    "Admin actions stay disabled until MOPQ_ADMIN_USERS or MOPQ_ADMIN_TOKEN "
                    "is set.")
