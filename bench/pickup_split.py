"""Where pickup's tail is: the producer's write call, or what follows it (ring, claim, start).

Run:  .venv/bin/python bench/pickup_split.py [--collector]

Starts the embedded engine with H2 storage in a temporary folder (durable
commits, as ``make run`` and ``make bench``), a ``mopq worker`` on queue
``pickup`` (``bench/pickup_handler.py`` records handler start - write), and
with ``--collector`` a ``mopq collect`` beside it. This process writes 200
warm-up messages, then 2,000 at a steady 100/s, timing each ``Queue.write``
call. Printed, p50 / p90 / p99 / max in ms: the write call, the whole
pickup (write -> handler start) and the difference (the worker runs one
message at a time, so handler starts come in write order), and the write
call's share of the 20 slowest pickups.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mopq import Queue, flush  # noqa: E402
from mopq.engine import engine_unless_configured  # noqa: E402

WARM_UP, COUNT, INTERVAL = 200, 2_000, 0.01
DATABASE = "pickup_split"


def quantiles(values: list[float]) -> str:
    ordered = sorted(values)
    points = [ordered[min(len(ordered) - 1, int(f * len(ordered)))] for f in (0.5, 0.9, 0.99)]
    return " / ".join(f"{1000 * v:.1f}" for v in [*points, ordered[-1]])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collector", action="store_true", help="run mopq collect beside")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mopq-split-") as folder, \
            engine_unless_configured(folder) as (uri, _embedded):
        os.environ["MOPQ_MONGODB_URI"] = uri
        env = {**os.environ, "MOPQ_DATABASE": DATABASE}
        log = Path(folder) / "pickup.log"
        log.touch()
        started = []
        if args.collector:
            started.append(subprocess.Popen([sys.executable, "-m", "mopq", "collect"], cwd=ROOT,
                                             env=env, stdout=subprocess.DEVNULL,
                                             stderr=subprocess.DEVNULL))
        started.append(subprocess.Popen(
            [sys.executable, "-m", "mopq", "worker", "--queue", "pickup",
             "--handler", "pickup_handler:handle"], cwd=ROOT / "bench",
            env={**env, "MOPQ_PICKUP_LOG": str(log)}, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL))
        try:
            time.sleep(3.0)  # the worker started and waiting
            queue = Queue("pickup", database=DATABASE)
            for _ in range(WARM_UP):
                queue.write({"t": time.time()})
                time.sleep(INTERVAL)
            deadline = time.monotonic() + 30
            while len(log.read_text().split()) < WARM_UP and time.monotonic() < deadline:
                time.sleep(0.05)
            writes = []
            next_at = time.monotonic()
            for _ in range(COUNT):
                sent = time.time()
                queue.write({"t": sent})
                writes.append(time.time() - sent)
                next_at += INTERVAL
                time.sleep(max(0.0, next_at - time.monotonic()))
            deadline = time.monotonic() + 30
            while len(log.read_text().split()) < WARM_UP + COUNT and time.monotonic() < deadline:
                time.sleep(0.05)
            pickups = [float(line) for line in log.read_text().split()][WARM_UP:]
        finally:
            for process in started:
                process.terminate()
                process.wait(30)
            flush(5)
    if len(pickups) != COUNT:
        print(f"only {len(pickups)} of {COUNT} handlers ran")
        return 1
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"collector {'on' if args.collector else 'off'}; p50 / p90 / p99 / max, ms")
    print(f"write call            {quantiles(writes)}")
    print(f"write -> start        {quantiles(pickups)}")
    print(f"after the write call  "
          f"{quantiles([p - w for p, w in zip(pickups, writes, strict=True)])}")
    slowest = sorted(range(COUNT), key=lambda i: pickups[i])[-20:]
    print("20 slowest, write call / whole: "
          + ", ".join(f"{1000 * writes[i]:.0f}/{1000 * pickups[i]:.0f}" for i in slowest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
