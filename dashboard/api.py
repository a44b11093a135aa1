"""The JSON API under ``/api``, plus ``/metrics``, ``/openapi.json`` and ``/healthz``.

Every endpoint is declared once with ``dashboard.endpoints.endpoint``: who
may call it, its parameters and body as models (``dashboard.parameters``),
and its answers. The whole request is checked first (unknown keys, wrong
types, out-of-range values and operator-shaped input get a 400 naming the
parameter) and only then is MongoDB read through ``dashboard.queries``, so a
refused request has touched nothing. Lists are paginated. When the engine
cannot be reached every endpoint answers 503 with a JSON reason, never a
stack trace. Admin actions (retry, delete, purge) need admin credentials
and are recorded in the audit log.

Datetimes are written as ISO-8601 UTC strings (``init_json``).
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from bson import ObjectId
from flask import Blueprint, Flask, Response, jsonify, request
from flask.json.provider import DefaultJSONProvider
from pymongo.errors import PyMongoError
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import BaseConverter

from mopq import admin, schema
from mopq.clock import utcnow
from mopq.collectors import series
from mopq.collectors.stats import worker_rows
from mopq.dashboard import audit, errors, openapi, prometheus, queries, stats_cache, store
from mopq.dashboard import parameters as p
from mopq.dashboard.auth import current_identity
from mopq.dashboard.endpoints import ADMIN, PUBLIC, endpoint
from mopq.dashboard.openapi import ref

blueprint = Blueprint("api", __name__)

JSON_PREFIX = "/api/"
JSON_PATHS = ("/openapi.json", "/metrics", "/healthz")
log = logging.getLogger("mopq.dashboard")


# -- JSON: datetimes as ISO-8601 UTC ---------------------------------------------------------

def _default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC).isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    try:
        return DefaultJSONProvider.default(value)
    except TypeError:
        # A BSON type a non-mopq client wrote (Decimal128, Timestamp, Regex...):
        # shown as text rather than failing the whole answer.
        return str(value)


class ApiJSONProvider(DefaultJSONProvider):
    """Flask's JSON, with datetimes as ISO-8601 UTC strings and ObjectIds as hex."""

    default = staticmethod(_default)


def init_json(app: Flask) -> None:
    app.json = ApiJSONProvider(app)


def _json_for_routing_errors(error: HTTPException) -> Any:
    """404 / 405 under the API's paths as JSON; other paths keep Flask's page."""
    if request.path.startswith(JSON_PREFIX) or request.path in JSON_PATHS:
        response = jsonify({"error": error.description or error.name})
        response.status_code = error.code or 500
        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            response.headers["Allow"] = ", ".join(error.valid_methods)
        return response
    return error


class EventNameConverter(BaseConverter):
    """Any name ``emit()`` accepts, slashes included (``http/requests``), sent percent-encoded."""

    regex = ".+"
    part_isolating = False


@blueprint.record_once
def _on_register(state: Any) -> None:
    init_json(state.app)
    state.app.url_map.converters["event_name"] = EventNameConverter
    for error in (NotFound, MethodNotAllowed):
        if error not in state.app.error_handler_spec[None].get(error.code, {}):
            state.app.register_error_handler(error, _json_for_routing_errors)


# -- errors ---------------------------------------------------------------------------------

errors.answer_in_json(blueprint)
_error = errors.error


# -- helpers --------------------------------------------------------------------------------


def paged(items: list[Any], page: int, per_page: int) -> dict[str, Any]:
    """One page of ``items`` as every list endpoint answers it."""
    start = (page - 1) * per_page
    return {"total": len(items), "page": page, "per_page": per_page,
            "items": items[start:start + per_page]}


def _who() -> dict[str, str]:
    identity = current_identity()
    return {"name": identity.name, "via": identity.via}


def audited(action: str, target: dict[str, Any], run: Callable[[Any], int]) -> Response:
    """Run an admin action recorded in the audit log as the signed-in user's; answer its count."""
    db = store.database()
    count, record = audit.recorded(db, action, target, _who(), run, request.remote_addr,
                                   request.headers.get("User-Agent"))
    stats_cache.cache().invalidate()
    return jsonify({"count": count, "audit_id": str(record)})


def _range_answer(resolution: str, since: dt.datetime, until: dt.datetime) -> dict[str, Any]:
    return {"resolution": resolution, "since": since, "until": until}


# -- read endpoints -------------------------------------------------------------------------

@endpoint(blueprint, "/api/stats", summary="Totals per queue, workers by state, collector lag",
          ok=ref("Stats"), ok_description="The stats document.")
def stats() -> Any:
    return Response(stats_cache.stats_json(store.database()), mimetype="application/json")


