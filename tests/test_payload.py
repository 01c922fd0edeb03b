"""Payload logging on real Gunicorn: CloudEvents pairs from every protocol, sampling, an HTTP
sink, sinks that stall or are down, rotation across workers, and no secrets in the log."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests
from cloudevents.core.formats.json import JSONFormat
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_iris

from inference_app import create_app, metrics, payload
from inference_app.config import DEFAULTS, ConfigError
from inference_app.core.dataplane import InferenceRequest
from inference_app.datasets import load_penguins
from inference_app.demo import write_demo_bundles
from servers import (
    REQUEST_TIMEOUT,
    Server,
    free_port,
    start_gunicorn,
    stop,
    wait_ready,
    wait_until,
)

pytestmark = pytest.mark.e2e

#: Seconds the events of answered requests may take to reach the file or the sink.
DELIVERY_TIMEOUT = 20.0
KEY = "payload-test-key-3f9c1b"
SECOND_KEY = "payload-test-key-8a2d7e"
EXTENSIONS = {"modelname", "modelversion", "protocol"}
IRIS = load_iris()
IRIS_NAMES = [str(name) for name in IRIS.feature_names]


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An instance folder with the iris and penguins demo bundles."""
    folder = tmp_path_factory.mktemp("payload-instance")
    write_demo_bundles(folder / "models", names=["iris", "penguins"])
    return folder


@pytest.fixture
def serve(instance: Path, tmp_path: Path) -> Iterator[Any]:
    """Start Gunicorn with 2 workers and the given settings; stopped after the test."""
    started: list[Server] = []

    def start(**settings: str) -> Server:
        server = start_gunicorn(instance, tmp_path / f"gunicorn-{len(started)}.log", **settings)
        started.append(server)
        wait_ready(server)
        return server

    yield start
    for server in started:
        stop(server)


# Events


def read_events(*paths: Path) -> list[dict[str, Any]]:
    """Every line of the files, each parsed as one whole JSON object."""
    events = []
    for path in paths:
        for line in path.read_bytes().splitlines():
            events.append(json.loads(line))
    return events


def check_event(event: dict[str, Any]) -> None:
    """Fail unless ``event`` is a CloudEvents 1.0 event of the payload log: the SDK reads it
    (required attributes, extension names), and its attributes are as documented."""
    read = JSONFormat().read(None, json.dumps(event).encode())  # validates on construction
    assert read.get_specversion() == "1.0"
    assert read.get_id() == event["id"] and event["id"]
    assert event["type"] in (payload.REQUEST_TYPE, payload.RESPONSE_TYPE)
    assert event["datacontenttype"] == "application/json"
    assert event["source"] == f"/v1/models/{event['modelname']}/versions/{event['modelversion']}"
    assert event["time"].endswith("Z")
    assert datetime.fromisoformat(event["time"]).utcoffset() == timedelta(0)
    assert EXTENSIONS <= set(event) and all(name.isalnum() and name.islower() for name in event)


