"""The gRPC server's life under Gunicorn: a server per worker, started after fork, handed over
on HUP; the master's side never imports ``grpc``.

Each worker serves gRPC on ``GRPC_PORT`` beside HTTP (:func:`start`, from ``post_fork``),
all on one port opened with ``SO_REUSEPORT``: the kernel spreads new connections among the
workers' listeners. gRPC is not fork-safe, so nothing here imports it in the master; only
:func:`start` does, in a worker.

A worker's listener closes when the worker stops (:func:`stop`, from ``worker_exit`` and
``worker_int``): health checks turn ``NOT_SERVING``, clients get HTTP/2 ``GOAWAY`` and
reconnect to another listener, and the calls under way finish within the grace period. On
HUP the master forks the new workers and stops the old ones at once, while the new ones are
still warming up; an old worker's listener would close with nobody left on the port. So the
master notes the reload (:func:`note_reload`, from ``on_reload``), each worker notes when it
listens (a file per worker in :data:`STATE_ENV`'s folder), and an old worker stopping during
a reload keeps its listener until a new worker listens, or until the grace period ends.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Flask

if TYPE_CHECKING:
    from inference_app.grpc.service import Running

#: The port each worker serves gRPC on when ``GRPC_PORT`` is unset.
DEFAULT_PORT = 8081
#: The folder of the server's gRPC state (a file per listening worker, the reload marker),
#: made by the master at start; the workers inherit it.
STATE_ENV = "INFERENCE_APP_GRPC_STATE_DIR"
RELOAD_FILE = "reload"
#: Seconds between two looks for a new worker's listener during a reload.
POLL_INTERVAL = 0.02

_running: Running | None = None
_ready_file: Path | None = None


def port_of(settings: Any) -> int:
    """Return the gRPC port of the app's settings: ``GRPC_PORT``, 8081 when unset (``None``),
    0 when off."""
    port = settings.get("GRPC_PORT")
    return DEFAULT_PORT if port is None else int(port)


def host_of(binds: list[str]) -> str:
    """Return the host gRPC listens on: that of Gunicorn's first TCP ``bind``
    (``0.0.0.0:8000``: ``0.0.0.0``; ``[::]:8000``: ``::``), else ``127.0.0.1``."""
    for bind in binds:
        if bind.startswith(("unix:", "fd://")):
            continue
        host = bind.rsplit(":", 1)[0] if ":" in bind else bind
        return host.strip("[]") or "0.0.0.0"  # nosec B104: Gunicorn's own bind, given
    return "127.0.0.1"


def check_port_free(host: str, port: int) -> None:
    """Refuse a port another process listens on.

    Workers open the port with ``SO_REUSEPORT``, which would let them join another server's
    listeners on it (that server's and ours would then split the connections); a plain bind
    fails on a port anyone listens on.

    :raises SystemExit: the port is taken, naming the setting.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                raise SystemExit(f"GRPC_PORT {port}: cannot listen on {host}: {error}") from None
            raise SystemExit(
                f"GRPC_PORT {port} is in use on {host} by another process: set "
                "INFERENCE_APP_GRPC_PORT to a free port, or to 0 to serve no gRPC"
            ) from None


def prepare(server: Any) -> None:
    """In the master at start: check the port and make the state folder (``on_starting``)."""
    app = _app(server)
    port = port_of(app.config)
    if not port:
        return
    check_port_free(host_of(server.cfg.bind), port)
    os.environ[STATE_ENV] = tempfile.mkdtemp(prefix="inference-app-grpc-")


def cleanup() -> None:
    """In the master at exit: remove the state folder (``on_exit``)."""
    folder = os.environ.get(STATE_ENV)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


def note_reload(server: Any) -> None:
    """In the master on HUP (``on_reload``), before it forks the new workers: note that the
    workers up to the current age are being replaced."""
    folder = os.environ.get(STATE_ENV)
    if folder:
        _write(Path(folder) / RELOAD_FILE, str(server.worker_age))


def start(server: Any, worker: Any) -> None:
    """In a worker after fork and warm-up (``post_fork``): serve gRPC, if ``GRPC_PORT`` is
    not 0, and note that this worker listens.

    :raises RuntimeError: the port cannot be opened (the worker then fails to boot).
    """
    global _running, _ready_file
    app = worker.app.wsgi()
    port = port_of(app.config)
    if not port:
        return
    # gRPC core's own log lines are not JSON; its errors reach the app as exceptions and
    # statuses. GRPC_VERBOSITY=ERROR shows them.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    from inference_app.grpc import service  # after fork only: gRPC is not fork-safe

    host = host_of(server.cfg.bind)
    _running = service.serve(
        app,
        port,
        host=host,
        threads=int(app.config["GRPC_THREADS"]),
        max_connection_age=float(app.config["GRPC_MAX_CONNECTION_AGE_S"]),
    )
    folder = os.environ.get(STATE_ENV)
    if folder:
        _ready_file = Path(folder) / f"{worker.age}.{os.getpid()}"
        _write(_ready_file, "")
    server.log.info("worker %s serves gRPC on %s:%s", os.getpid(), host, port)


def stop(worker: Any, graceful: bool = True) -> None:
    """In a worker that stops (``worker_exit``; ``worker_int`` with ``graceful=False``): stop
    its gRPC server, if it runs one; nothing in any other process.

    Gracefully, within Gunicorn's ``graceful_timeout`` less a second: during a reload, wait
    for a new worker's listener, then hand the clients over to it
    (:meth:`~inference_app.grpc.service.Running.drain`); then let the calls under way finish.
    """
    global _running, _ready_file
    running = _running
    if running is None or getattr(worker, "pid", None) != os.getpid():
        return
    _running = None
    if _ready_file is not None:
        _ready_file.unlink(missing_ok=True)
        _ready_file = None
    if not graceful:
        running.stop(None)
        return
    deadline = time.monotonic() + max(1.0, float(worker.cfg.graceful_timeout) - 1.0)
    replaced = _replaced_by(worker.age)
    if replaced is not None:
        while time.monotonic() < deadline and not _newer_listener(replaced):
            time.sleep(POLL_INTERVAL)
        if _newer_listener(replaced):
            running.drain(deadline)
    finished = running.stop(max(0.0, deadline - time.monotonic()))
    if not finished:
        worker.log.warning("worker %s stopped gRPC with calls unfinished", os.getpid())


def _replaced_by(age: int) -> int | None:
    """Return the age of the last worker replaced by a reload under way, if ``age`` is one
    of them; else ``None`` (the server stops, or this worker alone)."""
    folder = os.environ.get(STATE_ENV)
    if not folder:
        return None
    try:
        last = int((Path(folder) / RELOAD_FILE).read_text())
    except (OSError, ValueError):
        return None
    return last if age <= last else None


def _newer_listener(last_replaced: int) -> bool:
    """Return whether a live worker younger than ``last_replaced`` listens for gRPC."""
    folder = os.environ.get(STATE_ENV)
    if not folder:
        return False
    for path in Path(folder).iterdir():
        age, _, pid = path.name.partition(".")
        if age.isdigit() and pid.isdigit() and int(age) > last_replaced and _alive(int(pid)):
            return True
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole: readers see the old file or the new one."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(text)
    os.replace(temporary, path)


def _app(server: Any) -> Flask:
    """Return the app (preloaded), or a bare settings app when the master loads none."""
    if server.cfg.preload_app:
        app: Flask = server.app.wsgi()
        return app
    from inference_app import config

    return config.settings()
