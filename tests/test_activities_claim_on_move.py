"""Claim on move (issue 13, benchmark): a worker that acknowledges step N and also serves
step N+1 holds the instance in step N+1 from that same update, and runs it next.

What a user notices: no other consumer ever gets a step in between; each step's
record names the worker; counts stay exact. And where the worker should not take
more (the next queue is paused, the worker is stopping), the instance waits in the
next queue as before. A worker killed while holding a step claimed this way is
the kill test of tests/test_activities.py (its charge step is claimed on move).
"""

from __future__ import annotations

import copy
import threading

from mopq import LeaseLost, Queue, policy, schema
from mopq.activities import Activity, Step
from mopq.message import acknowledge_all
from tests.activity_flows import FAST, ORDER_QUEUES, order
from tests.helpers import conserved, drain_log, wait_until

from mopq.collectors.stats import read_stats  # isort: skip


def _stored(db, instance_id) -> dict:
    found = db[schema.MESSAGES].find_one({"_id": instance_id}) or {}
    return {key: value for key, value in found.items() if key not in ("outbox", "log")}


def test_the_worker_that_acknowledges_a_step_holds_the_next_and_no_one_else_gets_it(db):
    mismatches: list[str] = []
    handled: list[tuple[object, dict]] = []  # each step's message and its document as run

    def step(name: str):
        def run(message):
            seen = {key: value for key, value in message.document.items() if key != "outbox"}
            if seen != _stored(db, message.id):  # the holder sees the instance as stored
                mismatches.append(f"{message.body['key']} at {name}")
            handled.append((message, copy.deepcopy(message.document)))
            return {"after": name, "previous": message.body["previous"]}
        return run

    flow = Activity("order", [Step(name, queue, step(name))
                              for name, queue in zip(("reserve", "charge", "ship"),
                                                     ORDER_QUEUES, strict=True)])
    keys = [f"m{n}" for n in range(12)]
    for key in keys:
        flow.start(key, {"n": 1})
    others: list[str] = []
    done = threading.Event()

    def compete(name: str) -> None:  # another consumer of a later step, woken by its rings
        queue = Queue(name, worker="competitor")
        while not done.is_set():
            for message in queue.read(visibility_timeout=30, wait=0.5):
                others.append(message.body["key"])
                message.delete({"taken": "by the competitor"})

    competitors = [threading.Thread(target=compete, args=(name,), daemon=True)
                   for name in ORDER_QUEUES[1:]]
    for competitor in competitors:
        competitor.start()
    worker = flow.worker(concurrency=2, **FAST)
    worker.start()
    try:
        for key in keys:
            assert flow.wait(key, 60)["status"] == "completed"
    finally:
        done.set()
        worker.stop(timeout=10)
        for competitor in competitors:
            competitor.join(10)
    assert others == [], f"steps taken by another consumer between two steps: {others}"
    assert mismatches == []
    # Moving the instance on left each handled step's own document as its handler saw it.
    assert len(handled) == 3 * len(keys)
    changed = [message.body["key"] for message, seen in handled if message.document != seen]
    assert changed == [], f"step documents changed after their acknowledgement: {changed}"
    wait_until(lambda: db[schema.HISTORY].count_documents({"sequence.key": {"$in": keys}})
               == len(keys), message="every instance in history")
    for key in keys:
        ended = flow.instance(key)
        assert ended["result"] == {"after": "ship", "previous": {
            "after": "charge", "previous": {"after": "reserve", "previous": None}}}
        steps = db[schema.HISTORY].find_one({"sequence.key": key})["sequence"]["steps"]
        assert [s["worker"] for s in steps] == [worker.identity] * 3
        assert [s["attempts"] for s in steps] == [1, 1, 1]
    drain_log(db)
    queues = read_stats(db)["queues"]
    for name in ORDER_QUEUES:
        row = queues[name]
        assert row["written"] == row["claimed"] == row["done"] == len(keys), (name, row)
        assert conserved(row), (name, row)


def test_a_paused_next_step_is_not_claimed_on_move(db):
    flow = order()
    policy.pause(db, "payment-charge", "test", "bank maintenance")
    instance, _ = flow.start("paused", {"n": 1})
    worker = flow.worker(**FAST)
    worker.start()
    try:
        wait_until(lambda: _stored(db, instance).get("queue") == "payment-charge",
                   message="step 1 acknowledged")
        # Had the acknowledgement claimed it, it would be inflight from that very update.
        assert _stored(db, instance)["state"] == schema.PENDING
        policy.resume(db, "payment-charge")
        assert flow.wait("paused", 30)["status"] == "completed"
    finally:
        worker.stop(timeout=10)


def test_a_stopping_worker_leaves_the_next_step_to_other_consumers(db):
    holder = []
    ran = threading.Event()

    def reserve(message):
        holder[0].stop(wait=False)  # asked to stop while it runs step 1
        ran.set()
        return {"reserved": 1}

    flow = Activity("order", [Step("reserve", ORDER_QUEUES[0], reserve),
                              Step("charge", ORDER_QUEUES[1], lambda m: {"charged": 1}),
                              Step("ship", ORDER_QUEUES[2], lambda m: {"shipped": 1})])
    instance, _ = flow.start("stopping", {"n": 1})
    worker = flow.worker(**FAST)
    holder.append(worker)
    worker.start()
    assert ran.wait(20), "step 1 did not run"
    assert worker.stop(timeout=20)
    stored = _stored(db, instance)
    assert (stored["queue"], stored["state"]) == ("payment-charge", schema.PENDING)
    (charge,) = Queue("payment-charge").read(visibility_timeout=30)
    assert charge.id == instance and charge.attempts == 1


def test_steps_acknowledged_in_bulk_refuse_a_lost_lease_and_count_a_repeat_once(db):
    flow = order()
    for key in ("kept", "lost"):
        flow.start(key, {"n": 1})
    reserve = Queue("stock-reserve")
    kept, lost = sorted(reserve.read(visibility_timeout=0.5, limit=2),
                        key=lambda m: m.body["key"] != "kept")
    kept.extend(30)
    wait_until(lambda: reserve.read(visibility_timeout=30), message="the lost lease's redelivery")
    kept.result, lost.result = {"reserved": "kept"}, {"reserved": "late"}
    outcome = acknowledge_all([kept, lost])
    assert outcome[0] is None and isinstance(outcome[1], LeaseLost)
    assert acknowledge_all([kept]) == [None], "a repeat after a lost answer is no error"
    (charge,) = Queue("payment-charge").read(visibility_timeout=30)
    assert charge.body == {"key": "kept", "input": {"n": 1}, "previous": {"reserved": "kept"}}
    held = db[schema.MESSAGES].find_one({"sequence.key": "lost"})
    assert (held["queue"], held["state"], held["attempts"]) == ("stock-reserve", "inflight", 2)
    drain_log(db)
    row = read_stats(db)["queues"]["payment-charge"]
    assert row["written"] == 1 and row["claimed"] == 1, row
