"""Operating a queue over HTTP: its policy, pause and resume, cancel, browse, move.

Each operation is declared once (``dashboard.endpoints.endpoint``); the
policy's body model is built from ``mopq.policy.FIELDS``, so the bounds the
library checks are the ones ``/openapi.json`` publishes. Admin actions are
recorded in the audit log (``dashboard.api.audited``) and CSRF-checked like
every admin action; the work itself is the library's (``mopq.policy``,
``mopq.admin.cancel``, ``mopq.browse``), which the CLI calls too.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from flask import Blueprint, jsonify
from pydantic import Field, create_model

from mopq import admin, browse, policy, rate_limit
from mopq.clock import utcnow
from mopq.dashboard import errors, openapi, store
from mopq.dashboard.api import audited
from mopq.dashboard.auth import current_identity
from mopq.dashboard.endpoints import ADMIN, endpoint
from mopq.dashboard.openapi import INTEGER, NUMBER, STRING, TIME, nullable, ref
from mopq.dashboard.parameters import (
    MAX_IDS,
    Expect,
    MessageId,
    QueueName,
    QueuePath,
    Strict,
    json_integer,
    text_type,
    whole,
)
from mopq.dashboard.queue_api import JSONBody, Key, MessagePath
from mopq.doorbell import ringer_for
from mopq.errors import InvalidInput, MessageNotFound

blueprint = Blueprint("queue_control", __name__)
errors.answer_in_json(blueprint)
_error = errors.error


def _field_type(spec: policy.Field) -> Any:
    if spec.kind is int:
        return json_integer(int(spec.low), int(spec.high)) | None
    return Annotated[float | None, Field(ge=spec.low, le=spec.high, allow_inf_nan=False),
                     Expect(f"a number from {spec.low:g} to {spec.high:g} "
                            "(null: back to the default)")]


PolicyChange = create_model(
    "PolicyChange", __base__=JSONBody,
    __doc__="The fields to set; null unsets one (back to each consumer's code, then the "
            "default); fields left out are kept.",
    **{name: (_field_type(spec), Field(None, description=spec.meaning))
       for name, spec in policy.FIELDS.items()})

Reason = text_type(r"[^\x00]*\S[^\x00]*", "a reason: 1 to 200 characters", max_length=200)


class PauseRequest(Strict):
    reason: Reason = Field(None, description="Why, shown on the Queues page.")


class NoBody(Strict):
    """Nothing to say: an empty object, or no body at all."""


class CancelRequest(Strict):
    ids: Annotated[list[MessageId], Field(min_length=1, max_length=MAX_IDS),
                   Expect(f"a list of 1 to {MAX_IDS} message ids")]
    reason: Reason = Field(description="Kept with each message and told to its holder.")


class MoveRequest(Strict):
    to: QueueName = Field(description="The queue the message moves to.")


class Browsing(Strict):
    state: Annotated[Literal["pending", "delayed", "inflight", "dead"],
                     Expect("pending, delayed, inflight or dead")] = "pending"
    routing_key: Key = None
    after: MessageId = Field(None, description="The last id of the previous page.")
    limit: whole(1, browse.MAX_PAGE) = 50


WINDOWS = {"last_minute": 60, "last_hour": 3600}
FIELD_VIEW = {"type": "object", "properties": {
    "value": {"type": ["number", "null"]}, "default": {"type": ["number", "null"]},
    "meaning": STRING, "from": {"type": "string", "enum": ["stored", "default"]},
    "by": STRING, "who": STRING, "at": TIME}}
POLICY_VIEW = {"type": "object", "required": ["queue", "fields", "paused", "rate_limit"],
               "properties": {
                   "queue": STRING,
                   "fields": {"type": "object", "properties": {
                       name: FIELD_VIEW for name in policy.FIELDS}},
                   "paused": nullable({"type": "object", "properties": {
                       "who": STRING, "at": TIME, "reason": nullable(STRING)}}),
                   "rate_limit": {"type": "object", "properties": {
                       window: {"type": "object", "properties": {
                           "granted": INTEGER, "waited": INTEGER}} for window in WINDOWS}}}}
BROWSE_ROW = {"type": "object", "required": ["id", "preview"], "properties": {
    "id": openapi.MESSAGE_ID, "preview": STRING, "routing_key": nullable(STRING),
    "priority": nullable(INTEGER), "attempts": nullable(INTEGER),
    "created_at": nullable(TIME), "visible_at": nullable(TIME), "worker": nullable(STRING),
    "lease_ends_at": nullable(TIME), "progress": nullable(NUMBER),
    "last_error": nullable(STRING), "dead_at": nullable(TIME)}}
BROWSE_PAGE = {"type": "object", "required": ["queue", "state", "items", "next"],
               "properties": {"queue": STRING, "state": STRING,
                              "routing_key": nullable(STRING),
                              "items": {"type": "array", "items": BROWSE_ROW},
                              "next": nullable(openapi.MESSAGE_ID)}}


def _who() -> str:
    return current_identity().name


def policy_view(db: Any, name: str) -> dict[str, Any]:
    """The policy as the page and the API show it, with the rate limit's recent waits."""
    now = utcnow()
    view = policy.read(db, name).describe()
    view["rate_limit"] = {window: rate_limit.waits(db, name, now - dt.timedelta(seconds=s))
                          for window, s in WINDOWS.items()}
    return view


