"""MLflow's scoring server and SageMaker's container contract: /ping, /version, /invocations."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sklearn import datasets

from inference_app import __version__, create_app, process

LOADERS: dict[str, Callable[..., Any]] = {
    "iris": datasets.load_iris,
    "breast_cancer": datasets.load_breast_cancer,
    "diabetes": datasets.load_diabetes,
}
IRIS_COLUMNS = list(datasets.load_iris(as_frame=True).data.columns)
IRIS_CSV_HEADER = ",".join(IRIS_COLUMNS) + "\n"
SETOSA = [5.1, 3.5, 1.4, 0.2]
JSON = "application/json"
CSV = "text/csv"


@pytest.fixture(scope="module")
def server(demo_instance: Path) -> FlaskClient:
    """A client of one app shared by the module, so errors are seen not to disturb it."""
    return create_app({"TESTING": True}, instance_path=demo_instance).test_client()


def frame(name: str) -> pd.DataFrame:
    """Return a demo dataset's features as scikit-learn loads them, as a DataFrame."""
    data: pd.DataFrame = LOADERS[name](as_frame=True).data
    return data


def as_json(body: Any) -> tuple[bytes, str]:
    """Return ``body`` as a JSON request body and its content type."""
    return json.dumps(body).encode(), JSON


#: Each way MLflow's scoring server takes a DataFrame: body and content type.
FORMATS: dict[str, Callable[[pd.DataFrame], tuple[bytes, str]]] = {
    "dataframe_split": lambda df: as_json(
        {"dataframe_split": json.loads(df.to_json(orient="split"))}
    ),
    "dataframe_records": lambda df: as_json(
        {"dataframe_records": json.loads(df.to_json(orient="records"))}
    ),
    "records with params": lambda df: as_json(
        {"dataframe_records": json.loads(df.to_json(orient="records")), "params": {"k": 1}}
    ),
    "csv with index": lambda df: (df.to_csv().encode(), CSV),
    "csv without index": lambda df: (df.to_csv(index=False).encode(), CSV),
    "instances": lambda df: as_json({"instances": df.to_numpy().tolist()}),
    "inputs rows": lambda df: as_json({"inputs": df.to_numpy().tolist()}),
    "inputs columns": lambda df: as_json(
        {"inputs": {column: df[column].tolist() for column in df.columns}}
    ),
}


def invoke(client: FlaskClient, data: bytes, content_type: str, model: str | None = None) -> Any:
    """Post to ``/invocations``, naming the model in ``X-Model-Name`` if given."""
    headers = {} if model is None else {"X-Model-Name": model}
    return client.post("/invocations", data=data, content_type=content_type, headers=headers)


def assert_predictions(response: Any, expected: np.ndarray) -> None:
    """Check a 200 ``{"predictions": [...]}`` against in-process predictions."""
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body.keys() == {"predictions"}
    if expected.dtype.kind in "OUS":
        assert body["predictions"] == expected.tolist()
    else:
        # DataFrame.to_json writes 10 decimals, so JSON bodies carry slightly rounded values.
        np.testing.assert_allclose(body["predictions"], expected, rtol=1e-9)


def assert_mlflow_error(response: Any, status: int) -> dict[str, str]:
    """Check MLflow's error body ``{"error_code", "message"}`` and return it."""
    text = response.get_data(as_text=True)
    assert response.status_code == status, text
    assert response.mimetype == "application/json"
    body: dict[str, str] = response.get_json()
    assert isinstance(body, dict) and body.keys() == {"error_code", "message"}, text
    assert isinstance(body["error_code"], str) and body["error_code"]
    assert isinstance(body["message"], str) and body["message"]
    assert "Traceback" not in text
    return body


def test_ping_when_ready(server: FlaskClient) -> None:
    response = server.get("/ping")
    assert response.status_code == 200 and response.get_data() == b"\n"


def test_ping_and_invocations_wait_for_the_warm_up(cold_app: Flask) -> None:
    client = cold_app.test_client()
    body = assert_mlflow_error(client.get("/ping"), 503)
    assert body["error_code"] == "TEMPORARILY_UNAVAILABLE"
    request = json.dumps({"instances": [SETOSA]}).encode()
    refused = assert_mlflow_error(invoke(client, request, JSON), 503)
    assert refused["error_code"] == "TEMPORARILY_UNAVAILABLE"
    assert "warming up" in refused["message"]

    process.warm_up(cold_app)
    ping = client.get("/ping")
    assert ping.status_code == 200 and ping.get_data() == b"\n"
    assert invoke(client, request, JSON).get_json() == {"predictions": ["setosa"]}


