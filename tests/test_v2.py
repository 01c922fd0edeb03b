"""The Open Inference Protocol (KServe V2 REST) on the demo models: metadata, inference, errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient

from inference_app import __version__, create_app, process
from inference_app.demo import load_demo_data

IRIS_NAMES = load_demo_data("iris")[2]
SETOSA = [5.1, 3.5, 1.4, 0.2]
VIRGINICA = [6.7, 3.0, 5.2, 2.3]
IRIS_INFER = "/v2/models/iris/infer"
#: The header of Triton's binary tensor data extension: the length of the JSON part.
HEADER_LENGTH = "Inference-Header-Content-Length"
#: Each demo model's outputs in its metadata: name -> (datatype, shape).
OUTPUTS = {
    "iris": {
        "predict": ("BYTES", [-1]),
        "predict_proba": ("FP64", [-1, 3]),
        "decision_function": ("FP64", [-1, 3]),
    },
    "breast_cancer": {"predict": ("BYTES", [-1]), "predict_proba": ("FP64", [-1, 2])},
    "diabetes": {"predict": ("FP64", [-1])},
}
INTEGER_TYPES = ["INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"]
FLOAT_TYPES = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}


@pytest.fixture(scope="module")
def server(demo_instance: Path) -> FlaskClient:
    """A client of one app shared by the module, so errors are seen not to disturb it."""
    return create_app({"TESTING": True}, instance_path=demo_instance).test_client()


@pytest.fixture(scope="module")
def limited(demo_instance: Path) -> FlaskClient:
    """A client of an app that takes at most 5 rows per request."""
    app = create_app({"TESTING": True, "MAX_ROWS": 5}, instance_path=demo_instance)
    return app.test_client()


@pytest.fixture(scope="module")
def cold(demo_instance: Path) -> FlaskClient:
    """A client of an app whose models are never warmed up (no Gunicorn ``post_fork``)."""
    app = create_app({"TESTING": True, "WARM_UP": "post_fork"}, instance_path=demo_instance)
    return app.test_client()


def tensor(
    data: Any = SETOSA,
    shape: list[Any] | None = None,
    datatype: str = "FP64",
    name: str = "input-0",
    **extra: Any,
) -> dict[str, Any]:
    """Return a request input; the shape defaults to one row of iris."""
    return {
        "name": name,
        "shape": [1, 4] if shape is None else shape,
        "datatype": datatype,
        "data": data,
        **extra,
    }


def feature_tensors(rows: np.ndarray, names: list[str], column: bool = False) -> list[Any]:
    """Return one FP64 tensor per feature, shape ``[N]`` or ``[N, 1]`` with ``column``."""
    tensors = []
    for index, name in enumerate(names):
        values = rows[:, index]
        if column:
            tensors.append(tensor(values[:, None].tolist(), [len(rows), 1], name=name))
        else:
            tensors.append(tensor(values.tolist(), [len(rows)], name=name))
    return tensors


def binary_body(request: dict[str, Any], binary: bytes) -> tuple[bytes, dict[str, str]]:
    """Return a body of Triton's binary tensor data extension and its header."""
    header = json.dumps(request).encode()
    return header + binary, {HEADER_LENGTH: str(len(header))}


