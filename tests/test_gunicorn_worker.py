"""The dashboard's gunicorn worker serves a busy keep-alive connection on one thread.

A real gunicorn runs ``tests.counting_worker`` (the dashboard's worker class,
counting each time a connection is handed to the thread pool) on a free
loopback port; the client is ``http.client`` with one keep-alive connection,
as a queue client over HTTP would use.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
REQUESTS = 30


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = free_port()
    log = tmp_path_factory.mktemp("gunicorn") / "gunicorn.log"
    with open(log, "wb") as output:
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--worker-class",
             "tests.counting_worker.CountingWorker", "--workers", "1", "--threads", "8",
             "--bind", f"127.0.0.1:{port}", "--no-control-socket",
             "tests.counting_worker:app"],
            cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _answers(port), timeout=30, message=f"gunicorn on {port} ({log})")
        yield port
    finally:
        server.terminate()
        server.wait(timeout=30)


def _post(connection: http.client.HTTPConnection, body: bytes) -> dict:
    connection.request("POST", "/", body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200
    return json.loads(response.read())


def test_back_to_back_requests_stay_on_the_thread_that_answered(port: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    answers = [_post(connection, b'{"n": %d}' % i) for i in range(REQUESTS)]
    connection.close()
    assert [a["received"] for a in answers] == [len(b'{"n": %d}' % i) for i in range(REQUESTS)]
    # Plain gthread hands every request of a keep-alive connection to the pool
    # (REQUESTS handoffs); here the thread that answered serves the next one.
    handoffs = answers[-1]["handed_to_pool"] - answers[0]["handed_to_pool"]
    assert handoffs <= REQUESTS // 3, f"{handoffs} of {REQUESTS - 1} went through the poller"


def test_a_quiet_keep_alive_connection_goes_back_to_the_poller_and_is_served(port: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    first = _post(connection, b"{}")
    pauses = 5
    for _ in range(pauses):
        time.sleep(0.1)  # the quiet spell under test: 20 times the worker's wait
        last = _post(connection, b'{"after": "a pause"}')
        assert last["received"] == len(b'{"after": "a pause"}')
    connection.close()
    # Each request after a pause came back through the poller: no thread waited for it.
    assert last["handed_to_pool"] - first["handed_to_pool"] >= pauses


def test_a_client_that_hangs_up_while_the_thread_waits_leaves_the_server_serving(
        port: int) -> None:
    for _ in range(3):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        _post(connection, b"{}")
        connection.close()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        # Two requests in one write: the second is read ahead with the first.
        raw.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
                    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n[1]")
        received = b""
        deadline = time.monotonic() + 10
        while received.count(b"HTTP/1.1 200") < 2 and time.monotonic() < deadline:
            received += raw.recv(65536)
    assert received.count(b"HTTP/1.1 200") == 2
    assert b'"received": 2' in received and b'"received": 3' in received
