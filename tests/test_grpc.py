"""The Open Inference Protocol over gRPC, served in process: the V2 REST error matrix's twins,
typed and raw contents, keys, limits, metrics, access lines, health and the generated stubs."""

from __future__ import annotations

import json
import logging
import math
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import numpy as np
import pytest
from flask import Flask
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY
from tritonclient.grpc import InferResult
from tritonclient.grpc import service_pb2 as tpb
from tritonclient.grpc import service_pb2_grpc as tpb_grpc

import test_v2
from inference_app import create_app
from inference_app.demo import load_demo_data
from inference_app.grpc import service
from inference_app.http import security

SERVICE = "/inference.GRPCInferenceService"
IRIS_NAMES = load_demo_data("iris")[2]
SETOSA = [5.1, 3.5, 1.4, 0.2]
SETOSA_BYTES = np.asarray([SETOSA], dtype="<f8").tobytes()
#: The typed contents field of each datatype, as the protocol's gRPC section lists them.
FIELDS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
KEY = "grpc-test-key"


@contextmanager
def serving(instance: Path, **settings: Any) -> Iterator[tuple[Flask, grpc.Channel]]:
    """An app with ``settings`` serving gRPC on a free port of 127.0.0.1, and a channel to it."""
    app = create_app({"TESTING": True, **settings}, instance_path=instance)
    running = service.serve(app, 0)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield app, channel
    finally:
        channel.close()
        running.stop(None)


@pytest.fixture(scope="module")
def served(demo_instance: Path) -> Iterator[tuple[Flask, grpc.Channel]]:
    """The demo app serving gRPC, shared by the module (errors must not disturb it)."""
    with serving(demo_instance) as pair:
        yield pair


@pytest.fixture(scope="module")
def server(served: tuple[Flask, grpc.Channel]) -> grpc.Channel:
    return served[1]


@pytest.fixture(scope="module")
def limited(demo_instance: Path) -> Iterator[grpc.Channel]:
    """A server that takes at most 5 rows per request."""
    with serving(demo_instance, MAX_ROWS=5) as (_, channel):
        yield channel


@pytest.fixture(scope="module")
def cold(demo_instance: Path) -> Iterator[grpc.Channel]:
    """A server whose models are never warmed up."""
    with serving(demo_instance, WARM_UP="post_fork") as (_, channel):
        yield channel


@pytest.fixture(scope="module")
def keyed(demo_instance: Path) -> Iterator[grpc.Channel]:
    """A server that asks for an API key."""
    with serving(demo_instance, API_KEYS=[KEY]) as (_, channel):
        yield channel


def tensor(
    values: Any = SETOSA,
    shape: list[int] | None = None,
    datatype: str = "FP64",
    name: str = "input-0",
    field: str | None = None,
) -> tpb.ModelInferRequest.InferInputTensor:
    """Return an input with typed contents (in ``field``, default its datatype's); values
    ``None``: no contents."""
    found = tpb.ModelInferRequest.InferInputTensor(
        name=name, datatype=datatype, shape=[1, 4] if shape is None else shape
    )
    if values is not None:
        getattr(found.contents, field or FIELDS[datatype]).extend(values)
    return found


def raw_tensor(
    shape: list[int] | None = None, datatype: str = "FP64", name: str = "input-0"
) -> tpb.ModelInferRequest.InferInputTensor:
    """Return an input whose elements travel in ``raw_input_contents``."""
    return tpb.ModelInferRequest.InferInputTensor(
        name=name, datatype=datatype, shape=[1, 4] if shape is None else shape
    )


def infer_request(
    *inputs: tpb.ModelInferRequest.InferInputTensor,
    raw: list[bytes] | None = None,
    outputs: tuple[str, ...] = (),
    model: str = "iris",
    version: str = "",
    request_id: str = "",
) -> tpb.ModelInferRequest:
    """Return a ModelInferRequest as tritonclient's generated code builds it."""
    return tpb.ModelInferRequest(
        model_name=model,
        model_version=version,
        id=request_id,
        inputs=list(inputs),
        raw_input_contents=raw or [],
        outputs=[tpb.ModelInferRequest.InferRequestedOutputTensor(name=name) for name in outputs],
    )


def infer(*inputs: Any, **fields: Any) -> bytes:
    """Return a serialized ModelInferRequest."""
    return infer_request(*inputs, **fields).SerializeToString()


