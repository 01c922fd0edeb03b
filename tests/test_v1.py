"""The native v1 API over the demo models: routes, predictions and the input-rule matrix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient

from inference_app.core.bundle import load_bundle
from inference_app.demo import load_demo_data

IRIS_NAMES = load_demo_data("iris")[2]
SETOSA = [5.1, 3.5, 1.4, 0.2]
VIRGINICA = [6.7, 3.0, 5.2, 2.3]


def estimator(instance: Path, name: str) -> Any:
    """Return the demo estimator as loaded from its bundle, for in-process predictions."""
    return load_bundle(instance / "models" / name / "1").estimator


def assert_envelope(response: Any, status: int) -> dict[str, Any]:
    """Check the flask-smorest error envelope and return it."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body: dict[str, Any] = response.get_json()
    assert body["code"] == status
    assert isinstance(body["status"], str) and body["status"]
    assert isinstance(body["message"], str) and body["message"]
    assert "Traceback" not in response.get_data(as_text=True)
    return body


@pytest.mark.parametrize("name", ["iris", "breast_cancer", "diabetes"])
def test_predict_full_dataset_matches_in_process(
    client: FlaskClient, demo_instance: Path, name: str
) -> None:
    rows, _, _ = load_demo_data(name)
    response = client.post(f"/v1/models/{name}:predict", json={"instances": rows.tolist()})
    assert response.status_code == 200
    body = response.get_json()
    assert body["model_name"] == name and body["model_version"] == "1"
    assert body["method"] == "predict" and "classes" not in body
    expected = estimator(demo_instance, name).predict(rows)
    if name == "diabetes":
        np.testing.assert_allclose(body["predictions"], expected, rtol=1e-12)
    else:
        assert body["predictions"] == expected.tolist()


def test_records_are_reordered_to_the_model_order(client: FlaskClient) -> None:
    record = dict(reversed(list(zip(IRIS_NAMES, VIRGINICA, strict=True))))
    assert list(record) != IRIS_NAMES
    by_name = client.post("/v1/models/iris:predict", json={"instances": [record]})
    by_order = client.post("/v1/models/iris:predict", json={"instances": [VIRGINICA]})
    assert by_name.get_json()["predictions"] == by_order.get_json()["predictions"] == ["virginica"]


def test_rows_may_mix_arrays_and_records(client: FlaskClient) -> None:
    record = dict(zip(IRIS_NAMES, VIRGINICA, strict=True))
    response = client.post("/v1/models/iris:predict", json={"instances": [SETOSA, record]})
    assert response.get_json()["predictions"] == ["setosa", "virginica"]


def test_predict_proba_comes_with_class_labels(client: FlaskClient, demo_instance: Path) -> None:
    rows, _, _ = load_demo_data("iris")
    response = client.post(
        "/v1/models/iris:predict", json={"instances": rows.tolist(), "method": "predict_proba"}
    )
    body = response.get_json()
    model = estimator(demo_instance, "iris")
    assert body["classes"] == ["setosa", "versicolor", "virginica"] == model.classes_.tolist()
    np.testing.assert_allclose(body["predictions"], model.predict_proba(rows), rtol=1e-12)
    best = np.asarray(body["classes"])[np.argmax(body["predictions"], axis=1)]
    assert best.tolist() == model.predict(rows).tolist()


def test_decision_function_of_a_binary_classifier(client: FlaskClient) -> None:
    response = client.post(
        "/v1/models/iris:predict", json={"instances": [SETOSA], "method": "decision_function"}
    )
    body = response.get_json()
    assert response.status_code == 200
    assert len(body["predictions"][0]) == 3 and body["classes"][0] == "setosa"


def test_missing_method_names_the_ones_the_model_has(client: FlaskClient) -> None:
    response = client.post(
        "/v1/models/diabetes:predict", json={"instances": [[0.0] * 10], "method": "predict_proba"}
    )
    body = assert_envelope(response, 422)
    assert "predict_proba" in body["message"] and "it has predict" in body["message"]
    assert body["errors"] == {"json": {"method": ["Must be one of: predict."]}}


def test_versioned_predict_and_unknown_version(client: FlaskClient) -> None:
    ok = client.post("/v1/models/iris/versions/1:predict", json={"instances": [SETOSA]})
    assert ok.get_json()["predictions"] == ["setosa"]
    missing = client.post("/v1/models/iris/versions/7:predict", json={"instances": [SETOSA]})
    assert "has no version '7'; it has 1" in assert_envelope(missing, 404)["message"]


def test_unknown_model_names_the_models_served(client: FlaskClient) -> None:
    response = client.post("/v1/models/nope:predict", json={"instances": [SETOSA]})
    body = assert_envelope(response, 404)
    assert "breast_cancer, diabetes, iris" in body["message"]


def test_list_models(client: FlaskClient) -> None:
    body = client.get("/v1/models").get_json()
    assert [model["name"] for model in body["models"]] == ["breast_cancer", "diabetes", "iris"]
    iris = body["models"][2]
    assert iris == {
        "name": "iris",
        "versions": ["1"],
        "default_version": "1",
        "ready": True,
        "task": "classification",
    }


