"""End-to-end tests: real Gunicorn serving the demo bundles over HTTP on 127.0.0.1."""

from __future__ import annotations

import html.parser
import json
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import numpy as np
import pytest
import requests
from gunicorn.arbiter import Arbiter

from inference_app.core.bundle import load_bundle
from inference_app.demo import DEMOS, load_demo_data, write_demo_bundles
from servers import (
    REQUEST_TIMEOUT,
    START_TIMEOUT,
    Server,
    log_lines,
    log_records,
    start_gunicorn,
    stop,
    wait_ready,
    wait_until,
)

pytestmark = pytest.mark.e2e

#: MAX_CONTENT_LENGTH of the shared server: room for every demo dataset, and a 413 to test.
MAX_CONTENT_LENGTH = 1_000_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Gunicorn with 2 workers over freshly written demo bundles, ready to serve."""
    root = tmp_path_factory.mktemp("gunicorn")
    instance = root / "instance"
    write_demo_bundles(instance / "models", names=DEMOS)
    runtime_dir = root / "run"
    runtime_dir.mkdir()
    server = start_gunicorn(
        instance,
        root / "gunicorn.log",
        INFERENCE_APP_MAX_CONTENT_LENGTH=str(MAX_CONTENT_LENGTH),
        # Gunicorn's default control socket lives here; it must stay unused (no collisions).
        XDG_RUNTIME_DIR=str(runtime_dir),
    )
    try:
        wait_ready(server)
        yield server
    finally:
        stop(server)


def post_predict(server: Server, name: str, body: dict[str, object]) -> dict[str, object]:
    """POST ``body`` to ``/v1/models/<name>:predict`` and return the 200 answer's JSON."""
    response = requests.post(
        f"{server.url}/v1/models/{name}:predict", json=body, timeout=REQUEST_TIMEOUT
    )
    assert response.status_code == 200, response.text[:2000]
    payload: dict[str, object] = response.json()
    return payload


@pytest.mark.parametrize("name", list(DEMOS))
def test_predicts_full_dataset_like_in_process(server: Server, name: str) -> None:
    rows, _, _ = load_demo_data(name)
    estimator = load_bundle(server.instance / "models" / name / "1").estimator
    expected = estimator.predict(rows)

    payload = post_predict(server, name, {"instances": rows.tolist()})

    assert payload["model_name"] == name
    assert payload["model_version"] == "1"
    assert payload["method"] == "predict"
    predictions = payload["predictions"]
    assert isinstance(predictions, list)
    assert len(predictions) == len(rows)
    if name == "diabetes":
        np.testing.assert_allclose(np.asarray(predictions), expected, rtol=1e-12)
    else:
        assert predictions == expected.tolist()


def test_predicts_records_in_any_key_order(server: Server) -> None:
    rows, _, names = load_demo_data("iris")
    estimator = load_bundle(server.instance / "models" / "iris" / "1").estimator
    # Keys in reverse feature order: the server must reorder them to the model's order.
    records = [dict(reversed(list(zip(names, row, strict=True)))) for row in rows.tolist()]

    payload = post_predict(server, "iris", {"instances": records})

    assert payload["predictions"] == estimator.predict(rows).tolist()


def test_predict_proba_with_classes(server: Server) -> None:
    rows, _, _ = load_demo_data("breast_cancer")
    estimator = load_bundle(server.instance / "models" / "breast_cancer" / "1").estimator

    payload = post_predict(
        server, "breast_cancer", {"instances": rows.tolist(), "method": "predict_proba"}
    )

    assert payload["method"] == "predict_proba"
    assert payload["classes"] == estimator.classes_.tolist()
    probabilities = np.asarray(payload["predictions"])
    assert probabilities.shape == (len(rows), len(estimator.classes_))
    np.testing.assert_allclose(probabilities, estimator.predict_proba(rows), rtol=1e-12)


