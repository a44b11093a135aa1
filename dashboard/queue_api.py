"""The queue over HTTP, for services without a MongoDB driver, classified as the talk asks.

Every operation is one of the library's, declared once (``dashboard.endpoints``)
with its class: reads are safe and idempotent; a write with a client key
(``PUT …/messages/<key>``) is idempotent; a write without one is neither; a
claim is neither, so it hands out lease tokens; an acknowledgement
(``DELETE …/messages/<id>?lease=…``) is idempotent: repeated, it answers as
the first did, while a stale lease gets 409 and changes nothing.

Callers hold producer or consumer tokens (``dashboard.grants``), each limited
to named queues. A claim may wait up to ``MAX_WAIT_SECONDS`` for a message
(long polling: ``Queue.read(wait=...)``, woken by the writer's ring); so may a
look at a message's outcome. Bad input gets 400 and writes nothing; the
engine down gets 503 (``dashboard.api``'s error handlers serve this blueprint
too).
"""

from __future__ import annotations

import collections
import threading
from typing import Annotated, Any

from bson import ObjectId
from flask import Blueprint, Response, current_app, jsonify
from pydantic import (
    AfterValidator,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    WithJsonSchema,
)

from mopq import Envelope, Queue, emit, history, validation
from mopq.business import MAX_TAG_CHARS, MAX_TAGS
from mopq.dashboard import errors, grants, store
from mopq.dashboard.endpoints import CONSUME, OUTCOME, PRODUCE, endpoint
from mopq.dashboard.openapi import MESSAGE_ID, STRING, TIME
from mopq.dashboard.parameters import (
    EventName,
    Expect,
    MessageId,
    QueueName,
    QueuePath,
    Strict,
    json_integer,
)
from mopq.errors import InvalidBody, InvalidInput, LeaseLost, MessageNotFound
from mopq.message import acknowledge_all
from mopq.queue import MAX_PRIORITY, MAX_VISIBILITY_TIMEOUT
from mopq.schema import DEAD, DEFAULT_MAX_BODY_BYTES, DONE

blueprint = Blueprint("queue_api", __name__)
errors.answer_in_json(blueprint)

MAX_WAIT_SECONDS = 20
MAX_CLAIM = 100
MAX_BATCH = 1000
# A message body may nest 64 levels (mopq.validation); the request wraps it in two more.
BODY_DEPTH = 66
BODY_BYTES = DEFAULT_MAX_BODY_BYTES + 64 * 1024


class JSONBody(Strict):
    """A JSON body: numbers must be numbers and strings strings, as the schema says."""

    model_config = ConfigDict(extra="forbid", regex_engine="python-re", frozen=True,
                              strict=True)


Key = Annotated[str, StringConstraints(min_length=1, max_length=512, pattern=r"^[^\x00]+$"),
                Expect("a non-empty string of at most 512 characters without NUL")]
Seconds = Annotated[float, Field(ge=0, le=MAX_VISIBILITY_TIMEOUT, allow_inf_nan=False),
                    Expect(f"a number of seconds from 0 to {MAX_VISIBILITY_TIMEOUT}")]
INT64 = (-2**63, 2**63 - 1)


def _numbers_in_range(value: Any, path: str) -> None:
    """JSON numbers over HTTP stay within 64-bit integers' range, floats included."""
    if isinstance(value, dict):
        for key, inner in value.items():
            _numbers_in_range(inner, f"{path}.{key}")
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            _numbers_in_range(inner, f"{path}[{index}]")
    elif isinstance(value, int | float) and not isinstance(value, bool) \
            and not INT64[0] <= value <= INT64[1]:
        raise ValueError(f"{path} is {value!r}; numbers in bodies are from -2**63 to 2**63 - 1")


def _library_body(value: dict[str, Any]) -> dict[str, Any]:
    """The body as the library checks it (mopq.validation.body), numbers in range."""
    try:
        _numbers_in_range(value, "body")
        return validation.body(value, DEFAULT_MAX_BODY_BYTES)
    except InvalidBody as problem:
        raise ValueError(str(problem)) from None


Body = Annotated[dict[str, Any], AfterValidator(_library_body),
                 WithJsonSchema({"x-schema": "MessageBody"}),  # openapi.py puts the $ref
                 Expect("a JSON object (the message body)")]


