"""Typed pipelines on real Gunicorn: every protocol answers like in-process predictions."""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pytest
import requests

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
from typed_models import NAMES, Fitted, fit_all, json_rows, tweets_cache, write_all

pytestmark = pytest.mark.e2e

TESTS = Path(__file__).resolve().parent
#: The datatype tritonclient sends each feature datatype as.
TRITON_DATATYPES = {"BYTES": "BYTES", "DATETIME": "BYTES", "FP64": "FP64", "FP32": "FP32"}
#: Test cases schemathesis generates per typed model's predict operation.
SCHEMATHESIS_EXAMPLES = 25


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Fitted]:
    """Every typed pipeline, fitted on its real data."""
    return fit_all(tweets_cache(tmp_path_factory.getbasetemp()))


@pytest.fixture(scope="module")
def max_text_length(fitted: dict[str, Fitted]) -> int:
    """The server's MAX_TEXT_LENGTH: the longest tweet of the data, so that all are served."""
    return int(fitted["sentiment"].rows.str.len().max())


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, fitted: dict[str, Fitted], max_text_length: int
) -> Iterator[Server]:
    """Gunicorn with 2 workers, both warm, over the typed bundles; no DEFAULT_MODEL."""
    root = tmp_path_factory.mktemp("typed-gunicorn")
    instance = root / "instance"
    write_all(fitted, instance / "models")
    runtime_dir = root / "run"
    runtime_dir.mkdir()
    # The datetime model's FunctionTransformer pickles typed_models.datetime_parts by name.
    path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    server = start_gunicorn(
        instance,
        root / "gunicorn.log",
        workers=2,
        PYTHONPATH=path,
        INFERENCE_APP_MAX_TEXT_LENGTH=str(max_text_length),
        XDG_RUNTIME_DIR=str(runtime_dir),
    )
    try:
        wait_ready(server)
        warmed = re.compile(r"worker (\d+) warmed its models")
        assert wait_until(
            lambda: sum(bool(warmed.search(m)) for _, m in log_records(server.log())) >= 2,
            START_TIMEOUT,
        ), server.log()
        yield server
    finally:
        stop(server)


