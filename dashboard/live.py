"""The Socket.IO namespace ``/live``: thin handlers, pushes built from MongoDB."""

from __future__ import annotations

from flask_socketio import SocketIO, emit

NAMESPACE = "/live"


def register(socketio: SocketIO) -> None:
    @socketio.on("connect", namespace=NAMESPACE)
    def on_connect(auth=None):
        emit("hello", {"namespace": NAMESPACE})