def test_each_worker_warms_up_and_the_master_runs_no_inference(server: Server) -> None:
    master = server.process.pid

    def warmed_pids() -> set[int]:
        pattern = re.compile(r"worker (\d+) warmed its models")
        return {
            int(found[1])
            for _, message in log_records(server.log())
            if (found := pattern.search(message))
        }

    # /health/ready answered from one worker; the other may still be warming up.
    wait_until(lambda: len(warmed_pids()) >= 2, START_TIMEOUT)
    log = server.log()
    records = log_records(log)
    booted = {
        int(found[1])
        for _, message in records
        if (found := re.search(r"Booting worker with pid: (\d+)", message))
    }

    assert any(
        pid == master and f"({master})" in message and message.startswith("Listening at")
        for pid, message in records
    ), f"the Popen pid {master} is not the master's:\n{log}"
    assert len(warmed_pids()) == 2, log
    assert warmed_pids() == booted, log
    assert master not in warmed_pids(), log
    model_warm_ups = [pid for pid, message in records if message.startswith("warmed model ")]
    assert sorted(set(model_warm_ups)) == sorted(booted), log
    assert len(model_warm_ups) == 2 * len(DEMOS), log  # each worker warms each model once
    for pid, message in records:
        if "warm" in message:
            assert pid != master, f"the master logged a warm-up:\n{log}"


def test_liveness(server: Server) -> None:
    response = requests.get(f"{server.url}/health/live", timeout=REQUEST_TIMEOUT)

    assert response.status_code == 200
    assert response.json()["status"] == "alive"


class AssetCollector(html.parser.HTMLParser):
    """Collect the ``src`` of scripts and images and the ``href`` of links in a page."""

    def __init__(self) -> None:
        super().__init__()
        self.assets: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"script": "src", "img": "src", "link": "href"}.get(tag)
        for key, value in attrs:
            if key == wanted and value:
                self.assets.append(value)


def test_docs_use_only_local_assets(server: Server) -> None:
    page_url = f"{server.url}/docs"
    response = requests.get(page_url, timeout=REQUEST_TIMEOUT)

    assert response.status_code == 200, response.text[:2000]
    assert response.headers["Content-Type"].startswith("text/html")
    collector = AssetCollector()
    collector.feed(response.text)
    assert any(asset.endswith("swagger-ui-bundle.js") for asset in collector.assets)
    for asset in collector.assets:
        assert not asset.startswith(("http://", "https://", "//")), asset
        resolved = urljoin(response.url, asset)
        assert urlsplit(resolved).netloc == urlsplit(page_url).netloc, resolved
        assert requests.get(resolved, timeout=REQUEST_TIMEOUT).status_code == 200, resolved


def test_swagger_ui_bundle_is_served(server: Server) -> None:
    response = requests.get(
        f"{server.url}/docs/static/swagger-ui-bundle.js", timeout=REQUEST_TIMEOUT
    )

    assert response.status_code == 200
    assert "SwaggerUIBundle" in response.text


def test_unknown_route_is_a_json_404(server: Server) -> None:
    response = requests.get(f"{server.url}/no/such/route", timeout=REQUEST_TIMEOUT)

    assert response.status_code == 404
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert body["code"] == 404
    assert body["status"] == "Not Found"
    assert body["message"]


def test_unknown_model_is_a_json_404_naming_the_models(server: Server) -> None:
    response = requests.post(
        f"{server.url}/v1/models/no_such_model:predict",
        json={"instances": [[1.0, 2.0]]},
        timeout=REQUEST_TIMEOUT,
    )

    assert response.status_code == 404
    body = response.json()
    assert body["code"] == 404
    for name in DEMOS:
        assert name in body["message"]


def test_wrong_method_is_a_json_405_with_allow(server: Server) -> None:
    response = requests.post(f"{server.url}/health/live", json={}, timeout=REQUEST_TIMEOUT)

    assert response.status_code == 405
    assert "GET" in {method.strip() for method in response.headers["Allow"].split(",")}
    assert "POST" not in response.headers["Allow"]
    body = response.json()
    assert body["code"] == 405
    assert body["status"] == "Method Not Allowed"


