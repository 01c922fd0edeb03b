"""Abuse against real Gunicorn: schemathesis over /openapi.json, hostile bodies, slow clients."""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from inference_app.core.bundle import load_bundle
from inference_app.demo import load_demo_data
from servers import REQUEST_TIMEOUT, Server, log_lines, start_gunicorn, stop, wait_ready

pytestmark = pytest.mark.e2e

KEY = "abuse-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
JSON = {**AUTH, "Content-Type": "application/json"}
SETOSA = [5.1, 3.5, 1.4, 0.2]
IRIS_NAMES = load_demo_data("iris")[2]
PREDICT = "/v1/models/iris:predict"
#: Each dialect's route, and the status of rows that do not fit the model.
ROUTES = {
    "native": ("/v1/models/iris:predict", 422),
    "single": ("/predict", 422),
    "v2": ("/v2/models/iris/infer", 400),
    "mlflow": ("/invocations", 400),
}
#: The server's MAX_CONTENT_LENGTH, the default: 16 MiB.
LIMIT = 16 * 1024 * 1024
MIB = 1024 * 1024
#: Seconds the slow client holds its request line, longer than FAST_TIMEOUT.
HOLD = 2.5
#: Seconds a request may take while a slow client holds a worker.
FAST_TIMEOUT = 2.0
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
#: Test cases per operation and phase, and the seed: the run takes 10 to 30 seconds.
SCHEMATHESIS_EXAMPLES = 10
SCHEMATHESIS_SEED = "20261122"
SCHEMATHESIS_TIMEOUT = 150.0
#: What schemathesis finds wrong with the product today, by failure code, and the fix.
#: Failures schemathesis may report that are not bugs. ST202 ("schema-valid request
#: rejected"): the generic routes (`{name}` in the path) take rows of any model, whose width
#: and feature names OpenAPI cannot tie to the path parameter; the per-model operations
#: (`/v1/models/iris:predict`, ...) state them exactly. Values the schema allows can also make
#: a model's output overflow (422, "not a finite number") or exceed float32 for a tree (422).
KNOWN_FAILURES = {"ST202"}


