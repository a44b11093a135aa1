"""The dashboard: a Flask app factory with blueprints and a Socket.IO namespace.

Blueprints: ``pages`` (server-rendered HTML), ``api`` (JSON under ``/api``,
plus ``/openapi.json``, ``/metrics`` and ``/healthz``), ``vendor`` (plotly.js
and the socket.io client from their packages). ``live`` is the Socket.IO
namespace ``/live``. Each gunicorn process reads MongoDB itself; nothing is
shared in process memory between requests that matters for correctness.

The package imports nothing of Flask until ``create_app`` is called
(``mopq.dashboard.factory``), so ``mopq.dashboard.commands`` can add the
dashboard's commands to ``mopq`` where only the library is installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the dashboard app; ``config`` overrides what the environment says."""
    from mopq.dashboard.factory import create_app as build

    return build(config)