def call(channel: grpc.Channel, method: str, body: bytes, **kwargs: Any) -> bytes:
    """Call ``method`` of the service with a serialized request; return the response bytes."""
    answer: bytes = channel.unary_unary(f"{SERVICE}/{method}")(body, timeout=30, **kwargs)
    return answer


def refused(channel: grpc.Channel, method: str, body: bytes, **kwargs: Any) -> grpc.RpcError:
    """Call, expecting a refusal; return it, with no traceback in its message."""
    with pytest.raises(grpc.RpcError) as raised:
        call(channel, method, body, **kwargs)
    assert "Traceback" not in (raised.value.details() or "")
    return raised.value


def result_of(body: bytes) -> InferResult:
    """tritonclient's reading of a ModelInferResponse."""
    return InferResult(tpb.ModelInferResponse.FromString(body))


class Case(NamedTuple):
    """A request the gRPC service refuses, and how (the twin of a V2 REST matrix case)."""

    body: bytes
    code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT
    phrase: str = ""
    method: str = "ModelInfer"
    client: str = "server"


INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED
PER_FEATURE = [tensor([v], [1], name=n) for n, v in zip(IRIS_NAMES, SETOSA, strict=True)]
VALID = infer(tensor())
NOT_A_MESSAGE = "is not a valid inference.ModelInferRequest message"


def twin(rest_id: str, case: Case) -> Any:
    return pytest.param(case, id=rest_id)