@pytest.fixture(scope="module")
def triton(server: Server) -> Iterator[Any]:
    """The official Open Inference Protocol client (``tritonclient.http``) on the server."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(urlsplit(server.url).netloc, network_timeout=60.0)
    try:
        yield client
    finally:
        client.close()


def post(server: Server, path: str, **kwargs: Any) -> requests.Response:
    """POST to the server."""
    return requests.post(f"{server.url}{path}", timeout=REQUEST_TIMEOUT, **kwargs)


def ok(response: requests.Response) -> Any:
    """The JSON of a 200 answer."""
    assert response.status_code == 200, response.text[:2000]
    return response.json()


def assert_probabilities(model: Fitted, frame: pd.DataFrame, answer: Any, classes: Any) -> None:
    """Check probabilities and their class labels against in-process predict_proba."""
    assert list(classes) == model.estimator.classes_.tolist()
    np.testing.assert_allclose(
        np.asarray(answer, dtype=np.float64), model.predict(frame, "predict_proba"), rtol=1e-9
    )


def missing_count(frame: pd.DataFrame) -> int:
    """How many values of ``frame`` are missing."""
    return int(frame.isna().to_numpy().sum())


# Native :predict


@pytest.mark.parametrize("name", NAMES)
def test_native_rows_match_in_process(server: Server, fitted: dict[str, Fitted], name: str) -> None:
    model = fitted[name]
    rows = json_rows(model.frame)
    assert sum(value is None for row in rows for value in row) == missing_count(model.frame)

    labels = ok(post(server, f"/v1/models/{name}:predict", json={"instances": rows}))
    probabilities = ok(
        post(
            server,
            f"/v1/models/{name}:predict",
            json={"instances": rows, "method": "predict_proba"},
        )
    )

    assert labels["predictions"] == model.predict(model.frame).tolist()
    assert_probabilities(model, model.frame, probabilities["predictions"], probabilities["classes"])


@pytest.mark.parametrize("name", NAMES)
def test_native_records_in_reversed_key_order_match_in_process(
    server: Server, fitted: dict[str, Fitted], name: str
) -> None:
    model = fitted[name]
    columns = list(model.frame.columns)
    records = [
        dict(reversed(list(zip(columns, row, strict=True)))) for row in json_rows(model.frame)
    ]
    assert len(columns) == 1 or list(records[0]) == columns[::-1]

    answer = ok(post(server, f"/v1/models/{name}:predict", json={"instances": records}))

    assert answer["predictions"] == model.predict(model.frame).tolist()


# Open Inference Protocol (V2)


def v2_inputs(server: Server, name: str, frame: pd.DataFrame) -> list[dict[str, Any]]:
    """One JSON tensor per feature, as GET /v2/models/<name> lists them; null where missing."""
    metadata = ok(requests.get(f"{server.url}/v2/models/{name}", timeout=REQUEST_TIMEOUT))
    rows = json_rows(frame)
    columns = list(frame.columns)
    return [
        {
            "name": item["name"],
            "datatype": item["datatype"],
            "shape": [len(rows)],
            "data": [row[columns.index(item["name"])] for row in rows],
        }
        for item in metadata["inputs"]
    ]


@pytest.mark.parametrize("name", NAMES)
def test_v2_json_tensors_with_nulls_match_in_process(
    server: Server, fitted: dict[str, Fitted], name: str
) -> None:
    model = fitted[name]
    inputs = v2_inputs(server, name, model.frame)
    assert [tensor["name"] for tensor in inputs] == list(model.frame.columns)
    outputs = [{"name": "predict"}, {"name": "predict_proba"}]

    answer = ok(
        post(server, f"/v2/models/{name}/infer", json={"inputs": inputs, "outputs": outputs})
    )

    predict, proba = answer["outputs"]
    assert predict["name"] == "predict" and predict["datatype"] == "BYTES"
    assert predict["data"] == model.predict(model.frame).tolist()
    assert proba["shape"] == [len(model.frame), len(model.estimator.classes_)]
    classes = json.loads(proba["parameters"]["classes"])
    assert_probabilities(model, model.frame, np.reshape(proba["data"], proba["shape"]), classes)


def triton_inputs(
    model: Fitted, frame: pd.DataFrame, binary: bool, datatypes: dict[str, str]
) -> list[Any]:
    """One tritonclient InferInput per feature: BYTES of str for strings and ISO datetimes
    (np.object_ arrays), INT64 for whole numbers, else FP64 or FP32, NaN where missing."""
    import tritonclient.http as httpclient

    tensors = []
    for column in frame.columns:
        datatype = TRITON_DATATYPES[datatypes[column]]
        values = frame[column]
        if datatypes[column] == "DATETIME":
            array = np.array([moment.isoformat() for moment in values], dtype=np.object_)
        elif datatype == "BYTES":
            array = np.array([str(value) for value in values.astype(object)], dtype=np.object_)
        else:
            array = values.to_numpy(dtype=np.float32 if datatype == "FP32" else np.float64)
            if datatype == "FP64" and np.isfinite(array).all() and (array % 1 == 0).all():
                datatype, array = "INT64", array.astype(np.int64)  # whole numbers: integers
        tensor = httpclient.InferInput(column, [len(frame)], datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        tensors.append(tensor)
    return tensors


def labels_of(result: Any) -> list[Any]:
    """A tritonclient result's predict output as str labels (binary outputs are bytes)."""
    return [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("predict")]


def datatypes_of(server: Server, name: str) -> dict[str, str]:
    """Each feature's datatype, as GET /v1/models/<name> says."""
    metadata = ok(requests.get(f"{server.url}/v1/models/{name}", timeout=REQUEST_TIMEOUT))
    return {item["name"]: item["datatype"] for item in metadata["inputs"]}


def strings_present(model: Fitted) -> pd.DataFrame:
    """The rows whose string features are all present: tritonclient cannot send a missing
    string (its BYTES tensors hold str(value), so None travels as "None")."""
    frame = model.frame
    strings = [c for c in frame.columns if frame[c].dtype in (object, "category")]
    return frame[frame[strings].notna().all(axis=1)].reset_index(drop=True)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("name", NAMES)
def test_tritonclient_per_feature_tensors_match_in_process(
    server: Server, triton: Any, fitted: dict[str, Fitted], name: str, binary: bool
) -> None:
    import tritonclient.http as httpclient

    model = fitted[name]
    frame = strings_present(model)
    # Penguins: 11 rows miss a string; the other pipelines' data miss nothing.
    assert len(frame) == len(model.frame) - (11 if name.startswith("penguins") else 0)
    tensors = triton_inputs(model, frame, binary, datatypes_of(server, name))
    outputs = [
        httpclient.InferRequestedOutput("predict", binary_data=binary),
        httpclient.InferRequestedOutput("predict_proba", binary_data=binary),
    ]

    result = triton.infer(name, tensors, outputs=outputs, request_id=f"typed-{name}")

    assert result.get_response()["id"] == f"typed-{name}"
    assert labels_of(result) == model.predict(frame).tolist()
    classes = json.loads(result.get_output("predict_proba")["parameters"]["classes"])
    assert_probabilities(model, frame, result.as_numpy("predict_proba"), classes)


