"""The fast path of ``:predict`` and V2 ``infer``: the same answers, metrics and log lines as
the Flask routes."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from flask import Flask
from prometheus_client import REGISTRY
from werkzeug.test import Client, EnvironBuilder, TestResponse, run_wsgi_app

from inference_app import create_app
from inference_app.demo import load_demo_data
from inference_app.logs import ACCESS_LOGGER

REQUEST_ID = "fast-or-slow-1"
#: What a server gives the app of every request, through either client.
ENVIRON = {"REMOTE_ADDR": "127.0.0.1", "HTTP_USER_AGENT": "curl/8.5.0"}
KEY = "s3cret-key-for-the-fast-path"


class Spy:
    """Wraps an app's fast path and counts the requests it answered itself."""

    def __init__(self, app: Flask) -> None:
        self.inner = app.fast_path
        self.answered = 0
        app.fast_path = self

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes] | None:
        assert self.inner is not None
        answer = self.inner(environ, start_response)
        self.answered += answer is not None
        return answer


def clients(app: Flask) -> tuple[Client, Client, Spy]:
    """Return a client through the fast path, one straight to Flask, and the fast path's spy."""
    spy = Spy(app)
    flask_only = Client(lambda env, start: Flask.wsgi_app(app, env, start), TestResponse)
    return app.test_client(), flask_only, spy


def post(client: Client, path: str, body: Any, **kwargs: Any) -> TestResponse:
    """POST ``body`` (JSON unless bytes) with a fixed request id."""
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = {"X-Request-ID": REQUEST_ID, **kwargs.pop("headers", {})}
    kwargs.setdefault("content_type", "application/json")
    kwargs.setdefault("environ_base", ENVIRON)
    return client.post(path, data=data, headers=headers, **kwargs)


def assert_same(fast: TestResponse, slow: TestResponse) -> None:
    """Assert two answers are equal in status, headers and body bytes."""
    assert fast.status == slow.status
    assert sorted(fast.headers.items()) == sorted(slow.headers.items())
    assert fast.get_data() == slow.get_data()


def rows(model: str) -> list[list[float]]:
    """Every row of a demo dataset."""
    data, _, _ = load_demo_data(model)
    return np.asarray(data).tolist()


def records(model: str) -> list[dict[str, float]]:
    """Every row of a demo dataset, keyed by feature name."""
    data, _, names = load_demo_data(model)
    return [dict(zip(names, row, strict=True)) for row in np.asarray(data).tolist()]


SUCCESSES = [
    ("/v1/models/iris:predict", {"instances": rows("iris")}),
    ("/v1/models/iris:predict", {"instances": rows("iris"), "method": "predict_proba"}),
    ("/v1/models/iris:predict", {"instances": rows("iris"), "method": "decision_function"}),
    ("/v1/models/iris:predict", {"instances": records("iris")}),
    ("/v1/models/iris:predict", {"inputs": rows("iris")}),
    ("/v1/models/iris/versions/1:predict", {"instances": rows("iris")[:7]}),
    ("/v1/models/breast_cancer:predict", {"instances": rows("breast_cancer")}),
    (
        "/v1/models/breast_cancer:predict",
        {"instances": rows("breast_cancer"), "method": "predict_proba"},
    ),
    ("/v1/models/diabetes:predict", {"instances": rows("diabetes")}),
    ("/v1/models/diabetes:predict", {"instances": records("diabetes")}),
]


def tensor(model: str, datatype: str = "FP64", nested: bool = False) -> dict[str, Any]:
    """Every row of a demo dataset as one V2 input tensor ``[n_samples, n_features]``."""
    data = np.asarray(load_demo_data(model)[0])
    values = data.tolist() if nested else data.ravel().tolist()
    return {"name": "input-0", "shape": list(data.shape), "datatype": datatype, "data": values}


