"""gunicorn settings that make Flask-SocketIO work (see docs and shared STACK.md).

Flask-SocketIO runs in ``threading`` mode with simple-websocket, so the
worker is gunicorn's threaded worker (gthread); each worker process keeps its
own websocket connections and reads MongoDB itself, so more workers only need
clients to use the websocket transport (the dashboard's own JS does).
"""

import os

from mopq.config import settings

current = settings()
bind = os.environ.get("MOPQ_BIND", "127.0.0.1:8000")
worker_class = "gthread"
workers = current.web_workers
threads = current.web_threads  # each open live page holds one
timeout = 60
graceful_timeout = 5
accesslog = os.environ.get("MOPQ_ACCESS_LOG") or None