@pytest.fixture(scope="module")
def server(demo_instance: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Gunicorn with 2 sync workers over the demo bundles, asking for ``KEY``."""
    root = tmp_path_factory.mktemp("abuse")
    instance = root / "instance"
    shutil.copytree(demo_instance, instance)
    server = start_gunicorn(instance, root / "gunicorn.log", workers=2, INFERENCE_APP_API_KEYS=KEY)
    try:
        wait_ready(server)
        yield server
    finally:
        stop(server)


@pytest.fixture(scope="module")
def iris(demo_instance: Path) -> Any:
    """The demo iris estimator, loaded in process."""
    return load_bundle(demo_instance / "models" / "iris" / "1").estimator


def post(
    server: Server,
    path: str,
    body: bytes,
    headers: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> Any:
    """POST ``body`` with the key; return the answer."""
    return requests.post(
        f"{server.url}{path}", data=body, headers={**JSON, **(headers or {})}, timeout=timeout
    )


def assert_error(response: Any, dialect: str, statuses: Iterable[int]) -> str:
    """Assert ``response`` is a ``statuses`` error in ``dialect``'s shape; return its message."""
    allowed = set(statuses)
    assert response.status_code in allowed, f"{response.status_code}: {response.text[:500]}"
    assert "Traceback" not in response.text and 'File "/' not in response.text
    body = response.json()
    if dialect in ("native", "single"):
        assert body["code"] == response.status_code, body
        return str(body["message"])
    if dialect == "v2":
        assert set(body) == {"error"}, body
        return str(body["error"])
    assert set(body) == {"error_code", "message"}, body
    return str(body["message"])


def exchange(server: Server, head: bytes, parts: Iterable[bytes]) -> tuple[int | None, bytes]:
    """Send a request head, then body parts until the server answers or closes.

    :returns: the answer's status, ``None`` if the server closed without answering, and
        the answer's body.
    """
    host, port = server.url.removeprefix("http://").split(":")
    answer = b""
    with socket.create_connection((host, int(port)), timeout=REQUEST_TIMEOUT) as sock:
        try:
            sock.sendall(head)
            for part in parts:
                if select.select([sock], [], [], 0)[0]:
                    break  # the server answered before reading the whole body
                sock.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading: its answer, if any, is in the socket
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    if not answer:
        return None, b""
    status = int(answer.split(b" ", 2)[1])
    return status, answer.partition(b"\r\n\r\n")[2]


def request_head(server: Server, path: str, framing: str, request_id: str = "") -> bytes:
    """Return the head of a JSON POST with the key and ``framing`` (a body length header)."""
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {server.url.removeprefix('http://')}",
        f"Authorization: Bearer {KEY}",
        "Content-Type: application/json",
        framing,
    ]
    if request_id:
        lines.append(f"X-Request-ID: {request_id}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def padded_setosa(size: int) -> bytes:
    """Return a valid iris request padded with whitespace to ``size`` bytes: if a server
    read only its first part, it would answer 200."""
    body = json.dumps({"instances": [SETOSA]}).encode()
    return body + b" " * (size - len(body))


def chunked(body: bytes, size: int = MIB) -> Iterator[bytes]:
    """Yield ``body`` in HTTP/1.1 chunks of ``size`` bytes, then the last chunk."""
    for start in range(0, len(body), size):
        piece = body[start : start + size]
        yield b"%x\r\n%s\r\n" % (len(piece), piece)
    yield b"0\r\n\r\n"


def pieces(body: bytes, size: int = MIB) -> Iterator[bytes]:
    """Yield ``body`` in parts of ``size`` bytes."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


def served_by(server: Server, request_ids: Iterable[str]) -> dict[str, int]:
    """Return the pid of the worker that answered each request id, from the access log."""
    wanted = set(request_ids)
    return {
        line["request_id"]: int(line["pid"])
        for line in log_lines(server.log())
        if line.get("request_id") in wanted
    }


def booted_workers(server: Server) -> set[int]:
    """Return the pids of every worker Gunicorn has booted."""
    prefix = "Booting worker with pid: "
    return {
        int(line["message"].removeprefix(prefix))
        for line in log_lines(server.log())
        if str(line.get("message", "")).startswith(prefix)
    }


class SlowClient:
    """A connection that sent part of its request and waits: it holds one sync worker."""

    def __init__(self, server: Server, path: str, body: bytes, request_id: str) -> None:
        head = request_head(server, path, f"Content-Length: {len(body)}", request_id)
        self.request = head + body
        host, port = server.url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=REQUEST_TIMEOUT)
        self.sock.sendall(self.request[:10])  # "POST /v1/m": not even a whole request line

    def finish(self) -> tuple[int | None, bytes]:
        """Send the rest of the request; return the status (``None``: closed) and body."""
        answer = b""
        with self.sock:
            try:
                self.sock.sendall(self.request[10:])
                while chunk := self.sock.recv(65536):
                    answer += chunk
            except (BrokenPipeError, ConnectionResetError):
                pass
        if not answer:
            return None, b""
        return int(answer.split(b" ", 2)[1]), answer.partition(b"\r\n\r\n")[2]


# Authentication under Gunicorn


@pytest.mark.parametrize("dialect", list(ROUTES))
def test_each_dialect_asks_for_the_key(server: Server, dialect: str) -> None:
    path, _ = ROUTES[dialect]

    response = requests.post(f"{server.url}{path}", json={}, timeout=REQUEST_TIMEOUT)

    assert_error(response, dialect, [401])
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.headers["Server"] == "gunicorn"  # no version to look up exploits for


# schemathesis over the OpenAPI document


@pytest.fixture(scope="module")
def schemathesis_run(server: Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The JSON report of ``schemathesis run --checks all`` against the server, plus its output."""
    folder = tmp_path_factory.mktemp("schemathesis")
    report = folder / "report.json"
    command = [
        str(SCHEMATHESIS),
        "run",
        f"{server.url}/openapi.json",
        "--checks=all",
        f"--max-examples={SCHEMATHESIS_EXAMPLES}",
        f"--seed={SCHEMATHESIS_SEED}",
        "--generation-database=none",
        f"--header=Authorization: Bearer {KEY}",
        "--request-timeout=20",
        "--no-color",
        "--report=json",
        f"--report-json-path={report}",
    ]
    env = {**os.environ, "HYPOTHESIS_STORAGE_DIRECTORY": str(folder / "hypothesis")}
    completed = subprocess.run(
        command,
        cwd=folder,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=SCHEMATHESIS_TIMEOUT,
        check=False,
    )
    output = completed.stdout + completed.stderr
    assert report.is_file(), output[-5000:]
    result: dict[str, Any] = json.loads(report.read_text(encoding="utf-8"))
    result["output"] = output
    return result


def test_schemathesis_tests_every_operation(schemathesis_run: dict[str, Any]) -> None:
    operations = schemathesis_run["operations"]

    assert schemathesis_run["complete"], schemathesis_run["output"][-5000:]
    assert operations["selected"] == operations["tested"] >= 20
    assert operations["errored"] == 0 and schemathesis_run["errors"] == []
    assert schemathesis_run["test_cases"]["generated"] >= 10 * operations["tested"]


def test_schemathesis_finds_no_failure_but_the_known_ones(
    schemathesis_run: dict[str, Any],
) -> None:
    unexpected = {
        f"{failure['code']} {failure['title']}": failure["operations"]
        for failure in schemathesis_run["failures"]
        if failure["code"] not in KNOWN_FAILURES
    }

    assert unexpected == {}, schemathesis_run["output"][-20000:]


def test_schemathesis_refusals_of_valid_requests_are_only_model_specific(
    schemathesis_run: dict[str, Any],
) -> None:
    output = schemathesis_run["output"]
    per_model = re.compile(r"^_+ POST /v1/models/[a-z_]+:predict _+$", re.M)
    for section in re.split(r"\n(?=_{5,} )", output):
        if "ST202" not in section or not per_model.match(section.strip()):
            continue
        # On a model's own operation, only values beyond what the model can compute.
        assert "not a finite number" in section or "cannot predict these rows" in section, section[
            :3000
        ]


# Size limits


def test_a_50_mb_body_is_refused_with_413(server: Server) -> None:
    body = padded_setosa(50 * MIB)
    head = request_head(server, PREDICT, f"Content-Length: {len(body)}")

    status, answer = exchange(server, head, pieces(body))

    assert status == 413, answer[:500]
    assert "larger than" in json.loads(answer)["message"]


def test_a_small_chunked_body_is_read_whole(server: Server, iris: Any) -> None:
    body = padded_setosa(MIB)

    status, answer = exchange(
        server, request_head(server, PREDICT, "Transfer-Encoding: chunked"), chunked(body)
    )

    assert status in (200, 411), answer[:500]  # 411: chunked bodies refused outright
    if status == 200:
        assert json.loads(answer)["predictions"] == iris.predict(np.array([SETOSA])).tolist()


def test_a_50_mb_chunked_body_is_refused_not_truncated(server: Server) -> None:
    body = padded_setosa(50 * MIB)
    head = request_head(server, PREDICT, "Transfer-Encoding: chunked")

    status, answer = exchange(server, head, chunked(body))

    assert status in (None, 411, 413), f"{status}: {answer[:500]!r}"


@pytest.mark.parametrize("dialect", list(ROUTES))
@pytest.mark.parametrize("opening", [b"[", b'{"a":'])
def test_json_nested_10000_deep_is_400(server: Server, dialect: str, opening: bytes) -> None:
    closing = b"]" if opening == b"[" else b"}"
    body = opening * 10_000 + b"1" + closing * 10_000

    assert_error(post(server, ROUTES[dialect][0], body), dialect, [400])


def million_rows(row: bytes) -> bytes:
    """Return ``{"instances": [row, row, ...]}`` with a million rows."""
    return b'{"instances": [' + b",".join([row] * 1_000_000) + b"]}"


def test_a_million_rows_is_refused(server: Server) -> None:
    compact = million_rows(b"[1,2,3,4]")  # 10 MB, within the byte limit: the row cap answers
    long = million_rows(b"[5.1,3.5,1.4,0.2]")  # 18 MB: the byte limit answers
    tensor = {"name": "input-0", "shape": [1_000_000, 4], "datatype": "FP64"}
    v2 = json.dumps({"inputs": [{**tensor, "data": [1] * 4_000_000}]}).encode()
    assert len(compact) < LIMIT < len(long)

    native = assert_error(post(server, PREDICT, compact), "native", [422])
    in_v2 = assert_error(post(server, ROUTES["v2"][0], v2), "v2", [400])
    mlflow = assert_error(post(server, ROUTES["mlflow"][0], compact), "mlflow", [400])
    status, answer = exchange(
        server, request_head(server, PREDICT, f"Content-Length: {len(long)}"), pieces(long)
    )

    for message in (native, in_v2, mlflow):
        assert "1000000 rows" in message
    assert status == 413, answer[:500]


# Values and types


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999"])
@pytest.mark.parametrize("dialect", list(ROUTES))
def test_non_finite_numbers_are_refused(server: Server, dialect: str, literal: bytes) -> None:
    row = b"[" + literal + b", 3.5, 1.4, 0.2]"
    bodies = {
        "native": b'{"instances": [' + row + b"]}",
        "single": b'{"instance": ' + row + b"}",
        "v2": b'{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": '
        + row
        + b"}]}",
        "mlflow": b'{"instances": [' + row + b"]}",
    }

    message = assert_error(post(server, ROUTES[dialect][0], bodies[dialect]), dialect, [400, 422])

    assert "finite" in message


@pytest.mark.parametrize(
    "value",
    ["5.1", True, None, [5.1], {"value": 5.1}, 10**400],
    ids=["string", "boolean", "null", "array", "object", "huge-integer"],
)
@pytest.mark.parametrize("dialect", list(ROUTES))
def test_wrong_types_are_refused(server: Server, dialect: str, value: Any) -> None:
    row = [value, 3.5, 1.4, 0.2]
    bodies = {
        "native": {"instances": [row]},
        "single": {"instance": row},
        "v2": {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": row}]},
        "mlflow": {"instances": [row]},
    }
    path, status = ROUTES[dialect]

    response = post(server, path, json.dumps(bodies[dialect]).encode())

    assert_error(response, dialect, [status])


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": [[5.1, 3.5, 1.4, 0.2]], "method": "pr\xe9dict"}',
        b'{"instances": [[5.1, 3.5, 1.4, 0.2]], "method": "\xc0\xaf"}',
        b'{"instances": [[5.1, 3.5, 1.4, 0.2]], "method": "\xf0\x9f\x8c"}',
        b'{"instances": [[5.1, 3.5, 1.4, 0.2]], "method": "\xff"}',
        b"\x80",
    ],
    ids=["latin-1", "overlong", "truncated", "invalid-byte", "continuation"],
)
@pytest.mark.parametrize("dialect", list(ROUTES))
def test_bytes_that_are_not_utf8_are_400(server: Server, dialect: str, body: bytes) -> None:
    assert_error(post(server, ROUTES[dialect][0], body), dialect, [400])


