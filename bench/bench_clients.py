"""The same queue three ways: the Python library, the HTTP API, the Node.js client.

Run:  .venv/bin/python bench/bench_clients.py [--quick]

Starts its own embedded engine (memory storage) unless MOPQ_MONGODB_URI is
set. Each row runs write + claim + acknowledge cycles for a fixed time
(20 s, 5 s with --quick) with 8 concurrent callers on one queue of its own,
one row after the other on the same engine:

1. the Python library in this process: 8 threads, each ``Queue.write``,
   ``Queue.read(limit=1)``, ``Message.delete``;
2. the HTTP API under gunicorn with 2 worker processes (``mopq serve``'s
   settings, loopback): 8 threads with a keep-alive connection each, doing
   ``POST …/messages``, ``POST …/claims``, ``DELETE …/messages/<id>?lease=``;
3. the Node.js client (clients/node) in one Node process: 8 concurrent loops.

Goal (issue 12): HTTP at least 0.5x the library. The Node row is shown as a
ratio to the library too. Only ratios within one run mean anything.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mopq import Queue, flush  # noqa: E402
from mopq.engine import engine_unless_configured  # noqa: E402
from tests.live_server import live_dashboard  # noqa: E402

CALLERS = 8
PRODUCER = "bench-producer-token-0123"
CONSUMER = "bench-consumer-token-0123"


def library_row(database: str, seconds: float) -> float:
    queue = Queue("lib", database=database)
    cycles = [0] * CALLERS
    until = time.monotonic() + seconds

    def loop(index: int) -> None:
        while time.monotonic() < until:
            queue.write({"n": index})
            for message in queue.read(limit=1):
                message.delete()
                cycles[index] += 1

    started = time.monotonic()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(CALLERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    flush(30)
    return sum(cycles) / elapsed


def http_row(uri: str, database: str, seconds: float) -> float:
    with tempfile.TemporaryDirectory() as logs, \
            live_dashboard(uri, database, Path(logs), workers=2,
                           MOPQ_PRODUCER_TOKENS=f"bench={PRODUCER}",
                           MOPQ_CONSUMER_TOKENS=f"bench={CONSUMER}") as url:
        host, port = url.removeprefix("http://").split(":")
        cycles = [0] * CALLERS
        until = time.monotonic() + seconds

        def call(connection, method: str, path: str, token: str, body=None) -> dict:
            headers = {"Authorization": f"Bearer {token}"}
            if body is not None:
                headers["Content-Type"] = "application/json"
            connection.request(method, path, body=json.dumps(body) if body is not None
                               else None, headers=headers)
            answer = connection.getresponse()
            data = answer.read()
            if answer.status >= 300:
                raise RuntimeError(f"{method} {path}: {answer.status} {data[:200]!r}")
            return json.loads(data)

        def loop(index: int) -> None:
            connection = http.client.HTTPConnection(host, int(port), timeout=30)
            while time.monotonic() < until:
                call(connection, "POST", "/api/queues/http/messages", PRODUCER,
                     {"body": {"n": index}})
                claimed = call(connection, "POST", "/api/queues/http/claims", CONSUMER,
                               {"limit": 1})["messages"]
                for message in claimed:
                    call(connection, "DELETE", f"/api/queues/http/messages/{message['id']}"
                         f"?lease={message['lease']}", CONSUMER)
                    cycles[index] += 1
            connection.close()

        started = time.monotonic()
        threads = [threading.Thread(target=loop, args=(i,)) for i in range(CALLERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return sum(cycles) / (time.monotonic() - started)


def node_row(uri: str, database: str, seconds: float) -> float | str:
    if shutil.which("node") is None:
        return "node is not installed"
    if not (ROOT / "clients" / "node" / "node_modules").exists():
        return "clients/node/node_modules is missing: make install"
    result = subprocess.run(["node", str(ROOT / "bench" / "node_cycles.mjs"), "node",
                             str(CALLERS), str(seconds)], capture_output=True, text=True,
                            timeout=seconds + 120,
                            env={**os.environ, "MOPQ_MONGODB_URI": uri,
                                 "MOPQ_DATABASE": database})
    if result.returncode != 0:
        return f"failed: {result.stderr.strip().splitlines()[-1:]}"
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    return answer["cycles"] / answer["seconds"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 s per row instead of 20")
    args = parser.parse_args()
    seconds = 5.0 if args.quick else 20.0
    with engine_unless_configured() as (uri, embedded):
        os.environ["MOPQ_MONGODB_URI"] = uri
        stamp = int(time.time())
        print(f"engine: {'embedded mongo-java-server (memory)' if embedded else uri}")
        print(f"cpus: {os.cpu_count()}, load average at start: "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(f"{CALLERS} concurrent callers, {seconds:.0f} s per row, write + claim + ack "
              "cycles per second")
        library = library_row(f"clients_lib_{stamp}", seconds)
        print(f"   Python library (threads)                 {library:>9.1f}")
        over_http = http_row(uri, f"clients_http_{stamp}", seconds)
        print(f"   HTTP API (2 gunicorn workers)            {over_http:>9.1f}   "
              f"{over_http / library:.2f}x the library")
        node = node_row(uri, f"clients_node_{stamp}", seconds)
        if isinstance(node, str):
            print(f"   Node.js client                           {node}")
        else:
            print(f"   Node.js client (one process)             {node:>9.1f}   "
                  f"{node / library:.2f}x the library")
        met = over_http / library >= 0.5
        print(f"goal: HTTP >= 0.5x the library: {'MET' if met else 'NOT MET'}")
        print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