def test_body_over_the_limit_is_a_json_413(server: Server) -> None:
    row = "[" + ", ".join(["1.0"] * 4) + "]"
    body = '{"instances": [' + ", ".join([row] * (MAX_CONTENT_LENGTH // len(row) + 10)) + "]}"
    assert len(body.encode()) > MAX_CONTENT_LENGTH

    response = requests.post(
        f"{server.url}/v1/models/iris:predict",
        data=body,
        headers={"Content-Type": "application/json"},
        timeout=REQUEST_TIMEOUT,
    )

    assert response.status_code == 413, response.text[:2000]
    payload = response.json()
    assert payload["code"] == 413
    assert str(MAX_CONTENT_LENGTH) in payload["message"]
    # The server is still serving after refusing the body.
    assert requests.get(f"{server.url}/health/live", timeout=REQUEST_TIMEOUT).status_code == 200


def test_second_server_on_the_same_host_starts_too(server: Server, tmp_path: Path) -> None:
    runtime_dir = server.log_path.parent / "run"
    second = start_gunicorn(
        server.instance, tmp_path / "second.log", workers=1, XDG_RUNTIME_DIR=str(runtime_dir)
    )
    try:
        wait_ready(second)
        both = [
            requests.get(f"{url}/health/ready", timeout=REQUEST_TIMEOUT).status_code
            for url in (server.url, second.url)
        ]
    finally:
        stop(second)

    assert both == [200, 200]
    assert second.url != server.url
    # No control socket unless GUNICORN_CONTROL_SOCKET is set: none at Gunicorn's default path.
    assert list(runtime_dir.iterdir()) == []
    for log in (server.log(), second.log()):
        assert "control socket" not in log.lower(), log
    assert second.process.returncode == 0, second.log()


def test_term_stops_workers_that_loaded_onnx_models_at_once(tmp_path: Path) -> None:
    # The master imports onnxruntime (preload) before it forks; a worker that then ended
    # through the interpreter's teardown hung in onnxruntime's exit until the master killed
    # it at graceful_timeout (30 s).
    instance = tmp_path / "instance"
    write_demo_bundles(instance / "models", names=["iris"], onnx=True)
    server = start_gunicorn(instance, tmp_path / "gunicorn.log")
    try:
        wait_ready(server)
        assert post_predict(server, "iris", {"instances": [[5.1, 3.5, 1.4, 0.2]]})
        server.process.send_signal(signal.SIGTERM)
        stopped = wait_until(lambda: server.process.poll() is not None, 10.0)
    finally:
        stop(server)

    log = server.log()
    assert stopped, f"gunicorn still ran 10 s after SIGTERM:\n{log}"
    assert server.process.returncode == 0, log
    assert "SIGKILL" not in log, log
    exits = [line for line in log_lines(log) if line["message"].startswith("Worker exiting")]
    assert len(exits) == 2, log


def tampered_instance(root: Path) -> Path:
    """An instance folder with the demo bundles, iris's model.joblib changed by one byte."""
    instance = root / "instance"
    write_demo_bundles(instance / "models", names=DEMOS)
    with (instance / "models" / "iris" / "1" / "model.joblib").open("ab") as handle:
        handle.write(b"\0")
    return instance


def start_and_wait_for_exit(
    instance: Path, root: Path, *, workers: int = 2, **settings: str
) -> tuple[int, str]:
    """Start Gunicorn on ``instance``, which must not serve; return its exit status and log.

    Its temporary files (its own metrics folder) go to ``root / "tmp"``.
    """
    tmp = root / "tmp"
    tmp.mkdir()
    server = start_gunicorn(
        instance, root / "gunicorn.log", workers=workers, TMPDIR=str(tmp), **settings
    )
    try:
        exited = wait_until(lambda: server.process.poll() is not None, START_TIMEOUT)
    finally:
        stop(server)
    log = server.log()
    assert exited, f"gunicorn still ran {START_TIMEOUT} s after start:\n{log}"
    assert server.process.returncode != 0, log
    assert "Traceback" not in log, log
    assert list(tmp.iterdir()) == [], f"left behind: {list(tmp.iterdir())}"
    return server.process.returncode, log


def test_bad_bundle_stops_the_server_at_start_in_one_log_line(tmp_path: Path) -> None:
    instance = tampered_instance(tmp_path)

    status, log = start_and_wait_for_exit(instance, tmp_path)

    assert status == Arbiter.APP_LOAD_ERROR, log
    assert "Booting worker" not in log, log
    [line] = log_lines(log)  # the master loads the app before it logs anything else
    assert line["level"] == "ERROR", line
    assert line["message"].startswith("inference-app cannot start: refused model bundles: "), line
    assert "iris/1/model.joblib: sha256 mismatch" in line["message"], line
    assert len([row for row in log.splitlines() if "sha256 mismatch" in row]) == 1, log


def test_bad_bundle_without_preload_stops_the_server_too(tmp_path: Path) -> None:
    instance = tampered_instance(tmp_path)

    status, log = start_and_wait_for_exit(
        instance, tmp_path, workers=1, GUNICORN_PRELOAD_APP="false"
    )

    # The worker exits with Gunicorn's "app failed to load" status: the master stops
    # instead of booting workers that fail the same way, over and over.
    assert status == Arbiter.APP_LOAD_ERROR, log
    refusals = [line for line in log_lines(log) if "sha256 mismatch" in line["message"]]
    assert len(refusals) == 1, log
    assert refusals[0]["level"] == "ERROR" and "iris/1/model.joblib" in refusals[0]["message"]
    assert any(line["message"] == "Reason: App failed to load." for line in log_lines(log)), log


def test_bad_bundle_is_one_line_in_the_text_log_format_too(tmp_path: Path) -> None:
    instance = tampered_instance(tmp_path)

    _, log = start_and_wait_for_exit(instance, tmp_path, INFERENCE_APP_LOG_FORMAT="text")

    [line] = log.splitlines()
    assert "[ERROR] inference_app: inference-app cannot start: refused model bundles: " in line
    assert "iris/1/model.joblib: sha256 mismatch" in line


def test_bad_setting_stops_the_server_at_start_in_one_log_line(tmp_path: Path) -> None:
    instance = tmp_path / "instance"
    write_demo_bundles(instance / "models", names=DEMOS)

    status, log = start_and_wait_for_exit(instance, tmp_path, INFERENCE_APP_MAX_ROWS="lots")

    assert status == Arbiter.APP_LOAD_ERROR, log
    [line] = log_lines(log)
    assert line["level"] == "ERROR", line
    assert line["message"].startswith("inference-app cannot start: setting MAX_ROWS"), line
    assert "INFERENCE_APP_MAX_ROWS" in line["message"] and "'lots'" in line["message"], line


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("GUNICORN_TIMEOUT", "soon"),
        ("GUNICORN_PRELOAD_APP", "maybe"),
        ("GUNICORN_LOGLEVEL", "loud"),
        ("INFERENCE_APP_LOG_FORMAT", "xml"),
    ],
)
def test_bad_server_setting_stops_gunicorn_in_one_line(
    tmp_path: Path, variable: str, value: str
) -> None:
    instance = tmp_path / "instance"
    write_demo_bundles(instance / "models", names=DEMOS)

    _, log = start_and_wait_for_exit(instance, tmp_path, **{variable: value})

    # gunicorn.conf.py refuses it before logging is set up: a plain line, not JSON.
    [line] = log.splitlines()
    assert line.startswith(f"{variable} must be ") and repr(value) in line, line


