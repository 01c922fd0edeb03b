"""A lean request: the access line written straight to stderr, byte for byte what ``logging``
writes; metric samples written in batches, exact across threads, forks and workers; small drift
batches binned in Python as numpy bins them."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import math
import os
import re
import subprocess
import sys
import textwrap
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from flask import Flask
from prometheus_client import generate_latest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from inference_app import logs, metrics
from inference_app.core import drift
from inference_app.core.bundle import load_bundle
from inference_app.core.inputs import ModelInput
from inference_app.demo import DEMO_VERSION, DEMOS, load_demo_data
from inference_app.http import observe
from servers import REQUEST_TIMEOUT, Server, log_lines, stop

#: The access line's keys, in order, as python-json-logger wrote them before the direct writer.
ACCESS_KEYS = [
    "time",
    "level",
    "logger",
    "pid",
    "message",
    "request_id",
    "method",
    "path",
    "route",
    "protocol",
    "status",
    "model",
    "version",
    "rows",
    "duration_ms",
    "stages_ms",
    "remote_addr",
    "user_agent",
]
SETOSA = [5.1, 3.5, 1.4, 0.2]
#: One iris row as a V2 request.
V2_SETOSA = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": SETOSA}]}


def json_access_logger(stream: io.TextIOBase) -> logging.Logger:
    """An access logger (outside the logging tree, so that no other test's handler sees it)
    with the handler and formatter that :func:`inference_app.logs.logging_config`
    configures, on ``stream``."""
    config = logs.logging_config("json", "INFO")
    configurator = logging.config.DictConfigurator(config)
    formatter = configurator.configure_formatter(config["formatters"]["default"])
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.Logger(logs.ACCESS_LOGGER, logging.INFO)
    logger.addHandler(handler)
    return logger


class Recorder(logs.AccessLog):
    """An access log that keeps what it is asked to write."""

    def __init__(self) -> None:
        super().__init__(logging.Logger("unused"))
        self.calls: list[tuple[str, str, int, dict[str, Any]]] = []

    def write(self, method: str, path: str, status: int, fields: dict[str, Any]) -> None:
        self.calls.append((method, path, status, fields))


def test_the_direct_access_line_is_byte_for_byte_the_logging_line(
    app: Flask, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fields of real requests on every path: fast native and V2, Flask routes, errors.
    recorder = Recorder()
    monkeypatch.setattr(observe, "access_line", recorder)
    client = app.test_client()
    agent = {"User-Agent": "curl/8.5.0 (caf\u00e9; \u00fc)"}  # Latin-1, as WSGI has it
    answers = [
        client.post("/v1/models/iris:predict", json={"instances": [SETOSA]}, headers=agent),
        client.post(
            "/v2/models/iris/infer",
            json=V2_SETOSA,
            headers={"X-Request-ID": "v2-lean"},
        ),
        client.post("/predict", json={"instance": SETOSA}, headers={"X-Model-Name": "iris"}),
        client.post("/invocations", json={"instances": [SETOSA]}, headers={"X-Model-Name": "iris"}),
        client.post("/v1/models/iris:predict", json={"instances": [[1, "x", 2, 3]]}),
        client.post("/v1/models/caf%C3%A9:predict", json={"instances": [SETOSA]}),
        client.get("/v1/models/iris", headers={}),
    ]
    assert [a.status_code for a in answers] == [200, 200, 200, 200, 422, 404, 200]
    calls = recorder.calls
    assert len(calls) == len(answers)
    calls.append(("POST", "/inference.GRPCInferenceService/ModelInfer", 200, {"grpc_status": "OK"}))
    calls.append(("GET", "/", 200, {}))  # no fields at all

    direct_file, logged_file = tmp_path / "direct.log", tmp_path / "logged.log"
    with direct_file.open("w", encoding="utf-8") as a, logged_file.open("w", encoding="utf-8") as b:
        direct = logs.AccessLog(json_access_logger(a))
        through_logging = json_access_logger(b)
        through_logging.addFilter(lambda record: True)  # any filter: logging writes it
        logged = logs.AccessLog(through_logging)
        assert direct._direct_handler() is not None and logged._direct_handler() is None
        # Instants within a second, in the next one, and at a millisecond's edge.
        for moment in (1764640201.0429, 1764640201.9995, 1764640202.0, 1764640262.5004):
            monkeypatch.setattr(time, "time", lambda moment=moment: moment)
            for call in calls:
                direct.write(*call)
                logged.write(*call)
    direct_bytes, logged_bytes = direct_file.read_bytes(), logged_file.read_bytes()
    assert direct_bytes == logged_bytes
    lines = [json.loads(line) for line in direct_bytes.splitlines()]
    assert len(lines) == 4 * len(calls)
    first = lines[0]
    assert list(first) == ACCESS_KEYS
    assert first["user_agent"] == "curl/8.5.0 (caf\u00e9; \u00fc)"
    assert first["message"] == "POST /v1/models/iris:predict 200"
    assert first["pid"] == os.getpid() and first["logger"] == "inference_app.access"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,042", first["time"])
    assert lines[len(calls)]["time"].endswith(",999")
    assert lines[-2]["grpc_status"] == "OK" and list(lines[-1]) == ACCESS_KEYS[:5]


def test_milliseconds_are_rounds_own() -> None:
    generator = np.random.default_rng(10)
    seconds = (generator.random(200_000) * 10.0 ** generator.uniform(-8, 3, 200_000)).tolist()
    seconds += [(k + 0.5) / 1e6 for k in range(20_000)]  # ties at the last digit kept
    seconds += [0.0, -0.0, 5e-324, 1e-7, 0.0005, 0.0015, 1e12, 4.5e12, 1e300, math.inf]
    for value in seconds:
        assert logs.milliseconds(value) == round(value * 1000, 3), value
    assert math.isnan(logs.milliseconds(math.nan))


def test_the_access_logger_level_turns_the_line_off_and_text_stays_on_logging(
    tmp_path: Path,
) -> None:
    path = tmp_path / "stderr.log"
    with path.open("w", encoding="utf-8") as stream:
        logger = json_access_logger(stream)
        access = logs.AccessLog(logger)
        logger.setLevel(logging.WARNING)
        access.write("POST", "/v1/models/iris:predict", 200, {"rows": 1})
        logger.setLevel(logging.INFO)
        logger._cache.clear()  # what setLevel clears for the loggers of the logging tree
        access.write("POST", "/v1/models/iris:predict", 200, {"rows": 2})
        text = logging.Logger(logs.ACCESS_LOGGER, logging.INFO)
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter(logs.TEXT_FORMAT))
        text.addHandler(handler)
        assert logs.AccessLog(text)._direct_handler() is None
        logs.AccessLog(text).write("POST", "/v1/models/iris:predict", 200, {"rows": 3})
    first, second = path.read_text(encoding="utf-8").splitlines()
    assert json.loads(first)["rows"] == 2
    assert second.endswith("] [INFO] inference_app.access: POST /v1/models/iris:predict 200")


def test_gunicorns_logging_setup_takes_the_direct_writer() -> None:
    # What a worker has: Gunicorn's Logger applying gunicorn.conf.py's logconfig_dict.
    script = textwrap.dedent(
        """
        from gunicorn.config import Config
        from gunicorn.glogging import Logger
        from inference_app import logs
        from inference_app.http import observe

        for form, direct in (("json", True), ("text", False)):
            config = Config()
            config.set("logconfig_dict", logs.logging_config(form, "INFO"))
            Logger(config)
            assert (observe.access_line._direct_handler() is not None) is direct, form
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


# Metric values in prometheus-client's files: threads, forks, growth, folding.
VALUES_SCRIPT = """
import json, os, sys, threading
from prometheus_client import Counter
from inference_app import metrics

wide = Counter("lean_test_series_total", "Series enough to grow the file.", ["n"])
for n in range(3000):
    wide.labels(str(n)).inc(n + 1)

def answer(count, status, seconds):
    for _ in range(count):
        metrics.in_flight(1)
        metrics.record_request(
            "native", "/r", "iris", "1", status, seconds, 2, {"predict": 0.001, "parse": 20.0},
            "invalid" if status >= 400 else None,
        )
        metrics.in_flight(-1)

threads = [threading.Thread(target=answer, args=(2000, 200, 0.003)) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
child = os.fork()
if child == 0:
    answer(500, 422, 0.0025)
    wide.labels("0").inc(7)
    os._exit(0)
os.waitpid(child, 0)
print(json.dumps({"pid": os.getpid(), "child": child, "wide0": wide.labels("0")._value.get()}))
"""


def scrape(folder: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample merged from a metrics folder, by name and labels."""
    text = generate_latest(metrics.multiprocess_registry(str(folder))).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_values_are_exact_across_threads_and_forks_in_prometheus_clients_files(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "metrics"
    folder.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", VALUES_SCRIPT],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    pids = json.loads(done.stdout)
    assert pids["wide0"] == 1.0  # the child's writes went to its own file
    parent_file, child_file = (
        folder / f"counter_{pids['pid']}.db",
        folder / f"counter_{pids['child']}.db",
    )
    assert parent_file.stat().st_size > 65536  # grew past its first mapping
    parent = {k: v for k, v, _, _ in MmapedDict.read_all_values_from_file(str(parent_file))}
    child = {k: v for k, v, _, _ in MmapedDict.read_all_values_from_file(str(child_file))}
    wide = [k for k in parent if "lean_test_series_total" in k]
    assert len(wide) == 3000

    def check(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> None:
        route = (("model", "iris"), ("protocol", "native"), ("route", "/r"), ("version", "1"))

        def get(name: str, *labels: tuple[str, str]) -> float:
            return samples[name, tuple(sorted(labels))]

        assert get("inference_app_requests_total", *route, ("status_class", "2xx")) == 16000
        assert get("inference_app_requests_total", *route, ("status_class", "4xx")) == 500
        assert get("inference_app_request_duration_seconds_count", *route) == 16500
        # 0.0025 is a bound: in its bucket; 0.003 in the next one's.
        assert get("inference_app_request_duration_seconds_bucket", *route, ("le", "0.0025")) == 500
        assert (
            get("inference_app_request_duration_seconds_bucket", *route, ("le", "0.005")) == 16500
        )
        assert math.isclose(
            get("inference_app_request_duration_seconds_sum", *route), 16000 * 0.003 + 500 * 0.0025
        )
        rows = (("model", "iris"), ("protocol", "native"), ("version", "1"))
        assert get("inference_app_rows_predicted_total", *rows) == 33000
        predict, parse = (
            (("protocol", "native"), ("stage", "predict")),
            (("protocol", "native"), ("stage", "parse")),
        )
        assert (
            get("inference_app_stage_duration_seconds_bucket", *predict, ("le", "0.001")) == 16500
        )
        assert get("inference_app_stage_duration_seconds_bucket", *parse, ("le", "10.0")) == 0
        assert get("inference_app_stage_duration_seconds_bucket", *parse, ("le", "+Inf")) == 16500
        assert get("inference_app_errors_total", ("kind", "invalid"), ("protocol", "native")) == 500
        assert get("inference_app_requests_in_flight") == 0
        assert get("lean_test_series_total", ("n", "0")) == 8  # 1 here, 7 in the child
        assert get("lean_test_series_total", ("n", "2999")) == 3000

    check(scrape(folder))
    assert any("inference_app_errors_total" in k for k in child)
    metrics.archive_dead_process(pids["child"], folder)  # as the master folds a dead worker
    assert not child_file.exists()
    check(scrape(folder))


# Drift: small matrix batches binned in Python, as numpy bins them.
def edge_rows(plan: drift.Plan, width: int) -> list[list[float]]:
    """Rows at every feature's edges and beyond: each edge, just under and over it, the last
    edge (its bin is closed), infinities and NaN."""
    values: list[float] = []
    for feature in plan.features:
        assert feature.edges is not None
        for edge in feature.edges.tolist():
            values += [edge, math.nextafter(edge, -math.inf), math.nextafter(edge, math.inf)]
    values += [math.inf, -math.inf, math.nan, 0.0, -0.0]
    return [[values[(i + j) % len(values)] for j in range(width)] for i in range(len(values))]


def test_small_batches_are_binned_as_numpy_bins_them(demo_instance: Path) -> None:
    checked = 0
    for name in DEMOS:
        plan = drift.plan(load_bundle(demo_instance / "models" / name / DEMO_VERSION).manifest)
        assert plan._scalar is not None, name  # matrix plans: the Python path applies
        data, _, _ = load_demo_data(name)
        width = data.shape[1]
        rows = data.tolist() + edge_rows(plan, width)
        per_batch = max(1, 32 // width)
        batches = [rows[i : i + 1] for i in range(len(rows))]
        batches += [rows[i : i + per_batch] for i in range(0, len(rows), per_batch)]
        for batch in batches:
            model_input = ModelInput(np.asarray(batch, dtype=np.float64), len(batch))
            counts = plan.count(model_input)
            expected = {i: int(c) for i, c in enumerate(counts.tolist()) if c}
            assert plan.filled(model_input) == expected, (name, batch)
            checked += 1
        big = ModelInput(np.asarray(rows[:100]), 100)  # above the Python path's size
        assert plan.filled(big) == {i: int(c) for i, c in enumerate(plan.count(big).tolist()) if c}
    assert checked > 1000


# Under Gunicorn: exact metrics over two workers under concurrent load, whole JSON lines.
def post(server: Server, kind: str, index: int) -> int:
    """Send one request of ``kind`` on a new connection and return its status."""
    request_id = {"X-Request-ID": f"lean-{kind}-{index}"}
    if kind == "native":
        body: dict[str, Any] = {"instances": [SETOSA]}
        path = "/v1/models/iris:predict"
    elif kind == "v2":
        body = V2_SETOSA
        path = "/v2/models/iris/infer"
    elif kind == "mlflow":
        body, path = {"instances": [SETOSA, SETOSA]}, "/invocations"
        request_id["X-Model-Name"] = "iris"
    else:
        body, path = {"instances": [[1, "x", 2, 3]]}, "/v1/models/iris:predict"
    answer = requests.post(
        f"{server.url}{path}", json=body, headers=request_id, timeout=REQUEST_TIMEOUT
    )
    return answer.status_code


def total(samples: list[Any], name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` with (at least) ``labels``."""
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


@pytest.mark.e2e
def test_metrics_are_exact_over_workers_under_concurrent_load(
    launch: Any, demo_instance: Path, tmp_path: Path
) -> None:
    server = launch(demo_instance, PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"))
    sent = {"native": 120, "v2": 120, "mlflow": 60, "invalid": 60}
    work = [(kind, i) for kind, count in sent.items() for i in range(count)]

    def run(part: list[tuple[str, int]]) -> list[int]:
        return [post(server, kind, i) for kind, i in part]

    with ThreadPoolExecutor(max_workers=6) as pool:
        statuses = [s for part in pool.map(run, [work[i::6] for i in range(6)]) for s in part]
    assert Counter(statuses) == {200: 300, 422: 60}

    routes = {
        "native": "/v1/models/<name>:predict",
        "v2": "/v2/models/<name>/infer",
        "mlflow": "/invocations",
    }
    for _ in range(4):  # any worker answers the scrape, with every worker's counts
        text = requests.get(f"{server.url}/metrics", timeout=REQUEST_TIMEOUT).text
        samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
        for kind, route in routes.items():
            labels = {"route": route, "model": "iris"}
            answered = total(samples, "inference_app_requests_total", status_class="2xx", **labels)
            assert answered == sent[kind]
            timed = total(samples, "inference_app_request_duration_seconds_count", **labels)
            assert timed == sent[kind] + (sent["invalid"] if kind == "native" else 0)
            stage = {"protocol": kind, "stage": "predict"}
            assert (
                total(samples, "inference_app_stage_duration_seconds_count", **stage) == sent[kind]
            )
        refused = total(samples, "inference_app_requests_total", status_class="4xx", model="iris")
        assert refused == sent["invalid"]
        assert total(samples, "inference_app_errors_total", protocol="native") == sent["invalid"]
        assert total(samples, "inference_app_rows_predicted_total", model="iris") == 360
        for feature in ("sepal length (cm)", "petal width (cm)"):
            drifted = total(
                samples, "inference_app_drift_rows_total", model="iris", feature=feature
            )
            assert drifted == 360
        assert total(samples, "inference_app_requests_in_flight") == 1  # this scrape
    stop(server)
    lines = log_lines(server.log())  # every line whole JSON: none interleaved
    access = [line for line in lines if line["logger"] == "inference_app.access"]
    mine = [line for line in access if str(line["request_id"]).startswith("lean-")]
    assert len(mine) == len(work)
    assert len({line["pid"] for line in mine}) == 2  # both workers wrote
    assert all(list(line) == ACCESS_KEYS for line in mine)
    assert all(line["message"] == f"POST {line['path']} {line['status']}" for line in mine)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}", line["time"]) for line in mine)


@pytest.mark.e2e
def test_a_warning_log_level_writes_no_access_line(launch: Any, demo_instance: Path) -> None:
    server = launch(demo_instance, GUNICORN_LOGLEVEL="warning")
    assert post(server, "native", 0) == 200
    stop(server)
    lines = log_lines(server.log())
    assert not [line for line in lines if line["logger"] == "inference_app.access"]
