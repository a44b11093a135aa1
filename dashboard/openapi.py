"""The OpenAPI 3.1 document served at ``/openapi.json``, generated.

Operations, parameters and request bodies come from the declarations in
``dashboard.endpoints.REGISTRY`` (the same pydantic models that check every
request); the answers' schemas are written here, once each. A schemathesis
run (``tests/test_openapi_fuzz.py``) checks the app against the document both
ways: nothing it forbids is accepted, nothing it allows refused.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from pydantic import BaseModel, TypeAdapter

from mopq import __version__
from mopq.dashboard import audit
from mopq.dashboard.endpoints import (
    ADMIN,
    CONSUME,
    OUTCOME,
    PRODUCE,
    PUBLIC,
    READ,
    REGISTRY,
    Endpoint,
)

REF = "#/components/schemas/"
ERRORS = "#/components/responses/"


def ref(name: str) -> dict[str, str]:
    return {"$ref": REF + name}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema``, or null."""
    return {"anyOf": [schema, {"type": "null"}]}


STRING = {"type": "string"}
INTEGER = {"type": "integer"}
NUMBER = {"type": "number"}
TIME = {"type": "string", "format": "date-time"}
MESSAGE_ID = {"type": "string", "pattern": "^[0-9a-fA-F]{24}$"}


def page_of(item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": ["total", "page", "per_page", "items"],
            "properties": {"total": INTEGER, "page": INTEGER, "per_page": INTEGER,
                           "items": {"type": "array", "items": item}}}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


RANGE_ANSWER = {"resolution": STRING, "since": TIME, "until": TIME}

SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"],
              "properties": {"error": STRING, "parameter": nullable(STRING),
                             "detail": STRING}},
    "QueueStats": {"type": "object",
                   "required": ["pending", "inflight", "delayed", "dead", "written", "done",
                                "failed", "expired", "removed",
                                "oldest_pending_age_seconds"],
                   "properties": {**{key: INTEGER for key in (
                       "pending", "inflight", "delayed", "dead", "written", "done", "failed",
                       "expired", "removed", "claimed", "reclaimed", "retried", "cancelled")},
                       "oldest_pending_age_seconds": NUMBER}},
    "Stats": {"type": "object", "required": ["queues", "workers", "collector", "generated_at"],
              "properties": {
                  "queues": {"type": "object", "additionalProperties": ref("QueueStats")},
                  "workers": {"type": "object", "additionalProperties": INTEGER},
                  "collector": {"type": "object", "required": ["lag_seconds", "events_total"],
                                "properties": {"lag_seconds": NUMBER, "events_total": INTEGER,
                                               "lag_warning_seconds": NUMBER,
                                               "events_waiting": INTEGER,
                                               "collectors_alive": INTEGER}},
                  "generated_at": TIME}},
    "Queue": {"allOf": [ref("QueueStats"), {
        "type": "object", "required": ["name", "warnings"],
        "properties": {"name": STRING, "done_per_second": NUMBER,
                       "drain_seconds": nullable(NUMBER), "workers": INTEGER,
                       "failure_rate": NUMBER,
                       "warnings": {"type": "array", "items": STRING},
                       "paused": nullable({"type": "object", "properties": {
                           "who": STRING, "at": TIME, "reason": nullable(STRING)}})}}]},
    "Series": {"type": "object", "required": ["t"],
               "properties": {"t": {"type": "array", "items": TIME}},
               "additionalProperties": True},
    "QueueHistory": {"type": "object",
                     "required": ["queue", "resolution", "t", "counts", "duration_seconds"],
                     "properties": {
                         **RANGE_ANSWER, "queue": STRING,
                         "t": {"type": "array", "items": TIME},
                         "counts": {"type": "object", "additionalProperties": {
                             "type": "array", "items": INTEGER}},
                         "duration_seconds": {"type": "object", "additionalProperties": {
                             "type": "array", "items": nullable(NUMBER)}}}},
    "Throughput": {"type": "object", "required": ["t", "written", "acked", "failed"],
                   "properties": {"t": {"type": "array", "items": TIME},
                                  **{key: {"type": "array", "items": INTEGER}
                                     for key in ("written", "acked", "failed")}}},
    "Message": {"type": "object", "required": ["id", "queue", "state"],
                "properties": {"id": MESSAGE_ID, "queue": STRING,
                               "routing_key": nullable(STRING),
                               "body": {"type": "object", "additionalProperties": True},
                               "priority": INTEGER, "state": STRING, "attempts": INTEGER,
                               "created_at": TIME, "updated_at": TIME,
                               "visible_at": nullable(TIME), "expire_at": nullable(TIME),
                               "last_error": nullable(STRING),
                               "traceback": nullable(STRING),
                               "errors": {"type": "array", "items": {}},
                               "dead_at": nullable(TIME), "activity": nullable(STRING),
                               "dedupe_key": nullable(STRING),
                               "leased_by": nullable(STRING), "claimed_at": nullable(TIME),
                               "progress": nullable({"type": "object"}),
                               "log": {"type": "array", "items": {}},
                               "done_at": TIME, "duration": NUMBER,
                               "worker": nullable(STRING),
                               "result": {"description": "What the handler returned (JSON)."}}},
    "SearchResult": {"type": "object", "required": ["items", "count", "truncated"],
                     "properties": {"items": {"type": "array", "items": ref("Message")},
                                    "count": INTEGER, "truncated": {"type": "boolean"},
                                    "field": STRING, "values": {"type": "array", "items": {}},
                                    "queues": {"type": "array", "items": STRING}}},
    "Worker": {"type": "object", "required": ["id", "state"],
               "properties": {"id": STRING, "state": STRING,
                              "zombie_reason": nullable(STRING),
                              "queues": {"type": "array", "items": STRING},
                              "concurrency": nullable(INTEGER),
                              "hostname": nullable(STRING), "pid": nullable(INTEGER),
                              "started_at": nullable(TIME), "heartbeat_at": nullable(TIME),
                              "heartbeat_age_seconds": nullable(NUMBER),
                              "processed": INTEGER, "failed": INTEGER,
                              "current": {"type": "array", "items": {
                                  "type": "object", "properties": {
                                      "message_id": STRING, "queue": STRING,
                                      "since": nullable(TIME), "seconds": nullable(NUMBER),
                                      "progress": nullable({"type": "object"})}}},
                              "reported_state": nullable(STRING),
                              "control": nullable({"type": "object", "properties": {
                                  "command": STRING, "at": TIME, "by": {"type": "object"}}})}},
    "Activity": {"type": "object", "required": ["activity", "total", "done", "failed"],
                 "properties": {"activity": STRING, "total": INTEGER, "done": INTEGER,
                                "failed": INTEGER, "removed": INTEGER, "left": INTEGER,
                                "done_per_second": NUMBER,
                                "seconds_left": nullable(NUMBER),
                                "complete": {"type": "boolean"}}},
    "Metric": {"type": "object", "required": ["name", "resolution", "t", "count", "sum"],
               "properties": {**RANGE_ANSWER, "name": STRING,
                              "tags": {"type": "object", "additionalProperties": {
                                  "type": "array", "items": STRING}},
                              "t": {"type": "array", "items": TIME},
                              "count": {"type": "array", "items": INTEGER},
                              "sum": {"type": "array", "items": NUMBER},
                              "min": {"type": "array", "items": nullable(NUMBER)},
                              "max": {"type": "array", "items": nullable(NUMBER)},
                              "available_tags": {"type": "object", "additionalProperties": {
                                  "type": "array", "items": STRING}}}},
    "AuditEntry": {"type": "object", "required": ["id", "at", "action", "who", "target"],
                   "properties": {"id": STRING, "at": TIME,
                                  "action": {"type": "string", "enum": list(audit.ACTIONS)},
                                  "who": {"type": "object",
                                          "properties": {"name": STRING, "via": STRING}},
                                  "remote_addr": nullable(STRING),
                                  "user_agent": nullable(STRING),
                                  "target": {"type": "object"},
                                  "status": {"type": "string",
                                             "enum": ["started", "done", "failed"]},
                                  "count": nullable(INTEGER),
                                  "finished_at": nullable(TIME),
                                  "error": nullable(STRING)}},
    "Count": {"type": "object", "required": ["count"],
              "properties": {"count": {"type": "integer", "minimum": 0},
                             "audit_id": STRING}},
}

