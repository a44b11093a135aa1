"""The dashboard's way to MongoDB: the database named by the app's config."""

from __future__ import annotations

from flask import current_app
from pymongo.database import Database

from mopq.connection import get_database


def database() -> Database:
    return get_database(current_app.config["MOPQ_MONGODB_URI"], current_app.config["MOPQ_DATABASE"])


def engine_info() -> dict:
    """What the engine says of itself; raises pymongo errors when it is unreachable."""
    client = database().client
    version = client.admin.command("buildInfo").get("version", "?")
    wire = [server.max_wire_version
            for server in client.topology_description.server_descriptions().values()]
    return {"version": version, "wire_version": max(wire) if wire else None}
