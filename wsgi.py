"""WSGI entry point: `gunicorn wsgi:app` (see gunicorn.conf.py)."""

from llm_train_api import create_app

app = create_app()