def feature_tensors(model: str) -> list[dict[str, Any]]:
    """Every row of a demo dataset as one V2 tensor ``[n_samples]`` per feature."""
    data, _, names = load_demo_data(model)
    columns = np.asarray(data).T.tolist()
    return [
        {"name": name, "shape": [len(column)], "datatype": "FP64", "data": column}
        for name, column in zip(names, columns, strict=True)
    ]


def binary(model: str) -> bytes:
    """Every row of a demo dataset as a V2 request with binary tensor data (tritonclient's)."""
    raw = np.ascontiguousarray(load_demo_data(model)[0], dtype="<f8")
    request = {
        "inputs": [
            {
                "name": "input-0",
                "shape": list(raw.shape),
                "datatype": "FP64",
                "parameters": {"binary_data_size": raw.nbytes},
            }
        ],
        "outputs": [{"name": "predict_proba", "parameters": {"binary_data": False}}],
    }
    header = orjson.dumps(request)
    return str(len(header)).encode() + b"|" + header + raw.tobytes()


INFER = "/v2/models/iris/infer"
V2_SUCCESSES = [
    (INFER, {"inputs": [tensor("iris")]}),
    (INFER, {"inputs": [tensor("iris", nested=True)], "id": "request-7"}),
    (INFER, {"inputs": feature_tensors("iris"), "outputs": [{"name": "predict_proba"}]}),
    (
        INFER,
        {"inputs": [tensor("iris")], "outputs": [{"name": "predict"}, {"name": "predict_proba"}]},
    ),
    (INFER, {"inputs": [tensor("iris", "FP32")], "parameters": {"content_type": "np"}}),
    ("/v2/models/iris/versions/1/infer", {"inputs": [tensor("iris")]}),
    ("/v2/models/breast_cancer/infer", {"inputs": [tensor("breast_cancer")]}),
    ("/v2/models/diabetes/infer", {"inputs": [tensor("diabetes")]}),
]
V2_FAILURES = [
    (INFER, b"{not json"),
    (INFER, {"inputs": []}),
    (INFER, {"inputs": [{**tensor("iris"), "shape": [150, 3]}]}),
    (INFER, {"inputs": [{**tensor("iris"), "datatype": "FP128"}]}),
    (INFER, {"inputs": [tensor("iris")], "outputs": [{"name": "transform"}]}),
    (
        "/v2/models/diabetes/infer",
        {"inputs": [tensor("diabetes")], "outputs": [{"name": "predict_proba"}]},
    ),
    ("/v2/models/nope/infer", {"inputs": [tensor("iris")]}),
]

FAILURES = [
    ("/v1/models/iris:predict", b"{not json"),
    ("/v1/models/iris:predict", b'{"instances": [[NaN, 1, 2, 3]]}'),
    ("/v1/models/iris:predict", {"instances": [[1, 2, 3]]}),
    ("/v1/models/iris:predict", {"instances": [{"petal length (cm)": 1}]}),
    ("/v1/models/iris:predict", {"instances": [[1, 2, 3, 4]], "extra": 1}),
    ("/v1/models/iris:predict", {"instances": [[1, 2, 3, 4]], "inputs": [[1, 2, 3, 4]]}),
    ("/v1/models/iris:predict", {"instances": []}),
    ("/v1/models/iris:predict", {"instances": [[1, 2, 3, 4]], "method": "transform"}),
    ("/v1/models/iris:predict", [[1, 2, 3, 4]]),
    ("/v1/models/iris:predict", {"instances": [[[[[[1]]]]]]}),
    ("/v1/models/diabetes:predict", {"instances": rows("diabetes")[:1], "method": "predict_proba"}),
    ("/v1/models/nope:predict", {"instances": [[1, 2, 3, 4]]}),
    ("/v1/models/iris/versions/9:predict", {"instances": [[1, 2, 3, 4]]}),
]


@pytest.mark.parametrize(("path", "body"), SUCCESSES + V2_SUCCESSES)
def test_the_fast_path_answers_exactly_as_the_flask_route(
    app: Flask, path: str, body: dict[str, Any]
) -> None:
    fast, slow, spy = clients(app)

    assert_same(post(fast, path, body), post(slow, path, body))
    assert spy.answered == 1


