"""WSGI entry point for `gunicorn wsgi:app` from a checkout (gunicorn.conf.py, read from the
same folder, gives it the package's configuration: llm_train_api/api/gunicorn_conf.py)."""

from llm_train_api import create_app

app = create_app()