def test_model_metadata_and_its_example_request_works(client: FlaskClient) -> None:
    body = client.get("/v1/models/iris").get_json()
    assert [feature["name"] for feature in body["inputs"]] == IRIS_NAMES
    rows, _, _ = load_demo_data("iris")
    assert body["inputs"][0]["min"] == rows[:, 0].min()
    assert body["inputs"][0]["max"] == rows[:, 0].max()
    assert body["classes"] == ["setosa", "versicolor", "virginica"]
    assert body["methods"] == ["predict", "predict_proba", "decision_function"]
    assert body["task"] == "classification" and body["ready"] is True
    assert body["estimator"].endswith("LogisticRegression")
    response = client.post("/v1/models/iris:predict", json=body["example_request"])
    assert response.get_json()["predictions"] == ["setosa", "setosa"]
    version = client.get("/v1/models/iris/versions/1").get_json()
    assert version == body
    assert_envelope(client.get("/v1/models/iris/versions/3"), 404)
    assert_envelope(client.get("/v1/models/nope"), 404)


@pytest.mark.parametrize(
    ("instance", "prediction"),
    [
        (SETOSA, "setosa"),
        (dict(zip(IRIS_NAMES, VIRGINICA, strict=True)), "virginica"),
    ],
)
def test_single_row_predict_on_the_default_model(
    client: FlaskClient, instance: Any, prediction: str
) -> None:
    response = client.post("/predict", json={"instance": instance})
    assert response.status_code == 200
    body = response.get_json()
    assert body["model_name"] == "iris" and body["prediction"] == prediction


def test_single_row_predict_proba(client: FlaskClient) -> None:
    body = client.post("/predict", json={"instance": SETOSA, "method": "predict_proba"}).get_json()
    assert body["classes"] == ["setosa", "versicolor", "virginica"]
    assert len(body["prediction"]) == 3 and body["prediction"][0] > 0.9


def test_default_model_setting_is_followed(demo_instance: Path) -> None:
    from inference_app import create_app

    app = create_app({"DEFAULT_MODEL": "diabetes"}, instance_path=demo_instance)
    body = app.test_client().post("/predict", json={"instance": [0.0] * 10}).get_json()
    assert body["model_name"] == "diabetes" and isinstance(body["prediction"], float)


def row(**changes: Any) -> dict[str, Any]:
    """Return an iris record with some features changed (or removed, with None)."""
    record: dict[str, Any] = dict(zip(IRIS_NAMES, SETOSA, strict=True))
    for key, value in changes.items():
        name = key.replace("_", " ") + " (cm)"
        if value is None:
            del record[name]
        else:
            record[name] = value
    return record


