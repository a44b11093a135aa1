"""A real dashboard under gunicorn for the browser and Socket.IO tests.

Why a real server: the live push, the websocket transport, the CSP and the
worker class only meet under gunicorn, as in production. The server is
started from the repository root exactly as ``mopq serve`` does, answers on a
free loopback port, and is stopped with every process it started.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from tests.helpers import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
AUTH_VARIABLES = ("MOPQ_READ_TOKEN", "MOPQ_ADMIN_TOKEN", "MOPQ_BASIC_AUTH_USERS",
                  "MOPQ_ADMIN_USERS")


def _answers(url: str) -> bool:
    """The server answers HTTP (a 503 from /healthz counts: the engine may be down on purpose)."""
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=10) as response:
            return response.status == 200
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


@contextmanager
def live_dashboard(uri: str, database: str, log_dir: Path, workers: int = 1,
                   **auth: str) -> Iterator[str]:
    """Run ``gunicorn app:app`` for ``database``; yield its base URL.

    ``auth`` sets the dashboard's credentials (``MOPQ_ADMIN_USERS="admin:secret"``...);
    any not given is removed from the server's environment.
    """
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key not in AUTH_VARIABLES}
    env.update(MOPQ_MONGODB_URI=uri, MOPQ_DATABASE=database, MOPQ_WEB_WORKERS=str(workers),
               **auth)
    log_path = log_dir / f"gunicorn-{port}.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
             "--bind", f"127.0.0.1:{port}", "app:app"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    family: list[psutil.Process] = []
    try:
        wait_until(lambda: server.poll() is not None or _answers(url), timeout=60,
                   message="gunicorn to answer")
        if server.poll() is not None:
            raise AssertionError(f"gunicorn exited: {log_path.read_text()[-3000:]}")
        family = psutil.Process(server.pid).children(recursive=True)
        yield url
    finally:
        left = stop_gunicorn(server, family)
        assert not left, f"gunicorn left processes behind: {[p.pid for p in left]}"


def stop_gunicorn(server: subprocess.Popen, workers: list[psutil.Process]) -> list[psutil.Process]:
    """SIGTERM the master, then kill whatever of it and ``workers`` outlives the grace time.

    Returns the workers that had to be killed (none, when gunicorn stops as it should).
    """
    if not workers and server.poll() is None:
        workers = psutil.Process(server.pid).children(recursive=True)
    server.terminate()
    try:
        server.wait(20)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    _, alive = psutil.wait_procs(workers, timeout=10)
    for process in alive:
        process.kill()
    return alive