#: One gRPC case per case of tests/test_v2.py's MATRIX, by its id: the same fault where gRPC
#: can carry it, else the nearest one of the protobuf encoding (JSON syntax is protobuf
#: syntax; a JSON type error is a wrong contents field or bytes that are no UTF-8; a route
#: or method that does not exist is an RPC the service does not have).
MATRIX = [
    twin("bad JSON", Case(VALID[:-3], phrase=NOT_A_MESSAGE)),
    twin("empty body", Case(infer(), phrase="`inputs` is empty")),
    twin("non-UTF-8 bytes", Case(b"\x0a\x02\xff\xfe", phrase=NOT_A_MESSAGE)),
    twin("nested 100000 deep", Case(b"\x4b" * 100_000 + b"\x4c" * 100_000, phrase=NOT_A_MESSAGE)),
    twin("body is an array", Case(b"\xff\xff\xff\xff", phrase=NOT_A_MESSAGE)),
    twin("body is null", Case(b"", phrase="`inputs` is empty")),  # the empty message
    twin("missing inputs", Case(infer(outputs=("predict",)), phrase="`inputs` is empty")),
    twin(
        "inputs not an array",
        Case(infer(tensor([b"5.1"] * 4, field="bytes_contents")), phrase="contents.fp64_contents"),
    ),
    twin("empty inputs", Case(infer(raw=[SETOSA_BYTES]), phrase="1 entries for 0 inputs")),
    twin(
        "input not an object",
        Case(infer(tensor(), raw=[SETOSA_BYTES]), phrase="has contents while raw_input_contents"),
    ),
    twin("datatype FP128", Case(infer(tensor(None, datatype="FP128")), phrase="'FP128'")),
    twin("datatype missing", Case(infer(tensor(None, datatype="")), phrase="datatype ''")),
    twin(
        "BYTES for numeric features",
        Case(infer(tensor([b"a", b"b", b"c", b"d"], datatype="BYTES")), phrase="got BYTES"),
    ),
    twin(
        "BOOL for numeric features",
        Case(infer(tensor([True, False, True, True], datatype="BOOL")), phrase="got BOOL"),
    ),
    twin(
        "strings in FP64",
        Case(
            infer(tensor([b"5.1"] * 4, field="bytes_contents")),
            phrase="datatype FP64 takes its elements in contents.fp64_contents; got "
            "contents.bytes_contents",
        ),
    ),
    twin(
        "floats in INT32",
        Case(
            infer(tensor(SETOSA, datatype="INT32", field="fp64_contents")),
            phrase="datatype INT32 takes its elements in contents.int_contents",
        ),
    ),
    twin(
        "booleans in FP64",
        Case(infer(tensor([True] * 4, field="bool_contents")), phrase="got contents.bool_contents"),
    ),
    twin("null in FP64", Case(infer(tensor([math.nan, 3.5, 1.4, 0.2])), phrase="missing values")),
    twin("data not an array", Case(infer(tensor(None)), phrase="holds 4 elements but data has 0")),
    twin(
        "too few elements",
        Case(infer(tensor([5.1, 3.5, 1.4])), phrase="holds 4 elements but data has 3"),
    ),
    twin(
        "too many elements",
        Case(infer(tensor([*SETOSA, 1.0])), phrase="holds 4 elements but data has 5"),
    ),
    twin("data nested too deep", Case(infer(tensor(shape=[1, 1, 4])), phrase="[N, n_features]")),
    twin(
        "nested rows of different lengths",
        Case(
            infer(raw_tensor(), raw=[SETOSA_BYTES + b"\0" * 4]),
            phrase="binary data has 36 bytes; the shape needs 32",
        ),
    ),
    twin("negative shape", Case(infer(tensor(shape=[-1, 4])), phrase="negative")),
    twin(
        "overflowing shape",
        Case(infer(tensor(shape=[2**62, 4])), phrase=f"holds {2**64} elements but data has 4"),
    ),
    twin(
        "overflowing shape of no elements",
        Case(infer(tensor([], [2**62, 0])), phrase="is too large"),
    ),
    twin("shape of a float", Case(infer(tensor(shape=[])), phrase="shape [] holds 1 elements")),
    twin("shape of a boolean", Case(infer(tensor(shape=[4])), phrase="does not fit")),
    twin(
        "shape of a string",
        Case(infer(tensor(shape=[2, 2])), phrase="does not fit the model's 4 features"),
    ),
    twin(
        "INT8 out of range",
        Case(infer(tensor([300, 3, 1, 0], datatype="INT8")), phrase="out of INT8's range"),
    ),
    twin(
        "UINT8 negative",
        Case(infer(tensor([300, 3, 1, 0], datatype="UINT8")), phrase="out of UINT8's range"),
    ),
    twin(
        "INT64 out of range",
        Case(
            infer(tensor([2**64 - 1, 3, 1, 0], datatype="INT64", field="uint64_contents")),
            phrase="contents.int64_contents; got contents.uint64_contents",
        ),
    ),
    twin("integer beyond FP64", Case(infer(tensor([math.inf, 3, 1, 0])), phrase="infinity")),
    twin(
        "float beyond FP32",
        Case(infer(tensor([1e300, 3.5, 1.4, 0.2], datatype="FP32")), phrase="infinity"),
    ),
    twin(
        "unknown input name",
        Case(infer(tensor(shape=[4], name="colour")), phrase="unknown input 'colour'"),
    ),
    twin(
        "duplicate feature tensor",
        Case(infer(*PER_FEATURE, PER_FEATURE[1]), phrase="'sepal width (cm)': is sent twice"),
    ),
    twin(
        "missing feature tensor",
        Case(infer(*PER_FEATURE[:3]), phrase="missing input 'petal width (cm)'"),
    ),
    twin(
        "feature tensors of different lengths",
        Case(
            infer(*PER_FEATURE[:3], tensor([0.2, 0.3], [2], name=IRIS_NAMES[3])),
            phrase="different lengths",
        ),
    ),
    twin(
        "feature tensor of two columns",
        Case(
            infer(*PER_FEATURE[:3], tensor([0.2, 0.3], [1, 2], name=IRIS_NAMES[3])),
            phrase="[N] or [N, 1]",
        ),
    ),
    twin(
        "wrong number of columns",
        Case(infer(tensor([5.1, 3.5, 1.4], [1, 3])), phrase="does not fit the model's 4 features"),
    ),
    twin("NaN", Case(infer(tensor([math.nan, 3.5, 1.4, 0.2])), phrase="NaN")),
    twin("Infinity", Case(infer(tensor([5.1, math.inf, 1.4, 0.2])), phrase="infinity")),
    twin("-Infinity", Case(infer(tensor([5.1, 3.5, -math.inf, 0.2])), phrase="infinity")),
    twin("1e999", Case(infer(tensor([5.1, 3.5, 1.4, float("1e999")])), phrase="infinity")),
    twin("no rows", Case(infer(tensor([], [0, 4])), phrase="empty")),
    twin(
        "more rows than MAX_ROWS",
        Case(infer(tensor(SETOSA * 6, [6, 4])), phrase="more than the 5", client="limited"),
    ),
    twin(
        "unknown output name",
        Case(infer(tensor(), outputs=("transform",)), phrase="outputs[0].name 'transform'"),
    ),
    twin("output not an object", Case(infer(tensor(), outputs=("",)), phrase="outputs[0].name")),
    twin(
        "method the model lacks",
        Case(
            infer(tensor([0.0] * 10, [1, 10]), outputs=("predict_proba",), model="diabetes"),
            phrase="no method 'predict_proba'",
        ),
    ),
    twin(
        "prediction beyond float64",
        Case(infer(tensor([1e308] * 10, [1, 10]), model="diabetes"), phrase="not a finite number"),
    ),
    twin(
        "id not a string",
        Case(VALID + b"\x1a\x02\xff\xfe", phrase=NOT_A_MESSAGE),  # id (field 3): no UTF-8
    ),
    twin(
        "binary_data_size past the body",
        Case(infer(raw_tensor(), raw=[SETOSA_BYTES] * 2), phrase="2 entries for 1 inputs"),
    ),
    twin(
        "binary bytes of no input",
        Case(infer(raw_tensor(), raw=[SETOSA_BYTES + b"\0"]), phrase="binary data has 33 bytes"),
    ),
    twin(
        "binary_data_size disagreeing with the shape",
        Case(infer(raw_tensor(), raw=[SETOSA_BYTES[:24]]), phrase="the shape needs 32"),
    ),
    twin(
        "binary_data_size a string",
        Case(
            infer(tensor(SETOSA, datatype="FP16", field="fp32_contents")),
            phrase="FP16 travels in raw_input_contents only",
        ),
    ),
    twin(
        "binary_data_size negative",
        Case(
            infer(raw_tensor(), raw_tensor(name="other"), raw=[SETOSA_BYTES]),
            phrase="1 entries for 2 inputs",
        ),
    ),
    twin(
        "header length beyond the body",
        Case(infer(raw_tensor(), raw=[SETOSA_BYTES])[:-8], phrase=NOT_A_MESSAGE),
    ),
    twin("header length not a number", Case(b"\x0a\x09iris", phrase=NOT_A_MESSAGE)),
    twin("header length cutting the JSON", Case(VALID[:12], phrase=NOT_A_MESSAGE)),
    twin(
        "binary NaN",
        Case(
            infer(raw_tensor(), raw=[np.asarray([[np.nan, 3.5, 1.4, 0.2]]).tobytes()]),
            phrase="NaN",
        ),
    ),
    twin(
        "binary input parameters not an object",
        Case(
            infer(raw_tensor([1], "BYTES", IRIS_NAMES[0]), raw=[b"\x01\x00\x00\x00\xff"]),
            phrase="not UTF-8",
        ),
    ),
    twin(
        "binary request whose inputs is a number",
        Case(infer(tensor([b"\xff"], [1], "BYTES", IRIS_NAMES[0])), phrase="not UTF-8"),
    ),
    twin("infer on an unknown model", Case(infer(tensor(), model="nope"), NOT_FOUND, "'nope'")),
    twin(
        "infer on an unknown version",
        Case(infer(tensor(), version="9"), NOT_FOUND, "no version '9'"),
    ),
    twin(
        "metadata of an unknown model",
        Case(
            tpb.ModelMetadataRequest(name="nope").SerializeToString(),
            NOT_FOUND,
            "no model 'nope'",
            "ModelMetadata",
        ),
    ),
    twin(
        "metadata of an unknown version",
        Case(
            tpb.ModelMetadataRequest(name="iris", version="9").SerializeToString(),
            NOT_FOUND,
            "no version '9'",
            "ModelMetadata",
        ),
    ),
    twin(
        "readiness of an unknown model",
        Case(
            tpb.ModelReadyRequest(name="nope").SerializeToString(),
            NOT_FOUND,
            "no model 'nope'",
            "ModelReady",
        ),
    ),
    twin(
        "readiness of an unknown version",
        Case(
            tpb.ModelReadyRequest(name="iris", version="9").SerializeToString(),
            NOT_FOUND,
            "no version '9'",
            "ModelReady",
        ),
    ),
    # Triton's extensions, which tritonclient.grpc can call: not served.
    twin("unknown route", Case(b"", UNIMPLEMENTED, method="RepositoryIndex")),
    twin("GET infer", Case(b"", UNIMPLEMENTED, method="ModelStreamInfer")),
    twin("POST server metadata", Case(b"", UNIMPLEMENTED, method="ModelConfig")),
    twin("DELETE model metadata", Case(b"", UNIMPLEMENTED, method="RepositoryModelUnload")),
    twin("PUT readiness", Case(b"", UNIMPLEMENTED, method="ModelStatistics")),
    twin(
        "infer while warming up",
        Case(VALID, grpc.StatusCode.UNAVAILABLE, "warming up", client="cold"),
    ),
]


