"""The same queue three ways: the Python library, the HTTP API, the Node.js client.

Run:  .venv/bin/python bench/bench_clients.py [--quick] [--rounds N]

Starts its own embedded engine (memory storage) unless MOPQ_MONGODB_URI is
set. Each row runs write + claim + acknowledge cycles for a fixed time
(10 s, 4 s with --quick) with 8 concurrent callers on one queue of its own,
one row after the other on the same engine, after a short warm-up of both
(the engine's JIT would otherwise favour whichever row runs later):

1. one message per cycle (the issue's measure), the Python library in this
   process: 8 threads, each ``Queue.write``, ``Queue.read(limit=1)``,
   ``Message.delete``;
2. the same over HTTP, gunicorn with 2 worker processes (``mopq serve``'s
   settings, loopback): 8 threads with a keep-alive connection each, doing
   ``POST …/messages``, ``POST …/claims``, ``DELETE …/messages/<id>?lease=``;
3. ten messages per cycle, the library: ``Queue.write_many`` of 10,
   ``Queue.read(limit=10)``, ``mopq.message.acknowledge_all`` of what it
   claimed (each one's own compare-and-set, one engine command);
4. the same over HTTP as a client that batches would: ``POST …/messages``
   with ``{"messages": [10]}``, ``POST …/claims`` with ``limit: 10``, one
   ``POST …/acknowledgements`` for what it claimed (the server calls
   ``acknowledge_all`` too);
5. the Node.js client (clients/node) in one Node process: 8 concurrent
   loops, one message per cycle, once at the end.

Rows 1-4 repeat for ``--rounds`` rounds (3 by default, 1 with --quick); each
ratio is HTTP against the library of the same round, and the medians are
reported. Rates are messages written, claimed and acknowledged per second.
Goal (issue 12): HTTP at least 0.5x the library, one message per cycle. Only
ratios within one run mean anything.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mopq import Queue, flush  # noqa: E402
from mopq.engine import engine_unless_configured  # noqa: E402
from mopq.message import acknowledge_all  # noqa: E402
from tests.live_server import live_dashboard  # noqa: E402

CALLERS = 8
BATCH = 10
PRODUCER = "bench-producer-token-0123"
CONSUMER = "bench-consumer-token-0123"


def _timed(loop: Callable[[int, float], int], seconds: float) -> float:
    """Messages per second that CALLERS threads running ``loop(index, until)`` cycled."""
    cycles = [0] * CALLERS
    until = time.monotonic() + seconds

    def run(index: int) -> None:
        cycles[index] = loop(index, until)

    started = time.monotonic()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(CALLERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(cycles) / (time.monotonic() - started)


def library_row(database: str, queue_name: str, seconds: float, batch: int = 1) -> float:
    queue = Queue(queue_name, database=database)

    def loop(index: int, until: float) -> int:
        done = 0
        while time.monotonic() < until:
            if batch == 1:
                queue.write({"n": index})
            else:
                queue.write_many([{"n": index, "i": i} for i in range(batch)])
            claimed = queue.read(limit=batch)
            if batch == 1:
                for message in claimed:
                    message.delete()
            else:
                refused = [lost for lost in acknowledge_all(claimed) if lost is not None]
                if refused:
                    raise RuntimeError(f"acknowledgements refused: {refused[:3]}")
            done += len(claimed)
        return done

    rate = _timed(loop, seconds)
    flush(30)
    return rate


class Client:
    """One caller's keep-alive connection to the HTTP API."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.connection = http.client.HTTPConnection(host, int(port), timeout=30)

    def call(self, method: str, path: str, token: str, body: object = None) -> dict:
        headers = {"Authorization": f"Bearer {token}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        self.connection.request(method, path, body=json.dumps(body) if body is not None
                                else None, headers=headers)
        answer = self.connection.getresponse()
        data = answer.read()
        if answer.status >= 300:
            raise RuntimeError(f"{method} {path}: {answer.status} {data[:200]!r}")
        return json.loads(data)