def test_root_is_kserve_liveness(server: Server) -> None:
    response = requests.get(f"{server.url}/", timeout=REQUEST_TIMEOUT)

    assert response.status_code == 200
    assert response.json() == {"status": "alive"}


@pytest.fixture(scope="module")
def triton(server: Server) -> Iterator[Any]:
    """The official Open Inference Protocol client (``tritonclient.http``) on the server."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(urlsplit(server.url).netloc, network_timeout=30.0)
    try:
        yield client
    finally:
        client.close()


def test_tritonclient_health_and_metadata(triton: Any) -> None:
    assert triton.is_server_live() and triton.is_server_ready()
    metadata = triton.get_server_metadata()
    assert metadata["name"] == "inference-app"
    assert metadata["extensions"] == ["binary_tensor_data"]
    assert triton.is_model_ready("iris") and triton.is_model_ready("breast_cancer", "1")
    model = triton.get_model_metadata("breast_cancer")
    assert model["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 30]}]
    outputs = {output["name"]: output for output in model["outputs"]}
    assert outputs["predict"]["datatype"] == "BYTES"
    assert outputs["predict_proba"]["shape"] == [-1, 2]


@pytest.mark.parametrize("name", ["iris", "breast_cancer"])
@pytest.mark.parametrize("binary_data", [True, False], ids=["binary", "json"])
def test_tritonclient_infer_matches_in_process(
    server: Server, triton: Any, name: str, binary_data: bool
) -> None:
    import tritonclient.http as httpclient

    rows, _, _ = load_demo_data(name)
    estimator = load_bundle(server.instance / "models" / name / "1").estimator
    tensor = httpclient.InferInput("input-0", list(rows.shape), "FP64")
    tensor.set_data_from_numpy(rows, binary_data=binary_data)
    outputs = [
        httpclient.InferRequestedOutput("predict", binary_data=binary_data),
        httpclient.InferRequestedOutput("predict_proba", binary_data=binary_data),
    ]

    result = triton.infer(name, [tensor], outputs=outputs, request_id="e2e-1")

    assert result.get_response()["id"] == "e2e-1"
    assert result.as_numpy("predict").tolist() == estimator.predict(rows).tolist()
    np.testing.assert_allclose(
        result.as_numpy("predict_proba"), estimator.predict_proba(rows), rtol=1e-12
    )
    classes = json.loads(result.get_output("predict_proba")["parameters"]["classes"])
    assert classes == estimator.classes_.tolist()


def test_tritonclient_default_output_is_predict(server: Server, triton: Any) -> None:
    import tritonclient.http as httpclient

    rows, _, _ = load_demo_data("iris")
    tensor = httpclient.InferInput("input-0", list(rows.shape), "FP64")
    tensor.set_data_from_numpy(rows)  # binary input, binary_data_output requested

    result = triton.infer("iris", [tensor])

    estimator = load_bundle(server.instance / "models" / "iris" / "1").estimator
    assert result.as_numpy("predict").tolist() == estimator.predict(rows).tolist()


def test_tritonclient_errors_are_raised_with_the_message(triton: Any) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    tensor = httpclient.InferInput("input-0", [1, 3], "FP64")
    tensor.set_data_from_numpy(np.array([[1.0, 2.0, 3.0]]), binary_data=False)
    with pytest.raises(InferenceServerException, match="does not fit the model's 4 features"):
        triton.infer("iris", [tensor])
    with pytest.raises(InferenceServerException, match="no model 'nope'"):
        triton.get_model_metadata("nope")


@pytest.mark.parametrize("orient", ["split", "records", "csv"])
def test_mlflow_invocations_with_pandas_bodies(server: Server, orient: str) -> None:
    import pandas as pd

    rows, _, names = load_demo_data("breast_cancer")
    frame = pd.DataFrame(rows, columns=names)
    if orient == "csv":
        request = {"data": frame.to_csv(), "headers": {"Content-Type": "text/csv"}}
    else:
        body = {f"dataframe_{orient}": json.loads(frame.to_json(orient=orient))}
        request = {"json": body}

    response = requests.post(
        f"{server.url}/invocations",
        headers={"X-Model-Name": "breast_cancer", **request.pop("headers", {})},
        timeout=REQUEST_TIMEOUT,
        **request,
    )

    assert response.status_code == 200, response.text[:2000]
    estimator = load_bundle(server.instance / "models" / "breast_cancer" / "1").estimator
    assert response.json()["predictions"] == estimator.predict(frame.to_numpy()).tolist()


def test_each_dialect_answers_bad_input_in_its_shape_and_serving_goes_on(server: Server) -> None:
    bad = b'{"instances": [[1, 2, NaN, 4]], "inputs": [{"name": "input-0", "shape": [-1]}]}'
    native = requests.post(
        f"{server.url}/v1/models/iris:predict",
        data=bad,
        timeout=REQUEST_TIMEOUT,
        headers={"Content-Type": "application/json"},
    )
    v2 = requests.post(f"{server.url}/v2/models/iris/infer", data=bad, timeout=REQUEST_TIMEOUT)
    mlflow = requests.post(
        f"{server.url}/invocations",
        data=b"\xff{",
        timeout=REQUEST_TIMEOUT,
        headers={"Content-Type": "application/json"},
    )

    assert native.status_code == 422 and set(native.json()) >= {"code", "status", "message"}
    assert v2.status_code == 400 and set(v2.json()) == {"error"}
    assert mlflow.status_code == 400 and set(mlflow.json()) == {"error_code", "message"}
    for response in (native, v2, mlflow):
        assert "Traceback" not in response.text
    rows, _, _ = load_demo_data("iris")
    estimator = load_bundle(server.instance / "models" / "iris" / "1").estimator
    for _ in range(4):  # reach both workers
        payload = post_predict(server, "iris", {"instances": rows.tolist()})
        assert payload["predictions"] == estimator.predict(rows).tolist()


def test_gunicorns_own_access_log_only_when_asked_for(tmp_path: Path, server: Server) -> None:
    body = {"instances": [[5.1, 3.5, 1.4, 0.2]]}
    line = '"POST /v1/models/iris:predict HTTP/1.1" 200'
    requests.post(f"{server.url}/v1/models/iris:predict", json=body, timeout=REQUEST_TIMEOUT)
    assert line not in server.log()  # off by default: the app writes its own JSON line
    instance = tmp_path / "instance"
    write_demo_bundles(instance / "models", names=["iris"])
    asked = start_gunicorn(instance, tmp_path / "gunicorn.log", GUNICORN_ACCESSLOG="-")
    try:
        wait_ready(asked)
        answer = requests.post(f"{asked.url}/v1/models/iris:predict", json=body, timeout=30)
        assert answer.status_code == 200
        assert wait_until(lambda: line in asked.log(), 5), asked.log()[-2000:]
    finally:
        stop(asked)