@pytest.mark.parametrize(
    "body",
    [
        json.dumps({"instances": [SETOSA]}).encode("utf-16"),
        json.dumps({"instances": [SETOSA]}).encode("utf-32"),
        b'{"instances": [[5.1, 3.5, 1.4, 0.2]], "method": "\xed\xa0\x80"}',
    ],
    ids=["utf-16", "utf-32", "encoded-surrogate"],
)
def test_json_in_other_unicode_encodings_is_400(server: Server, body: bytes) -> None:
    assert_error(post(server, PREDICT, body), "native", [400])


def test_csv_that_is_not_utf8_is_400(server: Server) -> None:
    body = ",".join(IRIS_NAMES).encode() + b"\n5.1,3.5,1.4,0.2\xa0\n"

    response = post(server, "/invocations", body, {"Content-Type": "text/csv"})

    assert "UTF-8" in assert_error(response, "mlflow", [400])


UNICODE_NAMES = [
    "pétale 🌸",
    "длина лепестка",
    "花瓣长度",
    "אורך עלה",
    "e\u0301\u200d",
    "nul\u0000byte",
    "\ufeffsepal length (cm)",  # a byte-order mark before a real name
    "p\u0435tal length (cm)",  # a Cyrillic "е": looks like a real name
]


@pytest.mark.parametrize("name", UNICODE_NAMES)
@pytest.mark.parametrize("dialect", list(ROUTES))
def test_unicode_feature_names_are_refused_by_name(server: Server, dialect: str, name: str) -> None:
    record = {**dict(zip(IRIS_NAMES, SETOSA, strict=True)), name: 1.0}
    tensors = [
        {"name": key, "shape": [1], "datatype": "FP64", "data": [value]}
        for key, value in record.items()
    ]
    bodies = {
        "native": {"instances": [record]},
        "single": {"instance": record},
        "v2": {"inputs": tensors},
        "mlflow": {"dataframe_records": [record]},
    }
    path, status = ROUTES[dialect]

    message = assert_error(
        post(server, path, json.dumps(bodies[dialect]).encode()), dialect, [status]
    )

    assert repr(name) in message