def test_every_rest_refusal_has_a_grpc_twin() -> None:
    rest = [param.id for param in test_v2.MATRIX]
    assert sorted(param.id for param in MATRIX) == sorted(rest)


@pytest.mark.parametrize("case", MATRIX)
def test_error_matrix(request: pytest.FixtureRequest, case: Case) -> None:
    channel: grpc.Channel = request.getfixturevalue(case.client)
    error = refused(channel, case.method, case.body)
    assert error.code() == case.code, error.details()
    assert case.phrase in (error.details() or ""), error.details()


def test_the_server_still_answers_after_the_matrix(
    server: grpc.Channel, demo_estimators: dict[str, Any]
) -> None:
    rows = load_demo_data("iris")[0]
    body = call(server, "ModelInfer", infer(tensor(rows.ravel().tolist(), [150, 4])))
    labels = result_of(body).as_numpy("predict").astype(str)
    assert labels.tolist() == demo_estimators["iris"].predict(rows).tolist()


@pytest.mark.parametrize(
    ("name", "method"),
    [
        ("iris", "predict"),
        ("iris", "predict_proba"),
        ("iris", "decision_function"),
        ("breast_cancer", "predict"),
        ("breast_cancer", "predict_proba"),
        ("diabetes", "predict"),
    ],
)
@pytest.mark.parametrize("form", ["typed", "raw"])
def test_full_datasets_match_in_process(
    server: grpc.Channel, demo_estimators: dict[str, Any], name: str, method: str, form: str
) -> None:
    rows = load_demo_data(name)[0]
    if form == "typed":
        request = infer(
            tensor(rows.ravel().tolist(), list(rows.shape)), outputs=(method,), model=name
        )
    else:
        raw = rows.astype("<f8").tobytes()
        request = infer(raw_tensor(list(rows.shape)), raw=[raw], outputs=(method,), model=name)
    response = tpb.ModelInferResponse.FromString(call(server, "ModelInfer", request))
    assert (response.model_name, response.model_version) == (name, "1")
    model = demo_estimators[name]
    expected = getattr(model, method)(rows)
    (output,) = response.outputs
    assert output.name == method and list(output.shape) == list(expected.shape)
    found = InferResult(response).as_numpy(method)
    if expected.dtype.kind in "OUS":
        assert output.datatype == "BYTES"
        assert found.astype(str).tolist() == expected.tolist()
    else:
        assert output.datatype == "FP64"
        np.testing.assert_allclose(found, expected, rtol=1e-12, atol=1e-15)
    if method == "predict":
        assert "classes" not in output.parameters
    else:
        classes = output.parameters["classes"].string_param
        assert json.loads(classes) == model.classes_.tolist()