def post(client: FlaskClient, url: str, body: Any) -> Any:
    """Post ``body`` as JSON, with a Content-Type, and return the parsed 200 answer."""
    response = client.post(url, json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def assert_v2_error(response: Any, status: int) -> str:
    """Check the protocol's error body ``{"error": "..."}`` and return the message."""
    text = response.get_data(as_text=True)
    assert response.status_code == status, text
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert isinstance(body, dict) and body.keys() == {"error"}, text
    assert isinstance(body["error"], str) and body["error"]
    assert "Traceback" not in text
    message: str = body["error"]
    return message


def assert_output(output: dict[str, Any], method: str, expected: np.ndarray, model: Any) -> None:
    """Check one response output against the in-process result of ``method``."""
    assert output["name"] == method
    assert output["shape"] == list(expected.shape)
    assert len(output["data"]) == expected.size
    if expected.dtype.kind in "OUS":
        assert output["datatype"] == "BYTES"
        assert output["data"] == expected.ravel().tolist()
    else:
        assert output["datatype"] == "FP64"
        np.testing.assert_allclose(output["data"], expected.ravel(), rtol=1e-12, atol=1e-15)
    if method == "predict":
        assert "classes" not in output.get("parameters", {})
    else:
        assert json.loads(output["parameters"]["classes"]) == model.classes_.tolist()


def test_server_metadata(server: FlaskClient) -> None:
    response = server.get("/v2")
    assert response.status_code == 200
    body = response.get_json()
    assert body.keys() == {"name", "version", "extensions"}
    assert body["name"] == "inference-app" and body["version"] == __version__
    assert isinstance(body["extensions"], list)
    assert all(isinstance(extension, str) for extension in body["extensions"])


def test_server_live_and_ready(server: FlaskClient) -> None:
    live = server.get("/v2/health/live")
    assert live.status_code == 200 and live.get_json() == {"live": True}
    ready = server.get("/v2/health/ready")
    assert ready.status_code == 200 and ready.get_json() == {"ready": True}


def test_not_ready_until_warmed_up(cold_app: Flask) -> None:
    client = cold_app.test_client()
    server_ready = client.get("/v2/health/ready")
    assert server_ready.status_code == 503 and server_ready.get_json() == {"ready": False}
    model_ready = client.get("/v2/models/iris/ready")
    assert model_ready.status_code == 503
    assert model_ready.get_json() == {"name": "iris", "ready": False}
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/models/iris").status_code == 200
    refused = client.post(IRIS_INFER, json={"inputs": [tensor()]})
    assert "warming up" in assert_v2_error(refused, 503)

    process.warm_up(cold_app)
    assert client.get("/v2/health/ready").get_json() == {"ready": True}
    assert client.get("/v2/models/iris/ready").get_json() == {"name": "iris", "ready": True}
    body = post(client, IRIS_INFER, {"inputs": [tensor()]})
    assert body["outputs"][0]["data"] == ["setosa"]


@pytest.mark.parametrize("name", list(OUTPUTS))
def test_model_metadata(server: FlaskClient, name: str) -> None:
    n_features = len(load_demo_data(name)[2])
    response = server.get(f"/v2/models/{name}")
    assert response.status_code == 200
    body = response.get_json()
    assert body["name"] == name and body["versions"] == ["1"]
    assert isinstance(body["platform"], str) and body["platform"]
    assert body["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, n_features]}]
    outputs = {output["name"]: (output["datatype"], output["shape"]) for output in body["outputs"]}
    assert outputs == OUTPUTS[name]
    assert len(body["outputs"]) == len(outputs)
    versioned = server.get(f"/v2/models/{name}/versions/1")
    assert versioned.status_code == 200 and versioned.get_json() == body


@pytest.mark.parametrize("url", ["/v2/models/iris/ready", "/v2/models/iris/versions/1/ready"])
def test_model_ready(server: FlaskClient, url: str) -> None:
    response = server.get(url)
    assert response.status_code == 200
    assert response.get_json() == {"name": "iris", "ready": True}


@pytest.mark.parametrize("layout", ["flat", "nested"])
@pytest.mark.parametrize(
    ("name", "method"),
    [
        ("iris", "predict"),
        ("iris", "predict_proba"),
        ("breast_cancer", "predict"),
        ("breast_cancer", "predict_proba"),
        ("diabetes", "predict"),
    ],
)
def test_infer_full_dataset_matches_in_process(
    server: FlaskClient, demo_estimators: dict[str, Any], name: str, method: str, layout: str
) -> None:
    rows = load_demo_data(name)[0]
    data = rows.ravel().tolist() if layout == "flat" else rows.tolist()
    request = {
        "id": f"{name}-{method}-{layout}",
        "inputs": [tensor(data, list(rows.shape))],
        "outputs": [{"name": method}],
    }
    body = post(server, f"/v2/models/{name}/infer", request)
    assert body["model_name"] == name and body["model_version"] == "1"
    assert body["id"] == f"{name}-{method}-{layout}"
    assert len(body["outputs"]) == 1
    model = demo_estimators[name]
    assert_output(body["outputs"][0], method, getattr(model, method)(rows), model)


@pytest.mark.parametrize(
    ("name", "method"), [(name, method) for name, outputs in OUTPUTS.items() for method in outputs]
)
def test_onnx_bundles_answer_alike_over_v1_and_v2(
    onnx_demo_instance: Path, name: str, method: str
) -> None:
    client = create_app({"TESTING": True}, instance_path=onnx_demo_instance).test_client()
    assert client.get(f"/v1/models/{name}").get_json()["runtime"] == "onnx"
    rows = load_demo_data(name)[0]
    native = client.post(
        f"/v1/models/{name}:predict", json={"instances": rows.tolist(), "method": method}
    )
    assert native.status_code == 200, native.get_json()
    request = {"inputs": [tensor(rows.ravel().tolist(), list(rows.shape))]}
    body = post(client, f"/v2/models/{name}/infer", {**request, "outputs": [{"name": method}]})
    (output,) = body["outputs"]
    assert output["shape"] == list(np.shape(native.get_json()["predictions"]))
    assert output["data"] == np.ravel(native.get_json()["predictions"]).tolist()


def test_versioned_infer(server: FlaskClient) -> None:
    body = post(server, "/v2/models/iris/versions/1/infer", {"inputs": [tensor()]})
    assert body["model_version"] == "1" and body["outputs"][0]["data"] == ["setosa"]


def test_default_output_is_predict(server: FlaskClient, demo_estimators: dict[str, Any]) -> None:
    rows = load_demo_data("breast_cancer")[0]
    body = post(
        server, "/v2/models/breast_cancer/infer", {"inputs": [tensor(rows.tolist(), [569, 30])]}
    )
    assert "id" not in body
    model = demo_estimators["breast_cancer"]
    assert [output["name"] for output in body["outputs"]] == ["predict"]
    assert_output(body["outputs"][0], "predict", model.predict(rows), model)


def test_several_outputs_in_one_request(
    server: FlaskClient, demo_estimators: dict[str, Any]
) -> None:
    rows = load_demo_data("iris")[0]
    methods = ["predict_proba", "predict", "decision_function"]
    request = {
        "inputs": [tensor(rows.tolist(), [150, 4])],
        "outputs": [{"name": method} for method in methods],
    }
    body = post(server, IRIS_INFER, request)
    assert [output["name"] for output in body["outputs"]] == methods
    model = demo_estimators["iris"]
    for output, method in zip(body["outputs"], methods, strict=True):
        assert_output(output, method, getattr(model, method)(rows), model)


@pytest.mark.parametrize("column", [False, True], ids=["shape [N]", "shape [N, 1]"])
@pytest.mark.parametrize("name", ["iris", "breast_cancer"])
def test_one_tensor_per_feature(
    server: FlaskClient, demo_estimators: dict[str, Any], name: str, column: bool
) -> None:
    rows, _, names = load_demo_data(name)
    tensors = feature_tensors(rows, names, column)
    expected = demo_estimators[name].predict(rows).tolist()
    for order in (tensors, tensors[::-1]):  # the names, not the order, place the columns
        body = post(server, f"/v2/models/{name}/infer", {"inputs": order})
        assert body["outputs"][0]["data"] == expected


@pytest.mark.parametrize("datatype", INTEGER_TYPES)
def test_integer_datatypes(
    server: FlaskClient, demo_estimators: dict[str, Any], datatype: str
) -> None:
    rounded = np.rint(load_demo_data("iris")[0]).astype(np.int64)
    body = post(server, IRIS_INFER, {"inputs": [tensor(rounded.tolist(), [150, 4], datatype)]})
    expected = demo_estimators["iris"].predict(rounded.astype(np.float64))
    assert body["outputs"][0]["data"] == expected.tolist()


@pytest.mark.parametrize("datatype", list(FLOAT_TYPES))
def test_float_datatypes_are_cast_to_their_precision(
    server: FlaskClient, demo_estimators: dict[str, Any], datatype: str
) -> None:
    rows = load_demo_data("diabetes")[0]
    request = {"inputs": [tensor(rows.tolist(), list(rows.shape), datatype)]}
    body = post(server, "/v2/models/diabetes/infer", request)
    cast = rows.astype(FLOAT_TYPES[datatype]).astype(np.float64)
    expected = demo_estimators["diabetes"].predict(cast)
    np.testing.assert_allclose(body["outputs"][0]["data"], expected, rtol=1e-12)
    if datatype != "FP64":  # the cast is seen: the server did not read the values as FP64
        as_fp64 = demo_estimators["diabetes"].predict(rows)
        assert not np.allclose(body["outputs"][0]["data"], as_fp64, rtol=1e-12, atol=0)


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/octet-stream"], ids=str)
def test_body_is_json_whatever_the_content_type(
    server: FlaskClient, content_type: str | None
) -> None:
    data = json.dumps({"id": "7", "inputs": [tensor([SETOSA, VIRGINICA], [2, 4])]}).encode()
    if content_type is None:
        response = server.post(IRIS_INFER, data=data)
        assert "Content-Type" not in response.request.headers
    else:
        response = server.post(IRIS_INFER, data=data, content_type=content_type)
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["id"] == "7" and body["outputs"][0]["data"] == ["setosa", "virginica"]


@pytest.mark.parametrize("content_type", ["np", "pd"])
def test_unknown_parameters_are_ignored(server: FlaskClient, content_type: str) -> None:
    plain = {"inputs": [tensor([SETOSA, VIRGINICA], [2, 4])], "outputs": [{"name": "predict"}]}
    decorated = {
        "parameters": {"content_type": content_type, "binary_data_output": True, "priority": 1},
        "inputs": [
            tensor(
                [SETOSA, VIRGINICA],
                [2, 4],
                parameters={"content_type": content_type, "custom": {"a": [1]}},
            )
        ],
        "outputs": [{"name": "predict", "parameters": {"binary_data": True, "anything": "x"}}],
    }
    expected = post(server, IRIS_INFER, plain)
    assert expected["outputs"][0]["data"] == ["setosa", "virginica"]
    assert post(server, IRIS_INFER, decorated) == expected


def test_binary_tensor_data(server: FlaskClient, demo_estimators: dict[str, Any]) -> None:
    rows = load_demo_data("breast_cancer")[0]
    raw = rows.astype("<f8").tobytes()
    request = {
        "id": "binary",
        "inputs": [
            {
                "name": "input-0",
                "shape": list(rows.shape),
                "datatype": "FP64",
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
        "outputs": [{"name": "predict_proba", "parameters": {"binary_data": False}}],
    }
    data, headers = binary_body(request, raw)
    response = server.post("/v2/models/breast_cancer/infer", data=data, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["id"] == "binary"
    model = demo_estimators["breast_cancer"]
    assert_output(body["outputs"][0], "predict_proba", model.predict_proba(rows), model)


def test_binary_tensor_data_one_tensor_per_feature(
    server: FlaskClient, demo_estimators: dict[str, Any]
) -> None:
    rows, _, names = load_demo_data("iris")
    datatypes = ["FP32", "FP64", "INT32", "FP64"]
    columns = [
        rows[:, 0].astype("<f4"),
        rows[:, 1].astype("<f8"),
        np.rint(rows[:, 2]).astype("<i4"),
        rows[:, 3].astype("<f8"),
    ]
    inputs = [
        {
            "name": name,
            "shape": [len(rows)],
            "datatype": datatype,
            "parameters": {"binary_data_size": column.nbytes},
        }
        for name, datatype, column in zip(names, datatypes, columns, strict=True)
    ]
    raw = b"".join(column.tobytes() for column in columns)
    data, headers = binary_body({"inputs": inputs}, raw)
    response = server.post(IRIS_INFER, data=data, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    expected = demo_estimators["iris"].predict(np.column_stack(columns).astype(np.float64))
    assert response.get_json()["outputs"][0]["data"] == expected.tolist()


class Case(NamedTuple):
    """A request the protocol refuses, and how.

    :param body: a JSON value, or ``bytes`` sent as they are, or ``None`` for no body.
    :param phrase: a part of the error message.
    :param client: the fixture of the app to ask: ``server``, ``limited`` or ``cold``.
    :param allow: a method the ``Allow`` header of a 405 must list.
    """

    body: Any
    status: int = 400
    phrase: str = ""
    url: str = IRIS_INFER
    method: str = "POST"
    client: str = "server"
    headers: dict[str, str] | None = None
    allow: str | None = None


def infer(*tensors: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """Return an inference request over ``tensors``."""
    return {"inputs": list(tensors), **fields}


def raw_infer(data: bytes) -> bytes:
    """Return a request whose one input's ``data`` is the raw JSON text ``data``."""
    head = b'{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": '
    return head + data + b"}]}"


def binary_case(
    inputs: list[dict[str, Any]],
    binary: bytes,
    phrase: str,
    header_length: str | None = None,
) -> Case:
    """Return a case of Triton's binary tensor data extension."""
    body, headers = binary_body({"inputs": inputs}, binary)
    if header_length is not None:
        headers = {HEADER_LENGTH: header_length}
    return Case(body, phrase=phrase, headers=headers)


def binary_input(size: Any, shape: list[int] | None = None) -> dict[str, Any]:
    """Return an iris input whose data is ``size`` bytes of the binary part."""
    return {
        "name": "input-0",
        "shape": shape or [1, 4],
        "datatype": "FP64",
        "parameters": {"binary_data_size": size},
    }


SETOSA_BYTES = np.asarray([SETOSA], dtype="<f8").tobytes()
PER_FEATURE = [
    tensor([value], [1], name=name) for name, value in zip(IRIS_NAMES, SETOSA, strict=True)
]
OVERFLOW = 2**70

#: Malformed requests: each answers a 4xx with exactly ``{"error": "..."}``.
MATRIX = [
    pytest.param(Case(b'{"inputs": [', phrase="not valid JSON"), id="bad JSON"),
    pytest.param(Case(b"", phrase="not valid JSON"), id="empty body"),
    pytest.param(Case(b'{"inputs": "\xff\xfe"}', phrase="not valid JSON"), id="non-UTF-8 bytes"),
    pytest.param(
        Case(b"[" * 100_000 + b"]" * 100_000, phrase="nested too deeply"), id="nested 100000 deep"
    ),
    pytest.param(Case([tensor()], phrase="Invalid input type"), id="body is an array"),
    pytest.param(Case(b"null", phrase="Invalid input type"), id="body is null"),
    pytest.param(Case({}, phrase="inputs"), id="missing inputs"),
    pytest.param(Case({"inputs": {"input-0": SETOSA}}, phrase="inputs"), id="inputs not an array"),
    pytest.param(Case(infer(), phrase="inputs: Shorter than minimum length 1"), id="empty inputs"),
    pytest.param(Case({"inputs": [SETOSA]}, phrase="inputs.0"), id="input not an object"),
    pytest.param(Case(infer(tensor(datatype="FP128")), phrase="datatype"), id="datatype FP128"),
    pytest.param(
        Case(infer({"name": "input-0", "shape": [1, 4], "data": SETOSA}), phrase="datatype"),
        id="datatype missing",
    ),
    pytest.param(
        Case(infer(tensor(["a", "b", "c", "d"], datatype="BYTES")), phrase="got BYTES"),
        id="BYTES for numeric features",
    ),
    pytest.param(
        Case(infer(tensor([True, False, True, True], datatype="BOOL")), phrase="got BOOL"),
        id="BOOL for numeric features",
    ),
    pytest.param(
        Case(infer(tensor(["5.1", 3.5, 1.4, 0.2])), phrase="got a string"), id="strings in FP64"
    ),
    pytest.param(
        Case(
            infer(tensor([5.1, 3.5, 1.4, 0.2], datatype="INT32")),
            phrase="expected an integer (datatype INT32), got a number",
        ),
        id="floats in INT32",
    ),
    pytest.param(
        Case(infer(tensor([True, 3.5, 1.4, 0.2])), phrase="got a boolean"), id="booleans in FP64"
    ),
    pytest.param(
        Case(infer(tensor([None, 3.5, 1.4, 0.2])), phrase="missing values"), id="null in FP64"
    ),
    pytest.param(Case(infer(tensor(5.1)), phrase="must be an array"), id="data not an array"),
    pytest.param(
        Case(infer(tensor([5.1, 3.5, 1.4])), phrase="holds 4 elements but data has 3"),
        id="too few elements",
    ),
    pytest.param(
        Case(infer(tensor([*SETOSA, 1.0])), phrase="holds 4 elements but data has 5"),
        id="too many elements",
    ),
    pytest.param(Case(infer(tensor([[SETOSA]])), phrase="input-0"), id="data nested too deep"),
    pytest.param(
        Case(infer(tensor([[5.1, 3.5, 1.4], [0.2, 6.7, 3.0, 5.2, 2.3]], [2, 4])), phrase="input-0"),
        id="nested rows of different lengths",
    ),
    pytest.param(Case(infer(tensor(shape=[-1, 4])), phrase="negative"), id="negative shape"),
    pytest.param(
        # orjson reads integers beyond 64 bits as floats: not a valid shape integer.
        Case(infer(tensor(shape=[OVERFLOW, 4])), phrase="shape.0: Not a valid integer"),
        id="overflowing shape",
    ),
    pytest.param(
        Case(infer(tensor([], [OVERFLOW, 0])), phrase="shape"),
        id="overflowing shape of no elements",
    ),
    pytest.param(Case(infer(tensor(shape=[1.5, 4])), phrase="shape"), id="shape of a float"),
    pytest.param(Case(infer(tensor(shape=[True, 4])), phrase="shape"), id="shape of a boolean"),
    pytest.param(Case(infer(tensor(shape=["1", 4])), phrase="shape"), id="shape of a string"),
    pytest.param(
        Case(infer(tensor([300, 3, 1, 0], datatype="INT8")), phrase="out of INT8's range"),
        id="INT8 out of range",
    ),
    pytest.param(
        Case(infer(tensor([-5, 3, 1, 0], datatype="UINT8")), phrase="out of UINT8's range"),
        id="UINT8 negative",
    ),
    pytest.param(
        # orjson reads integers beyond 64 bits as floats, which INT64 does not take.
        Case(
            infer(tensor([2**64, 3, 1, 0], datatype="INT64")),
            phrase="(datatype INT64), got a number",
        ),
        id="INT64 out of range",
    ),
    pytest.param(
        Case(infer(tensor([10**400, 3, 1, 0])), phrase="out of FP64's range"),
        id="integer beyond FP64",
    ),
    pytest.param(
        Case(infer(tensor([1e300, 3.5, 1.4, 0.2], datatype="FP32")), phrase="beyond FP32's range"),
        id="float beyond FP32",
    ),
    pytest.param(
        Case(infer(tensor(shape=[4], name="colour")), phrase="unknown input 'colour'"),
        id="unknown input name",
    ),
    pytest.param(
        Case(infer(*PER_FEATURE, PER_FEATURE[1]), phrase="'sepal width (cm)': is sent twice"),
        id="duplicate feature tensor",
    ),
    pytest.param(
        Case(infer(*PER_FEATURE[:3]), phrase="missing input 'petal width (cm)'"),
        id="missing feature tensor",
    ),
    pytest.param(
        Case(
            infer(*PER_FEATURE[:3], tensor([0.2, 0.3], [2], name=IRIS_NAMES[3])),
            phrase="different lengths",
        ),
        id="feature tensors of different lengths",
    ),
    pytest.param(
        Case(
            infer(*PER_FEATURE[:3], tensor([[0.2, 0.3]], [1, 2], name=IRIS_NAMES[3])),
            phrase="[N] or [N, 1]",
        ),
        id="feature tensor of two columns",
    ),
    pytest.param(
        Case(infer(tensor([5.1, 3.5, 1.4], [1, 3])), phrase="does not fit the model's 4 features"),
        id="wrong number of columns",
    ),
    pytest.param(Case(raw_infer(b"[NaN, 3.5, 1.4, 0.2]"), phrase="NaN"), id="NaN"),
    pytest.param(Case(raw_infer(b"[5.1, Infinity, 1.4, 0.2]"), phrase="infinity"), id="Infinity"),
    pytest.param(Case(raw_infer(b"[5.1, 3.5, -Infinity, 0.2]"), phrase="infinity"), id="-Infinity"),
    pytest.param(Case(raw_infer(b"[5.1, 3.5, 1.4, 1e999]"), phrase="infinity"), id="1e999"),
    pytest.param(Case(infer(tensor([], [0, 4])), phrase="empty"), id="no rows"),
    pytest.param(
        Case(infer(tensor(SETOSA * 6, [6, 4])), phrase="more than the 5", client="limited"),
        id="more rows than MAX_ROWS",
    ),
    pytest.param(
        Case(infer(tensor(), outputs=[{"name": "transform"}]), phrase="outputs.0.name"),
        id="unknown output name",
    ),
    pytest.param(
        Case(infer(tensor(), outputs=["predict"]), phrase="outputs.0"), id="output not an object"
    ),
    pytest.param(
        Case(
            infer(tensor([0.0] * 10, [1, 10]), outputs=[{"name": "predict_proba"}]),
            phrase="no method 'predict_proba'",
            url="/v2/models/diabetes/infer",
        ),
        id="method the model lacks",
    ),
    pytest.param(
        Case(
            infer(tensor([1e308] * 10, [1, 10])),
            phrase="not a finite number",
            url="/v2/models/diabetes/infer",
        ),
        id="prediction beyond float64",
    ),
    pytest.param(Case(infer(tensor(), id=7), phrase="id"), id="id not a string"),
    pytest.param(
        binary_case([binary_input(40)], SETOSA_BYTES, "runs past the body"),
        id="binary_data_size past the body",
    ),
    pytest.param(
        binary_case([binary_input(32)], SETOSA_BYTES + b"\0", "belong to no input"),
        id="binary bytes of no input",
    ),
    pytest.param(
        binary_case([binary_input(24)], SETOSA_BYTES[:24], "the shape needs 32"),
        id="binary_data_size disagreeing with the shape",
    ),
    pytest.param(
        binary_case([binary_input("32")], SETOSA_BYTES, "binary_data_size"),
        id="binary_data_size a string",
    ),
    pytest.param(
        binary_case([binary_input(-8)], SETOSA_BYTES, "binary_data_size"),
        id="binary_data_size negative",
    ),
    pytest.param(
        binary_case([binary_input(32)], SETOSA_BYTES, HEADER_LENGTH, header_length="100000"),
        id="header length beyond the body",
    ),
    pytest.param(
        binary_case([binary_input(32)], SETOSA_BYTES, HEADER_LENGTH, header_length="12a"),
        id="header length not a number",
    ),
    pytest.param(
        binary_case([binary_input(32)], SETOSA_BYTES, "not valid JSON", header_length="20"),
        id="header length cutting the JSON",
    ),
    pytest.param(
        binary_case([binary_input(32)], np.asarray([[np.nan, 3.5, 1.4, 0.2]]).tobytes(), "NaN"),
        id="binary NaN",
    ),
    pytest.param(
        binary_case([{**binary_input(32), "parameters": "binary"}], SETOSA_BYTES, ""),
        id="binary input parameters not an object",
    ),
    pytest.param(
        Case(b'{"inputs": 5}', phrase="inputs", headers={HEADER_LENGTH: "13"}),
        id="binary request whose inputs is a number",
    ),
    pytest.param(
        Case(infer(tensor()), 404, "no model 'nope'", url="/v2/models/nope/infer"),
        id="infer on an unknown model",
    ),
    pytest.param(
        Case(infer(tensor()), 404, "no version '9'", url="/v2/models/iris/versions/9/infer"),
        id="infer on an unknown version",
    ),
    pytest.param(
        Case(None, 404, "no model 'nope'", url="/v2/models/nope", method="GET"),
        id="metadata of an unknown model",
    ),
    pytest.param(
        Case(None, 404, "no version '9'", url="/v2/models/iris/versions/9", method="GET"),
        id="metadata of an unknown version",
    ),
    pytest.param(
        Case(None, 404, "no model 'nope'", url="/v2/models/nope/ready", method="GET"),
        id="readiness of an unknown model",
    ),
    pytest.param(
        Case(None, 404, "no version '9'", url="/v2/models/iris/versions/9/ready", method="GET"),
        id="readiness of an unknown version",
    ),
    pytest.param(Case(None, 404, url="/v2/no/such/route", method="GET"), id="unknown route"),
    pytest.param(Case(None, 405, method="GET", allow="POST"), id="GET infer"),
    pytest.param(Case({}, 405, url="/v2", allow="GET"), id="POST server metadata"),
    pytest.param(
        Case(None, 405, url="/v2/models/iris", method="DELETE", allow="GET"),
        id="DELETE model metadata",
    ),
    pytest.param(
        Case(None, 405, url="/v2/health/ready", method="PUT", allow="GET"), id="PUT readiness"
    ),
    pytest.param(
        Case(infer(tensor()), 503, "warming up", client="cold"), id="infer while warming up"
    ),
]


@pytest.mark.parametrize("case", MATRIX)
def test_error_matrix(request: pytest.FixtureRequest, case: Case) -> None:
    client: FlaskClient = request.getfixturevalue(case.client)
    kwargs: dict[str, Any] = {"headers": case.headers or {}}
    if isinstance(case.body, bytes):
        kwargs["data"] = case.body
    elif case.body is not None:
        kwargs["data"] = json.dumps(case.body).encode()
        kwargs["content_type"] = "application/json"
    response = client.open(case.url, method=case.method, **kwargs)
    message = assert_v2_error(response, case.status)
    assert case.phrase in message
    if case.allow is not None:
        assert case.allow in response.headers["Allow"].split(", ")


def test_the_server_still_answers_after_the_matrix(
    server: FlaskClient, demo_estimators: dict[str, Any]
) -> None:
    rows = load_demo_data("iris")[0]
    request = {"inputs": [tensor(rows.tolist(), [150, 4])], "outputs": [{"name": "predict"}]}
    body = post(server, IRIS_INFER, request)
    assert body["outputs"][0]["data"] == demo_estimators["iris"].predict(rows).tolist()
    assert server.get("/v2/health/ready").get_json() == {"ready": True}


def test_a_bytes_tensor_claiming_more_elements_than_its_bytes_is_refused_before_decoding(
    server: FlaskClient,
) -> None:
    raw = b"\x01\x00\x00\x00a" * 2  # two one-character strings
    request = {
        "inputs": [
            {
                "name": "sepal length (cm)",
                "shape": [10**9],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(raw)},
            }
        ]
    }
    data, headers = binary_body(request, raw)
    response = server.post("/v2/models/iris/infer", data=data, headers=headers)
    assert response.status_code == 400
    assert "too few for 1000000000 elements" in response.get_json()["error"]
