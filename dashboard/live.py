"""The Socket.IO namespace ``/live``: thin handlers, pushes built from MongoDB."""

from __future__ import annotations

from flask import Flask, request
from flask_socketio import SocketIO, emit

from dashboard import auth

NAMESPACE = "/live"


def register(socketio: SocketIO, app: Flask) -> None:
    @socketio.on("connect", namespace=NAMESPACE)
    def on_connect(auth_data=None):
        if not auth.socket_allowed(request.headers.get("Authorization"), auth_data):
            return False
        emit("hello", {"namespace": NAMESPACE})
