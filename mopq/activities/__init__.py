"""Activity sequences by multi-stage commit: ordered steps, fan-out/fan-in, compensation.

The talk's "when transactions have an order, de-sequence them through
multi-stage commit", with no multi-document transaction: an instance is one
message that moves from step queue to step queue, each move one atomic
update of that one document.

```python
from mopq.activities import Activity, Step

orders = Activity("order", [
    Step("reserve", "stock-reserve", reserve, compensate=release),
    Step("pack", "pack-line", pack_line, fan_out=True),   # one child per item reserve returned
    Step("charge", "payment-charge", charge, compensate=refund),
    Step("ship", "shipping", ship),
])
orders.start("order-42", {"lines": [...]})   # the same key twice starts one instance
orders.worker(concurrency=4).run()          # or any consumer of those queues, in any language
orders.wait("order-42")["status"]           # completed, compensated or stuck
```

* ``document`` — the instance's stored shape and the moves between steps.
* ``transitions`` — acknowledging a step, going dead, compensating, and why
  a step can neither be skipped nor recorded twice.
* ``fanout`` — children written after their parent's move, counted back once.
* ``recovery`` — the sweep's part: what a crashed process left undone.
* ``instances`` — reading instances back for ``Activity.instance`` and the dashboard.
* ``definition`` — ``Activity`` and ``Step``.

docs/FORMAT.md §14 is the contract for clients in other languages.
"""

from mopq.activities.definition import Activity, Step
from mopq.activities.document import COMPENSATED, COMPENSATING, COMPLETED, RUNNING, STUCK

__all__ = ["COMPENSATED", "COMPENSATING", "COMPLETED", "RUNNING", "STUCK", "Activity", "Step"]
