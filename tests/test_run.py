"""``mopq run`` (what ``make run`` starts) serves the page and leaves nothing behind."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import urllib.request

import psutil
import pytest

from tests.helpers import free_port, wait_until


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
