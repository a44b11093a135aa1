"""A bounded schemathesis run against ``/openapi.json``, through the WSGI app.

Requests are generated from the document itself, valid ones and invalid ones
(wrong types, out-of-range numbers, strings where objects belong, bodies that
break the schema), and sent to the app backed by the real engine holding a
little real data. No answer may be a 5xx, and each must be one the document
declares, with the content type and the schema it declares. Read endpoints
are called with the read token; admin endpoints once without credentials
(they must refuse with 401) and once with the admin token, so their body
checks are exercised too.

The number of examples is bounded (about 200 in all, well under a minute);
``MOPQ_FUZZ_SCALE=5`` makes the run five times longer. Examples are
derandomized so a failure reproduces; ``MOPQ_FUZZ_RANDOM=1`` explores anew
on each run.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from mopq import Queue, emit, flush
from mopq.dashboard import create_app
from mopq.search import declare_search_field
from tests.helpers import drain_log

ADMIN_TOKEN = "fuzz-admin-token"
READ_TOKEN = "fuzz-read-token"
PRODUCER_TOKEN = "fuzz-producer-token-0123456789"
CONSUMER_TOKEN = "fuzz-consumer-token-0123456789"
# Credentials per operation, by the x-access the document gives it: each operation is
# sent with what may call it (the run checks agreement both ways), and with what may not.
BEARER = {"read": (READ_TOKEN, ADMIN_TOKEN), "admin": (ADMIN_TOKEN,), "public": (READ_TOKEN,),
          "producer": (PRODUCER_TOKEN,), "consumer": (CONSUMER_TOKEN,),
          "outcome": (PRODUCER_TOKEN, READ_TOKEN)}
REFUSED = {"admin": None, "producer": CONSUMER_TOKEN, "consumer": PRODUCER_TOKEN}
# A long poll is valid up to 20 s; generated waits are shortened so the run stays bounded.
LONGEST_WAIT = 0.2
SCALE = max(1, int(os.environ.get("MOPQ_FUZZ_SCALE", "1") or 1))
DERANDOMIZE = not os.environ.get("MOPQ_FUZZ_RANDOM")
# None: the examples the document gives (real queue and event names, so requests get
# past the 404s); then generated valid and invalid requests.
EXAMPLES = {None: 2, GenerationMode.POSITIVE: 6 * SCALE, GenerationMode.NEGATIVE: 4 * SCALE}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
AUTH_ENV = ("MOPQ_ADMIN_TOKEN", "MOPQ_READ_TOKEN", "MOPQ_BASIC_AUTH_USERS", "MOPQ_ADMIN_USERS",
            "MOPQ_PRODUCER_TOKENS", "MOPQ_CONSUMER_TOKENS")


@pytest.fixture
def api_schema(engine_uri, db_name, db, monkeypatch):
    for name in AUTH_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MOPQ_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv("MOPQ_READ_TOKEN", READ_TOKEN)
    monkeypatch.setenv("MOPQ_PRODUCER_TOKENS", f"fuzz-producer={PRODUCER_TOKEN}")
    monkeypatch.setenv("MOPQ_CONSUMER_TOKENS", f"fuzz-consumer={CONSUMER_TOKEN}")
    # Named as the document's examples ("emails", "order_id=42", "order.paid"), so the
    # example requests find data.
    declare_search_field("emails", "order_id")  # first, as a service would (mopq.search)
    emails = Queue("emails", max_attempts=1)
    emails.write_many([{"order_id": i} for i in range(40, 45)], activity="batch")
    for message in emails.read(limit=2):
        message.fail("boom")
    emit("order.paid", 3.0, tags={"region": "cn"})
    drain_log(db)
    app = create_app({"MOPQ_MONGODB_URI": engine_uri, "MOPQ_DATABASE": db_name,
                      "TESTING": True})
    yield schemathesis.openapi.from_wsgi("/openapi.json", app)
    # Admin requests may have retried or deleted messages: let their events be written
    # before the database is dropped.
    assert flush(20), "events still unpublished at the end of the test"


def _fuzz(operation, mode: GenerationMode | None, headers: dict[str, str], examples: int,
          checks: list, seen: dict[int, int]) -> None:
    """Send ``examples`` generated requests (mode None: the document's own examples)."""
    if mode is None:
        strategies = operation.schema.get_strategies_from_examples(operation)
        if not strategies:
            return
        strategy = strategies[0] if len(strategies) == 1 else st.one_of(strategies)
    else:
        strategy = operation.as_strategy(generation_mode=mode)

    @given(case=strategy)
    @settings(max_examples=examples, deadline=None, database=None, derandomize=DERANDOMIZE,
              phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    def run(case) -> None:
        _shorten_waits(case, mode)
        response = case.call(headers=headers)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        case.validate_response(response, checks=checks, headers=headers)

    try:
        run()
    except Unsatisfiable:
        # Nothing to make invalid: an operation without parameters or body has no
        # negative cases.
        if mode is None or not mode.is_negative:
            raise


def _shorten_waits(case, mode: GenerationMode | None) -> None:
    """A valid wait of up to 20 s stays valid shorter; invalid ones are left as generated."""
    if mode is not None and mode.is_negative:
        return
    for part in (case.body, case.query):
        if isinstance(part, dict) and isinstance(part.get("wait"), int | float) \
                and not isinstance(part.get("wait"), bool) and part["wait"] > LONGEST_WAIT:
            part["wait"] = LONGEST_WAIT if isinstance(part["wait"], float) else 0


def test_no_server_errors_for_generated_requests(api_schema):
    seen: dict[int, int] = {}
    disagreements: list[str] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 18  # /openapi.json itself is left out by schemathesis
    for operation in operations:
        for mode, examples in EXAMPLES.items():
            negative = mode is not None and mode.is_negative
            # Both ways: nothing the schema forbids is accepted, nothing it allows refused.
            checks = CHECKS + ([negative_data_rejection] if negative else
                               [positive_data_acceptance])
            access = operation.definition.raw["x-access"]
            runs = [({"Authorization": f"Bearer {token}"}, examples, checks)
                    for token in BEARER[access]]
            if access in REFUSED:
                # Without the right credentials every request is refused before its body
                # is read.
                wrong = REFUSED[access]
                runs.append(({"Authorization": f"Bearer {wrong}"} if wrong else {}, 2,
                              [not_a_server_error, status_code_conformance]))
            for headers, count, run_checks in runs:
                try:
                    _fuzz(operation, mode, headers, count, run_checks, seen)
                except (Exception, BaseExceptionGroup) as failure:  # collect all, report all
                    first = " ".join(str(failure).split())[:600]
                    disagreements.append(f"{operation.label} [{mode}]: {first}")
    print("statuses", seen)
    assert not disagreements, "\n\n".join(disagreements)
    assert not [code for code in seen if code >= 500], seen
    assert seen.get(200) and seen.get(400) and seen.get(401), seen