def test_duplicate_keys_take_the_last_value_or_are_refused(server: Server, iris: Any) -> None:
    last_wins = dict(zip(IRIS_NAMES, SETOSA, strict=True))
    first_wins = {**last_wins, IRIS_NAMES[2]: 6.5, IRIS_NAMES[3]: 2.2}
    assert (
        iris.predict(np.array([list(first_wins.values())])).tolist()
        != iris.predict(np.array([SETOSA])).tolist()
    ), "the two readings of the record must predict differently"
    record = (
        "{"
        + ", ".join(f'"{key}": {first_wins[key]}' for key in IRIS_NAMES[2:])
        + ", "
        + ", ".join(f'"{key}": {value}' for key, value in last_wins.items())
        + "}"
    )

    answers = [
        post(server, PREDICT, b'{"instances": "oops", "instances": [[5.1, 3.5, 1.4, 0.2]]}'),
        post(server, PREDICT, f'{{"instances": [{record}]}}'.encode()),
        post(
            server,
            ROUTES["v2"][0],
            b'{"inputs": [], "inputs": [{"name": "input-0", "shape": [1, 4], '
            b'"datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}',
        ),
    ]
    refused_last = post(server, PREDICT, b'{"instances": [[5.1, 3.5, 1.4, 0.2]], "instances": 1}')

    expected = iris.predict(np.array([SETOSA])).tolist()
    for response in answers:
        assert response.status_code in (200, 400), response.text[:500]
        if response.status_code == 200:
            body = response.json()
            predicted = body["outputs"][0]["data"] if "outputs" in body else body["predictions"]
            assert predicted == expected
    assert refused_last.status_code in (400, 422), refused_last.text[:500]