def test_several_outputs_and_the_id(server: grpc.Channel, demo_estimators: dict[str, Any]) -> None:
    rows = load_demo_data("iris")[0]
    methods = ("predict_proba", "predict", "decision_function")
    request = infer(tensor(rows.ravel().tolist(), [150, 4]), outputs=methods, request_id="r-7")
    response = tpb.ModelInferResponse.FromString(call(server, "ModelInfer", request))
    assert response.id == "r-7"
    assert [output.name for output in response.outputs] == list(methods)
    result = InferResult(response)
    model = demo_estimators["iris"]
    for method in methods:
        expected = getattr(model, method)(rows)
        if method == "predict":
            assert result.as_numpy(method).astype(str).tolist() == expected.tolist()
        else:
            np.testing.assert_allclose(result.as_numpy(method), expected, rtol=1e-12)


@pytest.mark.parametrize("datatype", test_v2.INTEGER_TYPES)
def test_integer_datatypes_in_typed_and_raw_contents(
    server: grpc.Channel, demo_estimators: dict[str, Any], datatype: str
) -> None:
    rounded = np.rint(load_demo_data("iris")[0]).astype(np.int64)
    expected = demo_estimators["iris"].predict(rounded.astype(np.float64)).tolist()
    typed = infer(tensor(rounded.ravel().tolist(), [150, 4], datatype))
    dtype = np.dtype(datatype.lower()).newbyteorder("<")
    raw = infer(raw_tensor([150, 4], datatype), raw=[rounded.astype(dtype).tobytes()])
    for body in (typed, raw):
        labels = result_of(call(server, "ModelInfer", body)).as_numpy("predict").astype(str)
        assert labels.tolist() == expected


