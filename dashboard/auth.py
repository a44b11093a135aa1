"""Who may read the dashboard and who may act on it.

Two roles, configured separately from the environment (``mopq.config``):

* read — ``MOPQ_READ_TOKEN`` (``Authorization: Bearer <token>``) and/or
  ``MOPQ_BASIC_AUTH_USERS`` (``user:password,user2:password2``). With neither
  set, reading is open (the dashboard binds to 127.0.0.1 by default) and a
  warning is logged at start.
* admin — ``MOPQ_ADMIN_TOKEN`` and/or ``MOPQ_ADMIN_USERS`` (same forms). An
  admin may also read. With neither set, admin actions are refused with a
  message that says how to enable them.

Reading is open exactly when no read credential (``MOPQ_READ_TOKEN``,
``MOPQ_BASIC_AUTH_USERS``) is set: admin credentials protect acting, never
reading. Credentials are compared in constant time.

CSRF: admin requests authenticated by a browser (basic auth, which the
browser resends by itself) must carry the page's CSRF token in the
``X-CSRF-Token`` header, equal to the ``mopq_csrf`` cookie (SameSite=Strict,
``Secure`` over HTTPS). The token is signed with the dashboard's secret,
names the user it was made for and expires after ``CSRF_MAX_AGE_SECONDS``,
so a pair an attacker makes up, or one of another user, is refused. Such
requests must also come from the dashboard's own pages: ``Sec-Fetch-Site``
same-origin, or, from browsers that do not send it, an ``Origin`` (or
``Referer``) of the dashboard's own origin. Bearer tokens are never sent by a
browser on its own, so token-authenticated API calls need no CSRF token.
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
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from mopq.dashboard.security import same_origin
from mopq.dashboard.settings import DashboardSettings

log = logging.getLogger("mopq.dashboard")

READ, ADMIN = "read", "admin"
CSRF_COOKIE = "mopq_csrf"
CSRF_HEADER = "X-CSRF-Token"
CSRF_MAX_AGE_SECONDS = 12 * 3600
CSRF_SALT = "mopq-csrf"
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
    def from_settings(cls, settings: DashboardSettings) -> Policy:
        return cls(settings.read_token, settings.admin_token,
                   _parse_users(settings.basic_auth_users), _parse_users(settings.admin_users))

    @property
    def read_open(self) -> bool:
        return not (self.read_token or self.read_users)

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


def _signer() -> URLSafeTimedSerializer:
    return current_app.extensions["mopq_csrf_signer"]


def _token_user(token: str | None) -> str | None:
    """The user a valid, unexpired token was made for; None otherwise."""
    if not token:
        return None
    try:
        payload = _signer().loads(token, max_age=CSRF_MAX_AGE_SECONDS)
    except (BadSignature, SignatureExpired):
        return None
    return payload.get("u") if isinstance(payload, dict) else None


def csrf_token() -> str:
    """The token pages put in ``<meta name="csrf-token">`` and send back in the header.

    The cookie's token is reused while it is valid for this user; otherwise a
    new one is made (and set as the cookie by ``set_csrf_cookie``).
    """
    if "mopq_csrf" not in g:
        name = current_identity().name
        cookie = request.cookies.get(CSRF_COOKIE)
        if _token_user(cookie) == name:
            g.mopq_csrf = cookie
        else:
            g.mopq_csrf = _signer().dumps({"u": name, "n": secrets.token_urlsafe(12)})
    return g.mopq_csrf


def set_csrf_cookie(response: Response) -> Response:
    if "mopq_csrf" in g and request.cookies.get(CSRF_COOKIE) != g.mopq_csrf:
        response.set_cookie(CSRF_COOKIE, g.mopq_csrf, httponly=True, samesite="Strict",
                            secure=request.is_secure, path="/", max_age=CSRF_MAX_AGE_SECONDS)
    return response


def csrf_problem() -> str | None:
    """Why a browser-authenticated state-changing request is refused, or None."""
    site = request.headers.get("Sec-Fetch-Site")
    if site and site not in ("same-origin", "none"):
        return "cross-site requests may not change anything"
    if not site:
        origin = request.headers.get("Origin") or request.headers.get("Referer")
        if origin and not same_origin(origin):
            return f"requests from {origin[:80]!r} may not change anything here"
    cookie = request.cookies.get(CSRF_COOKIE)
    header = request.headers.get(CSRF_HEADER)
    if not cookie or not header or not _same(header, cookie):
        return (f"missing or wrong CSRF token: send the page's csrf-token in the {CSRF_HEADER} "
                "header")
    user = _token_user(header)
    if user is None:
        return ("the CSRF token is not one this dashboard made, or it expired (they last "
                f"{CSRF_MAX_AGE_SECONDS // 3600} hours): reload the page")
    if user != current_identity().name:
        return "the CSRF token was made for another user: reload the page"
    return None


def refuse_reader() -> Response | None:
    """The answer to a request that may not read, or None if it may."""
    identity = current_identity()
    if identity.role is None:
        if identity.via == "none" and request.headers.get("Authorization", "").lower() \
                .startswith("bearer "):
            return _json_error(403, "this token may not read the dashboard (a producer or "
                                    "consumer token is for the queue API only).")
        return unauthorized()
    return None


def refuse_admin() -> Response | None:
    """The answer to a request that may not act (or lacks its CSRF token), or None."""
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
    return None


def require_read(view: Callable[..., Any]) -> Callable[..., Any]:
    """For pages: the view runs only for a request that may read."""
    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return refuse_reader() or view(*args, **kwargs)
    return wrapper


def socket_allowed(authorization: str | None, auth: dict[str, Any] | None) -> bool:
    """Socket.IO connections follow the same read rule (header, or auth={token})."""
    token = (auth or {}).get("token") if isinstance(auth, dict) else None
    if isinstance(token, str) and token:
        authorization = f"Bearer {token}"
    return identify(policy(), authorization).role is not None


def init_app(app: Any, settings: DashboardSettings) -> None:
    current = Policy.from_settings(settings)
    app.extensions["mopq_auth"] = current
    secret = settings.secret_key or secrets.token_urlsafe(32)
    app.extensions["mopq_csrf_signer"] = URLSafeTimedSerializer(secret, salt=CSRF_SALT)
    app.after_request(set_csrf_cookie)
    app.context_processor(lambda: {"csrf_token": csrf_token, "identity": current_identity,
                                   "admin_enabled": current.admin_enabled,
                                   "admin_sign_in": bool(current.admin_users)})
    if current.read_open:
        log.warning("mopq dashboard: no read credential configured, so anyone who can reach it "
                    "may read it; set MOPQ_BASIC_AUTH_USERS or MOPQ_READ_TOKEN to restrict. %s",
                    "Admin actions need MOPQ_ADMIN_USERS or MOPQ_ADMIN_TOKEN."
                    if current.admin_enabled else
                    "Admin actions stay disabled until MOPQ_ADMIN_USERS or MOPQ_ADMIN_TOKEN "
                    "is set.")