def test_tritonclient_nan_is_served_where_a_feature_is_nullable(
    server: Server, triton: Any, fitted: dict[str, Fitted]
) -> None:
    model = fitted["penguins_onehot"]
    frame = strings_present(model)
    frame.loc[::7, "bill_length_mm"] = np.nan
    frame.loc[::5, "body_mass_g"] = np.nan
    tensors = triton_inputs(model, frame, True, datatypes_of(server, "penguins_onehot"))

    result = triton.infer("penguins_onehot", tensors)

    assert labels_of(result) == model.predict(frame).tolist()


def test_tritonclient_nan_is_refused_where_a_feature_cannot_be_missing(
    server: Server, triton: Any, fitted: dict[str, Fitted]
) -> None:
    from tritonclient.utils import InferenceServerException

    model = fitted["wine_datetime"]
    frame = model.frame.copy()
    frame.loc[17, "proline"] = np.nan
    tensors = triton_inputs(model, frame, True, datatypes_of(server, "wine_datetime"))

    with pytest.raises(InferenceServerException) as raised:
        triton.infer("wine_datetime", tensors)

    assert "row 17, feature 'proline'" in str(raised.value)
    assert "does not accept missing values" in str(raised.value)


def test_tritonclient_sends_a_missing_string_as_none_which_is_no_category(
    server: Server, triton: Any, fitted: dict[str, Fitted]
) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    model = fitted["penguins_strict"]
    frame = model.frame[model.frame["sex"].isna()].dropna(subset=["body_mass_g"])
    tensors = triton_inputs(
        model, frame.drop(columns="sex"), False, datatypes_of(server, "penguins_strict")
    )
    sex = httpclient.InferInput("sex", [len(frame)], "BYTES")
    # JSON null is how a missing string travels; tritonclient writes str(None) instead.
    sex.set_data_from_numpy(np.array([None] * len(frame), dtype=np.object_), binary_data=False)

    with pytest.raises(InferenceServerException) as raised:
        triton.infer("penguins_strict", [*tensors, sex])

    assert "'None'" in str(raised.value) and "categor" in str(raised.value), raised.value


# MLflow /invocations, bodies made by pandas


def pandas_body(frame: pd.DataFrame, orient: str) -> dict[str, Any]:
    """The request arguments of an /invocations body made by pandas."""
    if orient == "split":
        split = json.loads(frame.to_json(orient="split", date_format="iso"))
        del split["index"]
        return {"json": {"dataframe_split": split}}
    if orient == "records":
        records = json.loads(frame.to_json(orient="records", date_format="iso"))
        return {"json": {"dataframe_records": records}}
    return {"data": frame.to_csv(index=False), "headers": {"Content-Type": "text/csv"}}


def body_missing(body: dict[str, Any], orient: str) -> int:
    """How many missing values an /invocations body carries: nulls, or empty CSV cells."""
    if orient == "split":
        return sum(v is None for row in body["json"]["dataframe_split"]["data"] for v in row)
    if orient == "records":
        return sum(v is None for row in body["json"]["dataframe_records"] for v in row.values())
    rows = list(csv.reader(io.StringIO(body["data"])))[1:]
    return sum(cell == "" for row in rows for cell in row)


@pytest.mark.parametrize("orient", ["split", "records", "csv"])
@pytest.mark.parametrize("name", NAMES)
def test_mlflow_pandas_bodies_match_in_process(
    server: Server, fitted: dict[str, Fitted], name: str, orient: str
) -> None:
    model = fitted[name]
    body = pandas_body(model.frame, orient)
    assert body_missing(body, orient) == missing_count(model.frame)
    headers = {"X-Model-Name": name, **body.pop("headers", {})}

    answer = ok(post(server, "/invocations", headers=headers, **body))

    assert answer["predictions"] == model.predict(model.frame).tolist()


# POST /predict


def test_predict_text_answers_every_tweet_like_in_process(
    server: Server, fitted: dict[str, Fitted]
) -> None:
    model = fitted["sentiment"]
    texts = model.rows.tolist()
    labels = model.estimator.predict(texts)
    confidences = model.estimator.predict_proba(texts).max(axis=1)

    def predict(text: str) -> Any:
        return ok(
            post(server, "/predict", json={"text": text}, headers={"X-Model-Name": "sentiment"})
        )

    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(predict, texts))

    assert [answer["prediction"] for answer in answers] == labels.tolist()
    np.testing.assert_allclose([a["confidence"] for a in answers], confidences, rtol=1e-9)
    assert {answer["model_name"] for answer in answers} == {"sentiment"}