def test_version(server: FlaskClient) -> None:
    response = server.get("/version")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    assert response.get_data(as_text=True) == __version__


@pytest.mark.parametrize("body_format", list(FORMATS))
@pytest.mark.parametrize("name", list(LOADERS))
def test_invocations_match_in_process(
    server: FlaskClient, demo_estimators: dict[str, Any], name: str, body_format: str
) -> None:
    df = frame(name)
    data, content_type = FORMATS[body_format](df)
    expected = demo_estimators[name].predict(df.to_numpy())
    assert_predictions(invoke(server, data, content_type, name), expected)


def test_the_default_model_is_the_configured_one(
    server: FlaskClient, demo_estimators: dict[str, Any]
) -> None:
    df = frame("iris")
    data, content_type = FORMATS["dataframe_split"](df)
    # instance/config.py, which conftest copies, sets DEFAULT_MODEL = "iris".
    assert_predictions(
        invoke(server, data, content_type), demo_estimators["iris"].predict(df.to_numpy())
    )


@pytest.mark.parametrize(
    ("body_format", "content_type"),
    [
        ("instances", "application/json; charset=utf-8"),
        ("dataframe_split", "application/json; format=pandas-split"),
        ("csv with index", "text/csv; charset=utf-8"),
    ],
)
def test_content_type_parameters_are_accepted(
    server: FlaskClient, demo_estimators: dict[str, Any], body_format: str, content_type: str
) -> None:
    df = frame("breast_cancer")
    data, _ = FORMATS[body_format](df)
    expected = demo_estimators["breast_cancer"].predict(df.to_numpy())
    assert_predictions(invoke(server, data, content_type, "breast_cancer"), expected)


class Case(NamedTuple):
    """A request ``/invocations`` refuses, and how.

    :param body: a JSON value, or ``bytes`` sent as they are.
    :param phrase: a part of the error message.
    :param error_code: MLflow's error code, or ``None`` for any.
    """

    body: Any
    phrase: str
    status: int = 400
    content_type: str | None = JSON
    error_code: str | None = "BAD_REQUEST"
    headers: dict[str, str] | None = None
    method: str = "POST"


def csv_case(rows: str, phrase: str) -> Case:
    """Return a CSV body with iris's header row and then ``rows``."""
    return Case((IRIS_CSV_HEADER + rows).encode(), phrase, content_type=CSV)


SPLIT = {"columns": IRIS_COLUMNS, "data": [SETOSA]}

