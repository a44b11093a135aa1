"""The dashboard: a Flask app factory with blueprints and a Socket.IO namespace."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Flask
from flask_socketio import SocketIO

from mopq.config import settings

ROOT = Path(__file__).resolve().parent.parent

socketio = SocketIO(async_mode="threading")


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the dashboard app; ``config`` overrides what the environment says."""
    app = Flask(
        __name__,
        template_folder=str(ROOT / "templates"),
        static_folder=str(ROOT / "static"),
    )
    current = settings()
    app.config.update(
        MOPQ_MONGODB_URI=current.mongodb_uri,
        MOPQ_DATABASE=current.database,
    )
    if config:
        app.config.update(config)

    from dashboard import live, pages, vendor

    app.register_blueprint(pages.blueprint)
    app.register_blueprint(vendor.blueprint)
    socketio.init_app(app, cors_allowed_origins=[])
    live.register(socketio)
    return app