class MessageOptions(JSONBody):
    routing_key: Key = None
    delay: Seconds = 0
    priority: json_integer(-MAX_PRIORITY, MAX_PRIORITY) = 0
    expire: Seconds = None
    activity: Key = None

    def options(self) -> dict[str, Any]:
        return {"routing_key": self.routing_key, "delay": self.delay,
                "priority": self.priority, "expire": self.expire, "activity": self.activity}


class NewMessage(MessageOptions):
    """One message: its body and, optionally, how it is written."""

    body: Body


class NewMessages(JSONBody):
    """Several messages in one request (each with its own options)."""

    messages: Annotated[list[NewMessage], Field(min_length=1, max_length=MAX_BATCH),
                        Expect(f"a list of 1 to {MAX_BATCH} messages")]


def _one_or_many(value: Any) -> str:
    return "many" if isinstance(value, dict) and "messages" in value else "one"


Writing = Annotated[Annotated[NewMessage, Tag("one")] | Annotated[NewMessages, Tag("many")],
                    Discriminator(_one_or_many),
                    Expect("give {\"body\": {...}, options...} or {\"messages\": [...]}")]


class Claim(JSONBody):
    limit: json_integer(1, MAX_CLAIM) = 1
    visibility_timeout: Annotated[float, Field(gt=0, le=MAX_VISIBILITY_TIMEOUT,
                                               allow_inf_nan=False),
                                  Expect("a number of seconds, more than 0")] = 30
    routing_key: Key = None
    wait: Annotated[float, Field(ge=0, le=MAX_WAIT_SECONDS, allow_inf_nan=False),
                    Expect(f"a number of seconds from 0 to {MAX_WAIT_SECONDS}")] = 0


class Failure(JSONBody):
    reason: Annotated[str, StringConstraints(min_length=1, max_length=2000),
                      Expect("the reason, at most 2000 characters")] = "failed"


def _library_result(value: Any) -> Any:
    """A result as the library keeps it (mopq.history.checked_result), numbers in range."""
    try:
        _numbers_in_range(value, "result")
        return history.checked_result(value)
    except InvalidInput as problem:
        raise ValueError(str(problem)) from None


Result = Annotated[Any, AfterValidator(_library_result), WithJsonSchema({"x-schema": "BodyValue"}),
                   Expect(f"any JSON value of at most {history.MAX_RESULT_BYTES} bytes encoded")]
LeaseToken = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$"),
                       Expect("the lease token the claim answered (16 hexadecimal characters)")]


class Acknowledgement(JSONBody):
    """What the work produced, kept with the finished message (an empty body: nothing)."""

    result: Result = Field(None, description="Kept in history; GET …/messages/<id> answers it.")


class AcknowledgementOf(JSONBody):
    id: MessageId = Field(description="The message id the claim answered.")
    lease: LeaseToken = Field(description="The lease token the claim answered.")
    result: Result = Field(None, description="Kept in history; GET …/messages/<id> answers it.")


class Acknowledgements(JSONBody):
    """Several acknowledgements in one request, each as its DELETE would be."""

    messages: Annotated[list[AcknowledgementOf], Field(min_length=1, max_length=MAX_CLAIM),
                        Expect(f"a list of 1 to {MAX_CLAIM} {{id, lease, result}} objects")]


class LeaseChange(JSONBody):
    extend_by: Annotated[float, Field(gt=0, le=MAX_VISIBILITY_TIMEOUT, allow_inf_nan=False),
                         Expect("a number of seconds, more than 0")] = None
    progress: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False),
                        Expect("a fraction from 0 to 1")] = None
    note: Annotated[str, StringConstraints(max_length=200),
                    Expect("a note of at most 200 characters")] = None


TAG_KEY_PATTERN = rf"^[^$.\x00][^.\x00]{{0,{MAX_TAG_CHARS - 1}}}$"
TagKey = Annotated[str, StringConstraints(pattern=TAG_KEY_PATTERN)]
TagValue = Annotated[str, StringConstraints(max_length=MAX_TAG_CHARS, pattern=r"^[^\x00]*$")]


