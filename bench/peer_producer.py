"""The producer process of bench/peers.py, the same for every system.

    python peer_producer.py SYSTEM PHASE COUNT [--rate PER_SECOND]

run in bench/ with the system's virtual environment. It imports
``peer_<SYSTEM>``, makes its sender (connections opened), sends one task of
phase ``warm`` (so the first counted send pays no connection set-up), prints
``ready`` and waits for a line on its standard input. Then it sends COUNT
tasks of PHASE, one send call each (``Queue.write``, ``task.delay``,
``queue.enqueue``, ``actor.send``, ``producer.publish``, ``insert_one``), as
fast as it can or, with ``--rate``, each at its own time on a steady
schedule. Every task carries the time taken just before its send call. At
the end it calls the module's ``close()`` if it has one (mopq's publishes the
buffered events) and prints one JSON line: the first and last send times and
the count.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("system")
    parser.add_argument("phase")
    parser.add_argument("count", type=int)
    parser.add_argument("--rate", type=float, default=None)
    args = parser.parse_args()
    module = importlib.import_module(f"peer_{args.system}")
    send = module.sender()
    send("warm", 0, time.time())
    print("ready", flush=True)
    if not sys.stdin.readline():
        return 1  # the orchestrator went away
    first = last = time.time()
    began = time.time()
    for seq in range(args.count):
        if args.rate:
            wait = began + seq / args.rate - time.time()
            if wait > 0:
                time.sleep(wait)
        last = time.time()
        if seq == 0:
            first = last
        send(args.phase, seq, last)
    done = time.time()
    close = getattr(module, "close", None)
    if close is not None:
        close()
    print(json.dumps({"first": first, "last": last, "returned": done, "count": args.count}),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
