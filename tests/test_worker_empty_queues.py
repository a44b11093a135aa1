"""A busy worker does not read again, on every pass, a queue it just found empty.

What a user notices: a worker draining one queue while its other queues are
empty (an activity's later steps, which claim on move keeps empty) no longer
sends the engine a candidate read of each empty queue every time it runs out
of messages claimed ahead; it looks there about once per ``poll_interval``,
as an idle worker does. Pickup is not slower: a write from another process
rings the worker, which reads that queue at once, and a delayed message that
comes due (which rings no bell) is found within ``poll_interval``. And the
claim after such a ring is one round trip: no candidate read before it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from mopq import Queue
from mopq.doorbell import ringer_for
from tests.helpers import run_script, wait_until

POLL_SECONDS = 3.0
BACKLOG = 600
DELAY_SECONDS = 0.3

BUSY_WORKER = """
import json, sys, time
from tests.commands_counted import Counter  # before mopq makes its client
from mopq import Queue, Worker

handled = {}
def handle(message):
    if message.queue.name == "busy":
        time.sleep(0.02)
    else:
        handled[message.body["what"]] = time.time()

busy = Queue("busy")
worker = Worker(["busy", "quiet"], handle, concurrency=2, poll_interval=float(sys.argv[1]),
                heartbeat_interval=5)
started = time.time()
worker.start()
deadline = time.monotonic() + 120
while (busy.count() or len(handled) < 2) and time.monotonic() < deadline:
    time.sleep(0.01)
drained = time.time()
worker.stop(timeout=30)
print(json.dumps({"quiet_reads": Counter.candidate_reads["quiet"], "started": started,
                  "drained": drained, "handled": handled}))
"""


def test_a_busy_worker_reads_an_empty_queue_once_per_poll_and_still_picks_up_at_once(db):
    Queue("busy").write_many([{"n": n} for n in range(BACKLOG)])
    quiet = Queue("quiet")
    worker = subprocess.Popen([sys.executable, "-c", BUSY_WORKER, str(POLL_SECONDS)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ))
    try:
        # The worker registers its doorbell for "quiet" once it passes over it, and this
        # process (the writer) re-reads whom to ring at most once a second.
        wait_until(lambda: ringer_for(quiet.db)._reread_targets().get("quiet"), 30,
                   message="the busy worker's doorbell is known to the writer")
        assert quiet.db.messages.count_documents({"queue": "busy", "state": "pending"}) > 0
        rung_at = time.time()
        quiet.write({"what": "rung"})
        due_at = time.time() + DELAY_SECONDS
        quiet.write({"what": "delayed"}, delay=DELAY_SECONDS)
        out, err = worker.communicate(timeout=180)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == 0, err[-2000:]
    report = json.loads(out.strip().splitlines()[-1])
    handled = report["handled"]
    assert set(handled) == {"rung", "delayed"}, report
    # Both came while the backlog still kept the worker busy: that is the case under test.
    assert max(handled.values()) < report["drained"], report
    assert handled["rung"] - rung_at < POLL_SECONDS / 2, report
    assert handled["delayed"] - due_at < POLL_SECONDS + 1.0, report
    busy_seconds = report["drained"] - report["started"]
    # Without the skip it read "quiet" each time a thread ran out of messages claimed
    # ahead (100 times or more here); now about once per poll_interval (by both threads
    # when their looks coincide), plus once per ring.
    assert report["quiet_reads"] <= 2 * busy_seconds / POLL_SECONDS + 6, report


IDLE_WORKER = """
import json, sys, time
from tests.commands_counted import Counter  # before mopq makes its client
from mopq import Queue, Worker

handled = []
worker = Worker(["idle_1", "idle_2", "idle_3", "idle_4"], lambda m: handled.append(time.time()),
                concurrency=4, poll_interval=float(sys.argv[1]), heartbeat_interval=5)
worker.start()
time.sleep(1)  # started and settled: each queue found empty once
reads = Counter.candidate_reads
before, started = sum(reads.values()), time.monotonic()
time.sleep(2)
per_look = (sum(reads.values()) - before) / ((time.monotonic() - started) / float(sys.argv[1]))
due_at = time.time() + 0.2
Queue("idle_3").write({"n": 1}, delay=0.2)  # a delayed write rings no bell
deadline = time.monotonic() + 30
while not handled and time.monotonic() < deadline:
    time.sleep(0.01)
worker.stop(timeout=30)
print(json.dumps({"per_look": per_look, "late": handled[0] - due_at if handled else None}))
"""


def test_an_idle_worker_looks_in_all_its_empty_queues_with_one_query(db_name):
    poll = 0.2
    report = run_script(IDLE_WORKER, str(poll))
    # One candidate read per queue and look (4) without it; one query for all four now.
    assert 0.5 <= report["per_look"] <= 1.5, report  # it does look, once per look
    # A message that came due in one of them is still found by the next look.
    assert report["late"] is not None and report["late"] < poll + 0.5, report


PICKUP_WORKER = """
import json, sys, time
from tests.commands_counted import Counter  # before mopq makes its client
from mopq import Queue, Worker

handled = []
queue = Queue("pickups")
worker = Worker(["pickups"], lambda m: handled.append(m.body["n"]), concurrency=1,
                poll_interval=30, heartbeat_interval=5)
worker.start()
deadline = time.monotonic() + 60
queue.write({"n": 0})  # the worker learns its pace: it would now claim ahead
while not handled and time.monotonic() < deadline:
    time.sleep(0.01)
time.sleep(0.3)  # and finds the queue empty again
before = Counter.candidate_reads["pickups"]
for n in range(1, 6):
    queue.write({"n": n})
    while len(handled) <= n and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.2)
reads = Counter.candidate_reads["pickups"] - before
worker.stop(timeout=30)
print(json.dumps({"handled": handled, "reads": reads}))
"""


def test_a_worker_that_found_its_queue_empty_picks_up_a_write_without_a_candidate_read(db_name):
    # What the user notices is pickup latency: the claim after the ring is then one
    # round trip. The one candidate read per pickup left is the look after the
    # handler, which finds the queue empty again.
    report = run_script(PICKUP_WORKER)
    assert report["handled"] == [0, 1, 2, 3, 4, 5], report
    assert report["reads"] <= 5, report  # 10 when the pickup read candidates too