RAW = "raw"
#: (id, body: JSON value or (RAW, bytes), content type, status, a phrase of the message,
#: the marshmallow-style error path that must be present or None)
MATRIX: list[tuple[str, Any, str, int, str, list[Any] | None]] = [
    (
        "missing feature",
        {"instances": [row(petal_width=None)]},
        "application/json",
        422,
        "lacks feature 'petal width (cm)'",
        ["instances", "0", "petal width (cm)"],
    ),
    (
        "unknown feature",
        {"instances": [{**row(), "colour": 1}]},
        "application/json",
        422,
        "unknown feature 'colour'",
        ["instances", "0", "colour"],
    ),
    (
        "numeric string",
        {"instances": [[5.1, "3.5", 1.4, 0.2]]},
        "application/json",
        422,
        "numbers in strings are not converted",
        ["instances", "0", "sepal width (cm)"],
    ),
    (
        "boolean",
        {"instances": [SETOSA, [5.1, 3.5, True, 0.2]]},
        "application/json",
        422,
        "row 1, feature 'petal length (cm)': expected a number, got a boolean",
        ["instances", "1", "petal length (cm)"],
    ),
    (
        "null",
        {"instances": [[5.1, None, 1.4, 0.2]]},
        "application/json",
        422,
        "cannot be missing",
        ["instances", "0", "sepal width (cm)"],
    ),
    (
        "nested value",
        {"instances": [[5.1, [3.5], 1.4, 0.2]]},
        "application/json",
        422,
        "got an array",
        ["instances", "0", "sepal width (cm)"],
    ),
    (
        "NaN",
        (RAW, b'{"instances": [[5.1, 3.5, NaN, 0.2]]}'),
        "application/json",
        422,
        "does not accept missing values",
        ["instances", "0", "petal length (cm)"],
    ),
    (
        "Infinity",
        (RAW, b'{"instances": [[5.1, 3.5, 1.4, Infinity]]}'),
        "application/json",
        422,
        "infinity",
        ["instances", "0", "petal width (cm)"],
    ),
    (
        "1e999",
        (RAW, b'{"instances": [[1e999, 3.5, 1.4, 0.2]]}'),
        "application/json",
        422,
        "infinity",
        ["instances", "0", "sepal length (cm)"],
    ),
    (
        "huge integer",
        (RAW, b'{"instances": [[1' + b"0" * 400 + b", 3.5, 1.4, 0.2]]}"),
        "application/json",
        422,
        "too large for float64",
        ["instances", "0", "sepal length (cm)"],
    ),
    (
        "short row",
        {"instances": [SETOSA, [5.1, 3.5]]},
        "application/json",
        422,
        "row 1 has 2 values but the model takes 4",
        ["instances", "1"],
    ),
    (
        "mixed rows, one short",
        {"instances": [row(), [5.1, 3.5]]},
        "application/json",
        422,
        "row 1 has 2 values but the model takes 4",
        ["instances", "1"],
    ),
    (
        "scalar rows",
        {"instances": [5.1, 3.5]},
        "application/json",
        422,
        "row 0 is a number",
        ["instances", "0"],
    ),
    (
        "empty batch",
        {"instances": []},
        "application/json",
        422,
        "send at least one row",
        ["instances"],
    ),
    (
        "too many rows",
        {"instances": [SETOSA] * 10_001},
        "application/json",
        422,
        "more than the 10000",
        ["instances"],
    ),
    (
        "instances not an array",
        {"instances": {"a": 1}},
        "application/json",
        422,
        "instances: Expected an array.",
        ["instances"],
    ),
    ("no instances", {}, "application/json", 422, "Missing data for required field", ["instances"]),
    (
        "unknown envelope field",
        {"instances": [SETOSA], "extra": 1},
        "application/json",
        422,
        "extra: Unknown field.",
        ["extra"],
    ),
    (
        "unknown method",
        {"instances": [SETOSA], "method": "transform"},
        "application/json",
        422,
        "Must be one of: predict, predict_proba, decision_function",
        ["method"],
    ),
    ("body is an array", [SETOSA], "application/json", 422, "Invalid input type", None),
    (
        "malformed JSON",
        (RAW, b'{"instances": [[5.1,'),
        "application/json",
        400,
        "not valid JSON",
        None,
    ),
    ("empty body", (RAW, b""), "application/json", 400, "not valid JSON", None),
    (
        "not UTF-8",
        (RAW, b'{"instances": "\xff\xfe"}'),
        "application/json",
        400,
        "not valid JSON",
        None,
    ),
    (
        "deeply nested",
        (RAW, b"[" * 100_000 + b"]" * 100_000),
        "application/json",
        400,
        "nested too deeply",
        None,
    ),
    (
        "form body",
        (RAW, b"instances=1"),
        "application/x-www-form-urlencoded",
        415,
        "Content-Type: application/json",
        None,
    ),
    (
        "text body",
        (RAW, json.dumps({"instances": [SETOSA]}).encode()),
        "text/plain",
        415,
        "Content-Type: application/json",
        None,
    ),
]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "phrase", "path"),
    [case[1:] for case in MATRIX],
    ids=[case[0] for case in MATRIX],
)
def test_input_rule_matrix(
    client: FlaskClient,
    body: Any,
    content_type: str,
    status: int,
    phrase: str,
    path: list[Any] | None,
) -> None:
    data = body[1] if isinstance(body, tuple) else json.dumps(body).encode()
    response = client.post("/v1/models/iris:predict", data=data, content_type=content_type)
    envelope = assert_envelope(response, status)
    assert phrase in envelope["message"]
    if path is not None:
        node = envelope["errors"]["json"]
        for key in path:
            node = node[key]
        assert node


def test_a_body_over_the_limit_is_413(demo_instance: Path) -> None:
    from inference_app import create_app

    app = create_app({"MAX_CONTENT_LENGTH": 1000}, instance_path=demo_instance)
    body = json.dumps({"instances": [SETOSA] * 100}).encode()
    response = app.test_client().post(
        "/v1/models/iris:predict", data=body, content_type="application/json"
    )
    envelope = assert_envelope(response, 413)
    assert "larger than 1000 bytes" in envelope["message"]


def test_unknown_features_can_be_ignored(demo_instance: Path) -> None:
    from inference_app import create_app

    app = create_app({"UNKNOWN_FEATURES": "ignore"}, instance_path=demo_instance)
    body = {"instances": [{**dict(zip(IRIS_NAMES, VIRGINICA, strict=True)), "colour": "red"}]}
    response = app.test_client().post("/v1/models/iris:predict", json=body)
    assert response.get_json()["predictions"] == ["virginica"]


def test_werkzeug_errors_use_the_envelope(client: FlaskClient) -> None:
    not_found = assert_envelope(client.get("/no/such/route"), 404)
    assert "/docs" in not_found["message"]
    not_allowed = client.delete("/v1/models/iris")
    assert_envelope(not_allowed, 405)
    assert set(not_allowed.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}
    get_predict = client.get("/predict")
    assert_envelope(get_predict, 405)
    assert "POST" in get_predict.headers["Allow"]


def test_a_non_finite_prediction_is_an_error_not_bare_nan(client: FlaskClient) -> None:
    # Finite but huge inputs push Ridge's linear output beyond float64.
    response = client.post("/v1/models/diabetes:predict", json={"instances": [[1e308] * 10]})
    body = assert_envelope(response, 422)
    assert "row 0 is not a finite number" in body["message"]
    assert "NaN" not in response.get_data(as_text=True)
    assert "Infinity" not in response.get_data(as_text=True)