@pytest.mark.parametrize("route", ["/predict", "/invocations"])
def test_several_models_without_a_default_need_a_name(server: Server, route: str) -> None:
    body = {"text": "good"} if route == "/predict" else {"dataframe_records": [{"text": "good"}]}

    response = post(server, route, json=body)

    assert response.status_code == 400, response.text
    message = response.json()["message"]
    assert message.startswith(f"{len(NAMES)} models are served ({', '.join(sorted(NAMES))})")
    assert "X-Model-Name" in message and "DEFAULT_MODEL" in message


# MAX_TEXT_LENGTH from the environment


@pytest.mark.parametrize("protocol", ["native", "v2", "mlflow_split", "mlflow_csv", "tritonclient"])
def test_a_text_longer_than_max_text_length_is_refused(
    server: Server, triton: Any, fitted: dict[str, Fitted], max_text_length: int, protocol: str
) -> None:
    from tritonclient.utils import InferenceServerException

    model = fitted["tweets_mixed"]
    frame = model.frame.head(3).copy()
    frame.loc[1, "text"] = "word " * (max_text_length // 5 + 1)
    length = len(frame.loc[1, "text"])
    expected = (
        f"row 1, feature 'text': the text has {length} characters; at most {max_text_length} "
        "are accepted (MAX_TEXT_LENGTH)"
    )
    if protocol == "tritonclient":
        with pytest.raises(InferenceServerException) as raised:
            triton.infer(
                "tweets_mixed",
                triton_inputs(model, frame, True, datatypes_of(server, "tweets_mixed")),
            )
        assert expected in str(raised.value)
        return
    if protocol == "native":
        response = post(
            server, "/v1/models/tweets_mixed:predict", json={"instances": json_rows(frame)}
        )
        assert response.status_code == 422
        assert response.json()["message"] == expected
        return
    if protocol == "v2":
        response = post(
            server,
            "/v2/models/tweets_mixed/infer",
            json={"inputs": v2_inputs(server, "tweets_mixed", frame)},
        )
        assert response.status_code == 400
        assert response.json() == {"error": expected}
        return
    body = pandas_body(frame, protocol.removeprefix("mlflow_"))
    headers = {"X-Model-Name": "tweets_mixed", **body.pop("headers", {})}
    response = post(server, "/invocations", headers=headers, **body)
    assert response.status_code == 400
    assert response.json() == {"error_code": "BAD_REQUEST", "message": expected}


# Unseen categories, counted across workers


def unseen_total(server: Server, model: str, feature: str) -> float:
    """inference_app_unseen_categories_total of ``model`` and ``feature``, over all workers."""
    text = requests.get(f"{server.url}/metrics", timeout=REQUEST_TIMEOUT).text
    wanted = f'inference_app_unseen_categories_total{{feature="{feature}",model="{model}"}} '
    line = next((line for line in text.splitlines() if line.startswith(wanted)), None)
    return 0.0 if line is None else float(line.removeprefix(wanted))


def test_unseen_categories_are_served_and_counted_across_workers(
    server: Server, fitted: dict[str, Fitted]
) -> None:
    model = fitted["penguins_onehot"]
    frame = model.frame.head(5).copy()
    frame.loc[[1, 3], "island"] = ["Atlantis", "Lemuria"]
    before = unseen_total(server, "penguins_onehot", "island")

    for _ in range(4):
        answer = ok(
            post(server, "/v1/models/penguins_onehot:predict", json={"instances": json_rows(frame)})
        )
        assert answer["predictions"] == model.predict(frame).tolist()

    assert unseen_total(server, "penguins_onehot", "island") == before + 8


# schemathesis over each typed model's documented predict operation


@pytest.mark.parametrize("name", NAMES)
def test_schemathesis_finds_no_server_error_nor_undocumented_status(
    server: Server, name: str
) -> None:
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import status_code_conformance

    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operation = schema.find_operation_by_id(f"predict_{name}")
    statuses: list[int] = []

    @given(case=operation.as_strategy())
    @settings(
        max_examples=SCHEMATHESIS_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any) -> None:
        response = case.call(timeout=REQUEST_TIMEOUT)
        statuses.append(response.status_code)
        case.validate_response(response, checks=[not_a_server_error, status_code_conformance])

    check()

    assert len(statuses) >= SCHEMATHESIS_EXAMPLES // 2
    assert set(statuses) <= {200, 400, 413, 415, 422}, statuses


def test_the_server_logged_no_warning_and_no_error(server: Server) -> None:
    lines = log_lines(server.log())  # a Python warning or traceback is not a JSON line

    assert lines and {line["level"] for line in lines} == {"INFO"}, server.log()[-5000:]