@pytest.mark.parametrize("datatype", ["FP16", "FP32"])
def test_float_datatypes_are_cast_to_their_precision(
    server: grpc.Channel, demo_estimators: dict[str, Any], datatype: str
) -> None:
    rows = load_demo_data("diabetes")[0]
    cast = rows.astype(test_v2.FLOAT_TYPES[datatype])
    body = infer(raw_tensor(list(rows.shape), datatype), raw=[cast.tobytes()], model="diabetes")
    found = result_of(call(server, "ModelInfer", body)).as_numpy("predict")
    expected = demo_estimators["diabetes"].predict(cast.astype(np.float64))
    np.testing.assert_allclose(found, expected, rtol=1e-12)
    assert not np.allclose(found, demo_estimators["diabetes"].predict(rows), rtol=1e-12, atol=0)


@pytest.mark.parametrize("form", ["typed", "raw"])
def test_one_tensor_per_feature(
    server: grpc.Channel, demo_estimators: dict[str, Any], form: str
) -> None:
    rows, _, names = load_demo_data("breast_cancer")
    if form == "typed":
        inputs = [tensor(rows[:, i].tolist(), [len(rows)], name=n) for i, n in enumerate(names)]
        body = infer(*inputs[::-1], model="breast_cancer")
    else:
        inputs = [raw_tensor([len(rows), 1], name=name) for name in names]
        raw = [np.ascontiguousarray(rows[:, i]).astype("<f8").tobytes() for i in range(len(names))]
        body = infer(*inputs, raw=raw, model="breast_cancer")
    labels = result_of(call(server, "ModelInfer", body)).as_numpy("predict").astype(str)
    assert labels.tolist() == demo_estimators["breast_cancer"].predict(rows).tolist()


@pytest.mark.parametrize("content_type", ["np", "pd"])
def test_unknown_parameters_are_ignored(server: grpc.Channel, content_type: str) -> None:
    plain = infer_request(tensor(SETOSA + [6.7, 3.0, 5.2, 2.3], [2, 4]), outputs=("predict",))
    decorated = infer_request(tensor(SETOSA + [6.7, 3.0, 5.2, 2.3], [2, 4]), outputs=("predict",))
    decorated.parameters["content_type"].string_param = content_type
    decorated.parameters["priority"].int64_param = 1
    decorated.inputs[0].parameters["content_type"].string_param = content_type
    decorated.outputs[0].parameters["binary_data"].bool_param = True
    expected = call(server, "ModelInfer", plain.SerializeToString())
    assert result_of(expected).as_numpy("predict").astype(str).tolist() == ["setosa", "virginica"]
    assert call(server, "ModelInfer", decorated.SerializeToString()) == expected


def test_health_metadata_and_readiness(server: grpc.Channel) -> None:
    stub = tpb_grpc.GRPCInferenceServiceStub(server)
    assert stub.ServerLive(tpb.ServerLiveRequest()).live
    assert stub.ServerReady(tpb.ServerReadyRequest()).ready
    assert stub.ModelReady(tpb.ModelReadyRequest(name="iris")).ready
    assert stub.ModelReady(tpb.ModelReadyRequest(name="iris", version="1")).ready
    metadata = stub.ServerMetadata(tpb.ServerMetadataRequest())
    assert metadata.name == "inference-app" and metadata.version
    checks = health_pb2_grpc.HealthStub(server)
    for name in ("", "inference.GRPCInferenceService"):
        answer = checks.Check(health_pb2.HealthCheckRequest(service=name))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("name", ["iris", "breast_cancer", "diabetes"])