class Event(JSONBody):
    name: EventName
    value: Annotated[float, Field(allow_inf_nan=False), Expect("a finite number")] = 1
    tags: Annotated[dict[TagKey, TagValue], Field(max_length=MAX_TAGS),
                    WithJsonSchema({"type": "object", "maxProperties": MAX_TAGS,
                                    "propertyNames": {"pattern": TAG_KEY_PATTERN},
                                    "additionalProperties": {
                                        "type": "string", "maxLength": MAX_TAG_CHARS,
                                        "pattern": "^[^\\x00]*$"}}),
                    Expect(f"at most {MAX_TAGS} short string pairs, keys without '$' or '.'")
                    ] = Field(default_factory=dict)


class Events(JSONBody):
    events: Annotated[list[Event], Field(min_length=1, max_length=MAX_BATCH),
                      Expect(f"a list of 1 to {MAX_BATCH} events")]


Emitting = Annotated[Annotated[Event, Tag("one")] | Annotated[Events, Tag("many")],
                     Discriminator(lambda value: "many" if isinstance(value, dict)
                                   and "events" in value else "one"),
                     Expect("give {\"name\": ..., \"value\": ...} or {\"events\": [...]}")]


class KeyPath(Strict):
    name: QueueName = Field(description="The queue's name.")
    key: Key = Field(description="The client's key: the same key writes the message once.")


class MessagePath(Strict):
    name: QueueName = Field(description="The queue's name.")
    message_id: MessageId = Field(description="The message id (24 hexadecimal characters).")


class Lease(Strict):
    lease: LeaseToken = Field(description="The lease token the claim answered.")


class Waiting(Strict):
    wait: Annotated[int, Field(ge=0, le=MAX_WAIT_SECONDS), Expect(
        f"a whole number of seconds from 0 to {MAX_WAIT_SECONDS}")] = Field(
        0, description="Wait up to this long for the message to finish.")


# -- answers --------------------------------------------------------------------------------

WRITTEN = {"type": "object", "required": ["id", "created"],
           "properties": {"id": MESSAGE_ID, "created": {"type": "boolean"}}}
WRITTEN_MANY = {"type": "object", "required": ["ids"],
                "properties": {"ids": {"type": "array", "items": MESSAGE_ID}}}
CLAIMED = {"type": "object", "required": ["messages"], "properties": {"messages": {
    "type": "array", "items": {
        "type": "object", "required": ["id", "body", "attempts", "lease", "lease_expires_at"],
        "properties": {"id": MESSAGE_ID, "body": {"type": "object"},
                       "attempts": {"type": "integer"}, "lease": STRING,
                       "lease_expires_at": TIME, "routing_key": {"type": ["string", "null"]},
                       "priority": {"type": "integer"},
                       "activity": {"type": ["string", "null"]}}}}}}
SETTLED = {"type": "object", "required": ["id", "state"],
           "properties": {"id": MESSAGE_ID, "state": STRING}}
ACKNOWLEDGED_MANY = {"type": "object", "required": ["messages"], "properties": {"messages": {
    "type": "array", "items": {"oneOf": [
        {"type": "object", "required": ["id", "state"], "additionalProperties": False,
         "properties": {"id": MESSAGE_ID, "state": {"enum": ["done"]}}},
        {"type": "object", "required": ["id", "status", "error"], "additionalProperties": False,
         "properties": {"id": MESSAGE_ID, "status": {"enum": [404, 409]},
                        "error": STRING}}]}}}}
LEASED = {"type": "object", "required": ["id", "lease_expires_at"],
          "properties": {"id": MESSAGE_ID, "lease_expires_at": TIME}}
OUTCOME_ANSWER = {"type": "object", "required": ["id", "state"],
                  "properties": {"id": MESSAGE_ID, "state": STRING, "result": {},
                                 "last_error": {"type": ["string", "null"]},
                                 "done_at": TIME, "attempts": {"type": "integer"}}}
EMITTED = {"type": "object", "required": ["accepted"],
           "properties": {"accepted": {"type": "integer"}}}


# -- helpers --------------------------------------------------------------------------------

_queues_lock = threading.Lock()


def _queue(name: str, consumer: str | None = None) -> Queue:
    """One Queue per queue and caller in this process, so its claim candidates are reused."""
    queues = current_app.extensions.setdefault("mopq_http_queues", {})
    key = (name, consumer)
    with _queues_lock:
        found = queues.get(key)
        if found is None:
            found = queues[key] = Queue(name, db=store.database(), worker=consumer)
        return found


