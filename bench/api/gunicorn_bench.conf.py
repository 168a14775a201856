# Gunicorn config used for EVERY server in the API benchmark (ours, bare Flask, MLflow).
#
# It is passed explicitly with ``-c`` so gunicorn does not pick up a ./gunicorn.conf.py
# from the working directory (the repo's own one may set hooks, workers or logging that
# the baselines would not get).  Worker count, worker class and bind address are given
# on the command line by bench/api/run.py, identically for all servers.
accesslog = None  # access log off for all servers
errorlog = "-"
loglevel = "warning"
timeout = 120
graceful_timeout = 5
keepalive = 5  # as the repo's gunicorn.conf.py; only gthread keeps connections open
