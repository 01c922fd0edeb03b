"""Gunicorn settings for inference-app; each can be overridden from the environment.

Run it with ``gunicorn -c gunicorn.conf.py wsgi:app`` (``make serve`` does). Sections follow
Gunicorn's example configuration; see https://docs.gunicorn.org/en/stable/settings.html.
"""

import atexit
import gc
import os
import shutil
import sys
import tempfile
from pathlib import Path

from gunicorn import glogging

from inference_app import logs


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


def _env_choice(name, default, choices):
    value = os.environ.get(name, default)
    if value.lower() not in choices:
        raise SystemExit(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value.lower()


def _env_bool(name, default):
    value = os.environ.get(name)
    if value is None:
        return default
    if value.lower() not in ("1", "true", "yes", "0", "false", "no"):
        raise SystemExit(f"{name} must be true or false; got {value!r}")
    return value.lower() in ("1", "true", "yes")


def _remove_own_metrics_dir(master_pid, folder):
    """Remove the metrics folder this server made, at the master's exit: on_exit below does
    too, but the master exits before running hooks when the app does not load (preload_app).
    Workers inherit this exit handler and skip it."""
    if os.getpid() == master_pid:
        shutil.rmtree(folder, ignore_errors=True)


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
#   worker_class, threads - gthread workers of 4 threads: connections are kept alive (no TCP
#       handshake per request), a client that sends its request slowly holds one thread, not
#       the worker, and onnxruntime and scikit-learn release the GIL while they predict.
#       bench/RESULTS.md compares sync, gthread 1 to 8 threads and gevent: gevent lost
#       everywhere; sync did as well in throughput (it closes each connection) but stalls
#       behind slow clients, so it suits only a buffering proxy in front.
#   timeout - Seconds a worker may stay silent before the master restarts it.
#   graceful_timeout - Seconds a worker has to finish its requests after a restart signal.
#   keepalive - Seconds to wait for the next request on a keep-alive connection.
#   max_requests, max_requests_jitter - Restart a worker after this many requests (0: never).

workers = _env_int("GUNICORN_WORKERS", 2)
threads = _env_int("GUNICORN_THREADS", 4)
worker_class = _env("GUNICORN_WORKER_CLASS", "gthread")
timeout = _env_int("GUNICORN_TIMEOUT", 30)
graceful_timeout = _env_int("GUNICORN_GRACEFUL_TIMEOUT", 30)
keepalive = _env_int("GUNICORN_KEEPALIVE", 5)
max_requests = _env_int("GUNICORN_MAX_REQUESTS", 0)
max_requests_jitter = _env_int("GUNICORN_MAX_REQUESTS_JITTER", max_requests // 10)
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"

# HTTP parsing
#
#   http_parser - "fast": gunicorn_h1c's C parser (a dependency), and the server refuses to
#       start without it; "python": Gunicorn's own parser; "auto": the C one when importable.
#       The master logs the parser in use when it is ready.

http_parser = _env_choice("GUNICORN_HTTP_PARSER", "fast", ("fast", "python", "auto"))

# Application
#
#   preload_app - Load the app, and so every model bundle, once in the master before
#       forking: workers share the model pages and a bad bundle stops the server at once.
#       The master never runs inference (OpenMP is not fork-safe); it makes the onnxruntime
#       sessions in pre_fork only when each worker has one CPU, so that they are shared too.
#       Each worker warms its models after fork, in post_fork below.

preload_app = _env_bool("GUNICORN_PRELOAD_APP", True)
os.environ["INFERENCE_APP_WARM_UP"] = "post_fork"
# Flask's debug mode (and Werkzeug's debugger) never runs under Gunicorn.
os.environ["INFERENCE_APP_DEBUG"] = "false"
os.environ.pop("FLASK_DEBUG", None)

# Control socket (Gunicorn 25.1+)
#
#   GUNICORN_CONTROL_SOCKET - A path for `gunicornc`, distinct per server on one host.
#       Unset: no control socket, so two servers never collide on the shared default path.

control_socket_disable = "GUNICORN_CONTROL_SOCKET" not in os.environ
if not control_socket_disable:
    control_socket = os.environ["GUNICORN_CONTROL_SOCKET"]

# Metrics
#
#   PROMETHEUS_MULTIPROC_DIR - Where every process writes its samples, merged by /metrics.
#       Unset: a fresh temporary folder per server. It is emptied when the master starts
#       (not on HUP, which re-reads this file) and must be set before prometheus_client is
#       imported, so the app is imported only by the hooks below.
#   INFERENCE_APP_METRICS_PORT - Also serve /metrics from the master on this port
#       (INFERENCE_APP_METRICS_ADDR, default 127.0.0.1), apart from the API.

if os.environ.get("INFERENCE_APP_MASTER_PID") != str(os.getpid()):
    os.environ["INFERENCE_APP_MASTER_PID"] = str(os.getpid())
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="inference-app-metrics-")
        os.environ["INFERENCE_APP_OWN_METRICS_DIR"] = "1"
        atexit.register(
            _remove_own_metrics_dir, os.getpid(), os.environ["PROMETHEUS_MULTIPROC_DIR"]
        )
    Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)
    for _stale in Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).glob("*.db"):
        _stale.unlink()

# Logging
#
#   INFERENCE_APP_LOG_FORMAT - "json" (one object per line on stderr) or "text".
#   loglevel - debug, info, warning, error or critical.
#   accesslog - Gunicorn's own access log, off: the app writes one JSON access line per
#       request with its request id, model, rows and stage timings. "-" turns it on.