@endpoint(blueprint, "/api/queues/<name>/policy", summary="A queue's policy: each value and "
          "where it comes from, its pause, and how often its rate limit made claims wait",
          path=QueuePath, ok=POLICY_VIEW, ok_description="The policy.")
def get_policy(name: str) -> Any:
    return jsonify(policy_view(store.database(), name))


@endpoint(blueprint, "/api/queues/<name>/policy", "PUT", access=ADMIN,
          summary="Change a queue's policy (every consumer follows it within 0.5 s)",
          path=QueuePath, body=PolicyChange, errors=(409,), idempotent=True, safe=False,
          error_descriptions={409: "The rate limit would be left with one of its two fields; "
                                   "nothing was changed."},
          ok=ref("Count"), ok_description="1 when something was stored.")
def put_policy(name: str, body: Any) -> Any:
    values = body.model_dump(exclude_unset=True)
    if not values:
        return jsonify({"count": 0})
    db = store.database()
    try:
        policy.checked_change(db, name, values)
    except InvalidInput as problem:
        return _error(409, str(problem), parameter="body")
    return audited("queue.policy", {"queue": name, "policy": values},
                   lambda db: bool(policy.change(db, name, values, _who())) and 1)


@endpoint(blueprint, "/api/queues/<name>/pause", "POST", access=ADMIN,
          summary="Pause a queue: no claims (library, Worker, HTTP); writes still accepted",
          path=QueuePath, body=PauseRequest, body_optional=True, idempotent=True, safe=False,
          ok=ref("Count"), ok_description="1 if paused now, 0 if it was paused already.")
def pause_queue(name: str, body: PauseRequest) -> Any:
    return audited("queue.pause", {"queue": name, "reason": body.reason},
                   lambda db: int(policy.pause(db, name, _who(), body.reason)))


@endpoint(blueprint, "/api/queues/<name>/resume", "POST", access=ADMIN,
          summary="Resume a paused queue; its waiting consumers are rung at once",
          path=QueuePath, body=NoBody, body_optional=True, idempotent=True, safe=False,
          ok=ref("Count"), ok_description="1 if resumed now, 0 if it was not paused.")
def resume_queue(name: str, body: NoBody) -> Any:
    def run(db: Any) -> int:
        resumed = policy.resume(db, name)
        ringer_for(db).ring(name)
        return int(resumed)
    return audited("queue.resume", {"queue": name}, run)


@endpoint(blueprint, "/api/queues/<name>/cancel", "POST", access=ADMIN,
          summary="Cancel messages: pending or delayed ones are removed, inflight ones "
                  "revoked (their holder's next extend, progress or ack is refused)",
          path=QueuePath, body=CancelRequest, safe=False, idempotent=True,
          ok=ref("Count"), ok_description="How many were cancelled (finished or dead ones "
                                          "are not).")
def cancel_messages(name: str, body: CancelRequest) -> Any:
    ids = list(dict.fromkeys(message_id.lower() for message_id in body.ids))
    return audited("message.cancel", {"queue": name, "ids": ids, "reason": body.reason},
                   lambda db: len(admin.cancel(db, ids, body.reason, _who(),
                                               queue=name)["cancelled"]))


@endpoint(blueprint, "/api/queues/<name>/browse", summary="A page of a queue's pending, "
          "delayed, inflight or dead messages, oldest first, with a body preview",
          path=QueuePath, query=Browsing, ok=BROWSE_PAGE,
          ok_description="The page; next is the id to pass as after for the next one.")
def browse_queue(name: str, query: Browsing) -> Any:
    return jsonify(browse.browse(store.database(), name, query.state, query.routing_key,
                                 query.after, query.limit))


def _moved(action: str, name: str, message_id: str, target: dict[str, Any], run: Any) -> Any:
    try:
        return audited(action, {"queue": name, "ids": [message_id], **target}, run)
    except MessageNotFound as problem:
        return _error(404, str(problem), parameter="message_id")


@endpoint(blueprint, "/api/queues/<name>/messages/<message_id>/front", "POST", access=ADMIN,
          summary="Move a pending or delayed message to the front of its queue",
          path=MessagePath, body=NoBody, body_optional=True, errors=(404,), safe=False,
          idempotent=False, ok=ref("Count"), ok_description="1: it is next.",
          error_descriptions={404: "No pending message by that id in this queue."})
def to_front(name: str, message_id: str, body: NoBody) -> Any:
    return _moved("message.front", name, message_id, {},
                  lambda db: browse.to_front(db, name, message_id) and 1)


@endpoint(blueprint, "/api/queues/<name>/messages/<message_id>/move", "POST", access=ADMIN,
          summary="Move a pending, delayed or dead message to another queue",
          path=MessagePath, body=MoveRequest, errors=(404, 409), safe=False,
          idempotent=False, ok=ref("Count"), ok_description="1: it moved.",
          error_descriptions={404: "No pending, delayed or dead message by that id in this "
                                   "queue.", 409: "The target is the queue it is in."})
def to_queue(name: str, message_id: str, body: MoveRequest) -> Any:
    if body.to == name:
        return _error(409, f"the message is in {name!r} already; name another queue.",
                      parameter="to")

    def run(db: Any) -> int:
        browse.to_queue(db, name, message_id, body.to)
        return 1
    return _moved("message.move", name, message_id, {"to": body.to}, run)