def test_model_metadata_is_the_rest_metadata(served: tuple[Flask, grpc.Channel], name: str) -> None:
    app, channel = served
    stub = tpb_grpc.GRPCInferenceServiceStub(channel)
    found = stub.ModelMetadata(tpb.ModelMetadataRequest(name=name))
    rest = app.test_client().get(f"/v2/models/{name}").get_json()
    tensors = lambda items: [  # noqa: E731
        {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items
    ]
    assert found.name == rest["name"] and list(found.versions) == rest["versions"]
    assert found.platform == rest["platform"]
    assert tensors(found.inputs) == rest["inputs"]
    assert tensors(found.outputs) == rest["outputs"]


def test_cold_server_is_live_not_ready(cold: grpc.Channel) -> None:
    stub = tpb_grpc.GRPCInferenceServiceStub(cold)
    assert stub.ServerLive(tpb.ServerLiveRequest()).live
    assert not stub.ServerReady(tpb.ServerReadyRequest()).ready
    assert not stub.ModelReady(tpb.ModelReadyRequest(name="iris")).ready
    answer = health_pb2_grpc.HealthStub(cold).Check(health_pb2.HealthCheckRequest(service=""))
    assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_keys_are_asked_as_over_rest(keyed: grpc.Channel) -> None:
    body = infer(tensor())
    missing = refused(keyed, "ModelInfer", body)
    assert missing.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "needs a key" in (missing.details() or "")
    wrong = refused(keyed, "ModelInfer", body, metadata=[("authorization", "Bearer nope")])
    assert wrong.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "valid API key" in (wrong.details() or "")
    for metadata in ([("authorization", f"Bearer {KEY}")], [("x-api-key", KEY)]):
        assert result_of(call(keyed, "ModelInfer", body, metadata=metadata)).as_numpy("predict")
    for method in ("ModelMetadata", "ModelReady", "ServerMetadata"):
        request = b"" if method == "ServerMetadata" else b"\x0a\x04iris"
        assert refused(keyed, method, request).code() == grpc.StatusCode.UNAUTHENTICATED
    # Probes never ask: ServerLive, ServerReady (as /v2/health/*) and the health service.
    call(keyed, "ServerLive", b"")
    call(keyed, "ServerReady", b"")
    health_pb2_grpc.HealthStub(keyed).Check(health_pb2.HealthCheckRequest(service=""))


def test_a_message_larger_than_max_content_length_is_resource_exhausted(
    demo_instance: Path,
) -> None:
    rows = load_demo_data("iris")[0]
    body = infer(raw_tensor([150, 4]), raw=[rows.astype("<f8").tobytes()])  # about 4.8 kB
    with serving(demo_instance, MAX_CONTENT_LENGTH=4096) as (_, channel):
        error = refused(channel, "ModelInfer", body)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "4096" in (error.details() or "")
        assert result_of(call(channel, "ModelInfer", infer(tensor()))).as_numpy("predict")


def test_the_concurrency_cap_is_shared_with_http(demo_instance: Path) -> None:
    with serving(demo_instance, MAX_CONCURRENT_REQUESTS=1) as (app, channel):
        semaphore = app.extensions[security.EXTENSION].semaphore
        assert semaphore.acquire(blocking=False)  # an HTTP request of this worker holds it
        try:
            error = refused(channel, "ModelInfer", infer(tensor()))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "retry" in (error.details() or "")
            call(channel, "ServerReady", b"")  # probes take no slot
        finally:
            semaphore.release()
        assert result_of(call(channel, "ModelInfer", infer(tensor()))).as_numpy("predict")


def test_metrics_access_line_request_id_and_observers(
    served: tuple[Flask, grpc.Channel], caplog: pytest.LogCaptureFixture
) -> None:
    app, channel = served
    seen: list[tuple[str, int]] = []
    observers = app.extensions["inference_app"].dataplane.observers
    observers.append(lambda bundle, result: seen.append((bundle.name, result.rows)))
    labels = {
        "protocol": "grpc",
        "route": f"{SERVICE}/ModelInfer",
        "model": "iris",
        "version": "1",
        "status_class": "2xx",
    }
    before = REGISTRY.get_sample_value("inference_app_requests_total", labels) or 0.0
    rows_before = (
        REGISTRY.get_sample_value(
            "inference_app_rows_predicted_total",
            {"protocol": "grpc", "model": "iris", "version": "1"},
        )
        or 0.0
    )
    try:
        with caplog.at_level(logging.INFO, logger="inference_app.access"):
            _, answered = channel.unary_unary(f"{SERVICE}/ModelInfer").with_call(
                infer(tensor(SETOSA * 3, [3, 4])), metadata=[("x-request-id", "grpc-req-1")]
            )
            refused(channel, "ModelInfer", infer(tensor(), model="nope"))
    finally:
        observers.pop()
    assert dict(answered.initial_metadata())["x-request-id"] == "grpc-req-1"
    assert seen == [("iris", 3)]
    assert REGISTRY.get_sample_value("inference_app_requests_total", labels) == before + 1
    after = REGISTRY.get_sample_value(
        "inference_app_rows_predicted_total", {"protocol": "grpc", "model": "iris", "version": "1"}
    )
    assert after == rows_before + 3
    lines = [r for r in caplog.records if r.name == "inference_app.access"]
    ok, failed = lines[-2], lines[-1]
    assert ok.request_id == "grpc-req-1" and ok.protocol == "grpc"
    assert ok.grpc_status == "OK" and ok.status == 200 and ok.rows == 3
    assert failed.grpc_status == "NOT_FOUND" and failed.status == 404
    assert failed.model is None  # an unknown name is no label
    assert set(ok.stages_ms) >= {"parse", "validate", "predict", "serialise"}


def test_calls_are_answered_concurrently_by_the_thread_pool(
    server: grpc.Channel, demo_estimators: dict[str, Any]
) -> None:
    rows = load_demo_data("breast_cancer")[0]
    expected = demo_estimators["breast_cancer"].predict(rows).tolist()
    body = infer(
        raw_tensor(list(rows.shape)), raw=[rows.astype("<f8").tobytes()], model="breast_cancer"
    )
    answers: list[list[str]] = []
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            for _ in range(5):
                found = result_of(call(server, "ModelInfer", body)).as_numpy("predict")
                answers.append(found.astype(str).tolist())
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors and len(answers) == 30
    assert all(answer == expected for answer in answers)


def test_the_checked_in_modules_are_what_grpcio_tools_generates(tmp_path: Path) -> None:
    source = Path(__file__).resolve().parents[1] / "src"
    proto = "inference_app/grpc/grpc_predict_v2.proto"
    (tmp_path / "inference_app" / "grpc").mkdir(parents=True)
    (tmp_path / proto).write_bytes((source / proto).read_bytes())
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            ".",
            "--python_out=.",
            "--pyi_out=.",
            "--grpc_python_out=.",
            proto,
        ],
        cwd=tmp_path,
        check=True,
    )
    for name in (
        "grpc_predict_v2_pb2.py",
        "grpc_predict_v2_pb2.pyi",
        "grpc_predict_v2_pb2_grpc.py",
    ):
        generated = (tmp_path / "inference_app" / "grpc" / name).read_text()
        # make grpc-stubs puts the messages in a descriptor pool of their own
        generated = generated.replace(
            "_descriptor_pool.Default().AddSerializedFile",
            "_descriptor_pool.DescriptorPool().AddSerializedFile",
        )
        assert generated == (source / "inference_app" / "grpc" / name).read_text(), name