# Slow clients


def test_a_slow_client_does_not_stop_the_server_serving_others(server: Server, iris: Any) -> None:
    body = json.dumps({"instances": [SETOSA]}).encode()
    slow = SlowClient(server, PREDICT, body, "slow-headers")
    served = []
    started = time.monotonic()
    try:
        while time.monotonic() - started < HOLD:
            response = post(server, PREDICT, body, timeout=FAST_TIMEOUT)
            served.append(response.status_code)
            assert response.status_code == 200
    finally:
        status, answer = slow.finish()

    assert len(served) >= 5
    assert time.monotonic() - started > FAST_TIMEOUT
    if status is not None:  # the server may also have closed the idle connection
        assert status == 200, answer[:500]
        assert json.loads(answer)["predictions"] == iris.predict(np.array([SETOSA])).tolist()


def test_clients_that_give_up_mid_request_leave_the_workers_serving(server: Server) -> None:
    body = json.dumps({"instances": [SETOSA]}).encode()
    quitters = [SlowClient(server, PREDICT, body, f"quitter-{index}") for index in range(2)]
    time.sleep(0.5)  # each holds a worker
    for quitter in quitters:
        quitter.sock.close()

    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda _: post(server, PREDICT, body).status_code, range(8)))

    assert statuses == [200] * 8


# Afterwards


def test_every_worker_still_predicts_correctly_and_nothing_crashed(
    server: Server, iris: Any
) -> None:
    rows, _, _ = load_demo_data("iris")
    body = json.dumps({"instances": rows.tolist()}).encode()
    expected = iris.predict(rows).tolist()
    workers = booted_workers(server)
    seen: set[int] = set()
    # Two slow clients hold the two workers, then finish: each worker answers one. A worker
    # slow to accept may let the other answer both, so a few rounds are allowed.
    for attempt in range(5):
        request_ids = [f"after-{attempt}-{index}" for index in range(2)]
        holders = [SlowClient(server, PREDICT, body, request_id) for request_id in request_ids]
        time.sleep(0.5)
        for holder in holders:
            status, answer = holder.finish()
            assert status == 200, answer[:500]
            assert json.loads(answer)["predictions"] == expected
        seen |= set(served_by(server, request_ids).values())
        if seen == workers:
            break
    log = server.log()

    assert len(workers) == 2 and booted_workers(server) == workers, log[-5000:]
    assert seen == workers
    assert "Traceback" not in log
    levels = {line["level"] for line in log_lines(log)}
    assert levels <= {"DEBUG", "INFO", "WARNING"}, log[-5000:]
