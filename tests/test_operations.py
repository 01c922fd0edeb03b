"""Operations against real Gunicorn: exact metrics across workers, JSON logs, reloads, crashes."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import sklearn
from prometheus_client.parser import text_string_to_metric_families

from inference_app.demo import DEMOS, write_demo_bundles
from servers import (
    REQUEST_TIMEOUT,
    START_TIMEOUT,
    Server,
    free_port,
    log_lines,
    stop,
    wait_until,
)

pytestmark = pytest.mark.e2e

PREDICT_ROUTE = "/v1/models/<name>:predict"
SETOSA = [[5.1, 3.5, 1.4, 0.2]]


@pytest.fixture
def instance(tmp_path: Path) -> Path:
    """An instance folder with the demo bundles."""
    folder = tmp_path / "instance"
    write_demo_bundles(folder / "models", names=DEMOS)
    return folder


def samples(server: Server, metric: str) -> list[Any]:
    """Return the samples of ``metric`` (its family name) scraped from ``/metrics``."""
    text = requests.get(f"{server.url}/metrics", timeout=REQUEST_TIMEOUT).text
    for family in text_string_to_metric_families(text):
        if family.name == metric:
            return list(family.samples)
    return []


def predict_count(server: Server, model: str = "iris") -> tuple[float, float]:
    """Return the request counter and the duration histogram's count for ``:predict``."""
    requests_total = sum(
        sample.value
        for sample in samples(server, "inference_app_requests")
        if sample.labels["route"] == PREDICT_ROUTE and sample.labels["model"] == model
    )
    durations = sum(
        sample.value
        for sample in samples(server, "inference_app_request_duration_seconds")
        if sample.name.endswith("_count")
        and sample.labels["route"] == PREDICT_ROUTE
        and sample.labels["model"] == model
    )
    return requests_total, durations


def post(server: Server, body: dict[str, Any], session: requests.Session | None = None) -> Any:
    """POST a prediction for iris and return the response."""
    return (session or requests).post(
        f"{server.url}/v1/models/iris:predict", json=body, timeout=REQUEST_TIMEOUT
    )


