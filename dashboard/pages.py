"""Server-rendered pages."""

from __future__ import annotations

from flask import Blueprint, render_template
from pymongo.errors import PyMongoError

from dashboard import store

blueprint = Blueprint("pages", __name__)


@blueprint.get("/")
def overview() -> str:
    try:
        engine = store.engine_info()
        error = None
    except PyMongoError as failure:
        engine, error = None, str(failure)
    return render_template("overview.html", engine=engine, engine_error=error)
