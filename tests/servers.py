"""Real Gunicorn servers for end-to-end tests: start on a free 127.0.0.1 port, wait, stop."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

REPO = Path(__file__).resolve().parent.parent
GUNICORN = Path(sys.executable).parent / "gunicorn"
#: Seconds a server may take to become ready, or to exit when it must fail.
START_TIMEOUT = 30.0
#: Seconds a server has to stop after SIGTERM before it is killed.
STOP_TIMEOUT = 10.0
#: Seconds one HTTP request may take.
REQUEST_TIMEOUT = 30.0


@dataclass
class Server:
    """A Gunicorn server started by a test: its process, address, instance and log."""

    process: subprocess.Popen[bytes]
    url: str
    instance: Path
    log_path: Path

    def log(self) -> str:
        """Return everything the server wrote to stdout and stderr so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_gunicorn(instance: Path, log_path: Path, *, workers: int = 2, **settings: str) -> Server:
    """Start ``gunicorn -c gunicorn.conf.py wsgi:app`` from the repository root.

    :param settings: extra environment variables, e.g. ``INFERENCE_APP_MAX_CONTENT_LENGTH``;
        ``INFERENCE_APP_GRPC_PORT`` (e.g. a :func:`free_port`) serves gRPC, which is off
        otherwise.
    """
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("GUNICORN_", "INFERENCE_APP_"))
    }
    # gRPC (on 8081 by default) only where a test asks for it, on a free port.
    env["INFERENCE_APP_GRPC_PORT"] = "0"
    env.update(
        GUNICORN_BIND=f"127.0.0.1:{port}",
        GUNICORN_WORKERS=str(workers),
        INFERENCE_APP_INSTANCE_PATH=str(instance),
        **settings,
    )
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [str(GUNICORN), "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return Server(process, f"http://127.0.0.1:{port}", instance, log_path)


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Return whether ``condition`` became true within ``timeout`` seconds (bounded polling)."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 1):
        if condition():
            return True
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    return condition()


def wait_ready(server: Server) -> None:
    """Poll ``GET /health/ready`` until 200; fail with the server's log otherwise."""

    def ready() -> bool:
        if server.process.poll() is not None:
            pytest.fail(
                f"gunicorn exited with {server.process.returncode} before it was ready:\n"
                f"{server.log()}"
            )
        try:
            return requests.get(f"{server.url}/health/ready", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    if not wait_until(ready, START_TIMEOUT, interval=0.2):
        pytest.fail(f"gunicorn was not ready within {START_TIMEOUT} s:\n{server.log()}")


def stop(server: Server) -> None:
    """Send SIGTERM and wait; kill the server if it has not stopped in time."""
    if server.process.poll() is not None:
        return
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=STOP_TIMEOUT)


def log_lines(log: str) -> list[dict[str, Any]]:
    """Return every line of ``log`` parsed as the JSON object it must be."""
    lines = []
    for line in log.splitlines():
        if line.strip():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                pytest.fail(f"a log line is not JSON: {line!r}")
    return lines


def log_records(log: str) -> list[tuple[int, str]]:
    """Return ``(pid, message)`` of each line of ``log``."""
    return [(int(line["pid"]), str(line["message"])) for line in log_lines(log)]
