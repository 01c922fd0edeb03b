"""Bounded metric labels: requests for versions and models that are not served, on every
protocol, add no series to /metrics, and the exposition passes ``promtool check metrics``."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sklearn.linear_model import LogisticRegression

from inference_app import create_app
from inference_app.core.bundle import write_bundle
from inference_app.demo import load_demo_data, write_demo_bundles
from servers import REQUEST_TIMEOUT, Server, start_gunicorn, stop, wait_ready

ROW = [5.1, 3.5, 1.4, 0.2]
V2_BODY = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": ROW}]}
#: Requests naming ``{x}``, a model or version that is not served: (method, path, body,
#: headers, the status expected).
UNSERVED: list[tuple[str, str, Any, dict[str, str], int]] = [
    ("POST", "/v1/models/iris/versions/{x}:predict", {"instances": [ROW]}, {}, 404),
    ("GET", "/v1/models/iris/versions/{x}", None, {}, 404),
    ("POST", "/v1/models/{x}:predict", {"instances": [ROW]}, {}, 404),
    ("GET", "/v1/models/{x}", None, {}, 404),
    ("POST", "/v2/models/iris/versions/{x}/infer", V2_BODY, {}, 404),
    ("GET", "/v2/models/iris/versions/{x}", None, {}, 404),
    ("GET", "/v2/models/iris/versions/{x}/ready", None, {}, 404),
    ("POST", "/v2/models/{x}/infer", V2_BODY, {}, 404),
    ("GET", "/v2/models/{x}/ready", None, {}, 404),
    ("POST", "/invocations", {"instances": [ROW]}, {"X-Model-Name": "{x}"}, 404),
    ("POST", "/predict", {"instance": ROW}, {"X-Model-Name": "{x}"}, 404),
    ("GET", "/{x}", None, {}, 404),
    ("POST", "/v1/models/iris/versions/{x}:explain", {"instances": [ROW]}, {}, 404),
]

Send = Callable[[str, str, Any, dict[str, str]], tuple[int, str]]


def series(text: str) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    """Return every series of an exposition: its sample name and labels, without values."""
    return {
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def send_unserved(send: Send, marker: str) -> None:
    for method, path, body, headers, status in UNSERVED:
        filled = {key: value.format(x=marker) for key, value in headers.items()}
        found, text = send(method, path.format(x=marker), body, filled)
        assert found == status, (method, path, found, text[:300])


def as_user(send: Send, user: str) -> str:
    """Predict as ``user`` (the sticky header): return the version that answered."""
    status, text = send(
        "POST", "/v1/models/iris:predict", {"instances": [ROW]}, {"X-User-ID": user}
    )
    assert status == 200, text
    version: str = json.loads(text)["model_version"]
    return version


def check_bounded(send: Send, scrape: Callable[[], str]) -> str:
    """Send each unserved request once (its route's bounded series appear), predict as users
    until both versions answered, scrape twice (the scrape's own series appear); then send
    them all with 20 other names and users: the set of series must not change, and no name
    or user sent may appear in a label. Return the last exposition."""
    send_unserved(send, "zzz-first")
    seen = {as_user(send, "zzz-user-first")}
    for i in range(100):
        if seen == {"1", "2"}:
            break
        seen.add(as_user(send, f"zzz-user-warm-{i}"))
    assert seen == {"1", "2"}
    scrape()
    before = series(scrape())
    for i in range(20):
        send_unserved(send, f"zzz-{i}")
        as_user(send, f"zzz-user-{i}")
    text = scrape()
    assert series(text) - before == set()
    assert "zzz" not in text
    return text


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Iris versions 1 and 2 (more regularised), routed 50/50 on ``X-User-ID``."""
    folder = tmp_path_factory.mktemp("labels") / "instance"
    write_demo_bundles(folder / "models", names=["iris"])
    rows, target, names = load_demo_data("iris")
    model = LogisticRegression(C=0.5, max_iter=1000).fit(rows, target)
    write_bundle(model, rows, folder / "models", "iris", "2", feature_names=names)
    traffic = {"weights": {"1": 50, "2": 50}, "sticky": "X-User-ID"}
    (folder / "models" / "iris" / "traffic.json").write_text(json.dumps(traffic))
    return folder


def test_unserved_versions_and_models_add_no_series_in_process(instance: Path) -> None:
    client: FlaskClient = create_app({"TESTING": True}, instance_path=instance).test_client()

    def send(method: str, path: str, body: Any, headers: dict[str, str]) -> tuple[int, str]:
        response = client.open(path, method=method, json=body, headers=headers)
        return response.status_code, response.get_data(as_text=True)

    check_bounded(send, lambda: client.get("/metrics").get_data(as_text=True))


def test_routes_taking_the_model_from_a_header_label_only_served_models(instance: Path) -> None:
    client: FlaskClient = create_app({"TESTING": True}, instance_path=instance).test_client()
    bad_row = [1, "x", 2, 3]
    for path, body in (
        ("/predict", {"instance": bad_row}),
        ("/invocations", {"instances": [bad_row]}),
    ):
        for name in ("iris", "not-served"):
            answer = client.post(path, json=body, headers={"X-Model-Name": name})
            assert answer.status_code in (400, 404, 422), answer.get_data(as_text=True)
    labels = [
        dict(labels)
        for name, labels in series(client.get("/metrics").get_data(as_text=True))
        if name == "inference_app_requests_total"
    ]
    for route in ("/predict", "/invocations"):
        models = {found["model"] for found in labels if found["route"] == route}
        assert {"iris", ""} <= models and "not-served" not in models, (route, models)


@pytest.fixture(scope="module")
def server(instance: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    started = start_gunicorn(instance, tmp_path_factory.mktemp("log") / "gunicorn.log")
    try:
        wait_ready(started)
        yield started
    finally:
        stop(started)


def scrape(server: Server) -> str:
    response = requests.get(f"{server.url}/metrics", timeout=REQUEST_TIMEOUT)
    assert response.status_code == 200
    return response.text


@pytest.mark.e2e
def test_unserved_versions_and_models_add_no_series_under_gunicorn(server: Server) -> None:
    def send(method: str, path: str, body: Any, headers: dict[str, str]) -> tuple[int, str]:
        response = requests.request(
            method, f"{server.url}{path}", json=body, headers=headers, timeout=REQUEST_TIMEOUT
        )
        return response.status_code, response.text

    text = check_bounded(send, lambda: scrape(server))
    version_labels = {
        dict(labels).get("version")
        for _, labels in series(text)
        if dict(labels).get("model") == "iris"
    }
    assert version_labels == {"", "1", "2"}, version_labels


@pytest.mark.e2e
def test_the_exposition_passes_promtool(server: Server, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: .ci/run installs Debian's prometheus package"
    for _ in range(3):
        requests.post(
            f"{server.url}/v1/models/iris:predict",
            json={"instances": [ROW]},
            headers={"X-User-ID": "someone"},
            timeout=REQUEST_TIMEOUT,
        )
    text = scrape(server)
    assert "inference_app_requests_total" in text
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == result.stderr.strip() == "", result.stdout + result.stderr
