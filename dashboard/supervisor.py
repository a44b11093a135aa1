"""``mopq run``: the whole local stack in one command, stopped by one Ctrl-C.

It starts the embedded engine (H2 storage under ``var/engine`` in the current
folder) unless
``MOPQ_MONGODB_URI`` is set, then a collector, a scheduler (``mopq schedule``,
which fires the schedules defined on the dashboard) and the dashboard under
gunicorn as child processes that inherit the URI. If any child dies, or on SIGINT /
SIGTERM, every child is stopped and the engine last, gracefully, so its data
is flushed and is there at the next run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

from mopq.config import settings
from mopq.engine import Engine

DEFAULT_ENGINE_PORT = 27017
CHILD_STOP_SECONDS = 10.0


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _holder(port: int) -> str:
    """Who listens on ``port``, when this machine lets us see it ("" otherwise)."""
    try:
        for connection in psutil.net_connections(kind="tcp"):
            if connection.status == psutil.CONN_LISTEN and connection.laddr \
                    and connection.laddr.port == port and connection.pid:
                process = psutil.Process(connection.pid)
                return f" by {process.name()} (pid {connection.pid})"
    except (psutil.Error, OSError):
        pass
    return ""


def port_taken(what: str, host: str, port: int, how: str) -> str | None:
    """Why ``port`` cannot be used, with ``how`` to pick another; None when it is free.

    ``how`` names the other port as ``{port}``: "make run PORT={port}".
    """
    if _port_free(host, port):
        return None
    return (f"mopq: the {what} port {port} on {host} is taken{_holder(port)}. Stop that, or pick "
            f"another: {how.format(port=port + 1)}.")


def gunicorn_command() -> list[str]:
    """gunicorn serving the dashboard with its settings, from wherever it runs."""
    return [sys.executable, "-m", "gunicorn", "-c", "python:mopq.dashboard.gunicorn_config",
            "mopq.dashboard:create_app()"]


def _stop_children(children: list[subprocess.Popen]) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + CHILD_STOP_SECONDS
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def run(host: str = "127.0.0.1", port: int = 8000, data: str | None = None,
        engine_port: int | None = None, collector: bool = True) -> int:
    """Run engine (unless a URI is set), collector and dashboard until interrupted.

    Returns 0 after Ctrl-C, 1 if a child died, 2 if a port is taken.
    """
    engine: Engine | None = None
    uri = settings().mongodb_uri
    problem = port_taken("dashboard", host, port,
                         "make run PORT={port} (or mopq run --port {port})")
    if uri is None and engine_port:
        problem = problem or port_taken(
            "engine", "127.0.0.1", engine_port,
            "make run ENGINE_PORT={port} (or mopq run --engine-port {port}; 0 picks a free one)")
    if problem:
        print(problem, file=sys.stderr, flush=True)
        return 2
    if uri is None:
        data_dir = Path(data) if data else Path("var") / "engine"
        data_dir.mkdir(parents=True, exist_ok=True)
        if engine_port is None:
            engine_port = DEFAULT_ENGINE_PORT if _port_free("127.0.0.1", DEFAULT_ENGINE_PORT) else 0
        engine = Engine(port=engine_port, data=data_dir)
        uri = engine.start()
        print(f"mopq: embedded engine at {uri} (data in {data_dir})", flush=True)
        print(f"mopq: services reach it with  export MOPQ_MONGODB_URI={uri}", flush=True)
    else:
        print(f"mopq: using MOPQ_MONGODB_URI={uri}", flush=True)

    env = dict(os.environ, MOPQ_MONGODB_URI=uri, MOPQ_BIND=f"{host}:{port}")
    children: dict[str, subprocess.Popen] = {}
    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if collector:
            children["the collector"] = subprocess.Popen(
                [sys.executable, "-m", "mopq", "collect"], env=env)
        children["the scheduler"] = subprocess.Popen(
            [sys.executable, "-m", "mopq", "schedule"], env=env)
        children["the dashboard (gunicorn)"] = subprocess.Popen(gunicorn_command(), env=env)
        print(f"mopq: dashboard on http://{host}:{port}/ (Ctrl-C stops everything)", flush=True)
        while not stopping:
            for name, child in children.items():
                if child.poll() is not None:
                    print(f"mopq: {name} exited with code {child.returncode} (its own message "
                          "is above); stopping everything", file=sys.stderr, flush=True)
                    stopping = True
            time.sleep(0.2)
    finally:
        _stop_children(list(children.values()))
        if engine is not None:
            engine.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print("mopq: stopped", flush=True)
    failed = any(child.returncode not in (0, -signal.SIGTERM) for child in children.values())
    return 1 if failed else 0