#: Malformed requests: each answers a 4xx with exactly ``{"error_code", "message"}``.
MATRIX = [
    pytest.param(Case(b'{"instances": [[5.1,', "not valid JSON"), id="bad JSON"),
    pytest.param(Case(b"", "not valid JSON"), id="empty JSON body"),
    pytest.param(Case(b'{"instances": "\xff\xfe"}', "not valid JSON"), id="non-UTF-8 JSON"),
    pytest.param(
        Case(b"[" * 100_000 + b"]" * 100_000, "nested too deeply"), id="nested 100000 deep"
    ),
    pytest.param(Case(SPLIT, "dataframe_split"), id="MLflow 1.x columns and data"),
    pytest.param(Case({"data": [SETOSA]}, "dataframe_split"), id="MLflow 1.x data alone"),
    pytest.param(Case({"params": {"k": 1}}, "Send exactly one of"), id="no input field"),
    pytest.param(Case({}, "Send exactly one of"), id="empty object"),
    pytest.param(
        Case({"instances": [SETOSA], "inputs": [SETOSA]}, "got instances, inputs"),
        id="two input fields",
    ),
    pytest.param(
        Case({"dataframe_split": SPLIT, "dataframe_records": [{}]}, "got dataframe_split"),
        id="two dataframe fields",
    ),
    pytest.param(Case({"instances": [SETOSA], "extra": 1}, "extra"), id="unknown field"),
    pytest.param(Case([SETOSA], "bare list of rows"), id="body is an array"),
    pytest.param(Case({"instances": {"a": 1}}, "instances"), id="instances not an array"),
    pytest.param(Case({"inputs": 5}, "inputs"), id="inputs a number"),
    pytest.param(
        Case(
            {"inputs": {IRIS_COLUMNS[0]: [5.1, 6.7], IRIS_COLUMNS[1]: [3.5]}}, "different lengths"
        ),
        id="inputs columns of different lengths",
    ),
    pytest.param(
        Case({"instances": [[5.1, 3.5, 1.4]]}, "row 0 has 3 values but the model takes 4"),
        id="wrong number of values",
    ),
    pytest.param(
        Case({"dataframe_split": {**SPLIT, "data": [[5.1, 3.5, 1.4]]}}, "4 values"),
        id="wrong number of values in dataframe_split",
    ),
    pytest.param(
        Case({"dataframe_records": [dict(zip(IRIS_COLUMNS[:3], SETOSA, strict=False))]}, "lacks"),
        id="record without a feature",
    ),
    pytest.param(
        Case({"instances": [[5.1, "3.5", 1.4, 0.2]]}, "sepal width (cm)"), id="numeric string"
    ),
    pytest.param(Case(b'{"instances": [[NaN, 3.5, 1.4, 0.2]]}', "NaN"), id="NaN in JSON"),
    pytest.param(
        Case(b'{"instances": [[5.1, Infinity, 1.4, 0.2]]}', "infinity"), id="Infinity in JSON"
    ),
    pytest.param(Case({"instances": []}, "at least one row"), id="no rows"),
    pytest.param(
        Case(b"instances=1", "Content-Type", 415, "application/x-www-form-urlencoded"),
        id="form content type",
    ),
    pytest.param(
        Case(json.dumps({"instances": [SETOSA]}).encode(), "Content-Type", 415, None),
        id="no content type",
    ),
    pytest.param(
        Case(json.dumps({"instances": [SETOSA]}).encode(), "text/csv", 415, "text/plain"),
        id="text/plain",
    ),
    pytest.param(
        csv_case("5.1,3.5,1.4,0.2\n6.7,abc,5.2,2.3\n", "CSV line 3, column 'sepal width (cm)'"),
        id="CSV non-numeric cell",
    ),
    pytest.param(
        csv_case("5_1,3.5,1.4,0.2\n", "CSV line 2, column 'sepal length (cm)'"),
        id="CSV cell with an underscore",
    ),
    pytest.param(
        csv_case("5.1,3.5,\u0661.\u0664,0.2\n", "CSV line 2, column 'petal length (cm)'"),
        id="CSV cell of non-ASCII digits",
    ),
    pytest.param(csv_case("5.1,3.5,1.4\n", "CSV line 2: 3 cells for 4 columns"), id="ragged CSV"),
    pytest.param(Case(b"", "empty", content_type=CSV), id="empty CSV"),
    pytest.param(csv_case("", "at least one row"), id="CSV of a header alone"),
    pytest.param(csv_case(",3.5,1.4,0.2\n", "cannot be missing"), id="CSV empty cell"),
    pytest.param(csv_case("nan,3.5,1.4,0.2\n", "NaN"), id="CSV NaN cell"),
    pytest.param(csv_case("5.1,inf,1.4,0.2\n", "infinity"), id="CSV infinite cell"),
    pytest.param(
        Case((IRIS_CSV_HEADER + "\xff").encode("latin-1"), "not UTF-8", content_type=CSV),
        id="CSV not UTF-8",
    ),
    pytest.param(
        csv_case("1" * 200_000 + ",3.5,1.4,0.2\n", ""),
        id="CSV cell beyond the csv module's field limit",
    ),
    pytest.param(
        Case(("x" * 200_000 + "\n5.1\n").encode(), "", content_type=CSV),
        id="CSV header beyond the csv module's field limit",
    ),
    pytest.param(
        Case(
            {"instances": [SETOSA]},
            "no model 'nope'",
            404,
            error_code="RESOURCE_DOES_NOT_EXIST",
            headers={"X-Model-Name": "nope"},
        ),
        id="unknown model header",
    ),
    pytest.param(
        Case(None, "not allowed", 405, None, error_code=None, method="GET"),
        id="GET invocations",
    ),
]


@pytest.mark.parametrize("case", MATRIX)
def test_error_matrix(server: FlaskClient, case: Case) -> None:
    kwargs: dict[str, Any] = {"headers": case.headers or {}}
    if case.body is not None:
        kwargs["data"] = case.body if isinstance(case.body, bytes) else json.dumps(case.body)
    if case.content_type is not None:
        kwargs["content_type"] = case.content_type
    response = server.open("/invocations", method=case.method, **kwargs)
    body = assert_mlflow_error(response, case.status)
    assert case.phrase in body["message"]
    if case.error_code is not None:
        assert body["error_code"] == case.error_code


def test_the_server_still_answers_after_the_matrix(
    server: FlaskClient, demo_estimators: dict[str, Any]
) -> None:
    df = frame("iris")
    data, content_type = FORMATS["csv with index"](df)
    assert_predictions(
        invoke(server, data, content_type), demo_estimators["iris"].predict(df.to_numpy())
    )
    assert server.get("/ping").status_code == 200
