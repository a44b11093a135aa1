"""``mopq run`` (what ``make run`` starts) serves the page and leaves nothing behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.helpers import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent


def _get(url: str) -> tuple[int, str] | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except OSError:
        return None


@pytest.mark.skipif(shutil.which("java") is None, reason="Java is not installed")
def test_run_serves_the_page_and_ctrl_c_stops_everything(tmp_path, monkeypatch):
    monkeypatch.delenv("MOPQ_MONGODB_URI", raising=False)
    port = free_port()
    launcher = subprocess.Popen(
        [sys.executable, "-m", "mopq", "run", "--port", str(port), "--engine-port", "0",
         "--data", str(tmp_path / "engine")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        answer = wait_until(lambda: _get(f"http://127.0.0.1:{port}/"), timeout=90,
                            message="the dashboard to answer")
        status, page = answer
        assert status == 200
        assert "Connected to the engine" in page
        assert _get(f"http://127.0.0.1:{port}/vendor/socket.io.min.js")[0] == 200
        assert _get(f"http://127.0.0.1:{port}/vendor/plotly.min.js")[0] == 200
        family = psutil.Process(launcher.pid).children(recursive=True)
        assert any("java" in " ".join(p.cmdline()) for p in family), "engine not started"
        assert any("gunicorn" in " ".join(p.cmdline()) for p in family), "dashboard not started"
    finally:
        family = psutil.Process(launcher.pid).children(recursive=True)
        launcher.send_signal(signal.SIGINT)
        output, _ = launcher.communicate(timeout=60)
    assert launcher.returncode == 0, output
    gone, alive = psutil.wait_procs(family, timeout=15)
    assert not alive, f"left behind: {[p.cmdline() for p in alive]}"
    assert _get(f"http://127.0.0.1:{port}/") is None


@pytest.mark.parametrize("name, value, says", [
    ("MOPQ_WEB_THREADS", "5", "must be a whole number of at least 21"),
    ("MOPQ_WEB_WORKERS", "two", "must be a whole number of at least 1"),
    ("MOPQ_STATS_MAX_AGE_SECONDS", "-1", "is not a positive number of seconds"),
])
def test_bad_dashboard_settings_stop_gunicorn_with_the_reason(name, value, says):
    """gunicorn.conf.py reads mopq's settings; a bad value must say what is wrong, not crash."""
    result = subprocess.run([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
                             "--check-config", "app:app"],
                            cwd=ROOT, env={**os.environ, name: value}, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert f"{name}={value!r} {says}" in result.stdout + result.stderr