_error = errors.error


def _created(payload: dict[str, Any], created: bool = True) -> Response:
    response = jsonify(payload)
    response.status_code = 201 if created else 200
    return response


def _consumer_name() -> str:
    held = grants.grant(grants.CONSUMER)
    return f"http:{held.name if held else 'anonymous'}"


def _claimed_view(message: Any) -> dict[str, Any]:
    return {"id": str(message.id), "body": message.body, "attempts": message.attempts,
            "lease": message.lease_token, "lease_expires_at": message.lease_expires_at,
            "routing_key": message.routing_key, "priority": message.priority,
            "activity": message.activity}


# -- writing --------------------------------------------------------------------------------

@endpoint(blueprint, "/api/queues/<name>/messages/<key>", "PUT", access=PRODUCE, tag="queue",
          summary="Write a message once per client key", path=KeyPath, body=NewMessage,
          safe=False, idempotent=True, ok_status=201, also_ok=(200,), ok=WRITTEN,
          ok_description="Written now (201), or already written under this key (200, the "
                         "same id).", body_limit=BODY_BYTES, body_depth=BODY_DEPTH,
          description="Repeating the request changes nothing and answers the same id, while "
                      "the message waits and for as long as history keeps it once done.")
def put_message(name: str, key: str, body: NewMessage) -> Any:
    written, created = _queue(name).write_once(key, body.body, **body.options())
    return _created({"id": str(written), "created": created}, created)


@endpoint(blueprint, "/api/queues/<name>/messages", "POST", access=PRODUCE, tag="queue",
          summary="Write one message, or a batch, with server-made ids", path=QueuePath,
          body=Writing, safe=False, idempotent=False, ok_status=201,
          ok={"oneOf": [WRITTEN, WRITTEN_MANY]}, ok_description="The id, or the ids in order.",
          body_limit=BODY_BYTES, body_depth=BODY_DEPTH)
def post_messages(name: str, body: NewMessage | NewMessages) -> Any:
    queue = _queue(name)
    if isinstance(body, NewMessage):
        return _created({"id": str(queue.write(body.body, **body.options())), "created": True})
    ids = queue.write_many([_envelope(item) for item in body.messages])
    return _created({"ids": [str(message_id) for message_id in ids]})


def _envelope(item: NewMessage) -> Envelope:
    return Envelope(item.body, **item.options())


# -- consuming ------------------------------------------------------------------------------

@endpoint(blueprint, "/api/queues/<name>/claims", "POST", access=CONSUME, tag="queue",
          summary="Claim up to limit messages under a lease, waiting for one if asked",
          path=QueuePath, body=Claim, safe=False, idempotent=False, ok=CLAIMED,
          ok_description="The messages claimed (none if none came within wait).")
def claim(name: str, body: Claim) -> Any:
    messages = _queue(name, _consumer_name()).read(
        routing_key=body.routing_key, visibility_timeout=body.visibility_timeout,
        limit=body.limit, wait=body.wait)
    _claims().keep(messages)
    return jsonify({"messages": [_claimed_view(message) for message in messages]})


class Claims:
    """The messages this process handed out, by id and lease, to settle them without a read.

    A consumer's keep-alive connection stays on one gunicorn process, so its
    acknowledgement usually finds its claim here and costs one round trip to
    the engine instead of two; one on another process reads the message
    (``Queue.held``). The compare-and-set of the settling update decides
    either way: an entry is only a copy of what the claim answered.
    """

    MAX = 10_000

    def __init__(self) -> None:
        self._held: collections.OrderedDict[tuple[str, str], Any] = collections.OrderedDict()
        self._lock = threading.Lock()

    def keep(self, messages: list[Any]) -> None:
        with self._lock:
            for message in messages:
                self._held[(str(message.id), message.lease_token)] = message
            while len(self._held) > self.MAX:
                self._held.popitem(last=False)

    def take(self, message_id: str, lease: str) -> Any:
        with self._lock:
            return self._held.pop((message_id, lease), None)


def _claims() -> Claims:
    return current_app.extensions.setdefault("mopq_http_claims", Claims())