@pytest.mark.parametrize(("path", "body"), SUCCESSES + V2_SUCCESSES)
def test_with_onnx_bundles_the_fast_path_answers_exactly_as_the_flask_route(
    onnx_demo_instance: Path, path: str, body: dict[str, Any]
) -> None:
    app = create_app({"TESTING": True}, instance_path=onnx_demo_instance)
    model = path.split("/")[3].split(":")[0]
    assert app.test_client().get(f"/v1/models/{model}").get_json()["runtime"] == "onnx"
    fast, slow, spy = clients(app)

    assert_same(post(fast, path, body), post(slow, path, body))
    assert spy.answered == 1


@pytest.mark.parametrize(("path", "body"), FAILURES + V2_FAILURES)
def test_every_error_is_left_to_the_flask_route(app: Flask, path: str, body: Any) -> None:
    fast, slow, spy = clients(app)

    answer = post(fast, path, body)
    assert 400 <= answer.status_code < 500
    assert_same(answer, post(slow, path, body))
    assert spy.answered == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"content_type": "text/plain"},
        {"content_type": "application/merge-patch+json"},
        {"content_length": 0},
        {"method": "PUT"},
    ],
)
def test_other_requests_are_left_to_flask(app: Flask, kwargs: dict[str, Any]) -> None:
    fast, slow, spy = clients(app)
    body = {"instances": [[5.1, 3.5, 1.4, 0.2]]}
    method = kwargs.pop("method", "POST")

    answers = [
        client.open("/v1/models/iris:predict", method=method, data=orjson.dumps(body), **kwargs)
        for client in (fast, slow)
    ]
    assert answers[0].status_code == answers[1].status_code
    assert answers[0].get_data() == answers[1].get_data()
    assert spy.answered == 0


@pytest.mark.parametrize("content_type", [None, "application/octet-stream"])
def test_v2_takes_bodies_without_a_json_content_type_as_flask_does(
    app: Flask, content_type: str | None
) -> None:
    fast, slow, spy = clients(app)
    body = {"inputs": [tensor("iris")]}

    answers = [post(client, INFER, body, content_type=content_type) for client in (fast, slow)]
    assert answers[0].status_code == 200
    assert_same(*answers)
    assert spy.answered == 1


def test_v2_binary_tensor_data_as_tritonclient_sends_it(app: Flask) -> None:
    fast, slow, spy = clients(app)
    length, _, body = binary("iris").partition(b"|")
    headers = {"Inference-Header-Content-Length": length.decode()}

    answers = [
        post(client, INFER, body, content_type=None, headers=headers) for client in (fast, slow)
    ]
    assert answers[0].status_code == 200
    assert_same(*answers)
    assert spy.answered == 1
    probabilities = np.array(answers[0].get_json()["outputs"][0]["data"]).reshape(150, 3)
    assert np.allclose(probabilities.sum(axis=1), 1.0)

    wrong = {"Inference-Header-Content-Length": str(int(length) + 10**6)}
    answers = [
        post(client, INFER, body, content_type=None, headers=wrong) for client in (fast, slow)
    ]
    assert answers[0].status_code == 400
    assert_same(*answers)
    assert spy.answered == 1


def test_a_chunked_body_is_left_to_flask(app: Flask) -> None:
    _, _, spy = clients(app)
    body = orjson.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]]})
    environ = EnvironBuilder(
        path="/v1/models/iris:predict",
        method="POST",
        input_stream=io.BytesIO(body),
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
    ).get_environ()
    del environ["CONTENT_LENGTH"]  # as Gunicorn passes a chunked body
    environ["wsgi.input_terminated"] = True

    chunks, status, _ = run_wsgi_app(app, environ)
    assert status == "200 OK"
    assert orjson.loads(b"".join(chunks))["predictions"] == ["setosa"]
    assert spy.answered == 0


