"""gunicorn settings for the health service (`gunicorn -c python:health.gunicorn_conf`).

One process with a few threads: probes are tiny and come from a handful of GWLB nodes every few
seconds, so threads answer concurrent probes without the memory of more processes; a bare TCP
connect-and-close (GWLB's TCP health check) only costs a thread a moment.
"""

import os

bind = [os.environ.get("GWLB_HEALTH_BIND", "0.0.0.0:80")]
workers = 1
worker_class = "gthread"
threads = 8
backlog = 256
timeout = 10
graceful_timeout = 3
keepalive = 5
accesslog = None
errorlog = "-"
loglevel = "warning"
proc_name = "applianced: health"
pidfile = os.environ.get("GWLB_HEALTH_PIDFILE")
control_socket_disable = True  # gunicorn 25+ opens a control socket of its own unless told not to