# What mopq.validation.body accepts, as JSON carries it over HTTP: objects whose keys do not
# start with '$' nor hold NUL, numbers within 64-bit integers' range, strings, lists, null,
# booleans. One schema with a list of types (no anyOf), so no branch is another's subset.
SCHEMAS["MessageBody"] = {
    "type": "object", "description": "A message body: a JSON object (at most 1 MiB encoded, "
                                     "64 levels deep, numbers from -2**63 to 2**63 - 1).",
    "propertyNames": {"pattern": "^([^$\u0000][^\u0000]*)?$"},
    "additionalProperties": ref("BodyValue")}
SCHEMAS["BodyValue"] = {
    "type": ["null", "boolean", "string", "number", "array", "object"],
    "minimum": -2**63, "maximum": 2**63 - 1, "items": ref("BodyValue"),
    "propertyNames": {"pattern": "^([^$\u0000][^\u0000]*)?$"},
    "additionalProperties": ref("BodyValue")}

RESPONSES = {
    "BadRequest": _json(ref("Error"), "A parameter or body field was refused; `parameter` "
                                       "names it and `error` says what is expected."),
    "Unauthorized": _json(ref("Error"), "Credentials are needed (basic auth or a bearer "
                                         "token)."),
    "Forbidden": _json(ref("Error"), "The credentials may not do this, admin actions are "
                                      "not enabled, or the CSRF token is missing."),
    "NotFound": _json(ref("Error"), "Nothing by that name or id."),
    "TooLarge": _json(ref("Error"), "The request body is larger than the limit."),
    "Unavailable": _json(ref("Error"), "The engine (MongoDB) is unreachable."),
}


STATUS_RESPONSES = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
                    413: "TooLarge", 503: "Unavailable"}
ADMIN_NOTE = ("Needs admin credentials: a bearer admin token, or basic auth of an admin user "
              "together with the page's signed CSRF token (the mopq_csrf cookie repeated in the "
              "X-CSRF-Token header). With no admin configured the answer is 403 saying how to "
              "enable it. Recorded in the audit log.")
SECURITY = {PUBLIC: [], READ: [{}, {"bearer": []}, {"basic": []}],
            ADMIN: [{"bearer": []}, {"basic": []}], PRODUCE: [{"bearer": []}],
            CONSUME: [{"bearer": []}], OUTCOME: [{"bearer": []}, {"basic": []}, {}]}


def _clean(schema: Any) -> Any:
    """A pydantic schema as the document shows it: no titles, no ``default: null``.

    A field that may be left out but not sent as null shows no default at all.
    """
    if isinstance(schema, dict):
        if "x-schema" in schema:  # a named component (pydantic cannot $ref outside its own)
            return ref(schema["x-schema"])
        cleaned = {key: _clean(value) for key, value in schema.items()
                   if key != "title" and not (key == "default" and value is None)}
        if "$ref" in cleaned:
            cleaned["$ref"] = cleaned["$ref"].replace("#/$defs/", REF)
        return cleaned
    if isinstance(schema, list):
        return [_clean(item) for item in schema]
    return schema


