"""Clients straight at Gunicorn, no proxy in front, under the shipped settings.

Connections opened in a burst spread over the workers. Three sockets trickle a request's
header lines, one a second (the "slowloris" pattern); while they do, another client's
predictions must each be answered within :data:`MAX_WAIT_S`. With Gunicorn's sync workers
(one request at a time, nothing buffering in front) each slow socket holds a whole worker,
and these requests would wait for them.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from inference_app.demo import write_demo_bundles
from servers import REQUEST_TIMEOUT, Server, log_lines, start_gunicorn, stop, wait_ready

pytestmark = pytest.mark.e2e

#: Slow sockets, and how long each one trickles (seconds).
SLOW_CLIENTS = 3
TRICKLE_S = 8.0
#: The longest another client's request may wait while they trickle (seconds).
MAX_WAIT_S = 2.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Gunicorn with the shipped settings (2 workers) over the iris demo bundle."""
    root = tmp_path_factory.mktemp("slow")
    write_demo_bundles(root / "instance" / "models", names=["iris"])
    server = start_gunicorn(root / "instance", root / "gunicorn.log")
    try:
        wait_ready(server)
        yield server
    finally:
        stop(server)


def trickle(url: str, stop_at: float, sent: list[int]) -> None:
    """Send a request line, then one header line a second until ``stop_at``; never finish."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=REQUEST_TIMEOUT) as sock:
        sock.sendall(b"POST /v1/models/iris:predict HTTP/1.1\r\nHost: slow\r\n")
        line = 0
        while time.monotonic() < stop_at:
            time.sleep(1.0)
            try:
                sock.sendall(f"X-Trickle-{line}: {line}\r\n".encode())
            except OSError:  # the server may close a socket it finds too slow: fine
                break
            line += 1
        sent.append(line)


def test_other_clients_are_served_while_slow_clients_trickle_headers(server: Server) -> None:
    body = {"instances": [[5.1, 3.5, 1.4, 0.2]]}
    expected = requests.post(
        f"{server.url}/v1/models/iris:predict", json=body, timeout=REQUEST_TIMEOUT
    ).json()
    stop_at = time.monotonic() + TRICKLE_S
    sent: list[int] = []
    slow = [
        threading.Thread(target=trickle, args=(server.url, stop_at, sent), daemon=True)
        for _ in range(SLOW_CLIENTS)
    ]
    for thread in slow:
        thread.start()
    time.sleep(1.5)  # every slow socket is connected and has sent its first header lines
    waits = []
    with requests.Session() as session:
        while time.monotonic() < stop_at - 1.0:
            started = time.monotonic()
            answer = session.post(
                f"{server.url}/v1/models/iris:predict", json=body, timeout=REQUEST_TIMEOUT
            )
            waits.append(time.monotonic() - started)
            assert answer.status_code == 200
            assert answer.json() == expected
        # New connections too, not only the kept-alive one.
        for _ in range(20):
            started = time.monotonic()
            answer = requests.post(
                f"{server.url}/v1/models/iris:predict", json=body, timeout=REQUEST_TIMEOUT
            )
            waits.append(time.monotonic() - started)
            assert answer.status_code == 200
    for thread in slow:
        thread.join(timeout=TRICKLE_S + REQUEST_TIMEOUT)
    assert len(sent) == SLOW_CLIENTS, "a slow client did not finish"
    assert min(sent) >= TRICKLE_S - 3, f"the slow clients sent only {sent} header lines"
    assert len(waits) > 20
    assert max(waits) <= MAX_WAIT_S, f"a request waited {max(waits):.1f} s behind slow clients"


def test_the_log_names_the_c_parser(server: Server) -> None:
    assert "HTTP parser: gunicorn_h1c" in server.log()


def test_a_burst_of_connections_spreads_over_the_workers(server: Server) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    body = b'{"instances": [[5.1, 3.5, 1.4, 0.2]]}'
    sockets = [socket.create_connection((host, int(port)), timeout=REQUEST_TIMEOUT)]
    sockets += [socket.create_connection((host, int(port))) for _ in range(15)]
    try:
        for number, sock in enumerate(sockets):
            sock.settimeout(REQUEST_TIMEOUT)
            sock.sendall(
                b"POST /v1/models/iris:predict HTTP/1.1\r\nHost: burst\r\n"
                b"Content-Type: application/json\r\n"
                + f"X-Request-ID: burst-{number}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
        for sock in sockets:
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    finally:
        for sock in sockets:
            sock.close()
    time.sleep(0.5)  # the access lines are written
    workers = [
        line["pid"]
        for line in log_lines(server.log())
        if str(line.get("request_id", "")).startswith("burst-")
    ]
    assert len(workers) == len(sockets)
    counts = sorted(workers.count(pid) for pid in set(workers))
    assert len(counts) == 2 and counts[0] >= 4, f"connections per worker: {counts}"
