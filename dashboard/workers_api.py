"""Worker control over HTTP: ask a worker to stop, to go quiet, or to resume (admins).

Each action is declared once with ``dashboard.endpoints.endpoint`` (so
``/openapi.json`` and the checks come from the same place), needs admin
credentials (and the CSRF token when signed in through the browser), and is
recorded in the audit log as ``worker.<command>`` with the worker's identity.
What it does is ``mopq.control.ask``: the request is written on the worker's
document and the worker honours it at its next heartbeat, so the answer says
the request stands, not that the worker already acted (the Workers page and
``/api/workers`` show when it has: ``reported_state``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint
from pydantic import Field

from mopq import control, schema
from mopq.dashboard import errors, store
from mopq.dashboard.api import audited
from mopq.dashboard.auth import current_identity
from mopq.dashboard.endpoints import ADMIN, endpoint
from mopq.dashboard.openapi import ref
from mopq.dashboard.parameters import Strict, text_type
from mopq.dashboard.queue_api import JSONBody

blueprint = Blueprint("workers_api", __name__)
errors.answer_in_json(blueprint)

WorkerId = text_type(control.IDENTITY_PATTERN, control.IDENTITY_WORDS, max_length=64,
                     example="10.0.0.5:5672:1700000000:4242")
REFUSALS = {404: "No worker of that identity is registered.",
            409: "The worker has stopped, or was asked to stop (a stop is final); nothing "
                 "was changed."}


class WorkerPath(Strict):
    worker_id: WorkerId = Field(description="The worker's identity, ip:port:start_time:pid.")


class NoOptions(JSONBody):
    """{} or no body at all: the action takes nothing but the worker's identity."""


def _ask(command: str, worker_id: str) -> Any:
    db = store.database()
    found = db[schema.WORKERS].find_one({"_id": worker_id}, {"state": 1, control.FIELD: 1})
    if found is None:
        return errors.error(404, f"no worker {worker_id} is registered.",
                            parameter="worker_id")
    reason = control.refusal(found, command)
    if reason:
        return errors.error(409, reason, parameter="worker_id")
    identity = current_identity()
    by = {"name": identity.name, "via": identity.via}

    def run(db: Any) -> int:
        try:
            return int(control.ask(db, worker_id, command, by))
        except (control.UnknownWorker, control.ControlRefused):  # changed meanwhile
            return 0

    return audited(f"worker.{command}", {"worker": worker_id}, run)  # in audit.ACTIONS


def _declare(command: str, summary: str, changed: str) -> Callable[..., Any]:
    def view(worker_id: str, body: NoOptions) -> Any:
        return _ask(command, worker_id)

    view.__name__ = f"worker_{command}"
    return endpoint(
        blueprint, f"/api/workers/<worker_id>/{command}", "POST", access=ADMIN,
        summary=summary, path=WorkerPath, body=NoOptions, body_optional=True,
        errors=(404, 409), error_descriptions=REFUSALS, safe=False, idempotent=True,
        ok=ref("Count"), ok_description=f"1 if the request changed what the worker is asked "
                                        f"to do, 0 if {changed}.",
        description="The worker acts at its next heartbeat (every 5 s by default); "
                    "/api/workers shows what it reports (reported_state) and what was asked "
                    "(control).")(view)


worker_stop = _declare(control.STOP, "Stop a worker gracefully: it finishes the messages it "
                       "holds, then exits", "a stop was asked already")
worker_quiet = _declare(control.QUIET, "Quiet a worker: it takes no new messages (and keeps "
                        "beating) until resumed", "it was asked to be quiet already")
worker_resume = _declare(control.RESUME, "Resume a quiet worker: it takes messages again",
                         "it was not quiet")