def _parameters(model: type[BaseModel] | None, where: str) -> list[dict[str, Any]]:
    if model is None:
        return []
    properties = model.model_json_schema()["properties"]
    found = []
    for name, info in model.model_fields.items():
        schema = _clean(copy.deepcopy(properties[name]))
        description = schema.pop("description", "")
        examples = schema.pop("examples", None)
        parameter = {"name": name, "in": where, "required": where == "path" or info.is_required(),
                     "schema": schema, "description": description}
        if examples:
            parameter["example"] = examples[0]
        found.append(parameter)
    return found


def _body_schema(declared: Any, components: dict[str, Any]) -> dict[str, Any]:
    schema = TypeAdapter(declared).json_schema(ref_template=REF + "{model}")
    for name, definition in schema.pop("$defs", {}).items():
        components[name] = _clean(definition)
    if isinstance(declared, type) and issubclass(declared, BaseModel):
        components[declared.__name__] = _clean(schema)
        return ref(declared.__name__)
    return _clean(schema)


def _operation(spec: Endpoint, components: dict[str, Any]) -> dict[str, Any]:
    statuses = {400, 503} if spec.name != "openapi_document" else {400}
    if spec.access != PUBLIC:
        statuses.add(401)
    if spec.access != READ and spec.access != PUBLIC:
        statuses.add(403)
    if spec.body is not None:
        statuses.add(413)
    responses: dict[str, Any] = {str(status): {
        "description": spec.ok_description, "content": {spec.ok_media: {"schema": spec.ok}}}
        for status in (spec.ok_status, *spec.also_ok)}
    for status in sorted(statuses | set(spec.errors)):
        described = spec.error_descriptions.get(status)
        if described or status not in STATUS_RESPONSES:
            responses[str(status)] = _json(ref("Error"), described or "Refused.")
        else:
            responses[str(status)] = {"$ref": ERRORS + STATUS_RESPONSES[status]}
    operation: dict[str, Any] = {
        "x-access": spec.access, "operationId": spec.name, "summary": spec.summary,
        "tags": [spec.tag],
        "parameters": _parameters(spec.path, "path") + _parameters(spec.query, "query"),
        "security": SECURITY[spec.access], "responses": responses, **spec.extra}
    classes = None
    if spec.safe is not None:
        operation["x-safe"], operation["x-idempotent"] = spec.safe, spec.idempotent
        classes = (f"{'Safe' if spec.safe else 'Not safe'}, "
                   f"{'idempotent' if spec.idempotent else 'not idempotent'}.")
    described = " ".join(filter(None, [classes, spec.description,
                                       ADMIN_NOTE if spec.access == ADMIN else None]))
    if described:
        operation["description"] = described
    if spec.access == ADMIN:
        operation["parameters"].append({
            "name": "X-CSRF-Token", "in": "header", "required": False, "schema": STRING,
            "description": "Needed with basic auth: the page's csrf-token."})
    if spec.body is not None:
        operation["requestBody"] = {
            "required": not spec.body_optional,
            "content": {"application/json": {"schema": _body_schema(spec.body, components)}}}
    return operation


@functools.cache
def document() -> dict[str, Any]:
    components = copy.deepcopy(SCHEMAS)
    paths: dict[str, Any] = {}
    for spec in REGISTRY:
        paths.setdefault(spec.openapi_path, {})[spec.method.lower()] = _operation(spec,
                                                                               components)
    return {
        "openapi": "3.1.0",
        "info": {"title": "mopq dashboard API", "version": __version__,
                 "description": "Queues, failed messages, workers, activities and business "
                                "metrics of mopq, read from MongoDB. Every parameter is "
                                "checked: unknown or operator-shaped input gets a 400 that "
                                "names the parameter."},
        "paths": paths,
        "components": {
            "schemas": components, "responses": RESPONSES,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                "basic": {"type": "http", "scheme": "basic"}},
        },
        "tags": [{"name": "read"}, {"name": "admin"},
                 {"name": "queue", "description": "The queue over HTTP, for producer and "
                                                  "consumer tokens (MOPQ_PRODUCER_TOKENS, "
                                                  "MOPQ_CONSUMER_TOKENS)."},
                 {"name": "monitoring"}],
    }
