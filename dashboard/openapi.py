"""The OpenAPI 3.0 document served at ``/openapi.json``.

It describes every route of ``dashboard.api``: parameters with the limits
``dashboard.params`` enforces, response schemas, and the error answers
(400 bad input, 401 no credentials, 403 not allowed, 404 not found, 413 too
large, 503 engine unreachable). ``tests/test_api.py`` fails when a route under
``/api`` is registered without being described here, and a schemathesis run
(``tests/test_openapi_fuzz.py``) checks the app against it.
"""

from __future__ import annotations

import functools
from typing import Any

from collectors.counters import HOUR, MINUTE, SECOND
from dashboard import params as p
from mopq import __version__
from mopq.business import MAX_NAME_LENGTH
from mopq.schema import MAX_QUEUE_NAME_LENGTH

REF = "#/components/schemas/"
ERRORS = "#/components/responses/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF + name}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


STRING = {"type": "string"}
INTEGER = {"type": "integer"}
NUMBER = {"type": "number"}
TIME = {"type": "string", "format": "date-time"}
QUEUE_NAME = {"type": "string", "minLength": 1, "maxLength": MAX_QUEUE_NAME_LENGTH,
              "pattern": "^[^$\\u0000]+$", "example": "emails"}
MESSAGE_ID = {"type": "string", "pattern": "^[0-9a-fA-F]{24}$",
              "example": "65f0c0ffee00000000000001"}
MOMENT = {"type": "string", "maxLength": 40,
          "description": "ISO-8601 (naive means UTC), `now`, or relative to now: `-30s`, "
                         "`-15m`, `-1h`, `-90d`, `-2w`.",
          }


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


def _path(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema,
            "description": description}


PAGE = _query("page", {"type": "integer", "minimum": 1, "maximum": p.MAX_PAGE, "default": 1},
              "Page number, from 1.")


def _per_page(default: int) -> dict[str, Any]:
    return _query("per_page", {"type": "integer", "minimum": 1, "maximum": p.MAX_PER_PAGE,
                               "default": default}, "Items per page.")


RANGE = [
    _query("resolution", {"type": "string", "enum": [SECOND, MINUTE, HOUR], "default": MINUTE},
           "Bucket width: s (kept 1 hour), m (kept 2 days), h (kept 90 days)."),
    _query("since", {**MOMENT, "example": "-1h"},
           "Start of the range (default: until minus 5 minutes, 1 hour or 1 day by "
           "resolution). At most 1 hour (s), 2 days (m) or 90 days (h) before until."),
    _query("until", {**MOMENT, "example": "now"}, "End of the range (default: now)."),
]


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _page_of(item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": ["total", "page", "per_page", "items"],
            "properties": {"total": INTEGER, "page": INTEGER, "per_page": INTEGER,
                           "items": {"type": "array", "items": item}}}


def _read(summary: str, ok: dict[str, Any], parameters: list[dict[str, Any]] | None = None,
          not_found: bool = False, tag: str = "read") -> dict[str, Any]:
    responses: dict[str, Any] = {"200": ok, "400": {"$ref": ERRORS + "BadRequest"},
                                 "401": {"$ref": ERRORS + "Unauthorized"},
                                 "503": {"$ref": ERRORS + "Unavailable"}}
    if not_found:
        responses["404"] = {"$ref": ERRORS + "NotFound"}
    return {"summary": summary, "tags": [tag], "parameters": parameters or [],
            "security": [{}, {"bearer": []}, {"basic": []}], "responses": responses}


def _admin(summary: str, body: dict[str, Any], parameters: list[dict[str, Any]] | None = None,
           conflict: str | None = None) -> dict[str, Any]:
    operation = {
        "summary": summary, "tags": ["admin"],
        "description": "Needs admin credentials: a bearer admin token, or basic auth of an "
                       "admin user together with the page's signed CSRF token (the mopq_csrf "
                       "cookie repeated in the X-CSRF-Token header). With no admin configured "
                       "the answer is 403 saying how to enable it. Recorded in the audit log.",
        "parameters": [*(parameters or []),
                       {"name": "X-CSRF-Token", "in": "header", "required": False,
                        "schema": STRING,
                        "description": "Needed with basic auth (double-submit of the "
                                       "mopq_csrf cookie)."}],
        "security": [{"bearer": []}, {"basic": []}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": {"200": _json(_ref("Count"), "How many messages changed."),
                      "400": {"$ref": ERRORS + "BadRequest"},
                      "401": {"$ref": ERRORS + "Unauthorized"},
                      "403": {"$ref": ERRORS + "Forbidden"},
                      "413": {"$ref": ERRORS + "TooLarge"},
                      "503": {"$ref": ERRORS + "Unavailable"}},
    }
    if conflict:
        operation["responses"]["409"] = _json(_ref("Error"), conflict)
    return operation


SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"],
              "properties": {"error": STRING, "parameter": _nullable(STRING),
                             "detail": STRING}},
    "QueueStats": {"type": "object",
                   "required": ["pending", "inflight", "delayed", "dead", "written", "done",
                                "failed", "expired", "removed",
                                "oldest_pending_age_seconds"],
                   "properties": {**{key: INTEGER for key in (
                       "pending", "inflight", "delayed", "dead", "written", "done", "failed",
                       "expired", "removed", "claimed", "reclaimed", "retried")},
                       "oldest_pending_age_seconds": NUMBER}},
    "Stats": {"type": "object", "required": ["queues", "workers", "collector", "generated_at"],
              "properties": {
                  "queues": {"type": "object", "additionalProperties": _ref("QueueStats")},
                  "workers": {"type": "object", "additionalProperties": INTEGER},
                  "collector": {"type": "object", "required": ["lag_seconds", "events_total"],
                                "properties": {"lag_seconds": NUMBER, "events_total": INTEGER,
                                               "events_waiting": INTEGER,
                                               "collectors_alive": INTEGER}},
                  "generated_at": TIME}},
    "Queue": {"allOf": [_ref("QueueStats"), {
        "type": "object", "required": ["name", "warnings"],
        "properties": {"name": STRING, "done_per_second": NUMBER,
                       "drain_seconds": _nullable(NUMBER), "workers": INTEGER,
                       "failure_rate": NUMBER,
                       "warnings": {"type": "array", "items": STRING}}}]},
    "Series": {"type": "object", "required": ["t"],
               "properties": {"t": {"type": "array", "items": TIME}},
               "additionalProperties": True},
    "QueueHistory": {"type": "object",
                     "required": ["queue", "resolution", "t", "counts", "duration_seconds"],
                     "properties": {
                         "queue": STRING, "resolution": STRING,
                         "t": {"type": "array", "items": TIME},
                         "counts": {"type": "object", "additionalProperties": {
                             "type": "array", "items": INTEGER}},
                         "duration_seconds": {"type": "object", "additionalProperties": {
                             "type": "array", "items": _nullable(NUMBER)}}}},
    "Throughput": {"type": "object", "required": ["t", "written", "acked", "failed"],
                   "properties": {"t": {"type": "array", "items": TIME},
                                  **{key: {"type": "array", "items": INTEGER}
                                     for key in ("written", "acked", "failed")}}},
    "Message": {"type": "object", "required": ["id", "queue", "state"],
                "properties": {"id": MESSAGE_ID, "queue": STRING,
                               "routing_key": _nullable(STRING),
                               "body": {"type": "object", "additionalProperties": True},
                               "priority": INTEGER, "state": STRING, "attempts": INTEGER,
                               "created_at": TIME, "updated_at": TIME,
                               "visible_at": _nullable(TIME), "expire_at": _nullable(TIME),
                               "last_error": _nullable(STRING),
                               "traceback": _nullable(STRING),
                               "errors": {"type": "array", "items": {}},
                               "dead_at": _nullable(TIME), "activity": _nullable(STRING),
                               "dedupe_key": _nullable(STRING),
                               "leased_by": _nullable(STRING), "claimed_at": _nullable(TIME),
                               "progress": _nullable({"type": "object"}),
                               "log": {"type": "array", "items": {}}}},
    "SearchResult": {"type": "object", "required": ["items", "count", "truncated"],
                     "properties": {"items": {"type": "array", "items": _ref("Message")},
                                    "count": INTEGER, "truncated": {"type": "boolean"},
                                    "field": STRING, "values": {"type": "array", "items": {}},
                                    "queues": {"type": "array", "items": STRING}}},
    "Worker": {"type": "object", "required": ["id", "state"],
               "properties": {"id": STRING, "state": STRING,
                              "zombie_reason": _nullable(STRING),
                              "queues": {"type": "array", "items": STRING},
                              "concurrency": _nullable(INTEGER),
                              "hostname": _nullable(STRING), "pid": _nullable(INTEGER),
                              "started_at": _nullable(TIME), "heartbeat_at": _nullable(TIME),
                              "heartbeat_age_seconds": _nullable(NUMBER),
                              "processed": INTEGER, "failed": INTEGER,
                              "current": {"type": "array", "items": {"type": "object"}}}},
    "Activity": {"type": "object", "required": ["activity", "total", "done", "failed"],
                 "properties": {"activity": STRING, "total": INTEGER, "done": INTEGER,
                                "failed": INTEGER, "removed": INTEGER, "left": INTEGER,
                                "done_per_second": NUMBER,
                                "seconds_left": _nullable(NUMBER),
                                "complete": {"type": "boolean"}}},
    "Metric": {"type": "object", "required": ["name", "resolution", "t", "count", "sum"],
               "properties": {"name": STRING, "resolution": STRING,
                              "tags": {"type": "object", "additionalProperties": STRING},
                              "t": {"type": "array", "items": TIME},
                              "count": {"type": "array", "items": INTEGER},
                              "sum": {"type": "array", "items": NUMBER},
                              "min": {"type": "array", "items": _nullable(NUMBER)},
                              "max": {"type": "array", "items": _nullable(NUMBER)},
                              "available_tags": {"type": "object", "additionalProperties": {
                                  "type": "array", "items": STRING}}}},
    "AuditEntry": {"type": "object", "required": ["id", "at", "action", "who", "target"],
                   "properties": {"id": STRING, "at": TIME,
                                  "action": {"type": "string",
                                             "enum": ["retry", "delete", "purge"]},
                                  "who": {"type": "object",
                                          "properties": {"name": STRING, "via": STRING}},
                                  "remote_addr": _nullable(STRING),
                                  "user_agent": _nullable(STRING),
                                  "target": {"type": "object"},
                                  "status": {"type": "string",
                                             "enum": ["started", "done", "failed"]},
                                  "count": _nullable(INTEGER),
                                  "finished_at": _nullable(TIME),
                                  "error": _nullable(STRING)}},
    "Count": {"type": "object", "required": ["count"],
              "properties": {"count": {"type": "integer", "minimum": 0},
                             "audit_id": STRING}},
    "FailedSelection": {
        "description": "Either ids, or all_matching with an optional queue and error "
                       "substring. Only dead messages are acted on.",
        "oneOf": [
            {"type": "object", "required": ["ids"], "additionalProperties": False,
             "properties": {"ids": {"type": "array", "minItems": 1, "maxItems": p.MAX_IDS,
                                    "items": MESSAGE_ID},
                            "state": {"type": "string", "enum": ["dead"]}}},
            {"type": "object", "required": ["all_matching"], "additionalProperties": False,
             "properties": {"all_matching": {"type": "boolean", "enum": [True]},
                            "queue": QUEUE_NAME,
                            "error": {"type": "string", "maxLength": p.MAX_TEXT},
                            "state": {"type": "string", "enum": ["dead"]}}},
        ]},
    "PurgeConfirm": {"type": "object", "required": ["confirm"], "additionalProperties": False,
                     "properties": {"confirm": {"type": "string",
                                                "description": "The queue's name again."}}},
}

