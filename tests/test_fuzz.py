"""Property tests: any body gets a 2xx or a documented 4xx, and the row decoders never crash."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from flask.testing import FlaskClient
from hypothesis import given, settings
from hypothesis import strategies as st

from inference_app import create_app
from inference_app.core import inputs, tensors
from inference_app.core.bundle import METHODS, Feature, load_bundle
from inference_app.core.datatypes import FEATURE_DATATYPES, TENSOR_DATATYPES
from inference_app.core.errors import InvalidInputError
from inference_app.core.inputs import Limits
from inference_app.demo import load_demo_data

IRIS_NAMES = load_demo_data("iris")[2]
#: The route of each dialect's predictions, all answered by iris (DEFAULT_MODEL).
ROUTES = {
    "native": "/v1/models/iris:predict",
    "single": "/predict",
    "v2": "/v2/models/iris/infer",
    "mlflow": "/invocations",
}
#: The 4xx statuses the API documents for a request it refuses.
DOCUMENTED = {400, 404, 413, 415, 422}
#: The header of Triton's binary tensor data extension: the JSON part's length in bytes.
HEADER_LENGTH = "Inference-Header-Content-Length"
MLFLOW_INPUT_KEYS = ["dataframe_split", "dataframe_records", "instances", "inputs", "params"]
#: Bounds of every property test here: the file runs in seconds. No example database: failing
#: examples are printed, not saved under .hypothesis/ in the working tree.
#: In CI the examples are derived from each test's name, so that a run is reproducible.
DERANDOMIZE = bool(os.environ.get("CI"))
FEW = settings(max_examples=60, deadline=None, database=None, derandomize=DERANDOMIZE)
SOME = settings(max_examples=120, deadline=None, database=None, derandomize=DERANDOMIZE)

# Hypothesis' text strategies leave out lone surrogates, whose 500 is pinned down by
# test_security.py::test_feature_names_with_lone_surrogates_get_a_clean_422.
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)
#: Values a row may hold: numbers of every kind and size, and what is not a number.
elements = st.one_of(
    st.floats(),
    st.integers(),
    st.sampled_from([5.1, 3.5, 1.4, 0.2, 0, 1, -1, 1e308, 5e-324]),
    st.booleans(),
    st.none(),
    st.text(max_size=4),
    st.lists(st.floats(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=1),
)
feature_keys = st.sampled_from(IRIS_NAMES) | st.text(max_size=12)
rows = st.one_of(
    st.lists(elements, max_size=6),
    st.dictionaries(feature_keys, elements, max_size=6),
    st.fixed_dictionaries({name: elements for name in IRIS_NAMES}),
    elements,
)
batches = st.lists(rows, max_size=5)
methods = st.sampled_from([*METHODS, "fit", ""])
native_bodies = st.fixed_dictionaries(
    {"instances": batches}, optional={"method": methods, "inputs": batches}
)
single_bodies = st.fixed_dictionaries({"instance": rows}, optional={"method": methods})
shapes = st.lists(st.integers(min_value=-1, max_value=5), max_size=3) | st.lists(
    st.integers(), max_size=3
)
tensor_data = st.one_of(
    st.lists(elements, max_size=12),
    st.lists(st.lists(elements, max_size=5), max_size=4),
    elements,
)
tensor_bodies = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["input-0", *IRIS_NAMES]) | st.text(max_size=8),
        "shape": shapes,
        "datatype": st.sampled_from([*TENSOR_DATATYPES, "FP8", "fp64", ""]),
        "data": tensor_data,
    },
    optional={"parameters": st.dictionaries(st.text(max_size=5), json_scalars, max_size=2)},
)
v2_options = {
    "outputs": st.lists(st.fixed_dictionaries({"name": methods}), max_size=3),
    "id": st.text(max_size=5) | st.integers(),
    "parameters": st.dictionaries(st.text(max_size=5), json_scalars, max_size=2),
}


@st.composite
def matrix_tensors(draw: st.DrawFn) -> dict[str, Any]:
    """Return one ``[N, 4]`` tensor, its data flat or nested, near what iris takes."""
    count = draw(st.integers(min_value=0, max_value=4))
    datatype = draw(st.sampled_from(["FP64", "FP32", "FP16", "INT64", "UINT8", "BOOL", "BYTES"]))
    values = draw(st.lists(elements, min_size=count * 4, max_size=count * 4))
    nested = draw(st.booleans()) and count > 0
    data = [values[i : i + 4] for i in range(0, len(values), 4)] if nested else values
    return {"name": "input-0", "shape": [count, 4], "datatype": datatype, "data": data}


@st.composite
def feature_tensors(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Return one tensor per iris feature, of shape ``[N]`` or ``[N, 1]``, some of them off."""
    count = draw(st.integers(min_value=0, max_value=4))
    chosen = draw(st.lists(st.sampled_from(IRIS_NAMES), min_size=3, max_size=5))
    result = []
    for name in chosen:
        size = draw(st.sampled_from([count, count, count + 1]))
        shape = draw(st.sampled_from([[size], [size, 1], [1, size]]))
        datatype = draw(st.sampled_from(["FP64", "INT32", "BOOL"]))
        data = draw(st.lists(elements, min_size=size, max_size=size))
        result.append({"name": name, "shape": shape, "datatype": datatype, "data": data})
    return result


