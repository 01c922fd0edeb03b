"""KServe V1 on the native routes: `inputs` for `instances`, model readiness, the model list."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient

from inference_app import process
from inference_app.core.bundle import load_bundle
from inference_app.demo import load_demo_data

NAMES = ["breast_cancer", "diabetes", "iris"]
SETOSA = [5.1, 3.5, 1.4, 0.2]


def assert_envelope(response: Any, status: int) -> dict[str, Any]:
    """Check the flask-smorest error envelope and return it."""
    text = response.get_data(as_text=True)
    assert response.status_code == status, text
    body: dict[str, Any] = response.get_json()
    assert body["code"] == status
    assert isinstance(body["status"], str) and body["status"]
    assert isinstance(body["message"], str) and body["message"]
    assert "Traceback" not in text
    return body


@pytest.mark.parametrize("records", [False, True], ids=["arrays", "objects"])
@pytest.mark.parametrize(
    ("name", "method"),
    [
        ("iris", "predict"),
        ("iris", "predict_proba"),
        ("breast_cancer", "predict"),
        ("diabetes", "predict"),
    ],
)
def test_inputs_is_a_synonym_of_instances(
    client: FlaskClient, demo_instance: Path, name: str, method: str, records: bool
) -> None:
    rows, _, features = load_demo_data(name)
    batch: list[Any] = rows.tolist()
    if records:
        batch = [dict(zip(features, row, strict=True)) for row in batch]
    url = f"/v1/models/{name}:predict"
    as_inputs = client.post(url, json={"inputs": batch, "method": method})
    as_instances = client.post(url, json={"instances": batch, "method": method})
    assert as_inputs.status_code == as_instances.status_code == 200
    body = as_inputs.get_json()
    assert body == as_instances.get_json()
    assert body["model_name"] == name and body["method"] == method
    model = load_bundle(demo_instance / "models" / name / "1").estimator
    expected = getattr(model, method)(rows)
    if expected.dtype.kind in "OUS":
        assert body["predictions"] == expected.tolist()
    else:
        np.testing.assert_allclose(body["predictions"], expected, rtol=1e-12)


def test_inputs_on_a_version_route(client: FlaskClient) -> None:
    response = client.post("/v1/models/iris/versions/1:predict", json={"inputs": [SETOSA]})
    assert response.status_code == 200
    assert response.get_json()["predictions"] == ["setosa"]


def test_instances_and_inputs_together_are_refused(client: FlaskClient) -> None:
    response = client.post(
        "/v1/models/iris:predict", json={"instances": [SETOSA], "inputs": [SETOSA]}
    )
    body = assert_envelope(response, 422)
    assert "not both" in body["message"]
    assert body["errors"]["json"]["instances"]


def test_inputs_follows_the_rules_of_instances(client: FlaskClient) -> None:
    response = client.post("/v1/models/iris:predict", json={"inputs": [[5.1, 3.5]]})
    body = assert_envelope(response, 422)
    assert "row 0 has 2 values but the model takes 4" in body["message"]
    not_rows = client.post("/v1/models/iris:predict", json={"inputs": {"a": 1}})
    assert_envelope(not_rows, 422)


def test_list_models_has_kserve_fields(client: FlaskClient) -> None:
    response = client.get("/v1/models")
    assert response.status_code == 200
    models = response.get_json()["models"]
    assert [model["name"] for model in models] == NAMES
    assert all(model["ready"] is True for model in models)


def test_model_readiness_follows_the_warm_up(cold_app: Flask) -> None:
    client = cold_app.test_client()
    for url in ("/v1/models/iris", "/v1/models/iris/versions/1"):
        waiting = client.get(url)
        assert waiting.status_code == 503
        body = waiting.get_json()
        assert body["name"] == "iris" and body["ready"] is False
        assert [feature["name"] for feature in body["inputs"]] == load_demo_data("iris")[2]
    listed = client.get("/v1/models")
    assert listed.status_code == 200
    assert [(m["name"], m["ready"]) for m in listed.get_json()["models"]] == [
        (name, False) for name in NAMES
    ]
    refused = client.post("/v1/models/iris:predict", json={"inputs": [SETOSA]})
    assert "warming up" in assert_envelope(refused, 503)["message"]

    process.warm_up(cold_app)
    for url in ("/v1/models/iris", "/v1/models/iris/versions/1"):
        ready = client.get(url)
        assert ready.status_code == 200
        assert ready.get_json()["name"] == "iris" and ready.get_json()["ready"] is True
    assert all(model["ready"] for model in client.get("/v1/models").get_json()["models"])
    answered = client.post("/v1/models/iris:predict", json={"inputs": [SETOSA]})
    assert answered.get_json()["predictions"] == ["setosa"]


def test_unknown_model_is_404(client: FlaskClient) -> None:
    body = assert_envelope(client.get("/v1/models/nope"), 404)
    assert "no model 'nope'" in body["message"]
    predict = client.post("/v1/models/nope:predict", json={"inputs": [SETOSA]})
    assert_envelope(predict, 404)