def _held(name: str, message_id: str, lease: str) -> Any:
    kept = _claims().take(message_id, lease)
    if kept is not None and kept.queue.name == name:
        return kept
    return _queue(name, _consumer_name()).held(message_id, lease)


@endpoint(blueprint, "/api/queues/<name>/messages/<message_id>", "DELETE", access=CONSUME,
          tag="queue", summary="Acknowledge a message: its work is done", path=MessagePath,
          query=Lease, body=Acknowledgement, body_optional=True,
          body_limit=history.MAX_RESULT_BYTES + 1024, body_depth=BODY_DEPTH, errors=(404, 409),
          safe=False, idempotent=True, ok=SETTLED,
          ok_description="Acknowledged (now, or by an earlier identical request).",
          error_descriptions={404: "No such message in this queue.",
                              409: "The lease is not held any more (it expired, or the "
                                   "message was acknowledged or failed under another); "
                                   "nothing was changed."})
def acknowledge(name: str, message_id: str, query: Lease, body: Acknowledgement) -> Any:
    status, why = _acknowledged(name, message_id, query.lease, body.result)
    if status != 200:
        return _error(status, why, parameter="message_id" if status == 404 else "lease")
    return jsonify({"id": message_id, "state": "done"})


def _acknowledged(name: str, message_id: str, lease: str, result: Any) -> tuple[int, str]:
    """Acknowledge under ``lease``: 200 if done (now, or by an earlier identical request),
    else 404 (no such message in this queue) or 409 (the lease is not held), with why."""
    try:
        _held(name, message_id, lease).delete(result)
    except (LeaseLost, MessageNotFound) as lost:
        return _refused(name, message_id, lease, lost)
    return 200, ""


def _refused(name: str, message_id: str, lease: str,
             lost: LeaseLost | MessageNotFound) -> tuple[int, str]:
    """What an acknowledgement that matched nothing answers: 200 if this lease's
    acknowledgement is already done, else 404 or 409."""
    queue = _queue(name, _consumer_name())
    if queue.acknowledged(message_id, lease):
        return 200, ""
    if isinstance(lost, MessageNotFound) and not queue.get(message_id) \
            and not history.finished(queue.db, ObjectId(message_id)):
        return 404, str(lost)
    return 409, str(lost)


@endpoint(blueprint, "/api/queues/<name>/acknowledgements", "POST", access=CONSUME,
          tag="queue", summary="Acknowledge several messages in one request", path=QueuePath,
          body=Acknowledgements, body_limit=BODY_BYTES, body_depth=BODY_DEPTH + 1, safe=False,
          idempotent=True, ok=ACKNOWLEDGED_MANY,
          ok_description="One answer per message, in order: done (now, or by an earlier "
                         "identical request), or the status its DELETE would have had (404: "
                         "no such message in this queue; 409: the lease is not held, nothing "
                         "was changed for it).",
          description="Each acknowledgement is exactly DELETE …/messages/<id>?lease=… with "
                      "its result, so repeating the request answers the same; one refused "
                      "leaves the others acknowledged. For a consumer that claimed several "
                      "(limit > 1): one request instead of one per message, and one engine "
                      "command for them (mopq.message.acknowledge_all).")
def acknowledge_many(name: str, body: Acknowledgements) -> Any:
    outcomes: list[tuple[int, str]] = [(200, "")] * len(body.messages)
    held = []
    for position, item in enumerate(body.messages):
        try:
            message = _held(name, item.id, item.lease)
        except (LeaseLost, MessageNotFound) as lost:
            outcomes[position] = _refused(name, item.id, item.lease, lost)
            continue
        message.result = item.result
        held.append((position, message))
    # Each one's own compare-and-set on its lease, sent as one engine command.
    for (position, _), lost in zip(held, acknowledge_all([m for _, m in held]),
                                   strict=True):
        if lost is not None:
            item = body.messages[position]
            outcomes[position] = _refused(name, item.id, item.lease, lost)
    return jsonify({"messages": [
        {"id": item.id, "state": "done"} if status == 200 else
        {"id": item.id, "status": status, "error": why}
        for item, (status, why) in zip(body.messages, outcomes, strict=True)]})