v2_bodies = st.one_of(
    st.fixed_dictionaries({"inputs": st.lists(tensor_bodies, max_size=4)}, optional=v2_options),
    st.fixed_dictionaries({"inputs": st.lists(matrix_tensors(), max_size=2)}, optional=v2_options),
    st.fixed_dictionaries({"inputs": feature_tensors()}, optional=v2_options),
)
mlflow_bodies = st.one_of(
    st.fixed_dictionaries(
        {
            "dataframe_split": st.fixed_dictionaries(
                {"data": batches},
                optional={
                    "columns": st.lists(feature_keys, max_size=6),
                    "index": st.lists(st.integers(), max_size=3),
                },
            )
        }
    ),
    st.fixed_dictionaries({"dataframe_records": batches}),
    st.fixed_dictionaries({"instances": batches}),
    st.fixed_dictionaries(
        {
            "inputs": batches
            | st.dictionaries(feature_keys, st.lists(elements, max_size=4) | elements, max_size=5)
        }
    ),
    st.dictionaries(st.sampled_from(MLFLOW_INPUT_KEYS), json_values, max_size=3),
)
TARGETED = {"native": native_bodies, "single": single_bodies, "v2": v2_bodies}
TARGETED["mlflow"] = mlflow_bodies


@pytest.fixture(scope="module")
def client(demo_instance: Path) -> FlaskClient:
    """A client of one app over the demo bundles; unexpected exceptions propagate."""
    return create_app({"TESTING": True}, instance_path=demo_instance).test_client()


def check_answer(dialect: str, status: int, body: Any, text: str) -> None:
    """Assert an answer is a 2xx, or a documented 4xx in ``dialect``'s error shape."""
    assert status < 300 or status in DOCUMENTED, f"{status}: {text[:500]}"
    if status < 300:
        return
    assert isinstance(body, dict), text[:500]
    if dialect in ("native", "single"):
        assert body["code"] == status and isinstance(body["message"], str), body
        assert set(body) <= {"code", "status", "message", "errors"}, body
    elif dialect == "v2":
        assert set(body) == {"error"} and isinstance(body["error"], str), body
    else:
        assert set(body) == {"error_code", "message"}, body
        assert isinstance(body["message"], str), body
    assert "Traceback" not in text