def test_with_api_keys_only_a_right_key_takes_the_fast_path(demo_instance: Path) -> None:
    app = create_app({"TESTING": True, "API_KEYS": [KEY]}, instance_path=demo_instance)
    fast, slow, spy = clients(app)
    body = {"instances": rows("iris")[:3]}

    for headers in ({"Authorization": f"Bearer {KEY}"}, {"X-API-Key": KEY}):
        assert_same(
            post(fast, "/v1/models/iris:predict", body, headers=headers),
            post(slow, "/v1/models/iris:predict", body, headers=headers),
        )
    assert spy.answered == 2
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": KEY[:-1]}):
        answer = post(fast, "/v1/models/iris:predict", body, headers=headers)
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert spy.answered == 2


def test_with_cors_the_flask_route_answers(demo_instance: Path) -> None:
    origin = "https://app.example"
    app = create_app({"TESTING": True, "CORS_ORIGINS": [origin]}, instance_path=demo_instance)
    fast, _, spy = clients(app)

    answer = post(
        fast, "/v1/models/iris:predict", {"instances": rows("iris")[:1]}, headers={"Origin": origin}
    )
    assert answer.status_code == 200
    assert answer.headers["Access-Control-Allow-Origin"] == origin
    assert spy.answered == 0


def sample(name: str, **labels: str) -> float:
    """Return a sample of the in-process registry, 0 if absent."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


ACCOUNTED = [
    (
        "/v1/models/iris/versions/1:predict",
        {"instances": rows("iris")[:5], "method": "predict_proba"},
        "native",
        "/v1/models/<name>/versions/<version>:predict",
    ),
    (
        "/v2/models/iris/versions/1/infer",
        {"inputs": [{**tensor("iris"), "shape": [5, 4], "data": tensor("iris")["data"][:20]}]},
        "v2",
        "/v2/models/<name>/versions/<version>/infer",
    ),
]


@pytest.mark.parametrize(("path", "body", "protocol", "rule"), ACCOUNTED)
def test_metrics_and_the_access_line_match_the_flask_route(
    app: Flask,
    caplog: pytest.LogCaptureFixture,
    path: str,
    body: dict[str, Any],
    protocol: str,
    rule: str,
) -> None:
    fast, slow, spy = clients(app)
    labels = {"protocol": protocol, "model": "iris", "version": "1"}
    route = {**labels, "route": rule}
    counted = {
        "requests": ("inference_app_requests_total", {**route, "status_class": "2xx"}),
        "durations": ("inference_app_request_duration_seconds_count", route),
        "rows": ("inference_app_rows_predicted_total", labels),
        "stages": (
            "inference_app_stage_duration_seconds_count",
            {"protocol": protocol, "stage": "predict"},
        ),
    }

    lines = []
    for client in (fast, slow):
        before = {key: sample(name, **wanted) for key, (name, wanted) in counted.items()}
        caplog.clear()
        with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
            assert post(client, path, body).status_code == 200
        after = {key: sample(name, **wanted) for key, (name, wanted) in counted.items()}
        assert {key: after[key] - before[key] for key in counted} == {
            "requests": 1,
            "durations": 1,
            "rows": 5,
            "stages": 1,
        }
        (record,) = [r for r in caplog.records if r.name == ACCESS_LOGGER]
        lines.append(record)
    assert spy.answered == 1

    timed = ("duration_ms", "stages_ms")
    fields = (
        "request_id",
        "method",
        "path",
        "route",
        "protocol",
        "status",
        "model",
        "version",
        "rows",
        "remote_addr",
        "user_agent",
        *timed,
    )
    fast_line, slow_line = ({f: getattr(r, f) for f in fields} for r in lines)
    assert {f: v for f, v in fast_line.items() if f not in timed} == {
        f: v for f, v in slow_line.items() if f not in timed
    }
    assert fast_line["request_id"] == REQUEST_ID
    assert set(fast_line["stages_ms"]) == set(slow_line["stages_ms"])
    assert fast_line["duration_ms"] >= sum(fast_line["stages_ms"].values()) > 0