def test_request_metrics_are_exact_across_workers_and_recycling(
    launch: Any, instance: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "metrics"
    (folder / "stale").mkdir(parents=True)
    (folder / "counter_999999.db").write_bytes(b"left by an earlier server")
    # Workers restart every 25 requests: 200 requests recycle each of them several times.
    server = launch(
        instance,
        GUNICORN_MAX_REQUESTS="25",
        GUNICORN_MAX_REQUESTS_JITTER="0",
        PROMETHEUS_MULTIPROC_DIR=str(folder),
    )
    sent = 200
    for _ in range(sent):
        assert post(server, {"instances": SETOSA}).status_code == 200
    assert predict_count(server) == (sent, sent)
    rows = sum(
        s.value
        for s in samples(server, "inference_app_rows_predicted")
        if s.labels["model"] == "iris"
    )
    assert rows == sent
    log = server.log()
    booted = sum(1 for line in log_lines(log) if "Booting worker" in line["message"])
    assert booted >= 2 + sent // 25 - 1, log  # recycled
    # Archived: the dead workers' files were folded away, so the folder stays small: the
    # master's, the archive's and the two live workers' (the stale file was wiped at start).
    assert len(list(folder.glob("counter_*.db"))) <= 4, sorted(folder.iterdir())
    assert not (folder / "counter_999999.db").exists()


def test_every_log_line_is_json_and_access_lines_carry_the_request_id(
    launch: Any, instance: Path
) -> None:
    server = launch(instance)
    given = post(server, {"instances": SETOSA * 3}).headers  # a generated id
    chosen = requests.post(
        f"{server.url}/v1/models/iris:predict",
        json={"instances": [[1, "x", 2, 3]]},
        headers={"X-Request-ID": "trace-42"},
        timeout=REQUEST_TIMEOUT,
    )
    assert chosen.headers["X-Request-ID"] == "trace-42" and chosen.status_code == 422
    requests.get(f"{server.url}/health/ready", timeout=REQUEST_TIMEOUT)
    stop(server)

    lines = log_lines(server.log())  # fails on any line that is not JSON
    access = [line for line in lines if line["logger"] == "inference_app.access"]
    by_id = {line["request_id"]: line for line in access}
    first = by_id[given["X-Request-ID"]]
    assert first["status"] == 200 and first["rows"] == 3 and first["model"] == "iris"
    assert first["version"] == "1" and first["duration_ms"] > 0
    assert set(first["stages_ms"]) == {"parse", "validate", "predict", "serialise"}
    assert by_id["trace-42"]["status"] == 422
    assert not [line for line in access if line["path"].startswith("/health/")]
    assert {"time", "level", "logger", "pid", "message"} <= set(lines[0])


class Load:
    """Bounded concurrent traffic to 127.0.0.1, recording every answer, until stopped."""

    def __init__(self, server: Server, threads: int = 4, seconds: float = 30.0) -> None:
        self.server, self.threads, self.deadline = server, threads, time.monotonic() + seconds
        self.stopping = threading.Event()
        self.results: list[tuple[int, str]] = []
        self.failures: list[str] = []
        self.pool = ThreadPoolExecutor(max_workers=threads)

    def __enter__(self) -> Load:
        for _ in range(self.threads):
            self.pool.submit(self._run)
        return self

    def _run(self) -> None:
        with requests.Session() as session:
            for _ in range(100_000):
                if self.stopping.is_set() or time.monotonic() > self.deadline:
                    return
                try:
                    response = post(self.server, {"instances": SETOSA}, session)
                except requests.RequestException as error:
                    self.failures.append(repr(error))
                    continue
                if response.status_code != 200:
                    self.failures.append(f"{response.status_code} {response.text[:200]}")
                else:
                    self.results.append((response.status_code, response.json()["model_version"]))

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.pool.shutdown(wait=True)


def served_version(server: Server) -> str:
    """Return the version that answers a default-version iris request now."""
    return str(post(server, {"instances": SETOSA}).json()["model_version"])


def test_hup_swaps_in_a_new_version_and_keeps_the_old_one_on_a_bad_bundle(
    launch: Any, instance: Path, new_iris_version: Callable[[Path, str], None]
) -> None:
    server = launch(instance)
    models = instance / "models"
    with Load(server) as load:
        wait_until(lambda: len(load.results) > 20, 10)
        new_iris_version(models, "2")
        os.kill(server.process.pid, signal.SIGHUP)
        assert wait_until(lambda: served_version(server) == "2", START_TIMEOUT), server.log()
        # Every request reaches a new worker now: the old ones have been retired.
        assert wait_until(
            lambda: all(served_version(server) == "2" for _ in range(6)), START_TIMEOUT
        )
        count = len(load.results)
        wait_until(lambda: len(load.results) > count + 20, 10)

        # A new version whose file does not match its manifest: refused, 2 keeps serving.
        new_iris_version(models, "3")
        with (models / "iris" / "3" / "model.joblib").open("ab") as handle:
            handle.write(b"tampered")
        os.kill(server.process.pid, signal.SIGHUP)
        assert wait_until(lambda: "reload failed" in server.log(), START_TIMEOUT), server.log()
        count = len(load.results)
        wait_until(lambda: len(load.results) > count + 50, 10)

    assert load.failures == [], load.failures[:5]
    versions = [version for _, version in load.results]
    assert versions[0] == "1" and versions[-1] == "2" and "3" not in versions
    assert set(versions) == {"1", "2"}
    metadata = requests.get(f"{server.url}/v1/models/iris", timeout=REQUEST_TIMEOUT).json()
    assert metadata["default_version"] == "2"
    assert any("version 3" in error and "sha256" in error for error in metadata["load_errors"])
    reloads = {s.labels["result"]: s.value for s in samples(server, "inference_app_model_reloads")}
    assert reloads == {"success": 1.0, "failure": 1.0}
    assert predict_count(server)[0] >= len(load.results)


def test_a_killed_worker_is_replaced_and_loses_at_most_its_requests_in_flight(
    launch: Any, instance: Path
) -> None:
    server = launch(instance)
    log = server.log()
    booted = [line["pid"] for line in log_lines(log) if "Booting worker" in line["message"]]
    victim = booted[0]
    with Load(server, threads=2) as load:
        wait_until(lambda: len(load.results) > 20, 10)
        os.kill(victim, signal.SIGKILL)
        started = time.monotonic()
        assert wait_until(
            lambda: (
                sum("Booting worker" in line["message"] for line in log_lines(server.log()))
                > len(booted)
            ),
            START_TIMEOUT,
        ), server.log()
        count = len(load.results)
        assert wait_until(lambda: len(load.results) > count + 50, 15)
        replaced_within = time.monotonic() - started

    # Each load thread has at most one request in flight on the victim.
    assert len(load.failures) <= load.threads, load.failures
    assert replaced_within < 10
    assert requests.get(f"{server.url}/health/ready", timeout=REQUEST_TIMEOUT).status_code == 200
    assert np.all([status == 200 for status, _ in load.results])


def test_metrics_can_be_served_on_a_separate_port(launch: Any, instance: Path) -> None:
    port = free_port()
    server = launch(instance, INFERENCE_APP_METRICS_PORT=str(port))
    for _ in range(7):
        assert post(server, {"instances": SETOSA}).status_code == 200
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=REQUEST_TIMEOUT).text
    counted = sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "inference_app_requests"
        for sample in family.samples
        if sample.labels.get("route") == PREDICT_ROUTE
    )
    assert counted == 7


def test_two_servers_keep_their_metrics_apart(launch: Any, instance: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(instance, other)
    first, second = launch(instance), launch(other)
    for _ in range(3):
        post(first, {"instances": SETOSA})
    post(second, {"instances": SETOSA})
    assert predict_count(first)[0] == 3 and predict_count(second)[0] == 1
    info = {tuple(sorted(s.labels.items())) for s in samples(first, "inference_app_model_info")}
    assert (
        (
            ("format", "joblib"),
            ("model", "iris"),
            ("sklearn_version", sklearn.__version__),
            ("version", "1"),
        )
    ) in info
