"""Gunicorn settings for inference-app; each can be overridden from the environment.

Run it with ``gunicorn -c gunicorn.conf.py wsgi:app`` (``make serve`` does). Sections follow
Gunicorn's example configuration; see https://docs.gunicorn.org/en/stable/settings.html.
"""

import gc
import os

from inference_app import process


def _env(name, default):
    return os.environ.get(name, default)


def _env_int(name, default):
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"{name} must be an integer; got {value!r}") from None


def _env_bool(name, default):
    value = os.environ.get(name)
    if value is None:
        return default
    if value.lower() not in ("1", "true", "yes", "0", "false", "no"):
        raise SystemExit(f"{name} must be true or false; got {value!r}")
    return value.lower() in ("1", "true", "yes")


# Server socket
#
#   bind - Comma-separated addresses. Loopback by default: put a proxy or a container
#       port mapping in front, or set GUNICORN_BIND=0.0.0.0:8000 in a container.
#   backlog - Connections waiting to be accepted.

bind = _env("GUNICORN_BIND", "127.0.0.1:8000").split(",")
backlog = _env_int("GUNICORN_BACKLOG", 2048)

# Worker processes
#
#   workers - Processes serving requests; each holds a copy-on-write view of the models
#       loaded by the master. Roughly one per core.
#   threads - Threads per worker; above 1 the gthread worker is used.
#   timeout - Seconds a worker may stay silent before the master restarts it.
#   graceful_timeout - Seconds a worker has to finish its requests after a restart signal.
#   keepalive - Seconds to wait for the next request on a keep-alive connection.
#   max_requests, max_requests_jitter - Restart a worker after this many requests (0: never).

workers = _env_int("GUNICORN_WORKERS", 2)
threads = _env_int("GUNICORN_THREADS", 1)
worker_class = _env("GUNICORN_WORKER_CLASS", "gthread" if threads > 1 else "sync")
timeout = _env_int("GUNICORN_TIMEOUT", 30)
graceful_timeout = _env_int("GUNICORN_GRACEFUL_TIMEOUT", 30)
keepalive = _env_int("GUNICORN_KEEPALIVE", 5)
max_requests = _env_int("GUNICORN_MAX_REQUESTS", 0)
max_requests_jitter = _env_int("GUNICORN_MAX_REQUESTS_JITTER", 0)
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"

# Application
#
#   preload_app - Load the app, and so every model bundle, once in the master before
#       forking: workers share the model pages and a bad bundle stops the server at once.
#       The master never runs inference (OpenMP is not fork-safe): each worker warms its
#       models after fork, in post_fork below.

preload_app = _env_bool("GUNICORN_PRELOAD_APP", True)
os.environ["INFERENCE_APP_WARM_UP"] = "post_fork"

# Control socket (Gunicorn 25.1+)
#
#   GUNICORN_CONTROL_SOCKET - A path for `gunicornc`, distinct per server on one host.
#       Unset: no control socket, so two servers never collide on the shared default path.

control_socket_disable = "GUNICORN_CONTROL_SOCKET" not in os.environ
if not control_socket_disable:
    control_socket = os.environ["GUNICORN_CONTROL_SOCKET"]

# Logging
#
#   accesslog, errorlog - "-" is stdout / stderr.
#   loglevel - debug, info, warning, error or critical.

accesslog = _env("GUNICORN_ACCESSLOG", "-")
errorlog = _env("GUNICORN_ERRORLOG", "-")
loglevel = _env("GUNICORN_LOGLEVEL", "info")
proc_name = _env("GUNICORN_PROC_NAME", "inference-app")

# Server hooks


def when_ready(server):
    """Say where the server listens and where its docs are."""
    for listener in server.LISTENERS:
        address = str(listener).replace("0.0.0.0", "127.0.0.1")
        server.log.info("inference-app listening at %s; API docs at %s/docs", address, address)


def pre_fork(server, worker):
    """Move every object the master holds out of the garbage collector's reach, so that
    collections in workers do not write to (and so copy) the shared model pages."""
    gc.freeze()


def post_fork(server, worker):
    """Cap native thread pools to this worker's share of the CPUs, then warm every model."""
    share = process.cpu_share(server.cfg.workers)
    process.cap_threads(share)
    try:
        process.warm_up(worker.app.wsgi())
    except Exception as error:
        server.log.error("worker %s failed to warm up its models, exiting: %s", worker.pid, error)
        raise
    server.log.info("worker %s warmed its models (%s native threads)", worker.pid, share)
