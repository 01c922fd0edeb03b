"""The Open Inference Protocol (KServe V2) REST API, as ``tritonclient.http`` speaks it.

Specification: KServe ``docs/predict-api/v2/required_api.md`` (HTTP/REST): server and model
health and metadata, and inference; plus Triton's binary tensor data extension for inputs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from flask import Request
from flask.views import MethodView
from marshmallow import INCLUDE, Schema, fields, validate
from webargs.flaskparser import abort

from inference_app import __version__
from inference_app.core import tensors
from inference_app.core.bundle import METHODS, Bundle
from inference_app.core.dataplane import DataPlane, InferenceRequest, InferenceResult
from inference_app.core.datatypes import DATATYPES, TENSOR_DATATYPES, of_values
from inference_app.core.registry import Registry
from inference_app.http import observe
from inference_app.http.api import (
    Blueprint,
    JSONBodyParser,
    get_dataplane,
    get_registry,
    load_json,
    routing_key,
)

#: The header of Triton's binary tensor data extension: the JSON part's length in bytes.
HEADER_LENGTH = "Inference-Header-Content-Length"
PLATFORM = "sklearn"


class InferBodyParser(JSONBodyParser):
    """Parse an inference request: JSON with or without a Content-Type (the official client
    sends none), optionally followed by binary tensor data."""

    def _raw_load_json(self, req: Request) -> Any:
        return read_infer_body(req.get_data(cache=True), req.headers.get(HEADER_LENGTH), load_json)


def read_infer_body(body: bytes, header: str | None, loads: Callable[[bytes], Any]) -> Any:
    """Parse an inference request: all JSON, or ``header`` bytes of JSON then binary tensor
    data (Triton's binary tensor data extension).

    :param header: the ``Inference-Header-Content-Length`` header, if sent.
    :param loads: the JSON parser.
    :raises werkzeug.exceptions.BadRequest: the header or a ``binary_data_size`` does not fit
        the body.
    """
    if header is None:
        return loads(body)
    if not header.isdigit() or int(header) > len(body):
        abort(400, message=f"{HEADER_LENGTH} must be a byte count within the body")
    request = loads(body[: int(header)])
    _attach_binary_data(request, body[int(header) :])
    return request


def _attach_binary_data(request: Any, binary: bytes) -> None:
    """Move each input's ``binary_data_size`` bytes from ``binary`` into its ``data``."""
    offset = 0
    inputs = request.get("inputs") if isinstance(request, dict) else None
    for tensor in inputs if isinstance(inputs, list) else []:
        parameters = tensor.get("parameters") if isinstance(tensor, dict) else None
        size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
        if size is None:
            continue
        if type(size) is not int or size < 0 or offset + size > len(binary):
            abort(400, message=f"input {tensor.get('name')!r}: binary_data_size runs past the body")
        tensor["data"] = binary[offset : offset + size]
        offset += size
    if offset != len(binary):
        abort(400, message=f"{len(binary) - offset} bytes of binary data belong to no input")


class TensorSchema(Schema):
    """A request input: ``{"name", "shape", "datatype", "parameters", "data"}``."""

    class Meta:
        unknown = INCLUDE

    name = fields.String(required=True)
    shape = fields.List(fields.Integer(strict=True), required=True)
    datatype = fields.String(required=True, validate=validate.OneOf(TENSOR_DATATYPES))
    parameters = fields.Dict()
    data = fields.Raw(
        required=True,
        metadata={
            "description": "Row-major elements, flat or nested as the shape says.",
            "type": "array",
            "items": {},
        },
    )


class RequestedOutputSchema(Schema):
    """An output the caller wants: ``predict``, ``predict_proba`` or ``decision_function``."""

    class Meta:
        unknown = INCLUDE

    name = fields.String(required=True, validate=validate.OneOf(METHODS))
    parameters = fields.Dict()


class InferRequestSchema(Schema):
    """An inference request ("Inference Request JSON Object")."""

    class Meta:
        unknown = INCLUDE

    id = fields.String()
    parameters = fields.Dict()
    inputs = fields.List(
        fields.Nested(TensorSchema),
        required=True,
        validate=validate.Length(min=1),
        metadata={
            "example": [
                {
                    "name": tensors.MATRIX_INPUT,
                    "shape": [2, 4],
                    "datatype": "FP64",
                    "data": [5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3],
                }
            ]
        },
    )
    outputs = fields.List(fields.Nested(RequestedOutputSchema))


class OutputTensorSchema(Schema):
    """A response output, data flattened in row-major order."""

    name = fields.String(required=True)
    datatype = fields.String(required=True)
    shape = fields.List(fields.Integer(), required=True)
    parameters = fields.Dict()
    data = fields.Raw(required=True)


class InferResponseSchema(Schema):
    """An inference response ("Inference Response JSON Object")."""

    model_name = fields.String(required=True)
    model_version = fields.String(required=True)
    id = fields.String()
    outputs = fields.List(fields.Nested(OutputTensorSchema), required=True)


class TensorMetadataSchema(Schema):
    """A tensor's name, datatype and shape (-1: any size)."""

    name = fields.String(required=True)
    datatype = fields.String(required=True)
    shape = fields.List(fields.Integer(), required=True)


class ModelMetadataResponseSchema(Schema):
    """Model metadata ("Model Metadata Response JSON Object")."""

    name = fields.String(required=True)
    versions = fields.List(fields.String())
    platform = fields.String(required=True)
    inputs = fields.List(fields.Nested(TensorMetadataSchema), required=True)
    outputs = fields.List(fields.Nested(TensorMetadataSchema), required=True)


class ServerMetadataResponseSchema(Schema):
    """Server metadata ("Server Metadata Response JSON Object")."""

    name = fields.String(required=True)
    version = fields.String(required=True)
    extensions = fields.List(fields.String(), required=True)


class LiveResponseSchema(Schema):
    """Server liveness."""

    live = fields.Boolean(required=True)


class ReadyResponseSchema(Schema):
    """Server or model readiness."""

    name = fields.String()
    ready = fields.Boolean(required=True)


blp = Blueprint(
    "v2",
    __name__,
    url_prefix="/v2",
    description="The Open Inference Protocol (KServe V2 REST), for tritonclient.http and KServe.",
    error_response="V2_ERROR",
)
blp.ARGUMENTS_PARSER = InferBodyParser()


@blp.route("/", endpoint="ServerSlash")
@blp.route("")
class Server(MethodView):
    """Server metadata."""

    @blp.response(200, ServerMetadataResponseSchema)
    def get(self) -> dict[str, Any]:
        """Describe the server"""
        return {
            "name": "inference-app",
            "version": __version__,
            "extensions": ["binary_tensor_data"],
        }


@blp.route("/health/live")
class ServerLive(MethodView):
    """Server liveness."""

    @blp.response(200, LiveResponseSchema)
    @blp.doc(security=[])
    def get(self) -> dict[str, Any]:
        """Say the server is live"""
        return {"live": True}


@blp.route("/health/ready")
class ServerReady(MethodView):
    """Server readiness."""

    @blp.response(200, ReadyResponseSchema)
    @blp.alt_response(503, schema=ReadyResponseSchema, description="Some model is not ready")
    @blp.doc(security=[])
    def get(self) -> tuple[dict[str, Any], int]:
        """Say whether every model is ready"""
        ready, _ = get_registry().readiness()
        return {"ready": ready}, 200 if ready else 503


@blp.route("/models/<segment:name>/versions/<segment:version>", endpoint="ModelVersionMetadata")
@blp.route("/models/<segment:name>", endpoint="ModelMetadata")
class ModelMetadata(MethodView):
    """Model metadata."""

    @blp.response(200, ModelMetadataResponseSchema)
    @blp.error(404)
    def get(self, name: str, version: str | None = None) -> dict[str, Any]:
        """Describe a model's inputs and outputs

        A numeric model takes one input tensor `input-0` of shape [-1, n_features] in its
        feature order (listed by `GET /v1/models/{name}`), or one tensor per feature, named
        as the feature; a model with string, categorical or datetime features lists one
        input per feature (`BYTES` for strings and ISO 8601 datetimes). One output per
        method.
        """
        return model_metadata(get_registry(), name, version)


@blp.route("/models/<segment:name>/versions/<segment:version>/ready", endpoint="ModelVersionReady")
@blp.route("/models/<segment:name>/ready", endpoint="ModelReady")
class ModelReady(MethodView):
    """Model readiness."""

    @blp.response(200, ReadyResponseSchema)
    @blp.alt_response(503, schema=ReadyResponseSchema, description="Warming up")
    @blp.error(404)
    def get(self, name: str, version: str | None = None) -> tuple[dict[str, Any], int]:
        """Say whether a model is ready"""
        registry = get_registry()
        ready = registry.is_ready(registry.get(name, version))
        return {"name": name, "ready": ready}, 200 if ready else 503


@blp.route("/models/<segment:name>/versions/<segment:version>/infer", endpoint="ModelVersionInfer")
@blp.route("/models/<segment:name>/infer", endpoint="ModelInfer")
class ModelInfer(MethodView):
    """Inference."""

    @blp.arguments(InferRequestSchema(), error_status_code=400)
    @blp.response(200, InferResponseSchema)
    @blp.error(400, 404, 503)
    def post(self, body: dict[str, Any], name: str, version: str | None = None) -> dict[str, Any]:
        """Infer

        Send one tensor `input-0` [N, n_features] for a numeric model, or one tensor per
        feature named as the feature (`BYTES` for strings and ISO 8601 datetimes, `null`
        where a feature may be missing). Outputs are named after the methods: `predict`
        (the default), `predict_proba`, `decision_function`; an output's
        `parameters.classes` labels its columns, as a JSON array in a string.
        """
        response, result = infer(get_dataplane(), name, version, body, routing_key(name, version))
        observe.note_prediction(result)
        return response


def infer(
    dataplane: DataPlane,
    name: str,
    version: str | None,
    body: dict[str, Any],
    routing_key: str | None = None,
) -> tuple[dict[str, Any], InferenceResult]:
    """Answer an inference request loaded by :class:`InferRequestSchema`: decode its
    tensors, infer, encode one output per requested method.

    :param routing_key: the sticky header's value (:attr:`InferenceRequest.routing_key`).
    :returns: the response (before :class:`InferResponseSchema`) and the result.
    :raises: as :meth:`inference_app.core.dataplane.DataPlane.infer`.
    """
    methods = tuple(output["name"] for output in body.get("outputs") or []) or ("predict",)
    started = time.perf_counter()
    rows = tensors.decode_inputs(body["inputs"])
    decoded = time.perf_counter() - started
    result = dataplane.infer(
        InferenceRequest(
            model=name,
            version=version,
            methods=methods,
            where="inputs",
            routing_key=routing_key,
            **rows,
        )
    )
    result.timings["validate"] += decoded  # decoding the tensors is part of checking them
    outputs = []
    for output in result.outputs:
        encoded = tensors.encode_output(output.method, output.values, output.shape)
        if output.classes is not None:
            encoded["parameters"] = {"classes": json.dumps(output.classes)}
        outputs.append(encoded)
    response: dict[str, Any] = {
        "model_name": result.model_name,
        "model_version": result.model_version,
        "outputs": outputs,
    }
    if "id" in body:
        response["id"] = body["id"]
    return response, result


def model_metadata(registry: Registry, name: str, version: str | None = None) -> dict[str, Any]:
    """Return a model's metadata ("Model Metadata Response JSON Object"), the same over REST
    and gRPC: ``{"name", "versions", "platform", "inputs", "outputs"}``.

    :raises ModelNotFoundError: no such model or version.
    """
    bundle = registry.get(name, version)
    manifest = bundle.manifest
    if manifest.layout == "matrix":
        inputs = [
            {
                "name": tensors.MATRIX_INPUT,
                "datatype": "FP64",
                "shape": [-1, len(manifest.inputs)],
            }
        ]
    else:
        inputs = [
            {"name": f.name, "datatype": DATATYPES[f.datatype].wire, "shape": [-1]}
            for f in manifest.inputs
        ]
    return {
        "name": bundle.name,
        "versions": list(registry.model(name).versions),
        "platform": PLATFORM,
        "inputs": inputs,
        "outputs": [_output_metadata(bundle, method) for method in manifest.methods],
    }


def _output_metadata(bundle: Bundle, method: str) -> dict[str, Any]:
    classes = bundle.manifest.classes
    if method == "predict":
        datatype = of_values(set(map(type, classes or [0.0])))
        return {"name": method, "datatype": datatype, "shape": [-1]}
    width = len(classes or [])
    binary_scores = method == "decision_function" and width == 2
    shape = [-1] if binary_scores else [-1, width]
    return {"name": method, "datatype": "FP64", "shape": shape}