def post(
    client: FlaskClient,
    dialect: str,
    body: bytes,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> None:
    """Send ``body`` to ``dialect``'s route and check the answer."""
    response = client.post(
        ROUTES[dialect], data=body, content_type=content_type, headers=headers or {}
    )
    text = response.get_data(as_text=True)
    payload = response.get_json(silent=True)
    check_answer(dialect, response.status_code, payload, text)


def encode(value: Any) -> bytes:
    """Return ``value`` as JSON text, with the ``NaN`` and ``Infinity`` that Python writes."""
    return json.dumps(value).encode()


@pytest.mark.parametrize("dialect", list(ROUTES))
@SOME
@given(value=json_values)
def test_any_json_value_gets_a_2xx_or_a_documented_4xx(
    client: FlaskClient, dialect: str, value: Any
) -> None:
    post(client, dialect, encode(value))


@pytest.mark.parametrize("dialect", list(ROUTES))
@SOME
@given(data=st.data())
def test_near_valid_bodies_get_a_2xx_or_a_documented_4xx(
    client: FlaskClient, dialect: str, data: st.DataObject
) -> None:
    post(client, dialect, encode(data.draw(TARGETED[dialect])))


@pytest.mark.parametrize("dialect", list(ROUTES))
@FEW
@given(
    body=st.binary(max_size=64) | st.text(max_size=64).map(str.encode),
    content_type=st.sampled_from(
        ["application/json", "text/csv", "text/plain", "application/octet-stream", ""]
    ),
)
def test_any_bytes_get_a_2xx_or_a_documented_4xx(
    client: FlaskClient, dialect: str, body: bytes, content_type: str
) -> None:
    post(client, dialect, body, content_type)


@FEW
@given(
    header=st.lists(st.sampled_from(IRIS_NAMES), min_size=1, max_size=5)
    | st.lists(st.text(max_size=6), max_size=5),
    cells=st.lists(
        st.lists(
            st.sampled_from(["5.1", "", "nan", "inf", "-1e999", "1e5", "x", '"3"', "0x1"])
            | st.text(max_size=4),
            max_size=6,
        ),
        max_size=4,
    ),
)
def test_any_csv_gets_a_2xx_or_a_documented_4xx(
    client: FlaskClient, header: list[str], cells: list[list[str]]
) -> None:
    text = "\n".join(",".join(row) for row in [header, *cells])
    post(client, "mlflow", text.encode(), "text/csv")


@FEW
@given(
    body=v2_bodies,
    sizes=st.lists(st.integers(min_value=-1, max_value=40), max_size=4),
    binary=st.binary(max_size=48),
    # Header values are single-line text: an HTTP client cannot send a newline in one.
    header=st.none()
    | st.integers(min_value=-5, max_value=400).map(str)
    | st.text(alphabet=st.characters(exclude_characters="\r\n"), max_size=4),
)
def test_binary_tensor_bodies_get_a_2xx_or_a_documented_4xx(
    client: FlaskClient, body: dict[str, Any], sizes: list[int], binary: bytes, header: str | None
) -> None:
    for tensor, size in zip(body["inputs"], sizes, strict=False):
        tensor["parameters"] = {"binary_data_size": size}
        tensor.pop("data")
    head = encode(body)
    length = str(len(head)) if header is None else header

    post(client, "v2", head + binary, "application/octet-stream", {HEADER_LENGTH: length})


@pytest.fixture(scope="module")
def iris_estimator(demo_instance: Path) -> Any:
    """The demo iris estimator, loaded in process."""
    return load_bundle(demo_instance / "models" / "iris" / "1").estimator


@SOME
@given(
    dialect=st.sampled_from(list(ROUTES)),
    batch=st.lists(
        st.lists(
            st.floats(min_value=-1e6, max_value=1e6) | st.integers(-1000, 1000),
            min_size=4,
            max_size=4,
        ),
        min_size=1,
        max_size=5,
    ),
)
def test_valid_rows_are_predicted_as_in_process(
    client: FlaskClient, iris_estimator: Any, dialect: str, batch: list[list[float]]
) -> None:
    if dialect == "single":
        batch = batch[:1]
    bodies = {
        "native": {"instances": batch},
        "single": {"instance": batch[0]},
        "v2": {
            "inputs": [
                {"name": "input-0", "shape": [len(batch), 4], "datatype": "FP64", "data": batch}
            ]
        },
        "mlflow": {"dataframe_split": {"columns": IRIS_NAMES, "data": batch}},
    }

    response = client.post(ROUTES[dialect], json=bodies[dialect])

    assert response.status_code == 200, response.get_data(as_text=True)
    answer = response.get_json()
    if dialect == "v2":
        predicted = answer["outputs"][0]["data"]
    elif dialect == "single":
        predicted = [answer["prediction"]]
    else:
        predicted = answer["predictions"]
    assert predicted == iris_estimator.predict(np.array(batch, dtype=np.float64)).tolist()


NUMERIC = ("BOOL", "INT64", "FP32", "FP64")


@st.composite
def model_inputs(draw: st.DrawFn, datatypes: tuple[str, ...] = NUMERIC) -> tuple[Feature, ...]:
    """Return 1 to 4 features with distinct names and datatypes among ``datatypes``."""
    names = draw(st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=4, unique=True))
    nullable = draw(st.booleans())
    features = []
    for name in names:
        datatype = draw(st.sampled_from(datatypes))
        kind = {"BYTES": "categorical", "DATETIME": "datetime"}.get(datatype, "numeric")
        categories = ("a", "b", "") if kind == "categorical" else None
        features.append(
            Feature(name, datatype, kind=kind, nullable=nullable, categories=categories)
        )
    return tuple(features)


