"""Activity sequences (issue 13, item 1) against the real engine: order, idempotent starts,
a killed step, results handed on, fan-out/fan-in, compensation, stuck instances.

Steps are claimed either by hand (``Queue.read``), so a test controls exactly
when each is held and acknowledged, or by real workers (a thread, or a
``python -m tests.activity_flows`` process that is SIGKILLed). Counts are
checked after a real collector drained the business log.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mopq import LeaseLost, Queue, admin, maintenance, schema
from mopq.activities import Activity, Step, fanout, recovery
from mopq.collectors.stats import read_stats
from mopq.errors import InvalidInput
from tests.activity_flows import FAST, ORDER_QUEUES, order
from tests.helpers import conserved, drain_log, wait_until

ROOT = Path(__file__).resolve().parent.parent


def claim(queue: str, visibility_timeout: float = 30):
    """The one message claimable in ``queue`` now, or None."""
    found = Queue(queue).read(visibility_timeout=visibility_timeout)
    return found[0] if found else None


def effects(db) -> dict[str, int]:
    return {doc["_id"]: doc["runs"] for doc in db["effects"].find()}


def counted(db) -> dict:
    drain_log(db)
    return read_stats(db)["queues"]


def test_a_step_is_claimable_only_once_the_step_before_it_is_acknowledged(db):
    flow = order()
    instance, created = flow.start("k1", {"n": 3})
    assert created
    assert claim("payment-charge") is None and claim("shipping") is None
    first = claim("stock-reserve")
    assert first.id == instance and first.body == {"key": "k1", "input": {"n": 3},
                                                   "previous": None}
    assert claim("payment-charge") is None, "step 2 must wait while step 1 is held"
    first.delete({"reserved": 3})
    second = claim("payment-charge")
    assert second.id == instance and second.body["previous"] == {"reserved": 3}
    assert claim("stock-reserve") is None and claim("shipping") is None
    second.delete({"charged": 30})
    third = claim("shipping")
    assert third.body["previous"] == {"charged": 30}
    third.delete({"shipped": 30})
    done = flow.instance("k1")
    assert done["status"] == "completed" and done["result"] == {"shipped": 30}
    assert [s["result"] for s in done["steps"]] == [{"reserved": 3}, {"charged": 30},
                                                     {"shipped": 30}]
    queues = counted(db)
    for name in ORDER_QUEUES:
        assert queues[name]["written"] == 1 and queues[name]["done"] == 1, name
        assert conserved(queues[name]), (name, queues[name])


def test_a_late_acknowledgement_of_a_redelivered_step_changes_nothing(db):
    flow = order()
    flow.start("k2", {"n": 1})
    claim("stock-reserve").delete({"reserved": 1})
    late = claim("payment-charge", visibility_timeout=0.3)
    time.sleep(0.4)  # the lease runs out: the step is delivered again
    again = claim("payment-charge")
    assert again.attempts == 2
    with pytest.raises(LeaseLost):
        late.delete({"charged": 999})
    assert claim("shipping") is None, "a refused acknowledgement moved nothing"
    again.delete({"charged": 10})
    assert claim("shipping").body["previous"] == {"charged": 10}
    with pytest.raises(LeaseLost):
        again.delete({"charged": 10})  # the step is recorded done once
    steps = flow.instance("k2")["steps"]
    assert steps[1]["result"] == {"charged": 10} and steps[1]["attempts"] == 2


def test_a_candidate_read_in_one_step_is_not_claimed_once_it_moved_to_the_next(db):
    flow = order()
    first_instance, _ = flow.start("k1", {"n": 1})
    moved_instance, _ = flow.start("k2", {"n": 2})
    reserve = Queue("stock-reserve")
    (held,) = reserve.read(visibility_timeout=30)  # reads both as candidates, claims k1
    assert held.id == first_instance
    other = claim("stock-reserve")
    assert other.id == moved_instance
    other.delete({"reserved": 2})  # k2 is now pending in payment-charge, same _id
    assert reserve.read(visibility_timeout=30) == [], \
        "a stale candidate must not claim the instance in another step's queue"
    charge = claim("payment-charge")
    assert charge.id == moved_instance and charge.attempts == 1
    assert flow.instance("k2")["steps"][0]["result"] == {"reserved": 2}
    counts = counted(db)
    assert counts["stock-reserve"]["claimed"] == 2 and counts["payment-charge"]["claimed"] == 1


def test_the_same_key_starts_one_instance_even_after_it_finished(db):
    flow = order()
    first, created = flow.start("same", {"n": 2})
    again, created_again = flow.start("same", {"n": 99})
    assert created and not created_again and again == first
    assert db[schema.MESSAGES].count_documents({"sequence.key": "same"}) == 1
    worker = flow.worker(**FAST)
    worker.start()
    try:
        assert flow.wait("same", 30)["status"] == "completed"
    finally:
        worker.stop(timeout=10)
    wait_until(lambda: db[schema.HISTORY].count_documents({"_id": first}) == 1,
               message="the finished instance in history")
    later, created_later = flow.start("same", {"n": 5})
    assert later == first and not created_later
    assert effects(db) == {"same:reserve": 1, "same:charge": 1, "same:ship": 1}


def test_steps_run_in_order_under_concurrent_workers(db):
    flow = order()
    keys = [f"c{n}" for n in range(8)]
    for key in keys:
        flow.start(key, {"n": 1})
    worker = flow.worker(concurrency=4, **FAST)
    worker.start()
    try:
        for key in keys:
            assert flow.wait(key, 60)["status"] == "completed"
    finally:
        worker.stop(timeout=10)
    starts = {(d["key"], d["what"]): d["at"] for d in db["effects"].find()}
    for key in keys:
        steps = flow.instance(key)["steps"]
        for before, after in zip(steps, steps[1:], strict=False):
            assert before["done_at"] <= after["started_at"] <= starts[(key, after["name"])]


def test_a_step_whose_worker_is_killed_is_retried_and_each_effect_happens_once(db, reap):
    flow = order()
    flow.start("kill", {"n": 2, "block_charge": True})
    worker = subprocess.Popen([sys.executable, "-m", "tests.activity_flows", "worker", "3"],
                              cwd=ROOT)
    reap.append(worker)
    wait_until(lambda: effects(db).get("kill:charge") == 1, timeout=30,
               message="the charge step to run in the worker process")
    worker.send_signal(signal.SIGKILL)
    assert worker.wait(10) == -signal.SIGKILL
    held = db[schema.MESSAGES].find_one({"sequence.key": "kill"})
    assert held["state"] == schema.INFLIGHT and held["queue"] == "payment-charge"
    assert claim("shipping") is None, "the killed step is not done, so the next waits"
    rescuer = subprocess.Popen([sys.executable, "-m", "tests.activity_flows", "worker"],
                               cwd=ROOT)
    reap.append(rescuer)
    finished = flow.wait("kill", 60)
    rescuer.terminate()
    rescuer.wait(20)
    assert finished["status"] == "completed"
    assert [step["attempts"] for step in finished["steps"]] == [1, 2, 1]
    assert finished["result"] == {"shipped": 20}
    assert effects(db) == {"kill:reserve": 1, "kill:charge": 2, "kill:ship": 1}
    assert db["effects"].count_documents({"key": "kill"}) == 3  # each effect recorded once
    # The killed worker's last events were still in the instance's outbox: the sweep
    # publishes them (at once here, rather than 5 s later).
    maintenance.republish_outboxes(db, grace_seconds=0)
    queues = counted(db)
    assert queues["payment-charge"]["done"] == 1 and queues["payment-charge"]["written"] == 1
    assert all(conserved(queues[name]) for name in ORDER_QUEUES)


def _lines(db, **options: object) -> Activity:
    """split (into its input's lines) -> pack each line (fan-out) -> total."""
    return Activity("lines", [
        Step("split", "line-split", lambda m: m.body["input"]["lines"]),
        Step("pack", "line-pack", lambda m: {"packed": m.body["item"]}, fan_out=True),
        Step("total", "line-total", lambda m: m.body["previous"]),
    ], **options)


def test_a_fan_out_child_delivered_twice_is_counted_once(db):
    flow = _lines(db)
    parent, _ = flow.start("f1", {"lines": ["a", "b", "c"]})
    claim("line-split").delete(["a", "b", "c"])
    assert db[schema.MESSAGES].find_one({"_id": parent})["state"] == schema.WAITING
    assert claim("line-total") is None
    first = claim("line-pack", visibility_timeout=0.3)
    time.sleep(0.4)
    duplicate = Queue("line-pack").read(visibility_timeout=30, limit=5)
    again = next(m for m in duplicate if m.id == first.id)
    assert again.attempts == 2
    again.delete({"packed": again.body["item"]})
    with pytest.raises(LeaseLost):
        first.delete({"packed": "twice"})
    # The sweep, and a second count from any process, find it counted already.
    assert not fanout.child_finished(db, again.document, result={"packed": "again"})
    assert recovery.recover(db).counted == 0
    children = db[schema.MESSAGES].find_one({"_id": parent})["sequence"]["children"]
    assert children["finished"] == 1 and children["counted"] == [first.id]
    assert claim("line-total") is None, "two children are still running"
    for message in duplicate:
        if message.id != first.id:
            message.delete({"packed": message.body["item"]})
    total = claim("line-total")
    assert total.body["previous"] == {"results": [{"packed": "a"}, {"packed": "b"},
                                                  {"packed": "c"}], "dead": []}
    total.delete(total.body["previous"])
    assert flow.instance("f1")["steps"][1]["children"] == {"total": 3, "dead": 0,
                                                           "finished": 3}


def test_a_child_acknowledged_by_a_plain_client_is_counted_by_the_sweep(db):
    """A Node.js worker acknowledges children the plain way (FORMAT §4.5): the sweep counts."""
    flow = _lines(db)
    parent, _ = flow.start("plain", {"lines": ["x", "y"]})
    claim("line-split").delete(["x", "y"])
    for child in Queue("line-pack").read(visibility_timeout=30, limit=5):
        db[schema.MESSAGES].update_one(
            {"_id": child.id, "state": schema.INFLIGHT, "lease_token": child.lease_token},
            {"$set": {"state": schema.DONE, "result": {"plain": child.body["item"]},
                      "acked_lease": child.lease_token}, "$unset": {"lease_token": ""}})
    assert claim("line-total") is None
    assert recovery.recover(db).counted == 2
    assert recovery.recover(db).counted == 0
    assert claim("line-total").body["previous"]["results"] == [{"plain": "x"}, {"plain": "y"}]


def test_a_dead_child_lets_the_next_step_run_with_it_listed(db):
    flow = _lines(db)
    flow.start("f2", {"lines": ["ok", "bad"]})
    claim("line-split").delete(["ok", "bad"])
    pack = Queue("line-pack", max_attempts=1)
    for message in pack.read(visibility_timeout=30, limit=5):
        if message.body["item"] == "bad":
            assert message.fail("broken line") == schema.DEAD
        else:
            message.delete({"packed": "ok"})
    assert claim("line-total").body["previous"] == {"results": [{"packed": "ok"}, None],
                                                    "dead": [1]}


def test_a_fan_out_needs_a_list_and_a_wrong_result_changes_nothing(db):
    flow = _lines(db)
    flow.start("f3", {"lines": []})
    split = claim("line-split")
    with pytest.raises(InvalidInput):
        split.delete({"not": "a list"})
    split.delete([])  # no items: the fan-out step is done at once
    assert claim("line-total").body["previous"] == {"results": [], "dead": []}


def test_a_dead_step_runs_the_compensations_in_reverse_order_then_compensated(db):
    flow = order()
    flow.start("undo", {"n": 1, "fail_ship": True})
    worker = flow.worker(**FAST)
    worker.start()
    try:
        ended = flow.wait("undo", 60)
    finally:
        worker.stop(timeout=10)
    assert ended["status"] == "compensated" and ended["failed_step"] == "ship"
    undone = sorted(db["effects"].find({"what": {"$regex": "^undo"}}), key=lambda d: d["at"])
    assert [d["what"] for d in undone] == ["undo charge", "undo reserve"]
    reserve, charge, ship = ended["steps"]
    assert ship["status"] == "dead" and ship["attempts"] == 2 and "no courier" in ship["error"]
    assert charge["compensation"]["status"] == reserve["compensation"]["status"] == "done"
    assert charge["compensation"]["done_at"] <= reserve["compensation"]["started_at"]
    queues = counted(db)
    assert queues["shipping"]["removed"] == 1 and queues["shipping"]["dead"] == 0
    for name in (*ORDER_QUEUES, "payment-charge.compensate", "stock-reserve.compensate"):
        assert conserved(queues[name]), (name, queues[name])


def test_a_compensation_that_dies_leaves_the_instance_stuck_until_retried(db):
    flow = order()
    db["switches"].insert_one({"_id": "bank-down"})
    flow.start("stuck", {"n": 1, "fail_ship": True, "fail_refund": True})
    worker = flow.worker(**FAST)
    worker.start()
    try:
        ended = flow.wait("stuck", 60)
        assert ended["status"] == "stuck" and ended["step"] == "charge"
        assert ended["steps"][1]["compensation"]["status"] == "dead"
        assert ended["steps"][0]["compensation"]["status"] == "waiting"
        assert "refuses" in ended["last_error"]
        dead = db[schema.MESSAGES].find_one({"sequence.key": "stuck"})
        assert dead["state"] == schema.DEAD and dead["queue"] == "payment-charge.compensate"
        # The operator fixes the bank and retries the dead compensation.
        db["switches"].delete_one({"_id": "bank-down"})
        assert admin.retry(db, admin.selection(ids=[dead["_id"]])) == 1
        assert flow.wait("stuck", 60)["status"] == "compensated"
    finally:
        worker.stop(timeout=10)
