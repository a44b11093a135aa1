"""What a producer or worker installs: the library alone, without Flask or the dashboard.

A wheel of the project is installed into a fresh virtualenv without extras
(``pip install mopq``); there, against the test's engine, a service writes a
message, a ``Worker`` handles it and a collector counts it, with no Flask,
Socket.IO, plotly, gunicorn or pydantic installed at all. The ``mopq``
command still lists every part's commands, and the dashboard's say what to
install.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SERVICE = """
import importlib.util, sys, threading
for name in ("flask", "flask_socketio", "plotly", "gunicorn", "pydantic"):
    assert importlib.util.find_spec(name) is None, name + " is installed"
from mopq import Queue, Worker, emit, flush
from mopq.collectors import Collector
from mopq.collectors.stats import read_stats

queue = Queue("light")
queue.write({"n": 1})
done = threading.Event()
worker = Worker(["light"], lambda message: done.set(), poll_interval=0.05)
worker.start()
assert done.wait(30), "the worker did not handle the message"
worker.stop(timeout=30)
emit("light.event", 2)
assert flush(10)
collector = Collector(monitor=False)
collector.partitions.rebalance({})
while collector.step().applied:
    pass
row = read_stats(queue.db)["queues"]["light"]
assert (row["written"], row["done"]) == (1, 1), row
print("light install ok")
"""


@pytest.fixture(scope="module")
def light_venv(tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("light")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                            str(where / "wheels"), str(ROOT)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    [wheel] = (where / "wheels").glob("mopq-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(where / "venv")], check=True, timeout=120)
    python = where / "venv" / "bin" / "python"
    installed = subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheel)],
                               capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-2000:]
    return where / "venv"


def test_the_library_alone_writes_works_and_counts(light_venv, engine_uri, db_name):
    env = {**os.environ, "MOPQ_MONGODB_URI": engine_uri, "MOPQ_DATABASE": db_name}
    result = subprocess.run([str(light_venv / "bin" / "python"), "-c", SERVICE], env=env,
                            cwd="/", capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "light install ok" in result.stdout


def test_the_command_knows_every_part_and_says_what_to_install(light_venv):
    mopq = str(light_venv / "bin" / "mopq")
    listed = subprocess.run([mopq, "--help"], capture_output=True, text=True, timeout=60)
    for command in ("worker", "collect", "stats", "serve", "run", "demo"):
        assert command in listed.stdout, command
    serve = subprocess.run([mopq, "serve"], capture_output=True, text=True, timeout=60)
    assert serve.returncode == 2
    assert "pip install 'mopq[dashboard]'" in serve.stderr
