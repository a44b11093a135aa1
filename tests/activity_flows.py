"""Activities the tests run, in the test's process or in ``python -m tests.activity_flows``.

Each handler records its effect once per instance and step in the ``effects``
collection (an upsert keyed by activity key and step: idempotent by key, as
the design asks of handlers) and counts how often it ran, so a test can tell
"the step ran twice" from "its effect happened twice". What a handler does
besides is steered by the instance's input (``block_charge``, ``flaky``, ``fail_ship``,
``fail_refund`` while the ``switches`` collection holds ``bank-down``...).
"""

from __future__ import annotations

import sys
import time

from mopq import exponential_backoff
from mopq.activities import Activity, Step
from mopq.clock import utcnow
from mopq.message import Message

ORDER_QUEUES = ("stock-reserve", "payment-charge", "shipping")
# Worker options for tests: quick to notice work, two attempts, retries at once.
FAST = {"heartbeat_interval": 0.5, "poll_interval": 0.05, "max_attempts": 2,
        "backoff": exponential_backoff(first=0.01, jitter=0)}


def effect(message: Message, what: str) -> int:
    """Record the effect of ``what`` for this instance once; return how often it has run."""
    key = message.body["key"]
    found = message.queue.db["effects"].find_one_and_update(
        {"_id": f"{key}:{what}"},
        {"$setOnInsert": {"key": key, "what": what, "at": utcnow()}, "$inc": {"runs": 1}},
        upsert=True, return_document=True)
    return found["runs"]


def reserve(message: Message) -> dict:
    effect(message, "reserve")
    return {"reserved": message.body["input"].get("n", 1)}


def charge(message: Message) -> dict:
    runs = effect(message, "charge")
    given = message.body["input"]
    if given.get("block_charge") and runs == 1:
        while True:  # killed here by the test, after the effect and before the ack
            time.sleep(3600)
    if given.get("flaky") and runs == 1:
        raise RuntimeError("card declined once")
    return {"charged": message.body["previous"]["reserved"] * 10}


def ship(message: Message) -> dict:
    effect(message, "ship")
    if message.body["input"].get("fail_ship"):
        raise RuntimeError("no courier today")
    return {"shipped": message.body["previous"]["charged"]}


def release(message: Message) -> None:
    effect(message, "undo reserve")


def refund(message: Message) -> None:
    effect(message, "undo charge")
    if message.body["input"].get("fail_refund") and \
            message.queue.db["switches"].find_one({"_id": "bank-down"}):
        raise RuntimeError("the bank refuses the refund")


def order(**options: object) -> Activity:
    """reserve (undo: release) -> charge (undo: refund) -> ship."""
    return Activity("order", [Step("reserve", "stock-reserve", reserve, compensate=release),
                              Step("charge", "payment-charge", charge, compensate=refund),
                              Step("ship", "shipping", ship)], **options)


def main() -> None:
    """``python -m tests.activity_flows worker [VISIBILITY]``: serve the order activity."""
    visibility = float(sys.argv[2]) if len(sys.argv) > 2 else 2.0
    order().worker(visibility_timeout=visibility, heartbeat_interval=0.5, poll_interval=0.05,
                   max_attempts=5).run()


if __name__ == "__main__":
    main()
