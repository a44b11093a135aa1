"""The ``mopq`` command says what it did, what it did not do and why, and exits accordingly.

In-process (``mopq.cli.main``) against the real engine; ``mopq run``'s port
checks through the same function ``make run`` calls.
"""

from __future__ import annotations

import socket
import urllib.request

import pytest

from mopq import Queue, flush, schema
from mopq.cli import main
from mopq.dashboard.supervisor import run
from tests.helpers import free_port
from tests.live_server import live_dashboard


def _dead(queue: Queue, count: int, error: str = "boom") -> list[str]:
    queue.write_many([{"n": n} for n in range(count)])
    ids = []
    for message in queue.read(limit=count):
        message.fail(error)
        ids.append(str(message.id))
    return ids


def test_failed_says_how_many_it_shows_of_how_many(db_name, capsys):
    assert main(["failed"]) == 0
    assert "no dead messages" in capsys.readouterr().out
    _dead(Queue("cli", max_attempts=1), 3)
    assert main(["failed", "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert len([line for line in out.splitlines() if "attempts=1" in line]) == 2
    assert "2 of 3 dead message(s)" in out and "--limit 3" in out
    assert main(["failed", "--queue", "other"]) == 0
    assert "no dead messages with queue 'other'" in capsys.readouterr().out
    flush()


@pytest.mark.parametrize("limit", ["0", "-5", "10001"])
def test_failed_refuses_a_limit_it_cannot_honour(db_name, capsys, limit):
    assert main(["failed", "--limit", limit]) == 2
    assert f"--limit must be from 1 to 10000, got {limit}" in capsys.readouterr().err


def test_retry_names_each_id_it_did_not_retry_and_fails(db_name, db, capsys):
    queue = Queue("cli", max_attempts=1)
    dead = _dead(queue, 2)
    pending = str(queue.write({"n": 9}))
    missing = "65f0c0ffee00000000000001"
    assert main(["retry", dead[0], pending, missing]) == 1
    captured = capsys.readouterr()
    assert "1 message(s) back to pending" in captured.out
    assert f"{pending}: pending in queue 'cli', not dead" in captured.err
    assert f"{missing}: no such message" in captured.err
    assert main(["retry", dead[1]]) == 0
    assert "1 message(s) back to pending" in capsys.readouterr().out
    assert main(["retry", "--queue", "cli"]) == 1
    assert "no dead message with queue 'cli'; nothing was retried" in capsys.readouterr().err
    assert db[schema.MESSAGES].count_documents({"state": schema.DEAD}) == 0
    flush()


def test_run_says_which_port_is_taken_and_how_to_pick_another(capsys, monkeypatch):
    monkeypatch.delenv("MOPQ_MONGODB_URI", raising=False)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert run(port=port, engine_port=free_port()) == 2
        err = capsys.readouterr().err
        assert f"dashboard port {port} on 127.0.0.1 is taken" in err
        assert f"make run PORT={port + 1}" in err and f"--port {port + 1}" in err
        assert run(port=free_port(), engine_port=port) == 2
        err = capsys.readouterr().err
        assert f"engine port {port}" in err and f"ENGINE_PORT={port + 1}" in err


def test_two_dashboards_on_one_host_stand_alone(engine_uri, db_name, tmp_path, monkeypatch):
    """gunicorn's control socket is one file per user: a second instance must not share it."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    with live_dashboard(engine_uri, db_name, tmp_path) as first, \
            live_dashboard(engine_uri, db_name, tmp_path) as second:
        for url in (first, second):
            with urllib.request.urlopen(url + "/healthz", timeout=10) as answer:
                assert answer.status == 200
        # Shared, the second would take over (and on its stop remove) the first's socket.
        assert not list(tmp_path.rglob("gunicorn.ctl"))
