"""What every answer carries and what no request gets past.

* Headers: every page, API answer and Socket.IO polling response carries the
  same security headers (no inline scripts or styles anywhere, so the
  Content-Security-Policy forbids them; ``connect-src`` names the dashboard's
  own origin, for its websocket too; nothing is cached or sniffed).
* Host names (DNS rebinding): a request whose ``Host`` is not one the
  dashboard serves is refused with 400 before any handler, Flask's or
  Socket.IO's, runs. Served: the loopback names, the address gunicorn binds
  (with every name and address of this machine when it binds all
  interfaces), and ``MOPQ_ALLOWED_HOSTS``.
* Origins (cross-site WebSocket hijacking): only pages of the dashboard's own
  origin, or of ``MOPQ_ALLOWED_ORIGINS``, may open the live socket.
* Proxies: with ``MOPQ_TRUSTED_PROXIES=n``, the ``X-Forwarded-*`` headers of
  the n proxies in front are honoured (scheme, host, client address), so the
  CSRF cookie is ``Secure`` behind TLS and the host check sees the public name.
"""

from __future__ import annotations

import functools
import json
import socket
from collections.abc import Callable, Iterable
from typing import Any

import psutil
from flask import Flask, Response, current_app, request
from werkzeug.middleware.proxy_fix import ProxyFix

from mopq.dashboard.settings import LOOPBACK_HOSTS, DashboardSettings

WILDCARD_BINDS = ("", "0.0.0.0", "::", "*")
SOCKETIO_PATH = "/socket.io/"


def csp(host: str | None, secure: bool) -> str:
    """The policy; ``connect-src`` adds the websocket form of the dashboard's own origin."""
    websocket = f" {'wss' if secure else 'ws'}://{host}" if host else ""
    return ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            f"connect-src 'self'{websocket}; frame-ancestors 'none'; base-uri 'none'; "
            "form-action 'self'")


def header_values(host: str | None, secure: bool, javascript: bool) -> dict[str, str]:
    headers = {"Content-Security-Policy": csp(host, secure),
               "X-Content-Type-Options": "nosniff",
               "X-Frame-Options": "DENY",
               "Referrer-Policy": "same-origin"}
    if not javascript:
        headers["Cache-Control"] = "no-store"
    return headers


@functools.lru_cache(maxsize=64)
def _header_items(host: str | None, secure: bool, javascript: bool) -> tuple[tuple[str, str], ...]:
    """``header_values`` built once per host and kind (only hosts HostGuard admits get here)."""
    return tuple(header_values(host, secure, javascript).items())


def _flask_headers(response: Response) -> Response:
    """Add each security header the view did not set itself, in one pass over the headers."""
    javascript = response.mimetype == "application/javascript"
    present = {name.lower() for name in response.headers.keys()}
    response.headers.extend([(name, value) for name, value
                             in _header_items(request.host, request.is_secure, javascript)
                             if name.lower() not in present])
    return response


def host_name(host_header: str) -> str:
    """``Host`` without its port, lower case, brackets and trailing dot removed."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host[1:]
    return host.rsplit(":", 1)[0].rstrip(".") if host.count(":") == 1 else host.rstrip(".")


def served_hosts(current: DashboardSettings) -> tuple[str, ...]:
    """Every host name the dashboard answers to (a leading dot admits subdomains)."""
    names = [*LOOPBACK_HOSTS, *current.allowed_hosts]
    if current.bind_host in WILDCARD_BINDS:
        names += [socket.gethostname().lower(), socket.getfqdn().lower()]
        try:
            names += [address.address.split("%")[0].lower()
                      for addresses in psutil.net_if_addrs().values() for address in addresses
                      if address.family in (socket.AF_INET, socket.AF_INET6)]
        except (OSError, psutil.Error):
            pass
    else:
        names.append(current.bind_host)
    return tuple(dict.fromkeys(names))


def host_allowed(host: str, served: Iterable[str]) -> bool:
    for name in served:
        if host == name or (name.startswith(".") and (host.endswith(name) or host == name[1:])):
            return True
    return False


class HostGuard:
    """WSGI middleware: 400 for a ``Host`` the dashboard does not serve, before anything runs."""

    def __init__(self, app: Callable[..., Any], served: tuple[str, ...]) -> None:
        self.app = app
        self.served = served

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        given = environ.get("HTTP_HOST") or environ.get("SERVER_NAME") or ""
        if host_allowed(host_name(given), self.served):
            return self.app(environ, start_response)
        body = json.dumps({"error": f"host {given[:100]!r} is not served here",
                           "detail": "if this dashboard should answer to that name, add it "
                                     "to MOPQ_ALLOWED_HOSTS (comma-separated) and restart it",
                           "parameter": "Host"}).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                   *header_values(None, False, False).items()]
        start_response("400 Bad Request", headers)
        return [body]


class SocketHeaders:
    """WSGI middleware: Socket.IO's own answers (polling, handshakes) get the page headers.

    Every other request goes straight to ``plain`` (Flask's own ``wsgi_app``):
    Socket.IO's middleware would only pass it on, after copying the environ and
    building a class per request (about 10 us of an API answer's CPU).
    """

    def __init__(self, app: Callable[..., Any], plain: Callable[..., Any] | None = None) -> None:
        self.app = app
        self.plain = plain or app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if not environ.get("PATH_INFO", "").startswith(SOCKETIO_PATH):
            return self.plain(environ, start_response)
        secure = environ.get("wsgi.url_scheme") == "https"
        extra = header_values(environ.get("HTTP_HOST"), secure, False)

        def with_headers(status: str, headers: list[tuple[str, str]], *args: Any) -> Any:
            present = {name.lower() for name, _ in headers}
            headers = headers + [(name, value) for name, value in extra.items()
                                 if name.lower() not in present]
            return start_response(status, headers, *args)

        return self.app(environ, with_headers)


def origin_check(current: DashboardSettings) -> Callable[[str | None, dict[str, Any]], bool]:
    """Socket.IO's origin test: the dashboard's own origin, or one configured."""
    configured = set(current.allowed_origins)

    def allowed(origin: str | None, environ: dict[str, Any]) -> bool:
        if origin is None:
            return True  # not a browser page (a script, a test client): nothing to hijack
        own = f"{environ.get('wsgi.url_scheme', 'http')}://{environ.get('HTTP_HOST', '')}"
        return origin.lower() in (own.lower(), *configured)

    return allowed


def same_origin(origin: str) -> bool:
    """Whether an ``Origin``/``Referer`` value is this request's origin or a configured one."""
    own = f"{request.scheme}://{request.host}".lower()
    allowed = current_app.config.get("MOPQ_ALLOWED_ORIGINS", ())
    value = origin.lower()
    return value == own or value.startswith(own + "/") or value in allowed


def init_app(app: Flask, current: DashboardSettings) -> None:
    """Headers on Flask's answers; the WSGI guards around everything (call last)."""
    app.after_request(_flask_headers)
    socket_layer = app.wsgi_app  # Flask-SocketIO's middleware, around Flask's wsgi_app
    guarded: Callable[..., Any] = HostGuard(
        SocketHeaders(socket_layer, getattr(socket_layer, "wsgi_app", None)),
        served_hosts(current))
    if current.trusted_proxies:
        hops = current.trusted_proxies
        guarded = ProxyFix(guarded, x_for=hops, x_proto=hops, x_host=hops, x_port=hops)
    app.wsgi_app = guarded  # type: ignore[method-assign]
    app.config["MOPQ_ALLOWED_ORIGINS"] = current.allowed_origins
