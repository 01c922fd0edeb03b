"""Typed features in process: metadata, refusals in every protocol, unseen categories, fixes."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sklearn.base import clone
from werkzeug.test import TestResponse

from inference_app import create_app
from inference_app.core.bundle import write_bundle
from inference_app.core.datatypes import DATATYPES
from typed_models import (
    NAMES,
    PENGUIN_NUMBERS,
    PENGUIN_STRINGS,
    Fitted,
    fit_all,
    json_rows,
    tweets_cache,
    write_all,
)

#: MAX_TEXT_LENGTH of the in-process app: most tweets are longer.
MAX_TEXT_LENGTH = 50
#: The row of a three-row request that holds the mistake.
BAD_ROW = 2
#: What GET /v1/models/<name> must say of each input: (datatype, kind, nullable).
EXPECTED_INPUTS: dict[str, dict[str, tuple[str, str, bool]]] = {
    "penguins_onehot": {
        "island": ("BYTES", "categorical", True),  # the encoder ignores what it never saw
        **{name: ("FP64", "numeric", True) for name in PENGUIN_NUMBERS},
        "sex": ("BYTES", "categorical", True),
    },
    "penguins_strict": {
        "island": ("BYTES", "categorical", True),  # imputed before the encoder
        **{name: ("FP64", "numeric", True) for name in PENGUIN_NUMBERS},
        "sex": ("BYTES", "categorical", True),
    },
    "penguins_hgb": {
        "island": ("BYTES", "categorical", True),  # native missing-value support
        **{name: ("FP64", "numeric", True) for name in PENGUIN_NUMBERS},
        "sex": ("BYTES", "categorical", True),
    },
    "tweets_mixed": {"text": ("BYTES", "text", False), "length": ("FP64", "numeric", False)},
    "wine_datetime": {
        "alcohol": ("FP32", "numeric", False),
        "malic_acid": ("FP64", "numeric", False),
        "color_intensity": ("FP64", "numeric", False),
        "proline": ("FP64", "numeric", False),
        "when": ("DATETIME", "datetime", False),
    },
    "sentiment": {"text": ("BYTES", "text", False)},
}
#: ``unknown_categories`` of each categorical feature.
EXPECTED_UNKNOWN = {
    "penguins_onehot": "ignore",
    "penguins_strict": "error",
    "penguins_hgb": "ignore",
}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Fitted]:
    """Every typed pipeline, fitted on its real data."""
    return fit_all(tweets_cache(tmp_path_factory.getbasetemp()))


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory, fitted: dict[str, Fitted]) -> Path:
    """An instance folder holding a bundle of each typed pipeline, and no config.py."""
    folder = tmp_path_factory.mktemp("typed-instance")
    write_all(fitted, folder / "models")
    return folder


@pytest.fixture(scope="module")
def app(instance: Path) -> Flask:
    """The app over the typed bundles, with no DEFAULT_MODEL and a small MAX_TEXT_LENGTH."""
    return create_app({"TESTING": True, "MAX_TEXT_LENGTH": MAX_TEXT_LENGTH}, instance_path=instance)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client of the typed app."""
    return app.test_client()