@endpoint(blueprint, "/api/queues", summary="Every queue with rates, time to drain and warnings",
          query=p.PagedByHundred, ok=openapi.page_of(ref("Queue")),
          ok_description="A page of queues.")
def queue_list(query: p.PagedByHundred) -> Any:
    db = store.database()
    rows = series.queues(db, stats=stats_cache.stats(db))
    return jsonify(paged(rows, query.page, query.per_page))


@endpoint(blueprint, "/api/queues/<name>", summary="One queue and its history",
          path=p.QueuePath, query=p.TimeRange, errors=(404,),
          ok={"type": "object", "required": ["queue", "history"],
              "properties": {"queue": ref("Queue"), "history": ref("QueueHistory")}},
          ok_description="The queue and its counts per bucket.")
def queue_detail(name: str, query: p.TimeRange) -> Any:
    resolution, since, until = p.time_range(query, utcnow())
    db = store.database()
    current = stats_cache.stats(db)["queues"].get(name)
    if current is None:
        return _error(404, f"no queue named {name!r} has messages or counts.",
                      parameter="name")
    row = series.queues(db, utcnow(), {"queues": {name: current}})[0]
    history = series.queue_history(db, name, resolution, since, until)
    return jsonify({"queue": row, "history": {**history,
                                              **_range_answer(resolution, since, until)}})


@endpoint(blueprint, "/api/throughput", summary="Written / acked / failed per second",
          query=p.ThroughputParameters, ok=ref("Throughput"),
          ok_description="One value per second, oldest first.")
def throughput(query: p.ThroughputParameters) -> Any:
    return jsonify(series.throughput(store.database(), query.seconds, queue=query.queue))


@endpoint(blueprint, "/api/failed", summary="Dead or failing messages, newest failure first",
          query=p.FailedParameters, ok=openapi.page_of(ref("Message")),
          ok_description="A page of messages.")
def failed(query: p.FailedParameters) -> Any:
    return jsonify(queries.failed(store.database(), query.queue, query.error or None,
                                  query.state, query.page, query.per_page))


@endpoint(blueprint, "/api/messages/<message_id>", summary="One message by id",
          path=p.MessagePath, errors=(404,), ok=ref("Message"), ok_description="The message.")
def message(message_id: str) -> Any:
    found = queries.message(store.database(), message_id.lower())
    if found is None:
        return _error(404, f"no message with id {message_id}; it may have been acknowledged "
                           "and removed.", parameter="message_id")
    return jsonify(found)


@endpoint(blueprint, "/api/search", summary="Find messages by id, or by a declared body field",
          query=p.SearchParameters, errors=(404,), ok=ref("SearchResult"),
          ok_description="At most 100 messages.",
          error_descriptions={404: "The field is not declared searchable for the queue (or "
                                   "any queue)."})
def search(query: p.SearchParameters) -> Any:
    db = store.database()
    field, equals, wanted = query.q.partition("=")
    if not equals:
        items = [m for m in queries.search(db, message_id=query.q.lower())
                 if query.queue is None or m.get("queue") == query.queue]
        return jsonify({"items": items, "count": len(items), "truncated": False})
    declared = queries.declared_search_fields(db)
    if query.queue is not None:
        scope = [query.queue] if field in declared.get(query.queue, []) else []
        where = f"queue {query.queue!r} (declared: " \
                f"{', '.join(declared.get(query.queue, [])) or 'none'})"
    else:
        scope = [name for name, fields in declared.items() if field in fields]
        where = "any queue"
    if not scope:
        return _error(404, f"{field!r} is not a declared search field of {where}; declare it "
                           "with mopq.search.declare_search_field.", parameter="q")
    values = p.search_values(wanted)
    items: list[dict[str, Any]] = []
    for name in scope:
        items += queries.search(db, field=field, value=values, queue=name)
        if len(items) >= queries.MAX_SEARCH_RESULTS:
            break
    truncated = len(items) >= queries.MAX_SEARCH_RESULTS
    items = items[:queries.MAX_SEARCH_RESULTS]
    return jsonify({"items": items, "count": len(items), "truncated": truncated,
                    "field": field, "values": values, "queues": scope})


@endpoint(blueprint, "/api/search/fields", summary="Body fields declared searchable, per queue",
          ok={"type": "object", "required": ["fields"],
              "properties": {"fields": {"type": "object", "additionalProperties": {
                  "type": "array", "items": openapi.STRING}}}},
          ok_description="Fields per queue.")
def search_fields() -> Any:
    return jsonify({"fields": queries.declared_search_fields(store.database())})


@endpoint(blueprint, "/api/workers", summary="Workers: identity, state, current messages, "
          "heartbeat", query=p.PagedByHundred, ok=openapi.page_of(ref("Worker")),
          ok_description="A page of workers.")