def rows_to_input(
    instances: Any, features: tuple[Feature, ...], max_rows: int, unknown: str = "reject"
) -> Any:
    """Return the matrix the dataplane builds from JSON rows for a numeric model."""
    return inputs.from_rows(instances, features, "matrix", Limits(max_rows, unknown)).data


def tensors_to_input(
    request_inputs: Any, features: tuple[Feature, ...], max_rows: int, layout: str = "matrix"
) -> Any:
    """Return what the dataplane builds from V2 request inputs."""
    decoded = tensors.decode_inputs(request_inputs)
    return inputs.decode(features, layout, Limits(max_rows), where="inputs", **decoded).data


@st.composite
def row_cases(draw: st.DrawFn) -> tuple[tuple[Feature, ...], list[Any]]:
    """Return features and rows for them: arrays and records, some fitting, some not."""
    features = draw(model_inputs())
    names = [feature.name for feature in features]
    keys = st.sampled_from(names) | st.text(max_size=4)
    width = len(names)
    row = st.one_of(
        st.lists(elements, min_size=max(width - 1, 0), max_size=width + 1),
        st.lists(st.floats() | st.integers() | st.booleans(), min_size=width, max_size=width),
        st.dictionaries(keys, elements, max_size=width + 1),
        st.fixed_dictionaries({name: elements for name in names}),
        json_values,
    )
    return features, draw(st.lists(row, max_size=5))


def check_matrix(
    matrix: Any, n_rows: int | None, features: tuple[Feature, ...], max_rows: int, allow_nan: bool
) -> None:
    """Assert ``matrix`` is float64 ``(n_samples, n_features)``, 1 to ``max_rows`` rows,
    finite (NaN only if allowed)."""
    assert isinstance(matrix, np.ndarray)
    assert matrix.dtype == np.float64
    assert matrix.ndim == 2 and matrix.shape[1] == len(features)
    assert 1 <= matrix.shape[0] <= max_rows
    if n_rows is not None:
        assert matrix.shape[0] == n_rows
    assert not np.isinf(matrix).any()
    if not allow_nan:
        assert not np.isnan(matrix).any()


def check_refusal(error: InvalidInputError) -> None:
    """Assert a refusal says what is wrong, with details strict JSON can carry."""
    assert str(error)
    json.dumps(error.errors, allow_nan=False)