def pairs(events: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """The events by request id, then by ``request`` or ``response``; fails on a duplicate."""
    by_id: dict[str, dict[str, dict[str, Any]]] = {}
    for event in events:
        check_event(event)
        kind = event["type"].rsplit(".", 1)[1]
        assert kind not in by_id.setdefault(event["id"], {}), f"two {kind} events: {event['id']}"
        by_id[event["id"]][kind] = event
    return by_id


def dropped(server: Server) -> dict[str, float]:
    """``inference_app_payload_events_dropped_total`` by reason, and ``sent``, from /metrics."""
    text = requests.get(f"{server.url}/metrics", timeout=REQUEST_TIMEOUT).text
    counts: dict[str, float] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "inference_app_payload_events_dropped_total":
                counts[sample.labels["reason"]] += sample.value
            elif sample.name == "inference_app_payload_events_sent_total":
                counts["sent"] += sample.value
    return counts


# Requests over every protocol


@dataclass
class Sent:
    """One request sent, what its events must hold, and the answer's outputs."""

    request_id: str
    protocol: str
    model: str
    inputs: dict[str, list[Any]]
    outputs: dict[str, Any] = field(default_factory=dict)


def penguin_rows() -> pd.DataFrame:
    """Three real penguins: two complete, one whose sex is missing."""
    frame, _ = load_penguins()
    numbers = frame.drop(columns=["island", "sex"]).notna().all(axis=1)
    complete = frame[numbers & frame["sex"].notna()].iloc[[0, 200]]
    missing_sex = frame[numbers & frame["sex"].isna()].iloc[[0]]
    return pd.concat([complete, missing_sex]).reset_index(drop=True)


def penguin_columns(frame: pd.DataFrame) -> dict[str, list[Any]]:
    """The frame's columns as the events carry them: None where missing."""
    return {
        name: [None if pd.isna(value) else value for value in frame[name].astype(object)]
        for name in frame.columns
    }


def send_mix(url: str, prefix: str, headers: dict[str, str]) -> list[Sent]:
    """Send one request of each protocol and route (fast path and Flask), with known ids."""
    iris_rows = IRIS.data[[0, 60, 120]].tolist()
    iris_columns = {name: [row[j] for row in iris_rows] for j, name in enumerate(IRIS_NAMES)}
    penguins = penguin_rows()
    penguin_json = [
        {name: (None if pd.isna(value) else value) for name, value in row.items()}
        for row in penguins.astype(object).to_dict("records")
    ]
    session = requests.Session()
    sent: list[Sent] = []

    def post(case: str, path: str, protocol: str, model: str, inputs: Any, **kwargs: Any) -> Any:
        request_id = f"{prefix}-{case}"
        answer = session.post(
            f"{url}{path}",
            headers={**headers, "X-Request-ID": request_id, **kwargs.pop("headers", {})},
            timeout=REQUEST_TIMEOUT,
            **kwargs,
        )
        assert answer.status_code == 200, (case, answer.text)
        assert answer.headers["X-Request-ID"] == request_id
        body = answer.json()
        sent.append(Sent(request_id, protocol, model, inputs))
        return body

    body = post(
        "native-rows",
        "/v1/models/iris:predict",
        "native",
        "iris",
        iris_columns,
        json={"instances": iris_rows, "method": "predict_proba"},
    )
    sent[-1].outputs = {
        "predict_proba": {"values": body["predictions"], "classes": body["classes"]}
    }
    body = post(
        "kserve-v1-objects",
        "/v1/models/iris/versions/1:predict",
        "native",
        "iris",
        iris_columns,
        json={"instances": [dict(zip(IRIS_NAMES, row, strict=True)) for row in iris_rows]},
    )
    sent[-1].outputs = {"predict": {"values": body["predictions"]}}
    chunked = json.dumps({"instances": iris_rows}).encode()
    body = post(  # no Content-Length: Flask answers, not the fast path
        "native-chunked",
        "/v1/models/iris:predict",
        "native",
        "iris",
        iris_columns,
        data=iter([chunked[:10], chunked[10:]]),
        headers={"Content-Type": "application/json"},
    )
    sent[-1].outputs = {"predict": {"values": body["predictions"]}}
    body = post(
        "native-one",
        "/predict",
        "native",
        "iris",
        {name: [value] for name, value in zip(IRIS_NAMES, iris_rows[1], strict=True)},
        json={"instance": iris_rows[1]},
        headers={"X-Model-Name": "iris"},
    )
    assert body["prediction"] == "versicolor"
    body = post(
        "v2-tensor",
        "/v2/models/iris/infer",
        "v2",
        "iris",
        iris_columns,
        json={
            "inputs": [{"name": "input-0", "shape": [3, 4], "datatype": "FP64", "data": iris_rows}],
            "outputs": [{"name": "predict"}, {"name": "predict_proba"}],
        },
    )
    v2 = {output["name"]: output for output in body["outputs"]}
    sent[-1].outputs = {
        "predict": {"values": v2["predict"]["data"]},
        "predict_proba": {
            "values": np.reshape(v2["predict_proba"]["data"], (3, 3)).tolist(),
            "classes": json.loads(v2["predict_proba"]["parameters"]["classes"]),
        },
    }
    tensors = [
        {
            "name": name,
            "shape": [len(penguins)],
            "datatype": "BYTES" if name in ("island", "sex") else "FP64",
            "data": values,
        }
        for name, values in penguin_columns(penguins).items()
    ]
    body = post(
        "v2-penguins",
        "/v2/models/penguins/versions/1/infer",
        "v2",
        "penguins",
        penguin_columns(penguins),
        json={"inputs": tensors},
    )
    sent[-1].outputs = {"predict": {"values": body["outputs"][0]["data"]}}
    body = post(
        "native-penguins",
        "/v1/models/penguins:predict",
        "native",
        "penguins",
        penguin_columns(penguins),
        json={"instances": penguin_json},
    )
    sent[-1].outputs = {"predict": {"values": body["predictions"]}}
    body = post(
        "mlflow-split",
        "/invocations",
        "mlflow",
        "iris",
        iris_columns,
        json={"dataframe_split": {"columns": IRIS_NAMES, "data": iris_rows}},
        headers={"X-Model-Name": "iris"},
    )
    sent[-1].outputs = {"predict": {"values": body["predictions"]}}
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(penguins.columns)
    writer.writerows(penguins.astype(object).where(penguins.notna(), "").itertuples(index=False))
    body = post(
        "mlflow-csv",
        "/invocations",
        "mlflow",
        "penguins",
        penguin_columns(penguins),
        data=text.getvalue(),
        headers={"X-Model-Name": "penguins", "Content-Type": "text/csv"},
    )
    sent[-1].outputs = {"predict": {"values": body["predictions"]}}
    return sent


def check_pairs(found: dict[str, dict[str, dict[str, Any]]], sent: list[Sent]) -> None:
    """Each sent request has exactly its request and response events, with its inputs,
    the answer's outputs, and the model version that answered."""
    for request in sent:
        events = found[request.request_id]
        assert set(events) == {"request", "response"}, request.request_id
        for event in events.values():
            assert (event["modelname"], event["modelversion"]) == (request.model, "1")
            assert event["protocol"] == request.protocol
        asked, answered = events["request"], events["response"]
        assert asked["data"]["inputs"] == request.inputs, request.request_id
        rows = len(next(iter(request.inputs.values())))
        assert asked["data"]["rows"] == answered["data"]["rows"] == rows
        if request.outputs:
            assert answered["data"]["outputs"] == request.outputs, request.request_id
        assert asked["time"] <= answered["time"]


# Tests


def test_every_protocol_logs_one_request_and_one_response_event_per_answer(
    serve: Any, tmp_path: Path
) -> None:
    log = tmp_path / "payload.jsonl"
    server = serve(
        INFERENCE_APP_PAYLOAD_LOG=str(log),
        INFERENCE_APP_PAYLOAD_LOG_HEADERS="User-Agent",
        INFERENCE_APP_API_KEYS=f"{KEY},{SECOND_KEY}",
    )
    rounds = 4
    with ThreadPoolExecutor(max_workers=4) as pool:  # both workers answer and write
        batches = list(
            pool.map(
                lambda index: send_mix(
                    server.url,
                    f"mix{index}",
                    {"Authorization": f"Bearer {KEY}"}
                    if index % 2
                    else {"X-API-Key": SECOND_KEY, "User-Agent": "payload-test"},
                ),
                range(rounds),
            )
        )
    sent = [request for batch in batches for request in batch]
    assert len(sent) == rounds * 9
    refused = requests.post(  # an error answer is not logged
        f"{server.url}/v1/models/iris:predict",
        json={"instances": [[1, 2]]},
        headers={"X-API-Key": KEY, "X-Request-ID": "refused"},
        timeout=REQUEST_TIMEOUT,
    )
    assert refused.status_code == 422
    assert wait_until(lambda: len(log.read_bytes().splitlines()) >= 2 * len(sent), DELIVERY_TIMEOUT)
    time.sleep(0.5)  # nothing more arrives
    found = pairs(read_events(log))
    assert set(found) == {request.request_id for request in sent}
    check_pairs(found, sent)
    counts = dropped(server)
    assert counts["sent"] == 2 * len(sent)
    assert sum(counts[reason] for reason in payload.DROP_REASONS) == 0
    # No key is logged; only the header asked for is.
    raw = log.read_bytes()
    assert KEY.encode() not in raw and SECOND_KEY.encode() not in raw
    for events in found.values():
        headers = events["request"]["data"]["headers"]
        assert set(headers) <= {"user-agent"}
        assert headers["user-agent"] in ("payload-test", requests.utils.default_user_agent())
    assert "Traceback" not in server.log()
    # The preloading master never opened the log (no sender of its own); the workers did.
    master = server.process.pid
    workers = [
        int(pid) for pid in Path(f"/proc/{master}/task/{master}/children").read_text().split()
    ]
    assert len(workers) == 2
    assert str(log) not in open_files(master)
    assert any(str(log) in open_files(worker) for worker in workers)


def open_files(pid: int) -> set[str]:
    """The paths a process has open."""
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            found.add(os.readlink(fd))
        except OSError:  # closed meanwhile
            continue
    return found


def test_sampling_logs_whole_pairs_of_about_the_fraction(serve: Any, tmp_path: Path) -> None:
    log = tmp_path / "payload.jsonl"
    server = serve(INFERENCE_APP_PAYLOAD_LOG=str(log), INFERENCE_APP_PAYLOAD_LOG_SAMPLE="0.3")
    total = 300
    session = requests.Session()
    for index in range(total):
        answer = session.post(
            f"{server.url}/v1/models/iris:predict",
            json={"instances": [IRIS.data[index % 150].tolist()]},
            headers={"X-Request-ID": f"sample-{index}"},
            timeout=REQUEST_TIMEOUT,
        )
        assert answer.status_code == 200
    lines = [-1]

    def settled() -> bool:  # no new line for half a second
        time.sleep(0.5)
        lines.append(len(log.read_bytes().splitlines()))
        return lines[-1] == lines[-2]

    assert wait_until(settled, DELIVERY_TIMEOUT)
    found = pairs(read_events(log))
    # Binomial(300, 0.3): mean 90, standard deviation 7.9; 5 deviations either side.
    assert all(set(events) == {"request", "response"} for events in found.values())
    assert 50 <= len(found) <= 130, len(found)
    assert dropped(server)["sent"] == 2 * len(found)


class Receiver(BaseHTTPRequestHandler):
    """A CloudEvents sink: keeps each POST's content type and body, answers 202."""

    protocol_version = "HTTP/1.1"
    received: list[tuple[str, str, bytes]]
    lock: threading.Lock

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.lock:
            self.received.append((self.path, self.headers["Content-Type"], body))
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Keep the test output quiet."""


@pytest.fixture
def receiver_at() -> Iterator[Any]:
    """Start real HTTP servers on 127.0.0.1 (a given port, or any) in threads, each giving
    its port and the list of what it receives; all are stopped after the test."""
    servers: list[ThreadingHTTPServer] = []

    def start(port: int = 0) -> tuple[int, list[tuple[str, str, bytes]]]:
        received: list[tuple[str, str, bytes]] = []
        handler = type("Handler", (Receiver,), {"received": received, "lock": threading.Lock()})
        server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server.server_address[1], received

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def receiver(receiver_at: Any) -> tuple[str, list[tuple[str, str, bytes]]]:
    """A real HTTP server on 127.0.0.1 in a thread: its URL and what it received."""
    port, received = receiver_at()
    return f"http://127.0.0.1:{port}/events?source=test", received


@pytest.mark.parametrize("batch", [1, 8], ids=["structured", "batched"])
def test_http_sink_receives_structured_mode_events(
    serve: Any, receiver: tuple[str, list[tuple[str, str, bytes]]], batch: int
) -> None:
    url, received = receiver
    server = serve(INFERENCE_APP_PAYLOAD_LOG=url, INFERENCE_APP_PAYLOAD_LOG_BATCH_SIZE=str(batch))
    sent = send_mix(server.url, "http", {})
    events: list[dict[str, Any]] = []

    def arrived() -> bool:
        events.clear()
        for path, content_type, body in list(received):
            assert path == "/events?source=test"
            if batch == 1:
                assert content_type == "application/cloudevents+json; charset=utf-8"
                events.append(json.loads(body))
            else:
                assert content_type == "application/cloudevents-batch+json; charset=utf-8"
                chunk = json.loads(body)
                assert isinstance(chunk, list) and 1 <= len(chunk) <= batch
                events.extend(chunk)
        return len(events) >= 2 * len(sent)

    assert wait_until(arrived, DELIVERY_TIMEOUT)
    if batch == 1:
        assert len(received) == 2 * len(sent)  # one event per POST
    found = pairs(events)
    assert set(found) == {request.request_id for request in sent}
    check_pairs(found, sent)
    assert dropped(server)["sent"] == 2 * len(sent)


@pytest.fixture
def stalled_sink() -> Iterator[str]:
    """A TCP server on 127.0.0.1 that accepts connections and never answers: the bench's."""
    spec = importlib.util.spec_from_file_location(
        "bench_payload", Path(__file__).resolve().parents[1] / "bench" / "payload.py"
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    with bench.stalled_sink() as url:
        yield url


@pytest.mark.parametrize("sink", ["stalled", "down"])
def test_a_sink_that_stalls_or_is_down_fails_no_request_and_counts_drops(
    serve: Any, stalled_sink: str, sink: str
) -> None:
    url = stalled_sink if sink == "stalled" else f"http://127.0.0.1:{free_port()}/"
    queue_size = 5
    server = serve(
        INFERENCE_APP_PAYLOAD_LOG=url,
        INFERENCE_APP_PAYLOAD_LOG_QUEUE_SIZE=str(queue_size),
        INFERENCE_APP_PAYLOAD_LOG_TIMEOUT_MS="2000",
    )
    total = 80
    session = requests.Session()
    slowest = 0.0
    for index in range(total):
        started = time.perf_counter()
        answer = session.post(
            f"{server.url}/v1/models/iris:predict",
            json={"instances": [IRIS.data[index % 150].tolist()]},
            timeout=REQUEST_TIMEOUT,
        )
        slowest = max(slowest, time.perf_counter() - started)
        assert answer.status_code == 200
    # A request that waited for the sink would take its 2 s timeout.
    assert slowest < 1.5, slowest
    # Every event is dropped, but those of each worker's queue and of the group its sender
    # holds (taken from a full queue) while it waits to try the sink again.
    least = 2 * (total - 2 * (2 * queue_size + 1))

    def counted() -> bool:  # a stalled sink's first failure comes after its 2 s timeout
        counts = dropped(server)
        return counts["sink_error"] > 0 and sum(counts[r] for r in payload.DROP_REASONS) >= least

    assert wait_until(counted, DELIVERY_TIMEOUT)
    counts = dropped(server)
    assert counts["sent"] == 0
    assert counts["queue_full"] > 0 and counts["sink_error"] > 0
    assert "payload log: the HTTP sink" in server.log()
    assert "Traceback" not in server.log()


def test_the_file_rotates_at_its_size_across_workers_without_losing_a_line(
    serve: Any, tmp_path: Path
) -> None:
    log = tmp_path / "payload.jsonl"
    limit = 8192
    server = serve(
        INFERENCE_APP_PAYLOAD_LOG=str(log),
        INFERENCE_APP_PAYLOAD_LOG_MAX_BYTES=str(limit),
        INFERENCE_APP_PAYLOAD_LOG_BACKUPS="50",
    )
    with ThreadPoolExecutor(max_workers=4) as pool:
        batches = list(pool.map(lambda index: send_mix(server.url, f"rot{index}", {}), range(6)))
    sent = [request for batch in batches for request in batch]
    stop(server)  # exiting workers deliver what they queued
    files = [log, *sorted(tmp_path.glob("payload.jsonl.[0-9]*"), key=lambda p: int(p.suffix[1:]))]
    assert len(files) > 3, files
    assert all(path.stat().st_size <= limit for path in files)
    longest = max(len(line) for path in files for line in path.read_bytes().splitlines())
    # Each rotated file was full: the next line would not fit.
    assert all(path.stat().st_size > limit - longest - 1 for path in files[1:])
    found = pairs(read_events(*files))
    assert set(found) == {request.request_id for request in sent}
    check_pairs(found, sent)


# In process


def test_file_sink_keeps_only_its_backups(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    sink = payload.FileSink(str(path), max_bytes=130, backups=2)  # two lines a file
    sink.open()
    lines = [json.dumps({"line": index, "pad": "x" * 40}).encode() for index in range(10)]
    for line in lines:
        sink.send([line])
    sink.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "events.jsonl",
        "events.jsonl.1",
        "events.jsonl.2",
        "events.jsonl.lock",
    ]
    kept = [
        json.loads(line)["line"]
        for p in ("events.jsonl.2", "events.jsonl.1", "events.jsonl")
        for line in (tmp_path / p).read_bytes().splitlines()
    ]
    assert kept == [4, 5, 6, 7, 8, 9]


def test_typed_columns_are_json_native() -> None:
    frame = pd.DataFrame(
        {
            "when": pd.to_datetime(["2024-01-01T10:00:00", None]),
            "kind": pd.Categorical(["a", None]),
            "count": pd.array([3, None], dtype="Int64"),
            "name": ["x", None],
            "value": [1.5, float("nan")],
        }
    )
    found = payload.columns(list(frame.columns), frame)
    written = json.loads(
        payload.orjson.dumps(found, option=payload.JSON_OPTIONS, default=payload._json_default)
    )
    assert written == {
        "when": ["2024-01-01T10:00:00", None],
        "kind": ["a", None],
        "count": [3, None],
        "name": ["x", None],
        "value": [1.5, None],
    }


def test_a_sink_that_comes_back_receives_the_events_again(instance: Path, receiver_at: Any) -> None:
    app = create_app({"TESTING": True}, instance_path=instance)
    dataplane = app.extensions["inference_app"].dataplane
    port = free_port()
    log = payload.PayloadLog(payload.HTTPSink(f"http://127.0.0.1:{port}/", 1.0, 1), queue_size=50)
    errors = metrics.PAYLOAD_DROPPED.labels("sink_error")
    before = errors._value.get()

    def answer(request_id: str) -> None:
        result = dataplane.infer(InferenceRequest(model="iris", instances=[IRIS.data[0].tolist()]))
        bundle = dataplane.registry.get(result.model_name, result.model_version)
        log.record(request_id, bundle, result, protocol="native")

    try:
        answer("while-down")
        assert wait_until(lambda: errors._value.get() > before, DELIVERY_TIMEOUT)
        _, received = receiver_at(port)
        for index in range(3):
            answer(f"back-{index}")
        # Tried again after the backoff (0.1 s, then doubled): the queued requests arrive.
        assert wait_until(lambda: len(received) >= 6, DELIVERY_TIMEOUT)
        found = pairs([json.loads(body) for _, _, body in received])
        assert set(found) == {"back-0", "back-1", "back-2"}
    finally:
        log.close()


@pytest.mark.parametrize(
    ("settings", "phrase"),
    [
        ({"PAYLOAD_LOG": "ftp://127.0.0.1/events"}, "http:// or https:// URL"),
        ({"PAYLOAD_LOG": "http:///events"}, "with a host"),
        ({"PAYLOAD_LOG": "/nonexistent-folder/payload.jsonl"}, "cannot be appended to"),
        ({"PAYLOAD_LOG_SAMPLE": 1.5}, "a fraction from 0 to 1"),
        ({"PAYLOAD_LOG_QUEUE_SIZE": 0}, "PAYLOAD_LOG_QUEUE_SIZE"),
        ({"PAYLOAD_LOG_TIMEOUT_MS": 0}, "milliseconds"),
    ],
)
def test_bad_payload_settings_stop_the_app_with_the_setting_named(
    instance: Path, settings: dict[str, Any], phrase: str
) -> None:
    with pytest.raises(ConfigError, match="PAYLOAD_LOG") as raised:
        create_app({"TESTING": True, **settings}, instance_path=instance)
    assert phrase in str(raised.value)


def test_the_documented_events_settings_and_metrics_are_the_real_ones() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "operations.md").read_text()
    section = text.split("\n## Payload logging\n", 1)[1].split("\n## ", 1)[0]
    [example] = re.findall(r"```json\n(.*?)```", section, re.S)
    found = pairs([json.loads(line) for line in example.splitlines()])
    [events] = found.values()
    assert set(events) == {"request", "response"}
    assert list(events["request"]["data"]["inputs"]) == IRIS_NAMES
    tables = re.findall(r"^\| `([A-Z_]+)`(?:, `([A-Z_]+)`)? \|", section, re.M)
    documented = {name for row in tables for name in row if name}
    assert documented == {key for key in DEFAULTS if key.startswith("PAYLOAD_LOG")}
    named = set(re.findall(r"`(inference_app_payload_[a-z_]+)`", section))
    assert named == {
        "inference_app_payload_events_sent_total",
        "inference_app_payload_events_dropped_total",
    }
    exposed = {
        metric.describe()[0].name for metric in (metrics.PAYLOAD_SENT, metrics.PAYLOAD_DROPPED)
    }
    assert {name.removesuffix("_total") for name in named} == exposed
