"""Activities over HTTP and on the dashboard: a step served by an HTTP consumer, the
/api/activities figures per step, one instance, exact counters across collector kills,
and the pages (Flask's test client; the browser test is in test_activities_browser.py).
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

from mopq import Envelope, Queue, flush, schema
from tests import test_queue_api
from tests.activity_flows import FAST, order
from tests.helpers import drain_log, wait_until
from tests.test_queue_api import AS_CONSUMER

AS_READER = {"Authorization": "Bearer read-token-0123456789"}
client = test_queue_api.client  # the queue API's app: producer, consumer and read tokens


def _get(client, path: str, status: int = 200):
    answer = client.get(path, headers=AS_READER)
    assert answer.status_code == status, (path, answer.status_code, answer.get_data()[:300])
    return answer.get_json()


def _run(flow, keys: list[str], **options) -> None:
    worker = flow.worker(concurrency=2, **{**FAST, **options})
    worker.start()
    try:
        for key in keys:
            flow.wait(key, 60)
    finally:
        worker.stop(timeout=10)


def test_a_step_served_over_http_moves_the_instance_on(client, db):
    flow = order()
    instance, _ = flow.start("web", {"n": 4})
    claimed = client.post("/api/queues/stock-reserve/claims", json={"visibility_timeout": 30},
                          headers=AS_CONSUMER).get_json()["messages"]
    assert [m["id"] for m in claimed] == [str(instance)]
    assert claimed[0]["body"] == {"key": "web", "input": {"n": 4}, "previous": None}
    ack = f"/api/queues/stock-reserve/messages/{instance}?lease={claimed[0]['lease']}"
    first = client.delete(ack, json={"result": {"reserved": 4}}, headers=AS_CONSUMER)
    assert first.status_code == 200 and first.get_json()["state"] == "done"
    repeated = client.delete(ack, json={"result": {"reserved": 4}}, headers=AS_CONSUMER)
    assert repeated.status_code == 200, repeated.get_json()  # answered as the first was
    assert client.post("/api/queues/stock-reserve/claims", json={},
                       headers=AS_CONSUMER).get_json()["messages"] == []
    charge = client.post("/api/queues/payment-charge/claims", json={},
                         headers=AS_CONSUMER).get_json()["messages"]
    assert charge[0]["id"] == str(instance) and charge[0]["body"]["previous"] == {"reserved": 4}
    failed = client.post(f"/api/queues/payment-charge/messages/{instance}/failures"
                         f"?lease={charge[0]['lease']}", json={"reason": "card declined"},
                         headers=AS_CONSUMER)
    assert failed.status_code == 200 and failed.get_json()["state"] == "pending"
    shown = _get(client, "/api/activities/order/instances/web")
    assert shown["status"] == "running" and shown["step"] == "charge"
    assert shown["steps"][0]["result"] == {"reserved": 4} and shown["steps"][0]["status"] == "done"
    assert shown["steps"][1]["status"] == "waiting" and shown["last_error"] == "card declined"


def test_api_activities_shows_definitions_as_chains_with_figures_and_stuck_first(client, db):
    Queue("reports").write_many([Envelope({"n": n}, activity="nightly") for n in range(3)])
    flow = order()
    db["switches"].insert_one({"_id": "bank-down"})
    flow.start("ok", {"n": 1})
    flow.start("stuck", {"n": 1, "fail_ship": True, "fail_refund": True})
    _run(flow, ["ok", "stuck"])
    flow.start("new", {"n": 1})
    drain_log(db)
    answer = _get(client, "/api/activities")
    assert [item["activity"] for item in answer["items"]] == ["nightly"]
    (definition,) = answer["definitions"]
    assert definition["name"] == "order"
    assert [step["name"] for step in definition["steps"]] == ["reserve", "charge", "ship"]
    reserve, charge, ship = definition["steps"]
    assert (reserve["waiting"], reserve["running"], reserve["done"]) == (1, 0, 2)
    assert (charge["done"], charge["failed"], charge["dead"]) == (2, 0, 0)
    assert (ship["done"], ship["failed"], ship["dead"]) == (1, 2, 1)
    assert ship["compensation"] is None and ship["queue"] == "shipping"
    assert charge["compensation"]["queue"] == "payment-charge.compensate"
    assert (charge["compensation"]["failed"], charge["compensation"]["dead"]) == (2, 1)
    assert reserve["compensation"]["done"] == 0
    assert reserve["p95_seconds"] is not None and reserve["done_per_second"] > 0
    assert definition["instances"] == {"stuck": 1, "compensating": 0, "running": 1,
                                       "completed": 1, "compensated": 0}
    listed = [(row["key"], row["status"]) for row in answer["instances"]]
    assert listed == [("stuck", "stuck"), ("new", "running"), ("ok", "completed")]
    stuck = _get(client, "/api/activities/order/instances/stuck")
    assert stuck["step"] == "charge" and stuck["failed_step"] == "ship"
    assert [s["status"] for s in stuck["steps"]] == ["done", "done", "dead"]
    assert stuck["steps"][1]["compensation"]["status"] == "dead"
    assert stuck["steps"][1]["compensation"]["attempts"] == 2
    missing = _get(client, "/api/activities/order/instances/nobody", status=404)
    assert missing["parameter"] == "key"
    refused = client.get("/api/activities/order/instances/%24ne", headers=AS_READER)
    assert refused.status_code == 400


def _collect_command() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mopq", "collect", "--lease-seconds", "1.5",
                             "--no-monitor"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def test_step_counters_are_exact_across_collector_kills(client, db, reap):
    flow = order()
    keys = [f"o{n}" for n in range(30)]
    for n, key in enumerate(keys):
        flow.start(key, {"n": 1, "flaky": n % 2 == 1, "fail_ship": n % 5 == 0})
    collector = _collect_command()
    reap.append(collector)
    worker = flow.worker(concurrency=3, **FAST)
    worker.start()
    rng = random.Random(13)
    kills = 0
    try:
        while kills < 3:
            time.sleep(rng.uniform(0.3, 1.0))
            collector.send_signal(signal.SIGKILL)
            collector.wait()
            kills += 1
            collector = _collect_command()
            reap.append(collector)
        for key in keys:
            flow.wait(key, 90)
    finally:
        worker.stop(timeout=10)
    assert flush(30)
    wait_until(lambda: db[schema.EVENTS].count_documents({}) == 0 and not db[schema.LEASES]
               .find_one({"kind": "partition", "journal": {"$ne": None}}), timeout=120,
               interval=0.2, message="the collector to catch up")
    collector.send_signal(signal.SIGKILL)
    collector.wait()
    steps = {step["name"]: step for step in _get(client, "/api/activities")["definitions"][0]
             ["steps"]}
    compensated = len([n for n in range(30) if n % 5 == 0])
    assert (steps["reserve"]["done"], steps["reserve"]["failed"]) == (30, 0)
    assert (steps["charge"]["done"], steps["charge"]["failed"]) == (30, 15)
    assert (steps["ship"]["done"], steps["ship"]["failed"], steps["ship"]["dead"]) == \
        (30 - compensated, 2 * compensated, compensated)
    assert steps["charge"]["compensation"]["done"] == compensated
    assert steps["reserve"]["compensation"]["done"] == compensated
    assert all(step["waiting"] == step["running"] == 0 for step in steps.values())


def test_the_activities_page_draws_chains_and_an_instance_page_its_steps(client, db):
    flow = order()
    db["switches"].insert_one({"_id": "bank-down"})
    flow.start("<b>bold</b>", {"n": 1, "fail_ship": True, "fail_refund": True})
    flow.start("fine", {"n": 1})
    _run(flow, ["<b>bold</b>", "fine"])
    drain_log(db)
    html = client.get("/activities", headers=AS_READER).get_data(as_text=True)
    assert '<div id="activities-empty" hidden>' in html  # a definition is something to show
    assert html.index('data-step="reserve"') < html.index('data-step="charge"') \
        < html.index('data-step="ship"')
    assert "payment-charge.compensate" in html
    rows = html[html.index('id="instance-rows"'):]
    assert rows.index('data-status="stuck"') < rows.index('data-status="completed"')
    assert "<b>bold</b>" not in html and "&lt;b&gt;bold&lt;/b&gt;" in html
    page = client.get("/activities/order/%3Cb%3Ebold%3C%2Fb%3E", headers=AS_READER)
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert 'data-status="stuck"' in text and "the bank refuses the refund" in text
    assert text.index('data-step="reserve"') < text.index('data-step="ship"')
    assert client.get("/activities/order/nobody", headers=AS_READER).status_code == 404