@SOME
@given(
    case=row_cases(),
    max_rows=st.integers(min_value=1, max_value=6),
    unknown_features=st.sampled_from(["reject", "ignore"]),
    allow_nan=st.booleans(),
)
def test_rows_become_a_float64_matrix_or_invalid_input(
    case: tuple[tuple[Feature, ...], list[Any]],
    max_rows: int,
    unknown_features: str,
    allow_nan: bool,
) -> None:
    features, instances = case
    features = tuple(dataclasses.replace(f, nullable=allow_nan) for f in features)
    try:
        matrix = rows_to_input(instances, features, max_rows, unknown_features)
    except InvalidInputError as error:
        check_refusal(error)
        return
    check_matrix(matrix, len(instances), features, max_rows, allow_nan)


@SOME
@given(
    features=model_inputs(FEATURE_DATATYPES),
    instances=st.lists(st.lists(elements, min_size=0, max_size=5), max_size=5),
    max_rows=st.integers(min_value=1, max_value=6),
)
def test_typed_rows_become_a_frame_or_invalid_input(
    features: tuple[Feature, ...], instances: list[Any], max_rows: int
) -> None:
    try:
        frame = inputs.from_rows(instances, features, "frame", Limits(max_rows)).data
    except InvalidInputError as error:
        check_refusal(error)
        return
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == [feature.name for feature in features]
    assert 1 <= len(frame) == len(instances) <= max_rows


@st.composite
def tensor_cases(draw: st.DrawFn) -> tuple[tuple[Feature, ...], list[dict[str, Any]]]:
    """Return features and schema-valid request inputs (name, integer shape, known datatype)
    with any data, JSON or binary."""
    features = draw(model_inputs())
    names = ["input-0", *(feature.name for feature in features)]
    tensor = st.fixed_dictionaries(
        {
            "name": st.sampled_from(names) | st.text(max_size=4),
            "shape": shapes,
            "datatype": st.sampled_from(list(TENSOR_DATATYPES)),
            "data": tensor_data | json_values | st.binary(max_size=40),
        }
    )
    return features, draw(st.lists(tensor, max_size=4))


@SOME
@given(
    case=tensor_cases(),
    max_rows=st.integers(min_value=1, max_value=6),
    allow_nan=st.booleans(),
)
def test_tensors_become_a_float64_matrix_or_invalid_input(
    case: tuple[tuple[Feature, ...], list[dict[str, Any]]], max_rows: int, allow_nan: bool
) -> None:
    features, request_inputs = case
    features = tuple(dataclasses.replace(f, nullable=allow_nan) for f in features)
    try:
        matrix = tensors_to_input(request_inputs, features, max_rows)
    except InvalidInputError as error:
        check_refusal(error)
        return
    check_matrix(matrix, None, features, max_rows, allow_nan)


finite = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53), 2**53)


@FEW
@given(data=st.data())
def test_fitting_tensors_and_records_keep_their_values_in_model_order(data: st.DataObject) -> None:
    features = tuple(
        Feature(feature.name, "FP64") for feature in data.draw(model_inputs(), label="features")
    )
    width = len(features)
    count = data.draw(st.integers(min_value=1, max_value=5), label="rows")
    values = data.draw(st.lists(finite, min_size=count * width, max_size=count * width))
    expected = np.array(values, dtype=np.float64).reshape(count, width)
    nested = data.draw(st.booleans(), label="nested")
    tensor_data = expected.tolist() if nested else values
    tensor = {"name": "input-0", "shape": [count, width], "datatype": "FP64", "data": tensor_data}
    order = data.draw(st.permutations(range(width)), label="key order")
    records = [{features[i].name: row[i] for i in order} for row in expected.tolist()]

    from_tensor = tensors_to_input([tensor], features, count)
    from_records = rows_to_input(records, features, count)

    np.testing.assert_array_equal(from_tensor, expected)
    np.testing.assert_array_equal(from_records, expected)