@endpoint(blueprint, "/api/queues/<name>/messages/<message_id>/failures", "POST",
          access=CONSUME, tag="queue", summary="Record a failed attempt with its reason",
          path=MessagePath, query=Lease, body=Failure, errors=(404, 409), safe=False,
          idempotent=False, ok=SETTLED,
          ok_description="pending: it will be retried after the backoff; dead: out of "
                         "attempts.", error_descriptions={
              404: "No such message in this queue.",
              409: "The lease is not held any more; nothing was changed."})
def fail(name: str, message_id: str, query: Lease, body: Failure) -> Any:
    try:
        state = _held(name, message_id, query.lease).fail(body.reason)
    except MessageNotFound as missing:
        return _error(404, str(missing), parameter="message_id")
    except LeaseLost as lost:
        return _error(409, str(lost), parameter="lease")
    return jsonify({"id": message_id, "state": state})


@endpoint(blueprint, "/api/queues/<name>/messages/<message_id>/lease", "POST",
          access=CONSUME, tag="queue", summary="Hold a lease longer, and report progress",
          path=MessagePath, query=Lease, body=LeaseChange, errors=(404, 409), safe=False,
          idempotent=False, ok=LEASED, ok_description="The lease's new end.",
          error_descriptions={404: "No such message in this queue.",
                              409: "The lease is not held any more; nothing was changed."})
def renew(name: str, message_id: str, query: Lease, body: LeaseChange) -> Any:
    try:
        message = _held(name, message_id, query.lease)
        if body.progress is not None:
            message.progress(body.progress, body.note)
        if body.extend_by is not None or body.progress is None:
            message.extend(body.extend_by)
    except MessageNotFound as missing:
        return _error(404, str(missing), parameter="message_id")
    except LeaseLost as lost:
        return _error(409, str(lost), parameter="lease")
    return jsonify({"id": message_id, "lease_expires_at": message.lease_expires_at})


# -- looking --------------------------------------------------------------------------------

@endpoint(blueprint, "/api/queues/<name>/messages/<message_id>", "GET", access=OUTCOME,
          tag="queue", summary="A message's state and, once done, its result",
          path=MessagePath, query=Waiting, errors=(404,), safe=True, idempotent=True,
          ok=OUTCOME_ANSWER, ok_description="Its state (done with its result, dead with "
                                            "its error, or still waiting).")
def outcome(name: str, message_id: str, query: Waiting) -> Any:
    queue = _queue(name)
    if query.wait:
        try:
            queue.result(message_id, timeout=query.wait)
        except Exception:  # noqa: BLE001 (dead, gone or still waiting: answered below)
            pass
    found = history.finished(store.database(), ObjectId(message_id))
    found = found if found is not None and found.get("queue") == name else None
    if found is not None:
        return jsonify({"id": message_id, "state": "done", "result": found.get("result"),
                        "done_at": found.get("done_at"), "attempts": found.get("attempts")})
    current = queue.get(message_id)
    if current is None:
        return _error(404, f"no message {message_id} in queue {name!r}: never written here, "
                           "expired, removed, or finished longer ago than history keeps.",
                      parameter="message_id")
    answer = {"id": message_id, "state": current["state"], "attempts": current["attempts"]}
    if current["state"] == DONE:  # acknowledged, not yet moved into history
        answer.update(result=current.get("result"), done_at=current.get("done_at"))
    if current["state"] == DEAD or current.get("last_error"):
        answer["last_error"] = current.get("last_error")
    return jsonify(answer)


# -- business events ------------------------------------------------------------------------

@endpoint(blueprint, "/api/events", "POST", access=PRODUCE, tag="queue",
          summary="Emit business events (one, or a batch)", body=Emitting, safe=False,
          idempotent=False, ok_status=202, ok=EMITTED, body_limit=BODY_BYTES,
          ok_description="Accepted into this process's business-log buffer.")
def emit_events(body: Event | Events) -> Any:
    events = [body] if isinstance(body, Event) else body.events
    accepted = sum(emit(event.name, event.value, event.tags,
                        uri=current_app.config["MOPQ_MONGODB_URI"],
                        database=current_app.config["MOPQ_DATABASE"]) for event in events)
    response = jsonify({"accepted": accepted})
    response.status_code = 202
    return response

