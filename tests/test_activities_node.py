"""A Node.js worker serves a step of an activity, and a step's compensation (FORMAT §15):
its acknowledgement moves the instance on exactly as the Python library's does, and every
queue is counted from the events the Node client published itself.
"""

from __future__ import annotations

from mopq import Queue, schema
from mopq.collectors.stats import read_stats
from tests.activity_flows import ORDER_QUEUES, order
from tests.helpers import conserved, drain_log
from tests.test_node_client import node_client, pytestmark, run_node  # noqa: F401

STEP = "payment-charge"


def _serve_python(flow, queues: tuple[str, ...]) -> None:
    """Run the Python handlers of ``queues`` once over what waits there."""
    for name in queues:
        for message in Queue(name, max_attempts=1).read(visibility_timeout=30, limit=10):
            try:
                result = flow.handle(message)
            except Exception as error:  # noqa: BLE001 (the step's failure is the test's)
                message.fail(error)
            else:
                message.delete(result)


def test_a_node_worker_serves_a_step_and_a_compensation(db_name, db, node_client):  # noqa: F811
    flow = order()
    flow.start("via-node", {"n": 2})
    flow.start("undone", {"n": 3, "fail_ship": True})
    _serve_python(flow, ("stock-reserve",))
    served = run_node(node_client, "activity_step.js", {"queue": STEP, "count": 2})
    assert sorted(row["key"] for row in served["served"]) == ["undone", "via-node"]
    assert db[schema.MESSAGES].count_documents({"queue": STEP}) == 0
    _serve_python(flow, ("shipping",))
    done = flow.instance("via-node")
    assert done["status"] == "completed" and done["result"] == {"shipped": 20}
    assert done["steps"][1]["result"] == {"charged": 20, "by": "node"}
    undoing = flow.instance("undone")
    assert undoing["status"] == "compensating" and undoing["step"] == "charge"
    run_node(node_client, "activity_step.js", {"queue": f"{STEP}.compensate", "count": 1})
    _serve_python(flow, ("stock-reserve.compensate",))
    undone = flow.instance("undone")
    assert undone["status"] == "compensated"
    assert undone["steps"][1]["compensation"]["result"] == {"refunded": 30, "by": "node"}
    drain_log(db)
    queues = read_stats(db)["queues"]
    assert queues[STEP]["done"] == 2 and queues[f"{STEP}.compensate"]["done"] == 1
    for name in (*ORDER_QUEUES, f"{STEP}.compensate", "stock-reserve.compensate"):
        assert conserved(queues[name]), (name, queues[name])


def test_node_does_not_claim_a_candidate_that_moved_to_the_next_step(db, node_client):  # noqa: F811
    flow = order()
    instance, _ = flow.start("moves", {"n": 1})
    answer = run_node(node_client, "stale_candidate.js", {"queue": "stock-reserve"})
    assert answer["candidate"] == answer["held"] == str(instance)
    assert answer["claimedStale"] is False
    charge = Queue(STEP).read(visibility_timeout=30)
    assert [m.id for m in charge] == [instance] and charge[0].attempts == 1