RESPONSES = {
    "BadRequest": _json(_ref("Error"), "A parameter or body field was refused; `parameter` "
                                       "names it and `error` says what is expected."),
    "Unauthorized": _json(_ref("Error"), "Credentials are needed (basic auth or a bearer "
                                         "token)."),
    "Forbidden": _json(_ref("Error"), "The credentials may not do this, admin actions are "
                                      "not enabled, or the CSRF token is missing."),
    "NotFound": _json(_ref("Error"), "Nothing by that name or id."),
    "TooLarge": _json(_ref("Error"), "The request body is larger than the limit."),
    "Unavailable": _json(_ref("Error"), "The engine (MongoDB) is unreachable."),
}


def _paths() -> dict[str, Any]:
    queue_path = _path("name", QUEUE_NAME, "The queue's name.")
    return {
        "/api/stats": {"get": _read("Totals per queue, workers by state, collector lag",
                                    _json(_ref("Stats"), "The stats document."))},
        "/api/queues": {"get": _read(
            "Every queue with rates, time to drain and warnings",
            _json(_page_of(_ref("Queue")), "A page of queues."), [PAGE, _per_page(100)])},
        "/api/queues/{name}": {"get": _read(
            "One queue and its history",
            _json({"type": "object", "required": ["queue", "history"],
                   "properties": {"queue": _ref("Queue"), "history": _ref("QueueHistory")}},
                  "The queue and its counts per bucket."),
            [queue_path, *RANGE], not_found=True)},
        "/api/queues/{name}/purge": {"post": _admin(
            "Remove every pending, delayed and dead message of a queue",
            _ref("PurgeConfirm"), [queue_path],
            conflict="confirm is not this queue's name; nothing was removed.")},
        "/api/throughput": {"get": _read(
            "Written / acked / failed per second",
            _json(_ref("Throughput"), "One value per second, oldest first."),
            [_query("seconds", {"type": "integer", "minimum": p.THROUGHPUT_SECONDS[0],
                                "maximum": p.THROUGHPUT_SECONDS[1], "default": 300},
                    "How many seconds back."),
             _query("queue", QUEUE_NAME, "Only this queue (default: all).")])},
        "/api/failed": {"get": _read(
            "Dead or failing messages, newest failure first",
            _json(_page_of(_ref("Message")), "A page of messages."),
            [_query("queue", QUEUE_NAME, "Only this queue."),
             _query("error", {"type": "string", "maxLength": p.MAX_TEXT},
                    "Only messages whose last error contains this text (any case)."),
             _query("state", {"type": "string", "enum": ["dead", "failing"],
                              "default": "dead"},
                    "dead: out of attempts; failing: waiting for a retry after an error."),
             PAGE, _per_page(p.DEFAULT_PER_PAGE)])},
        "/api/failed/retry": {"post": _admin(
            "Put dead messages back to pending with attempts reset",
            _ref("FailedSelection"))},
        "/api/failed/delete": {"post": _admin("Delete dead messages (counted as removed)",
                                              _ref("FailedSelection"))},
        "/api/messages/{message_id}": {"get": _read(
            "One message by id", _json(_ref("Message"), "The message."),
            [_path("message_id", MESSAGE_ID, "The message id (24 hex characters).")],
            not_found=True)},
        "/api/search": {"get": _read(
            "Find messages by id, or by a declared body field",
            _json(_ref("SearchResult"), "At most 100 messages."),
            [_query("id", MESSAGE_ID, "A message id. Give id or q."),
             _query("q", {"type": "string", "maxLength": p.MAX_VALUE + 80,
                          "pattern": "^[A-Za-z_][A-Za-z0-9_.]*=.+$",
                          "example": "order_id=42"},
                    "field=value on a body field declared searchable "
                    "(mopq.search.declare_search_field); a number also matches its string "
                    "form."),
             _query("queue", QUEUE_NAME, "Only this queue.")])},
        "/api/search/fields": {"get": _read(
            "Body fields declared searchable, per queue",
            _json({"type": "object", "required": ["fields"],
                   "properties": {"fields": {"type": "object", "additionalProperties": {
                       "type": "array", "items": STRING}}}}, "Fields per queue."))},
        "/api/workers": {"get": _read(
            "Workers: identity, state, current messages, heartbeat",
            _json(_page_of(_ref("Worker")), "A page of workers."), [PAGE, _per_page(100)])},
        "/api/activities": {"get": _read(
            "Progress of every activity",
            _json(_page_of(_ref("Activity")), "A page of activities."),
            [PAGE, _per_page(100)])},
        "/api/metrics": {"get": _read(
            "Names of the business events counted",
            _json(_page_of(STRING), "A page of event names."),
            [PAGE, _per_page(p.MAX_PER_PAGE)])},
        "/api/metrics/{name}": {"get": _read(
            "Count, sum, min and max per bucket of one business event",
            _json(_ref("Metric"), "The series."),
            [_path("name", {"type": "string", "minLength": 1, "maxLength": MAX_NAME_LENGTH,
                            "example": "order.paid"}, "The event name given to emit()."),
             *RANGE,
             _query("tags", {"type": "string", "example": "region:cn"},
                    "Only events with these tags: key:value pairs separated by commas.")],
            not_found=True)},
        "/api/audit": {"get": _read(
            "Admin actions, newest first",
            _json(_page_of(_ref("AuditEntry")), "A page of the audit log."),
            [PAGE, _per_page(p.DEFAULT_PER_PAGE)])},
        "/metrics": {"get": {
            **_read("Prometheus metrics", {
                "description": "Text exposition format 0.0.4.",
                "content": {"text/plain": {"schema": STRING}}}, tag="monitoring")}},
        "/healthz": {"get": {
            "summary": "Is the engine reachable", "tags": ["monitoring"], "security": [],
            "responses": {
                "200": _json({"type": "object", "properties": {"status": STRING}}, "ok"),
                "503": _json({"type": "object", "properties": {"status": STRING,
                                                               "error": STRING}},
                             "The engine is unreachable.")}}},
        "/openapi.json": {"get": {
            "summary": "This document", "tags": ["monitoring"], "security": [],
            "responses": {"200": _json({"type": "object"}, "The OpenAPI document.")}}},
    }


@functools.cache
def document() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {"title": "mopq dashboard API", "version": __version__,
                 "description": "Queues, failed messages, workers, activities and business "
                                "metrics of mopq, read from MongoDB. Every parameter is "
                                "checked: unknown or operator-shaped input gets a 400 that "
                                "names the parameter."},
        "paths": _paths(),
        "components": {
            "schemas": SCHEMAS, "responses": RESPONSES,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                "basic": {"type": "http", "scheme": "basic"}},
        },
        "tags": [{"name": "read"}, {"name": "admin"}, {"name": "monitoring"}],
    }
