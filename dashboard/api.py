"""The JSON API under ``/api``, plus ``/healthz``."""

from __future__ import annotations

from flask import Blueprint, jsonify
from pymongo.errors import PyMongoError

from collectors.stats import read_stats
from dashboard import store
from dashboard.auth import require_read

blueprint = Blueprint("api", __name__)


@blueprint.get("/api/stats")
@require_read
def stats():
    try:
        return jsonify(read_stats(store.database()))
    except PyMongoError as error:
        response = jsonify({"error": "the engine is unreachable", "detail": str(error)})
        response.status_code = 503
        return response


@blueprint.get("/healthz")
def healthz():
    try:
        store.database().client.admin.command("ping")
    except PyMongoError as error:
        response = jsonify({"status": "unavailable", "error": str(error)})
        response.status_code = 503
        return response
    return jsonify({"status": "ok"})
