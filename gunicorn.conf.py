"""``gunicorn -c gunicorn.conf.py app:app`` from a clone: the dashboard's gunicorn settings."""

from mopq.dashboard.gunicorn_config import *  # noqa: F403