def test_payload_events_of_a_grpc_call(demo_instance: Path, tmp_path: Path) -> None:
    """An answered gRPC call is logged as its CloudEvents request and response, with the
    request id of its metadata and the protocol ``grpc``; a refused one is not."""
    log = tmp_path / "payload.jsonl"
    rows = load_demo_data("iris")[0][:3]
    with serving(demo_instance, PAYLOAD_LOG=str(log)) as (_, channel):
        call(
            channel,
            "ModelInfer",
            infer(tensor(rows.ravel().tolist(), [3, 4])),
            metadata=[("x-request-id", "payload-grpc-1")],
        )
        refused(
            channel,
            "ModelInfer",
            infer(tensor(), model="nope"),
            metadata=[("x-request-id", "payload-grpc-2")],
        )

        def logged() -> list[dict[str, Any]]:
            if not log.exists():
                return []
            return [json.loads(line) for line in log.read_text().splitlines() if line]

        deadline = time.monotonic() + 10
        while len(logged()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    events = logged()
    assert {event["id"] for event in events} == {"payload-grpc-1"}
    assert sorted(event["type"] for event in events) == [
        "org.inference-app.request",
        "org.inference-app.response",
    ]
    assert all(event["protocol"] == "grpc" and event["modelname"] == "iris" for event in events)


def test_the_sticky_header_routes_from_grpc_metadata(
    tmp_path: Path, demo_instance: Path, new_iris_version: Any
) -> None:
    models = tmp_path / "instance" / "models"
    shutil.copytree(demo_instance / "models" / "iris", models / "iris")
    new_iris_version(models, "2")
    (models / "iris" / "traffic.json").write_text(
        json.dumps({"weights": {"1": 50, "2": 50}, "sticky": "X-User-ID"})
    )
    body = infer(tensor())
    with serving(tmp_path / "instance") as (_, channel):
        answered: dict[str, set[str]] = {}
        for user in range(24):
            for _ in range(3):
                found = tpb.ModelInferResponse.FromString(
                    call(channel, "ModelInfer", body, metadata=[("x-user-id", f"user-{user}")])
                )
                answered.setdefault(f"user-{user}", set()).add(found.model_version)
        pinned = tpb.ModelInferResponse.FromString(
            call(channel, "ModelInfer", infer(tensor(), version="1"))
        )
    assert all(len(versions) == 1 for versions in answered.values()), answered
    assert set().union(*answered.values()) == {"1", "2"}
    assert pinned.model_version == "1"
