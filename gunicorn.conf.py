"""`gunicorn wsgi:app` from a checkout: the package's own configuration, the one
`llm-train-api serve` uses (see llm_train_api/api/gunicorn_conf.py)."""

from llm_train_api.api.gunicorn_conf import *  # noqa: F403