def base_rows(model: Fitted) -> pd.DataFrame:
    """Three complete rows from the start, middle and end of the model's data (texts within
    MAX_TEXT_LENGTH), index 0..2."""
    frame = model.frame
    complete = frame.notna().all(axis=1)
    if "text" in frame:
        complete &= frame["text"].str.len() <= MAX_TEXT_LENGTH
    chosen = frame[complete]
    return chosen.iloc[[0, len(chosen) // 2, len(chosen) - 1]].reset_index(drop=True)


def with_value(rows: list[list[Any]], column: int, value: Any) -> list[list[Any]]:
    """Return ``rows`` with ``value`` in ``column`` of :data:`BAD_ROW`."""
    changed = [list(row) for row in rows]
    changed[BAD_ROW][column] = value
    return changed


def v2_tensors(client: FlaskClient, name: str, columns: list[str], rows: list[list[Any]]) -> Any:
    """One JSON tensor per feature, of the datatype GET /v2/models/<name> lists for it."""
    listed = {
        item["name"]: item["datatype"] for item in client.get(f"/v2/models/{name}").json["inputs"]
    }
    return [
        {
            "name": column,
            "datatype": listed[column],
            "shape": [len(rows)],
            "data": [row[index] for row in rows],
        }
        for index, column in enumerate(columns)
    ]


def send(
    client: FlaskClient, protocol: str, name: str, columns: list[str], rows: list[list[Any]]
) -> TestResponse:
    """POST ``rows`` (JSON-native values in ``columns`` order) to model ``name`` in ``protocol``."""
    header = {"X-Model-Name": name}
    if protocol == "native":
        return client.post(f"/v1/models/{name}:predict", json={"instances": rows})
    if protocol == "native_records":
        records = [dict(reversed(list(zip(columns, row, strict=True)))) for row in rows]
        return client.post(f"/v1/models/{name}:predict", json={"instances": records})
    if protocol == "v2":
        body = {"inputs": v2_tensors(client, name, columns, rows)}
        return client.post(f"/v2/models/{name}/infer", json=body)
    frame = pd.DataFrame(rows, columns=columns, dtype=object)
    if protocol == "mlflow_split":
        split = json.loads(frame.to_json(orient="split", date_format="iso"))
        del split["index"]
        return client.post("/invocations", json={"dataframe_split": split}, headers=header)
    if protocol == "mlflow_records":
        records = json.loads(frame.to_json(orient="records", date_format="iso"))
        return client.post("/invocations", json={"dataframe_records": records}, headers=header)
    assert protocol == "mlflow_csv"
    csv = frame.to_csv(index=False)
    return client.post("/invocations", data=csv, content_type="text/csv", headers=header)


def assert_refused(response: TestResponse, protocol: str) -> str:
    """Check the protocol's status and error envelope; return the message."""
    body = response.get_json()
    if protocol.startswith("native"):
        assert response.status_code == 422, body
        assert set(body) == {"code", "status", "message", "errors"}, body
        assert body["code"] == 422 and body["status"] == "Unprocessable Entity"
    elif protocol == "v2":
        assert response.status_code == 400, body
        assert set(body) == {"error"}, body
        return str(body["error"])
    else:
        assert response.status_code == 400, body
        assert set(body) == {"error_code", "message"}, body
        assert body["error_code"] == "BAD_REQUEST"
    return str(body["message"])


def names_row_and_feature(message: str, protocol: str, feature: str) -> bool:
    """Whether ``message`` names :data:`BAD_ROW` (as a CSV line in CSV) and ``feature``."""
    rows = [f"row {BAD_ROW}"] + ([f"line {BAD_ROW + 2}"] if protocol == "mlflow_csv" else [])
    return any(row in message for row in rows) and repr(feature) in message


# Refusals: each mistake, in each protocol that can carry it


@dataclass(frozen=True)
class Mistake:
    """A wrong value in one feature of :data:`BAD_ROW`, and what every refusal must say."""

    model: str
    feature: str
    value: Any
    says: tuple[str, ...]
    csv: bool = True


MISTAKES = {
    "number_for_string": Mistake(
        "penguins_onehot", "island", 3, ("expected a string", "integer"), csv=False
    ),
    "string_for_number": Mistake("penguins_onehot", "bill_length_mm", "abc", ("number",)),
    "null_number": Mistake("wine_datetime", "proline", None, ("missing",)),
    "null_text": Mistake("tweets_mixed", "text", None, ("missing",)),
    "unknown_category": Mistake(
        "penguins_strict",
        "island",
        "Atlantis",
        ("'atlantis'", "'biscoe'", "'dream'", "'torgersen'"),
    ),
    "bad_datetime": Mistake("wine_datetime", "when", "next tuesday", ("iso 8601",)),
    "long_text": Mistake(
        "sentiment", "text", "a tweet " * 7, (f"at most {MAX_TEXT_LENGTH}", "max_text_length")
    ),
    "long_text_next_to_numbers": Mistake(
        "tweets_mixed", "text", "b" * (MAX_TEXT_LENGTH + 1), (f"at most {MAX_TEXT_LENGTH}",)
    ),
}
PROTOCOLS = ("native", "native_records", "v2", "mlflow_split", "mlflow_records", "mlflow_csv")


def refusal_cases() -> list[Any]:
    """Each mistake in each protocol that can carry it, with the known bugs marked."""
    cases = []
    for key, mistake in MISTAKES.items():
        for protocol in PROTOCOLS:
            if protocol == "mlflow_csv" and not mistake.csv:
                continue  # every CSV cell is text: a number in a string column is a string
            cases.append(pytest.param(key, protocol, id=f"{key}-{protocol}"))
    return cases


@pytest.mark.parametrize(("mistake", "protocol"), refusal_cases())
def test_a_wrong_value_is_refused_naming_row_and_feature(
    client: FlaskClient, fitted: dict[str, Fitted], mistake: str, protocol: str
) -> None:
    case = MISTAKES[mistake]
    rows = base_rows(fitted[case.model])
    columns = list(rows.columns)
    good = json_rows(rows)
    assert send(client, protocol, case.model, columns, good).status_code == 200
    bad = with_value(good, columns.index(case.feature), case.value)

    message = assert_refused(send(client, protocol, case.model, columns, bad), protocol)

    assert names_row_and_feature(message, protocol, case.feature), message
    for fragment in case.says:
        assert fragment in message.lower(), message


@pytest.mark.parametrize("protocol", ["native", "native_records"])
def test_native_refusals_locate_the_mistake_in_errors(
    client: FlaskClient, protocol: str, fitted: dict[str, Fitted]
) -> None:
    rows = base_rows(fitted["wine_datetime"])
    bad = with_value(json_rows(rows), list(rows.columns).index("when"), "13:45 yesterday")

    response = send(client, protocol, "wine_datetime", list(rows.columns), bad)

    assert_refused(response, protocol)
    errors = response.get_json()["errors"]["json"]["instances"][str(BAD_ROW)]
    assert list(errors) == ["when"] and "ISO 8601" in errors["when"][0]


def test_csv_text_in_a_numeric_column_names_line_and_column(
    client: FlaskClient, fitted: dict[str, Fitted]
) -> None:
    rows = base_rows(fitted["wine_datetime"])
    csv = rows.to_csv(index=False).splitlines()
    cells = csv[BAD_ROW + 1].split(",")
    cells[list(rows.columns).index("malic_acid")] = "abc"
    csv[BAD_ROW + 1] = ",".join(cells)

    response = client.post(
        "/invocations",
        data="\n".join(csv) + "\n",
        content_type="text/csv",
        headers={"X-Model-Name": "wine_datetime"},
    )

    message = assert_refused(response, "mlflow_csv")
    assert message == f"CSV line {BAD_ROW + 2}, column 'malic_acid': 'abc' is not a number"


def test_epoch_milliseconds_are_refused_asking_for_iso_8601(
    client: FlaskClient, fitted: dict[str, Fitted]
) -> None:
    rows = base_rows(fitted["wine_datetime"])
    # What pandas 3's to_json writes for datetimes by default (deprecated, with a warning).
    rows["when"] = rows["when"].astype("datetime64[ms]").astype(np.int64)
    split = json.loads(rows.to_json(orient="split"))
    del split["index"]
    assert split["data"][0][-1] == 1704067200000

    response = client.post(
        "/invocations", json={"dataframe_split": split}, headers={"X-Model-Name": "wine_datetime"}
    )

    message = assert_refused(response, "mlflow_split")
    assert message.startswith("row 0, feature 'when': expected an ISO 8601 date-time string")


@pytest.mark.parametrize(
    ("model", "feature", "datatype", "data", "expected"),
    [
        (
            "penguins_onehot",
            "island",
            "INT64",
            [1, 2, 3],
            "feature 'island' (BYTES) takes tensors of datatype BYTES; got INT64",
        ),
        (
            "wine_datetime",
            "when",
            "INT64",
            [1704067200, 1704070800, 1704074400],
            "feature 'when' (DATETIME) takes tensors of datatype BYTES; got INT64",
        ),
        (
            "wine_datetime",
            "proline",
            "BYTES",
            ["1000", "800", "600"],
            "row 0, feature 'proline': expected a number, got a string; numbers in strings "
            "are not converted",
        ),
    ],
    ids=["int64-for-string", "int64-for-datetime", "bytes-for-number"],
)
def test_v2_tensor_of_another_datatype_is_refused_naming_the_feature(
    client: FlaskClient,
    fitted: dict[str, Fitted],
    model: str,
    feature: str,
    datatype: str,
    data: list[Any],
    expected: str,
) -> None:
    rows = base_rows(fitted[model])
    tensors = v2_tensors(client, model, list(rows.columns), json_rows(rows))
    tensor = next(tensor for tensor in tensors if tensor["name"] == feature)
    tensor["datatype"], tensor["data"] = datatype, data

    response = client.post(f"/v2/models/{model}/infer", json={"inputs": tensors})

    assert assert_refused(response, "v2") == expected


@pytest.mark.parametrize(
    ("model", "name"),
    [("penguins_onehot", "colour"), ("sentiment", "texts"), ("wine_datetime", "input-1")],
)
def test_v2_unknown_input_name_is_refused(
    client: FlaskClient, fitted: dict[str, Fitted], model: str, name: str
) -> None:
    rows = base_rows(fitted[model])
    tensors = v2_tensors(client, model, list(rows.columns), json_rows(rows))
    tensors[-1]["name"] = name

    response = client.post(f"/v2/models/{model}/infer", json={"inputs": tensors})

    message = assert_refused(response, "v2")
    assert message.startswith(f"unknown input {name!r}: the model takes "), message
    assert all(repr(column) in message for column in rows.columns), message


def test_v2_input_0_of_a_typed_model_must_hold_its_features(
    client: FlaskClient, fitted: dict[str, Fitted]
) -> None:
    rows = base_rows(fitted["penguins_onehot"])
    tensor = {"name": "input-0", "datatype": "FP64", "shape": [3, 4], "data": [1.0] * 12}

    response = client.post("/v2/models/penguins_onehot/infer", json={"inputs": [tensor]})

    message = assert_refused(response, "v2")
    assert "does not fit the model's 6 features" in message
    assert all(repr(column) in message for column in rows.columns), message


def test_fp32_tensor_beyond_float32_is_refused_naming_fp32(
    client: FlaskClient, fitted: dict[str, Fitted]
) -> None:
    rows = base_rows(fitted["wine_datetime"])
    tensors = v2_tensors(client, "wine_datetime", list(rows.columns), json_rows(rows))
    assert tensors[0]["name"] == "alcohol" and tensors[0]["datatype"] == "FP32"
    tensors[0]["data"][BAD_ROW] = 1e39

    message = assert_refused(
        client.post("/v2/models/wine_datetime/infer", json={"inputs": tensors}), "v2"
    )

    assert message.startswith("input 'alcohol': an element is beyond FP32's range"), message


@pytest.mark.parametrize("protocol", ["native", "v2", "mlflow_split"])
def test_float64_beyond_float32_for_a_float32_feature_is_refused(
    client: FlaskClient, fitted: dict[str, Fitted], protocol: str
) -> None:
    rows = base_rows(fitted["wine_datetime"])
    columns = list(rows.columns)
    good = json_rows(rows)
    if protocol == "v2":
        tensors = v2_tensors(client, "wine_datetime", columns, with_value(good, 0, 1e39))
        tensors[0]["datatype"] = "FP64"
        response = client.post("/v2/models/wine_datetime/infer", json={"inputs": tensors})
    else:
        response = send(client, protocol, "wine_datetime", columns, with_value(good, 0, 1e39))

    message = assert_refused(response, protocol)
    assert names_row_and_feature(message, protocol, "alcohol") and "float32" in message, message


# Tolerated unseen categories: served like in process, and counted


def unseen_count(client: FlaskClient, model: str, feature: str) -> float:
    """The value of inference_app_unseen_categories_total for ``model`` and ``feature``."""
    text = client.get("/metrics").get_data(as_text=True)
    wanted = f'inference_app_unseen_categories_total{{feature="{feature}",model="{model}"}} '
    line = next((line for line in text.splitlines() if line.startswith(wanted)), None)
    return 0.0 if line is None else float(line.removeprefix(wanted))


@pytest.mark.parametrize(
    "model",
    [
        "penguins_onehot",
        pytest.param("penguins_hgb"),
    ],
)
@pytest.mark.parametrize(
    "protocol", ["native", "native_records", "v2", "mlflow_split", "mlflow_csv"]
)
def test_unseen_category_is_served_and_counted(
    client: FlaskClient, fitted: dict[str, Fitted], model: str, protocol: str
) -> None:
    rows = base_rows(fitted[model])
    columns = list(rows.columns)
    before = unseen_count(client, model, "island")

    response = send(client, protocol, model, columns, with_value(json_rows(rows), 0, "Atlantis"))

    assert response.status_code == 200, response.get_json()
    changed = rows.astype({"island": object})
    changed.loc[BAD_ROW, "island"] = "Atlantis"
    expected = fitted[model].predict(changed).tolist()
    body = response.get_json()
    predictions = body["outputs"][0]["data"] if protocol == "v2" else body["predictions"]
    assert predictions == expected
    assert unseen_count(client, model, "island") == before + 1


# Metadata


@pytest.mark.parametrize("name", NAMES)
def test_v1_metadata_lists_every_input_typed(
    client: FlaskClient, fitted: dict[str, Fitted], name: str
) -> None:
    response = client.get(f"/v1/models/{name}")

    assert response.status_code == 200
    body = response.get_json()
    frame = fitted[name].frame
    assert body["layout"] == ("column" if name == "sentiment" else "frame")
    inputs = body["inputs"]
    assert [item["name"] for item in inputs] == list(frame.columns)
    for item in inputs:
        datatype, kind, _ = EXPECTED_INPUTS[name][item["name"]]
        assert (item["datatype"], item["kind"]) == (datatype, kind), item
        assert type(item["nullable"]) is bool
        if kind == "categorical":
            seen = sorted(frame[item["name"]].dropna().astype(str).unique())
            assert item["categories"] == seen, item
            assert item["unknown_categories"] in ("error", "ignore")
        else:
            assert "categories" not in item, item
        if kind == "numeric":
            column = frame[item["name"]]
            assert item["min"] == pytest.approx(float(column.min()), rel=1e-7)
            assert item["max"] == pytest.approx(float(column.max()), rel=1e-7)
        if kind == "datetime":
            assert item["min"] == frame[item["name"]].min().isoformat()
            assert item["max"] == frame[item["name"]].max().isoformat()


@pytest.mark.parametrize(
    "name",
    [pytest.param(name) if name == "penguins_strict" else name for name in NAMES],
)
def test_v1_metadata_says_which_inputs_may_be_missing_and_unknown(
    client: FlaskClient, name: str
) -> None:
    inputs = client.get(f"/v1/models/{name}").get_json()["inputs"]

    nullable = {item["name"]: item["nullable"] for item in inputs}
    assert nullable == {key: value[2] for key, value in EXPECTED_INPUTS[name].items()}
    unknown = {item["name"]: item["unknown_categories"] for item in inputs if "categories" in item}
    assert unknown == {key: EXPECTED_UNKNOWN[name] for key in unknown}
    assert set(unknown) == ({*PENGUIN_STRINGS} if name.startswith("penguins") else set())


@pytest.mark.parametrize("name", NAMES)
def test_v2_metadata_lists_one_input_per_feature_with_its_wire_datatype(
    client: FlaskClient, fitted: dict[str, Fitted], name: str
) -> None:
    response = client.get(f"/v2/models/{name}")

    assert response.status_code == 200
    wire = {
        column: DATATYPES[datatype].wire
        for column, (datatype, _, _) in EXPECTED_INPUTS[name].items()
    }
    assert response.get_json()["inputs"] == [
        {"name": column, "datatype": wire[column], "shape": [-1]}
        for column in fitted[name].frame.columns
    ]
    outputs = {output["name"]: output for output in response.get_json()["outputs"]}
    classes = fitted[name].estimator.classes_
    assert outputs["predict"] == {"name": "predict", "datatype": "BYTES", "shape": [-1]}
    assert outputs["predict_proba"]["shape"] == [-1, len(classes)]


def test_null_for_an_imputed_string_is_served_like_in_process(
    client: FlaskClient, fitted: dict[str, Fitted]
) -> None:
    rows = base_rows(fitted["penguins_strict"])
    changed = rows.astype(object)
    changed.loc[BAD_ROW, "island"] = np.nan

    response = send(client, "native", "penguins_strict", list(rows.columns), json_rows(changed))

    assert response.status_code == 200, response.get_json()
    assert response.get_json()["predictions"] == fitted["penguins_strict"].predict(changed).tolist()


def test_an_int64_column_next_to_texts_is_an_int64_feature(
    tmp_path: Path, fitted: dict[str, Fitted]
) -> None:
    mixed = fitted["tweets_mixed"]
    rows = mixed.rows.astype({"length": np.int64})
    estimator = clone(mixed.estimator).fit(rows, mixed.target)

    bundle = write_bundle(estimator, rows, tmp_path, "tweets_int", "1")

    length = bundle.manifest.inputs[1]
    assert (length.name, length.datatype, length.nullable) == ("length", "INT64", False)


# POST /predict, the default model, and the fixed behaviours


@pytest.mark.parametrize("route", ["/predict", "/invocations"])
def test_several_models_and_no_default_is_a_400_naming_them_and_both_ways(
    client: FlaskClient, route: str
) -> None:
    body = {"text": "good"} if route == "/predict" else {"dataframe_records": [{"text": "good"}]}

    response = client.post(route, json=body)

    assert response.status_code == 400
    payload = response.get_json()
    if route == "/predict":
        assert payload["code"] == 400 and payload["status"] == "Bad Request"
    else:
        assert payload["error_code"] == "BAD_REQUEST"
    message = payload["message"]
    assert message.startswith(f"{len(NAMES)} models are served ({', '.join(sorted(NAMES))})")
    assert "X-Model-Name" in message and "DEFAULT_MODEL" in message


@pytest.fixture(scope="module")
def sentiment_client(tmp_path_factory: pytest.TempPathFactory, instance: Path) -> FlaskClient:
    """A test client of an app serving only the sentiment model, with no DEFAULT_MODEL."""
    alone = tmp_path_factory.mktemp("sentiment-alone")
    shutil.copytree(instance / "models" / "sentiment", alone / "models" / "sentiment")
    return create_app({"TESTING": True}, instance_path=alone).test_client()


def tweets_sample(model: Fitted, count: int = 40) -> list[str]:
    """``count`` tweets spread over the data."""
    texts = model.rows
    return [str(text) for text in texts.iloc[:: max(1, len(texts) // count)].head(count)]


def test_predict_text_with_the_only_model(
    sentiment_client: FlaskClient, fitted: dict[str, Fitted]
) -> None:
    model = fitted["sentiment"]
    texts = tweets_sample(model)
    labels = model.estimator.predict(texts)
    probabilities = model.estimator.predict_proba(texts)

    for text, label, row in zip(texts, labels, probabilities, strict=True):
        response = sentiment_client.post("/predict", json={"text": text})
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        assert (body["model_name"], body["method"], body["prediction"]) == (
            "sentiment",
            "predict",
            label,
        )
        assert body["confidence"] == pytest.approx(row.max(), rel=1e-9)


def test_invocations_with_the_only_model(
    sentiment_client: FlaskClient, fitted: dict[str, Fitted]
) -> None:
    texts = tweets_sample(fitted["sentiment"])

    response = sentiment_client.post(
        "/invocations", json={"dataframe_records": [{"text": text} for text in texts]}
    )

    assert response.status_code == 200, response.get_json()
    assert (
        response.get_json()["predictions"] == fitted["sentiment"].estimator.predict(texts).tolist()
    )


def test_predict_text_names_the_model_in_x_model_name(
    client: FlaskClient, fitted: dict[str, Fitted]
) -> None:
    text = next(text for text in tweets_sample(fitted["sentiment"]) if len(text) <= MAX_TEXT_LENGTH)

    response = client.post("/predict", json={"text": text}, headers={"X-Model-Name": "sentiment"})

    assert response.status_code == 200, response.get_json()
    probabilities = fitted["sentiment"].estimator.predict_proba([text])[0]
    assert response.get_json()["prediction"] == fitted["sentiment"].estimator.predict([text])[0]
    assert response.get_json()["confidence"] == pytest.approx(probabilities.max(), rel=1e-9)


@pytest.mark.parametrize(
    "shape",
    [
        lambda row, columns: {"instance": row},
        lambda row, columns: {"instance": dict(reversed(list(zip(columns, row, strict=True))))},
        lambda row, columns: {"input": row},
        lambda row, columns: dict(zip(columns, row, strict=True)),
    ],
    ids=["instance-array", "instance-object", "input", "features-as-body"],
)
@pytest.mark.parametrize("name", ["penguins_onehot", "penguins_hgb", "wine_datetime"])
def test_predict_one_typed_row_with_confidence(
    request: pytest.FixtureRequest,
    client: FlaskClient,
    fitted: dict[str, Fitted],
    name: str,
    shape: Callable[[list[Any], list[str]], dict[str, Any]],
) -> None:
    model = fitted[name]
    frame = model.frame.iloc[[3, 8, 47, 100, 170]].reset_index(drop=True)  # 3, 8 miss values
    columns = list(frame.columns)
    labels = model.predict(frame)
    probabilities = model.predict(frame, "predict_proba")

    for index, row in enumerate(json_rows(frame)):
        response = client.post("/predict", json=shape(row, columns), headers={"X-Model-Name": name})
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        assert body["prediction"] == labels[index]
        assert body["confidence"] == pytest.approx(probabilities[index].max(), rel=1e-9)


def test_v2_slash_answers_like_v2(client: FlaskClient) -> None:
    plain, slash = client.get("/v2"), client.get("/v2/")

    assert plain.status_code == slash.status_code == 200
    assert slash.get_json() == plain.get_json()
    assert plain.get_json()["name"] == "inference-app"


def test_a_bare_records_list_asks_for_dataframe_records(
    client: FlaskClient, fitted: dict[str, Fitted]
) -> None:
    rows = base_rows(fitted["penguins_onehot"])

    response = client.post(
        "/invocations",
        data=rows.to_json(orient="records"),
        content_type="application/json",
        headers={"X-Model-Name": "penguins_onehot"},
    )

    message = assert_refused(response, "mlflow_records")
    assert "DataFrame.to_json(orient='records')" in message
    assert '{"dataframe_records": [...]}' in message
