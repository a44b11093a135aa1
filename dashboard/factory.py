"""Building the dashboard app: settings, auth, blueprints, Socket.IO, then the guards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Flask
from flask_socketio import SocketIO

from mopq.config import settings as library_settings
from mopq.dashboard.settings import DashboardSettings

ROOT = Path(__file__).resolve().parent.parent

socketio = SocketIO(async_mode="threading")


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the dashboard app; ``config`` overrides what the environment says."""
    app = Flask(
        __name__,
        template_folder=str(ROOT / "templates"),
        static_folder=str(ROOT / "static"),
    )
    library = library_settings()
    current = DashboardSettings.from_env()
    app.config.update(
        MOPQ_MONGODB_URI=library.mongodb_uri,
        MOPQ_DATABASE=library.database,
        MOPQ_STATS_MAX_AGE=current.stats_max_age_seconds,
        MOPQ_LIVE_MAX_CLIENTS=current.live_max_clients,
        MAX_CONTENT_LENGTH=1024 * 1024,
    )
    if config:
        app.config.update(config)

    from mopq.dashboard import (
        activities_api,
        api,
        auth,
        grants,
        live,
        pages,
        queue_api,
        queue_control,
        schedules_api,
        security,
        stats_cache,
        vendor,
        workers_api,
    )

    auth.init_app(app, current)
    grants.init_app(app, current)
    stats_cache.init_app(app, app.config["MOPQ_STATS_MAX_AGE"])
    app.register_blueprint(pages.blueprint)
    app.register_blueprint(api.blueprint)
    app.register_blueprint(queue_api.blueprint)
    app.register_blueprint(queue_control.blueprint)
    app.register_blueprint(activities_api.blueprint)
    app.register_blueprint(schedules_api.blueprint)
    app.register_blueprint(workers_api.blueprint)
    app.register_blueprint(vendor.blueprint)
    socketio.init_app(app, cors_allowed_origins=security.origin_check(current))
    live.register(socketio, app)
    security.init_app(app, current)  # last: its guards wrap Socket.IO's middleware too
    return app
