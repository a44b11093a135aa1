"""The JSON API under ``/api``, plus ``/metrics``, ``/openapi.json`` and ``/healthz``.

Every endpoint checks its whole request first (``dashboard.params``: unknown
keys, wrong types, out-of-range values and operator-shaped input get a 400)
and only then reads MongoDB through ``dashboard.queries``, so a refused
request has touched nothing. Lists are paginated. When the engine cannot be
reached every endpoint answers 503 with a JSON reason, never a stack trace.
Admin actions (retry, delete, purge) need admin credentials
(``dashboard.auth.require_admin``) and are recorded in the audit log.

Datetimes are written as ISO-8601 UTC strings (``init_json``).
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
from typing import Any

from bson import ObjectId
from flask import Blueprint, Flask, Response, current_app, jsonify, request
from flask.json.provider import DefaultJSONProvider
from pymongo.errors import ConnectionFailure, PyMongoError
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge
from werkzeug.routing import BaseConverter

from dashboard import audit, openapi, prometheus, queries, stats_cache, store
from dashboard import params as p
from dashboard.auth import current_identity, require_admin, require_read
from mopq import admin, schema
from mopq.errors import InvalidInput

blueprint = Blueprint("api", __name__)

RETRY_AFTER_SECONDS = 5
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

def _error(status: int, message: str, **extra: Any) -> Response:
    response = jsonify({"error": message, **extra})
    response.status_code = status
    return response


@blueprint.errorhandler(p.BadParameter)
def _bad_parameter(error: p.BadParameter) -> Response:
    status = 413 if isinstance(error, p.BodyTooLarge) else 400
    return _error(status, error.message, parameter=error.parameter)


@blueprint.errorhandler(InvalidInput)
def _invalid_input(error: InvalidInput) -> Response:
    return _error(400, str(error), parameter=None)


@blueprint.errorhandler(RequestEntityTooLarge)
def _too_large(error: RequestEntityTooLarge) -> Response:
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    return _error(413, f"the request body is too large: at most {limit} bytes are accepted.",
                  parameter="body")


@blueprint.errorhandler(HTTPException)
def _http_error(error: HTTPException) -> Response:
    return _error(error.code or 500, error.description or error.name)


@blueprint.errorhandler(Exception)
def _unexpected(error: Exception) -> Response:
    log.exception("mopq dashboard: unexpected error in %s %s", request.method, request.path)
    return _error(500, "internal error; the dashboard's log has the details.")


@blueprint.errorhandler(PyMongoError)
def _engine_error(error: PyMongoError) -> Response:
    if isinstance(error, ConnectionFailure):
        response = _error(503, "the engine is unreachable",
                          detail=f"{type(error).__name__}: MongoDB did not answer in time; "
                                 "check that it runs and MOPQ_MONGODB_URI points at it.")
    else:
        response = _error(503, "the engine could not answer the request",
                          detail=type(error).__name__)
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


# -- helpers --------------------------------------------------------------------------------

def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _paged(items: list[Any], page: int, per_page: int) -> dict[str, Any]:
    start = (page - 1) * per_page
    return {"total": len(items), "page": page, "per_page": per_page,
            "items": items[start:start + per_page]}


def _args(fields: dict[str, p.Field]) -> dict[str, Any]:
    return p.query(request.args, fields)


def _json_body() -> Any:
    return p.json_body(request.mimetype, request.get_data(cache=True))


def _who() -> dict[str, str]:
    identity = current_identity()
    return {"name": identity.name, "via": identity.via}


def _audited(action: str, target: dict[str, Any], run: Any) -> Response:
    db = store.database()
    record = audit.begin(db, action, target, _who(), request.remote_addr,
                         request.headers.get("User-Agent"))
    try:
        count = run(db)
    except PyMongoError as error:
        try:
            audit.finish(db, record, None, error=type(error).__name__)
        except PyMongoError:
            pass
        raise
    audit.finish(db, record, count)
    stats_cache.cache().invalidate()
    return jsonify({"count": count, "audit_id": str(record)})


# -- read endpoints -------------------------------------------------------------------------

@blueprint.get("/api/stats")
@require_read
def stats() -> Any:
    _args({})
    return Response(stats_cache.stats_json(store.database()), mimetype="application/json")


@blueprint.get("/api/queues")
@require_read
def queue_list() -> Any:
    args = _args(p.page_fields(100))
    db = store.database()
    rows = queries.queues(db, stats=stats_cache.stats(db))
    return jsonify(_paged(rows, args["page"], args["per_page"]))


@blueprint.get("/api/queues/<name>")
@require_read
def queue_detail(name: str) -> Any:
    name = p.queue(name, "name")
    now = _now()
    resolution, since, until = p.time_range(_args(p.RANGE_FIELDS), now)
    db = store.database()
    current = stats_cache.stats(db)["queues"].get(name)
    if current is None:
        return _error(404, f"no queue named {name!r} has messages or counts.",
                      parameter="name")
    row = queries.queues(db, now, {"queues": {name: current}})[0]
    return jsonify({"queue": row,
                    "history": queries.queue_history(db, name, resolution, since, until)})


@blueprint.get("/api/throughput")
@require_read
def throughput() -> Any:
    low, high = p.THROUGHPUT_SECONDS
    args = _args({"seconds": p.Field(lambda n, v: p.integer(n, v, low, high), 300),
                  "queue": p.Field(lambda n, v: p.queue(v, n))})
    return jsonify(queries.throughput(store.database(), args["seconds"], queue=args["queue"]))


FAILED_FIELDS = {
    "queue": p.Field(lambda n, v: p.queue(v, n)),
    "error": p.Field(lambda n, v: p.text(n, v, empty=True) or None),
    "state": p.Field(lambda n, v: p.choice(n, v, ("dead", "failing")), "dead"),
    **p.page_fields(),
}


@blueprint.get("/api/failed")
@require_read
def failed() -> Any:
    args = _args(FAILED_FIELDS)
    return jsonify(queries.failed(store.database(), args["queue"], args["error"],
                                  args["state"], args["page"], args["per_page"]))


@blueprint.get("/api/messages/<message_id>")
@require_read
def message(message_id: str) -> Any:
    message_id = p.object_id("id", message_id)
    _args({})
    found = queries.message(store.database(), message_id)
    if found is None:
        return _error(404, f"no message with id {message_id}; it may have been acknowledged "
                           "and removed.", parameter="id")
    return jsonify(found)


SEARCH_FIELDS = {"id": p.Field(p.object_id),
                 "q": p.Field(lambda n, v: p.text(n, v, max_length=p.MAX_VALUE + 80)),
                 "queue": p.Field(lambda n, v: p.queue(v, n))}


@blueprint.get("/api/search")
@require_read
def search() -> Any:
    args = _args(SEARCH_FIELDS)
    if (args["id"] is None) == (args["q"] is None):
        raise p.BadParameter("q", "give either id=<message id> or q=field=value "
                                  "(with optional queue), not both or neither.")
    db = store.database()
    if args["id"] is not None:
        items = [m for m in queries.search(db, message_id=args["id"])
                 if args["queue"] is None or m.get("queue") == args["queue"]]
        return jsonify({"items": items, "count": len(items), "truncated": False})
    field, values = p.search_term(args["q"])
    declared = queries.declared_search_fields(db)
    if args["queue"] is not None:
        if field not in declared.get(args["queue"], []):
            raise p.BadParameter("q", f"{field!r} is not a declared search field of queue "
                                      f"{args['queue']!r} (declared: "
                                      f"{', '.join(declared.get(args['queue'], [])) or 'none'}); "
                                      "declare it with mopq.search.declare_search_field.")
        scope = [args["queue"]]
    else:
        scope = [name for name, fields in declared.items() if field in fields]
        if not scope:
            raise p.BadParameter("q", f"{field!r} is not a declared search field of any queue; "
                                      "declare it with mopq.search.declare_search_field.")
    items: list[dict[str, Any]] = []
    for name in scope:
        items += queries.search(db, field=field, value=values, queue=name)
        if len(items) >= queries.MAX_SEARCH_RESULTS:
            break
    truncated = len(items) >= queries.MAX_SEARCH_RESULTS
    items = items[:queries.MAX_SEARCH_RESULTS]
    return jsonify({"items": items, "count": len(items), "truncated": truncated,
                    "field": field, "values": values, "queues": scope})


@blueprint.get("/api/search/fields")
@require_read
def search_fields() -> Any:
    _args({})
    return jsonify({"fields": queries.declared_search_fields(store.database())})


@blueprint.get("/api/workers")
@require_read
def workers() -> Any:
    args = _args(p.page_fields(100))
    return jsonify(_paged(queries.workers(store.database()), args["page"], args["per_page"]))


@blueprint.get("/api/activities")
@require_read
def activities() -> Any:
    args = _args(p.page_fields(100))
    return jsonify(_paged(queries.activities(store.database()), args["page"],
                          args["per_page"]))


@blueprint.get("/api/metrics")
@require_read
def metric_names() -> Any:
    args = _args(p.page_fields(p.MAX_PER_PAGE))
    return jsonify(_paged(queries.metric_names(store.database()), args["page"],
                          args["per_page"]))


@blueprint.get("/api/metrics/<event_name:name>")
@require_read
def metric(name: str) -> Any:
    name = p.metric_name(name)
    args = _args({**p.RANGE_FIELDS, "tags": p.Field(lambda n, v: p.tags(v, n), {})})
    resolution, since, until = p.time_range(args, _now())
    db = store.database()
    if name not in queries.metric_names(db):
        return _error(404, f"no business event named {name!r} has been counted.",
                      parameter="name")
    return jsonify(queries.metric(db, name, resolution, since, until, args["tags"] or None))


@blueprint.get("/api/audit")
@require_read
def audit_log() -> Any:
    args = _args(p.page_fields())
    return jsonify(audit.entries(store.database(), args["page"], args["per_page"]))


# -- admin actions --------------------------------------------------------------------------

def _failed_action(action: str, run: Any) -> Response:
    chosen = p.failed_selection(_json_body())
    _args({})
    selection = admin.selection(states=(schema.DEAD,), queue=chosen.queue,
                                ids=chosen.ids, error_contains=chosen.error)
    return _audited(action, chosen.target(), lambda db: run(db, selection))


@blueprint.post("/api/failed/retry")
@require_admin
def retry_failed() -> Any:
    return _failed_action("retry", admin.retry)


@blueprint.post("/api/failed/delete")
@require_admin
def delete_failed() -> Any:
    return _failed_action("delete", admin.delete)


@blueprint.post("/api/queues/<name>/purge")
@require_admin
def purge_queue(name: str) -> Any:
    name = p.queue(name, "name")
    document = p.body(_json_body(), ("confirm",))
    _args({})
    if not isinstance(document.get("confirm"), str):
        raise p.BadParameter("confirm", "confirm must be a string: the queue's name.")
    if document["confirm"] != name:
        # Well-formed, but not this queue's name: a conflict with the path, not bad input.
        return _error(409, f"to purge, send {{\"confirm\": \"{name}\"}}: the queue's name, "
                           "to show the purge is meant.", parameter="confirm")
    return _audited("purge", {"queue": name}, lambda db: admin.purge(db, name))


# -- outside /api ---------------------------------------------------------------------------

@blueprint.get("/metrics")
@require_read
def metrics() -> Any:
    _args({})
    body = prometheus.render(stats_cache.stats(store.database()))
    return Response(body, status=200, content_type=prometheus.CONTENT_TYPE)


@blueprint.get("/openapi.json")
def openapi_document() -> Any:
    return jsonify(openapi.document())


@blueprint.get("/healthz")
def healthz() -> Any:
    try:
        store.database().client.admin.command("ping")
    except PyMongoError as error:
        response = jsonify({"status": "unavailable", "error": "the engine is unreachable",
                            "detail": type(error).__name__})
        response.status_code = 503
        return response
    return jsonify({"status": "ok"})