def workers(query: p.PagedByHundred) -> Any:
    return jsonify(paged(worker_rows(store.database()), query.page, query.per_page))


@endpoint(blueprint, "/api/metrics", summary="Names of the business events counted",
          query=p.PagedFully, ok=openapi.page_of(openapi.STRING),
          ok_description="A page of event names.")
def metric_names(query: p.PagedFully) -> Any:
    return jsonify(paged(series.metric_names(store.database()), query.page, query.per_page))


@endpoint(blueprint, "/api/metrics/<event_name:name>", summary="Count, sum, min and max per "
          "bucket of one business event", path=p.MetricPath, query=p.MetricRange,
          errors=(404,), ok=ref("Metric"), ok_description="The series.")
def metric(name: str, query: p.MetricRange) -> Any:
    resolution, since, until = p.time_range(query, utcnow())
    db = store.database()
    if name not in series.metric_names(db):
        return _error(404, f"no business event named {name!r} has been counted.",
                      parameter="name")
    answer = series.metric(db, name, resolution, since, until, p.tag_filter(query.tags))
    return jsonify({**answer, **_range_answer(resolution, since, until)})


@endpoint(blueprint, "/api/audit", summary="Admin actions, newest first", query=p.Paged,
          ok=openapi.page_of(ref("AuditEntry")), ok_description="A page of the audit log.")
def audit_log(query: p.Paged) -> Any:
    return jsonify(audit.entries(store.database(), query.page, query.per_page))


# -- admin actions --------------------------------------------------------------------------

def _failed_action(action: str, body: p.ChosenIds | p.AllMatching, run: Any) -> Response:
    if isinstance(body, p.ChosenIds):
        ids = list(dict.fromkeys(message_id.lower() for message_id in body.ids))
        selection = admin.selection(states=(schema.DEAD,), ids=ids)
        target: dict[str, Any] = {"ids": ids}
    else:
        selection = admin.selection(states=(schema.DEAD,), queue=body.queue,
                                    error_contains=body.error or None)
        target = body.target()
    return audited(action, target, lambda db: run(db, selection))


@endpoint(blueprint, "/api/failed/retry", "POST", access=ADMIN,
          summary="Put dead messages back to pending with attempts reset",
          body=p.FailedSelection, ok=ref("Count"), ok_description="How many messages changed.")
def retry_failed(body: p.ChosenIds | p.AllMatching) -> Any:
    return _failed_action("retry", body, admin.retry)


@endpoint(blueprint, "/api/failed/delete", "POST", access=ADMIN,
          summary="Delete dead messages (counted as removed)", body=p.FailedSelection,
          ok=ref("Count"), ok_description="How many messages changed.")
def delete_failed(body: p.ChosenIds | p.AllMatching) -> Any:
    return _failed_action("delete", body, admin.remove)


@endpoint(blueprint, "/api/queues/<name>/purge", "POST", access=ADMIN,
          summary="Remove every pending, delayed and dead message of a queue",
          path=p.QueuePath, body=p.PurgeConfirmation, errors=(409,),
          error_descriptions={409: "confirm is not this queue's name; nothing was removed."},
          ok=ref("Count"), ok_description="How many messages changed.")
def purge_queue(name: str, body: p.PurgeConfirmation) -> Any:
    if body.confirm != name:
        # Well-formed, but not this queue's name: a conflict with the path, not bad input.
        return _error(409, f"to purge, send {{\"confirm\": \"{name}\"}}: the queue's name, "
                           "to show the purge is meant.", parameter="confirm")
    return audited("purge", {"queue": name}, lambda db: admin.purge(db, name))


# -- outside /api ---------------------------------------------------------------------------

@endpoint(blueprint, "/metrics", summary="Prometheus metrics", tag="monitoring",
          ok={"type": "string"}, ok_media="text/plain",
          ok_description="Text exposition format 0.0.4.")
def metrics() -> Any:
    body = prometheus.render(stats_cache.stats(store.database()))
    return Response(body, status=200, content_type=prometheus.CONTENT_TYPE)


@endpoint(blueprint, "/openapi.json", summary="This document", access=PUBLIC, tag="monitoring",
          ok={"type": "object"}, ok_description="The OpenAPI document.")
def openapi_document() -> Any:
    return jsonify(openapi.document())


@endpoint(blueprint, "/healthz", summary="Is the engine reachable", access=PUBLIC,
          tag="monitoring", errors=(503,),
          ok={"type": "object", "properties": {"status": openapi.STRING}}, ok_description="ok")
def healthz() -> Any:
    try:
        store.database().client.admin.command("ping")
    except PyMongoError as error:
        response = jsonify({"status": "unavailable", "error": "the engine is unreachable",
                            "detail": type(error).__name__})
        response.status_code = 503
        return response
    return jsonify({"status": "ok"})
