"""gunicorn settings for the dashboard: ``mopq serve``, or ``gunicorn -c gunicorn.conf.py app:app``.

Flask-SocketIO runs in ``threading`` mode with simple-websocket, so the
worker is gunicorn's threaded worker (gthread), in the variant of
``dashboard.gunicorn_worker`` that serves a busy keep-alive connection's next
request on the thread that answered the last one; each worker process keeps its
own websocket connections and reads MongoDB itself, so more workers only need
clients to use the websocket transport (the dashboard's own JS does; see
docs/STACK.md).
"""

import os
import secrets

from mopq.dashboard.settings import DashboardSettings

current = DashboardSettings.from_env()
bind = current.bind
worker_class = "mopq.dashboard.gunicorn_worker.LingeringThreadWorker"
workers = current.web_workers
threads = current.web_threads  # each open live page holds one
timeout = 60
graceful_timeout = 5
accesslog = os.environ.get("MOPQ_ACCESS_LOG") or None
# gunicorn's control socket is one file per user ($HOME/.gunicorn/gunicorn.ctl), so two
# dashboards on one host would fight over it; nothing of mopq uses it.
control_socket_disable = True
# Every worker of this instance signs CSRF tokens with the same secret: drawn here, in the
# master, before the workers fork (set MOPQ_SECRET_KEY when several instances serve one site).
os.environ.setdefault("MOPQ_SECRET_KEY", secrets.token_urlsafe(32))
