"""The JSON API's errors: what each refusal or failure answers, in one place.

Every blueprint that answers JSON (``api``, ``queue_api``) registers these:
a refused parameter is a 400 naming it (413 for a body too large), an
unreachable engine a 503 with ``Retry-After``, anything unexpected a 500
whose details stay in the log. Never a stack trace.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from pymongo.errors import ConnectionFailure, PyMongoError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from mopq.dashboard.endpoints import BadParameter, BodyTooLarge
from mopq.errors import InvalidInput

RETRY_AFTER_SECONDS = 5
log = logging.getLogger("mopq.dashboard")


def error(status: int, message: str, **extra: Any) -> Response:
    response = jsonify({"error": message, **extra})
    response.status_code = status
    return response


def _bad_parameter(problem: BadParameter) -> Response:
    status = 413 if isinstance(problem, BodyTooLarge) else 400
    return error(status, problem.message, parameter=problem.parameter)


def _invalid_input(problem: InvalidInput) -> Response:
    return error(400, str(problem), parameter=None)


def _too_large(problem: RequestEntityTooLarge) -> Response:
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    return error(413, f"the request body is too large: at most {limit} bytes are accepted.",
                 parameter="body")


def _http_error(problem: HTTPException) -> Response:
    return error(problem.code or 500, problem.description or problem.name)


def _unexpected(problem: Exception) -> Response:
    log.exception("mopq dashboard: unexpected error in %s %s", request.method, request.path)
    return error(500, "internal error; the dashboard's log has the details.")


def _engine_error(problem: PyMongoError) -> Response:
    if isinstance(problem, ConnectionFailure):
        response = error(503, "the engine is unreachable",
                         detail=f"{type(problem).__name__}: MongoDB did not answer in time; "
                                "check that it runs and MOPQ_MONGODB_URI points at it.")
    else:
        response = error(503, "the engine could not answer the request",
                         detail=type(problem).__name__)
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def answer_in_json(blueprint: Blueprint) -> None:
    """Register the JSON answers to every error on ``blueprint``'s views."""
    for kind, handler in ((BadParameter, _bad_parameter), (InvalidInput, _invalid_input),
                          (RequestEntityTooLarge, _too_large), (HTTPException, _http_error),
                          (Exception, _unexpected), (PyMongoError, _engine_error)):
        blueprint.register_error_handler(kind, handler)
