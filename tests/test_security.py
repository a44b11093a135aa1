"""What the dashboard refuses before any handler runs, and the headers every answer carries.

Through Flask's test client (the whole WSGI stack, Socket.IO's middleware
included) against the real engine: DNS rebinding (a Host the dashboard does
not serve), cross-site WebSocket hijacking (a foreign Origin on the live
socket's handshake), the Content-Security-Policy's connect-src, Socket.IO's
own answers carrying the page headers, and which credentials close what.
"""

from __future__ import annotations

import base64

import pytest

from mopq.dashboard import create_app

AUTH_ENV = ("MOPQ_ADMIN_TOKEN", "MOPQ_READ_TOKEN", "MOPQ_BASIC_AUTH_USERS", "MOPQ_ADMIN_USERS",
            "MOPQ_ALLOWED_HOSTS", "MOPQ_ALLOWED_ORIGINS", "MOPQ_BIND", "MOPQ_TRUSTED_PROXIES")
HANDSHAKE = "/socket.io/?EIO=4&transport=polling"
PATHS = ["/", "/api/stats", "/healthz", "/openapi.json", "/vendor/plotly.min.js", HANDSHAKE]


@pytest.fixture
def make_client(engine_uri, db_name, monkeypatch):
    def build(**env: str):
        for name in AUTH_ENV:
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        app = create_app({"MOPQ_MONGODB_URI": engine_uri, "MOPQ_DATABASE": db_name,
                          "TESTING": True})
        return app.test_client()
    return build


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.mark.parametrize("path", PATHS)
def test_a_host_not_served_is_refused_before_any_handler(make_client, path):
    client = make_client()
    for host in ("evil.example", "attacker.test:8000", "127.0.0.1.evil.example",
                 "localhost.evil.example"):
        response = client.get(path, headers={"Host": host})
        assert response.status_code == 400, (path, host)
        answer = response.get_json()
        assert "MOPQ_ALLOWED_HOSTS" in answer["detail"] and answer["parameter"] == "Host"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    for host in ("localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000", "LOCALHOST."):
        assert client.get(path, headers={"Host": host}).status_code == 200, (path, host)


def test_an_admin_action_from_a_rebound_host_changes_nothing(make_client, db):
    client = make_client(MOPQ_ADMIN_TOKEN="t")
    response = client.post("/api/queues/q/purge", json={"confirm": "q"},
                           headers={"Host": "evil.example", "Authorization": "Bearer t"})
    assert response.status_code == 400
    assert db.audit.count_documents({}) == 0  # the handler never ran


def test_allowed_hosts_and_the_bind_address_add_names(make_client):
    client = make_client(MOPQ_ALLOWED_HOSTS="ops.example.com,.corp.example",
                         MOPQ_BIND="10.1.2.3:9000")
    for host in ("ops.example.com", "a.corp.example", "corp.example", "10.1.2.3:9000"):
        assert client.get("/healthz", headers={"Host": host}).status_code == 200, host
    for host in ("example.com", "xops.example.com", "corp.example.evil"):
        assert client.get("/healthz", headers={"Host": host}).status_code == 400, host


def test_a_dashboard_bound_to_every_interface_answers_to_this_machine(make_client):
    import socket

    client = make_client(MOPQ_BIND="0.0.0.0:8000")
    assert client.get("/healthz", headers={"Host": socket.gethostname()}).status_code == 200
    assert client.get("/healthz", headers={"Host": "evil.example"}).status_code == 400


def test_csp_connect_src_names_only_the_dashboards_own_origin(make_client):
    policy = make_client().get("/", headers={"Host": "127.0.0.1:8000"}).headers[
        "Content-Security-Policy"]
    connect = next(part for part in policy.split(";") if "connect-src" in part).split()
    assert connect == ["connect-src", "'self'", "ws://127.0.0.1:8000"]


def test_socketio_answers_carry_the_page_headers(make_client):
    response = make_client().get(HANDSHAKE)
    assert response.status_code == 200 and response.get_data(as_text=True).startswith("0{")
    for name in ("Content-Security-Policy", "X-Content-Type-Options", "X-Frame-Options",
                 "Referrer-Policy", "Cache-Control"):
        assert response.headers.get(name), name
    assert response.headers["Cache-Control"] == "no-store"


def test_live_socket_refuses_pages_of_other_origins(make_client):
    client = make_client()
    for origin in ("http://evil.example", "http://localhost:9999", "http://127.0.0.1"):
        response = client.get(HANDSHAKE, headers={"Origin": origin})
        assert response.status_code == 400, origin
        assert "origin" in response.get_data(as_text=True).lower()
    assert client.get(HANDSHAKE, headers={"Origin": "http://localhost"}).status_code == 200
    configured = make_client(MOPQ_ALLOWED_ORIGINS="https://ops.example.com")
    assert configured.get(HANDSHAKE, headers={"Origin": "https://ops.example.com"}
                          ).status_code == 200
    assert configured.get(HANDSHAKE, headers={"Origin": "http://evil.example"}
                          ).status_code == 400


CASES = [
    # (settings, anonymous reads?, admin token acts?, page shows sign-in?)
    ({}, True, False, False),
    ({"MOPQ_ADMIN_TOKEN": "adm"}, True, True, False),
    ({"MOPQ_ADMIN_USERS": "ops:pw"}, True, False, True),
    ({"MOPQ_READ_TOKEN": "rd"}, False, False, False),
    ({"MOPQ_BASIC_AUTH_USERS": "ann:pw"}, False, False, False),
    ({"MOPQ_READ_TOKEN": "rd", "MOPQ_ADMIN_TOKEN": "adm"}, False, True, False),
]


@pytest.mark.parametrize(("env", "reads", "acts", "sign_in"), CASES)
def test_what_each_combination_of_credentials_opens(make_client, db, env, reads, acts,
                                                      sign_in):
    """The README's table: read credentials close reading; admin ones never do."""
    client = make_client(**env)
    assert client.get("/api/stats").status_code == (200 if reads else 401)
    purge = client.post("/api/queues/q/purge", json={"confirm": "q"},
                        headers={"Authorization": "Bearer adm"})
    assert (purge.status_code == 200) == acts, purge.get_json()
    if reads:
        page = client.get("/").get_data(as_text=True)
        assert ("sign in</a>" in page) == sign_in


def test_login_challenges_then_returns_to_the_page(make_client):
    client = make_client(MOPQ_ADMIN_USERS="ops:pw")
    challenge = client.get("/login?next=/failed")
    assert challenge.status_code == 401 and "Basic" in challenge.headers["WWW-Authenticate"]
    back = client.get("/login?next=/failed", headers=_basic("ops", "pw"))
    assert back.status_code == 302 and back.headers["Location"] == "/failed"
    away = client.get("/login?next=//evil.example/x", headers=_basic("ops", "pw"))
    assert away.headers["Location"] == "/"
    assert make_client().get("/login").status_code == 403  # no admin configured: says how