loglevel = _env_choice(
    "GUNICORN_LOGLEVEL", "info", ("debug", "info", "warning", "error", "critical")
)
logconfig_dict = logs.logging_config(
    _env_choice("INFERENCE_APP_LOG_FORMAT", "json", ("json", "text")), loglevel.upper()
)
accesslog = os.environ.get("GUNICORN_ACCESSLOG")
if accesslog:  # Gunicorn's own handler for it, not the silenced logger of the app's config
    del logconfig_dict["loggers"]["gunicorn.access"]


class _Logger(glogging.Logger):
    """Gunicorn's logger, building its own access line only when ``GUNICORN_ACCESSLOG`` asks
    for it: with a logging configuration, Gunicorn builds it on every request and the
    ``gunicorn.access`` logger then drops it (about 9% of a worker's time on iris)."""

    def access(self, resp, req, environ, request_time):
        if self.cfg.accesslog:
            super().access(resp, req, environ, request_time)


logger_class = _Logger
errorlog = _env("GUNICORN_ERRORLOG", "-")
proc_name = _env("GUNICORN_PROC_NAME", "inference-app")

# gRPC
#
#   INFERENCE_APP_GRPC_PORT - Each worker also serves the Open Inference Protocol over gRPC
#       on this port, on the host of the first bind (8081 when unset; 0: off). The workers
#       share it (SO_REUSEPORT); gRPC starts in each worker after fork, never in the master.
#   INFERENCE_APP_GRPC_THREADS - Threads of each worker's gRPC server (default 4).

# Server hooks


def on_starting(server):
    """Refuse a gRPC port another process listens on, before any worker starts."""
    from inference_app.grpc import lifecycle

    lifecycle.prepare(server)


def when_ready(server):
    """Say where the server listens and where its docs are; serve metrics apart if asked."""
    for listener in server.LISTENERS:
        address = str(listener).replace("0.0.0.0", "127.0.0.1")
        server.log.info("inference-app listening at %s; API docs at %s/docs", address, address)
    server.log.info("HTTP parser: %s", _parser_in_use(server.cfg))
    port = os.environ.get("INFERENCE_APP_METRICS_PORT")
    if port:
        from prometheus_client import start_http_server

        from inference_app import metrics

        address = os.environ.get("INFERENCE_APP_METRICS_ADDR", "127.0.0.1")
        start_http_server(int(port), addr=address, registry=metrics.multiprocess_registry())
        server.log.info("metrics at http://%s:%s/metrics", address, port)


def _parser_in_use(cfg):
    """Name the HTTP parser Gunicorn's workers use with these settings."""
    from gunicorn.http import message

    if not message._check_fast_parser(cfg):
        return "Gunicorn's Python parser"
    import gunicorn_h1c

    version = getattr(gunicorn_h1c, "__version__", None)
    return f"gunicorn_h1c {version} (C)" if version else "gunicorn_h1c (C)"


def pre_fork(server, worker):
    """Make the models' engines here when the workers can share them (onnxruntime sessions
    on one thread each), then move every object the master holds out of the garbage
    collector's reach, so that collections in workers do not write to (and so copy) the
    shared model pages."""
    from inference_app import process

    if server.cfg.preload_app:
        process.share_engines(server.app.wsgi(), server.cfg.workers)
    gc.freeze()


def post_fork(server, worker):
    """Cap native thread pools to this worker's share of the CPUs, then warm every model."""
    from inference_app import process

    share = process.cpu_share(server.cfg.workers)
    process.cap_threads(share)
    if server.cfg.workers > 1 and hasattr(worker, "nr_conns"):  # a gthread worker
        process.spread_connections(worker)
    try:
        process.warm_up(worker.app.wsgi())
    except Exception as error:
        server.log.error("worker %s failed to warm up its models, exiting: %s", worker.pid, error)
        raise
    server.log.info("worker %s warmed its models (%s native threads)", worker.pid, share)
    from inference_app.grpc import lifecycle

    lifecycle.start(server, worker)


def worker_int(worker):
    """On SIGINT or SIGQUIT (a fast stop): stop this worker's gRPC server at once."""
    from inference_app.grpc import lifecycle

    lifecycle.stop(worker, graceful=False)


def worker_exit(server, worker):
    """Stop this worker's gRPC server, letting its calls finish (on TERM, and on HUP once a
    new worker listens), then end the worker without the interpreter's teardown, with the
    status its ``SystemExit`` carries (``process.leave``: onnxruntime, imported before the
    fork, would hang it at exit). Gunicorn also calls this hook in the master, for a worker
    found dead; the master goes on."""
    from inference_app import process
    from inference_app.grpc import lifecycle

    lifecycle.stop(worker)
    if worker.pid == os.getpid():
        error = sys.exc_info()[1]  # called while the worker's SystemExit unwinds
        process.leave(error.code if isinstance(error, SystemExit) else int(error is not None))


def on_reload(server):
    """On SIGHUP, load and verify the bundles again in the master before new workers fork;
    keep the old models if any bundle is refused."""
    from inference_app import process
    from inference_app.grpc import lifecycle

    lifecycle.note_reload(server)
    reloaded, message = process.reload(server.app)
    (server.log.info if reloaded else server.log.error)(message)


def child_exit(server, worker):
    """Fold the exited worker's metrics into the archive, keeping scrapes fast."""
    from inference_app import metrics

    metrics.archive_dead_process(worker.pid)


def on_exit(server):
    """Remove the metrics folder this server made for itself, and its gRPC state."""
    from inference_app.grpc import lifecycle

    lifecycle.cleanup()
    if os.environ.get("INFERENCE_APP_OWN_METRICS_DIR"):
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
