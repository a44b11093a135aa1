"""The WSGI entry point: ``gunicorn -c gunicorn.conf.py app:app``."""

from dashboard import create_app

app = create_app()
