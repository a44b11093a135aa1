"""The WSGI entry point: ``gunicorn -c gunicorn.conf.py app:app``."""

from mopq.dashboard import create_app

app = create_app()