def http_row(url: str, queue_name: str, seconds: float, batch: int = 1) -> float:
    base = f"/api/queues/{queue_name}"

    def loop(index: int, until: float) -> int:
        client, done = Client(url), 0
        while time.monotonic() < until:
            if batch == 1:
                client.call("POST", f"{base}/messages", PRODUCER, {"body": {"n": index}})
            else:
                client.call("POST", f"{base}/messages", PRODUCER,
                            {"messages": [{"body": {"n": index, "i": i}} for i in range(batch)]})
            claimed = client.call("POST", f"{base}/claims", CONSUMER,
                                  {"limit": batch})["messages"]
            if batch == 1:
                for message in claimed:
                    client.call("DELETE", f"{base}/messages/{message['id']}"
                                f"?lease={message['lease']}", CONSUMER)
            elif claimed:
                answered = client.call("POST", f"{base}/acknowledgements", CONSUMER, {
                    "messages": [{"id": m["id"], "lease": m["lease"]} for m in claimed]})
                refused = [m for m in answered["messages"] if m.get("state") != "done"]
                if refused:
                    raise RuntimeError(f"acknowledgements refused: {refused[:3]}")
            done += len(claimed)
        client.connection.close()
        return done

    return _timed(loop, seconds)


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
    parser.add_argument("--quick", action="store_true", help="4 s per row, one round")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of rows 1-4 (3)")
    args = parser.parse_args()
    seconds = 4.0 if args.quick else 10.0
    rounds = args.rounds or (1 if args.quick else 3)
    with engine_unless_configured() as (uri, embedded):
        os.environ["MOPQ_MONGODB_URI"] = uri
        stamp = int(time.time())
        database = f"clients_{stamp}"
        print(f"engine: {'embedded mongo-java-server (memory)' if embedded else uri}")
        print(f"cpus: {os.cpu_count()}, load average at start: "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(f"{CALLERS} concurrent callers, {seconds:.0f} s per row, {rounds} round(s); "
              "messages written + claimed + acknowledged per second")
        ratios: dict[int, list[float]] = {1: [], BATCH: []}
        with tempfile.TemporaryDirectory() as logs, \
                live_dashboard(uri, database, Path(logs), workers=2,
                               MOPQ_PRODUCER_TOKENS=f"bench={PRODUCER}",
                               MOPQ_CONSUMER_TOKENS=f"bench={CONSUMER}") as url:
            library_row(database, "warm-lib", 2.0)
            http_row(url, "warm-http", 2.0)
            for round_ in range(1, rounds + 1):
                for batch in (1, BATCH):
                    library = library_row(database, f"lib-{batch}-{round_}", seconds, batch)
                    over_http = http_row(url, f"http-{batch}-{round_}", seconds, batch)
                    ratios[batch].append(over_http / library)
                    print(f"   round {round_}, {batch:>2} per cycle: library {library:>8.1f}   "
                          f"HTTP {over_http:>8.1f}   {over_http / library:.2f}x   "
                          f"(load {os.getloadavg()[0]:.2f})", flush=True)
        for batch, found in ratios.items():
            print(f"HTTP / library, {batch:>2} message(s) per cycle: median "
                  f"{statistics.median(found):.2f}x ({', '.join(f'{r:.2f}' for r in found)})")
        node = node_row(uri, f"clients_node_{stamp}", seconds)
        if isinstance(node, str):
            print(f"Node.js client: {node}")
        else:
            library = library_row(database, "lib-node", seconds)
            print(f"Node.js client (one process) {node:.1f}/s, library right after "
                  f"{library:.1f}/s: {node / library:.2f}x")
        met = statistics.median(ratios[1]) >= 0.5
        print(f"goal: HTTP >= 0.5x the library, one message per cycle: "
              f"{'MET' if met else 'NOT MET'}")
        print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
