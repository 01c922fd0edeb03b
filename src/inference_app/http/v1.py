"""The native v1 API: list models, read one model's metadata, predict."""

from __future__ import annotations

from typing import Any

from flask import request
from flask.views import MethodView

from inference_app.core.bundle import Bundle, Feature
from inference_app.core.dataplane import DataPlane, InferenceRequest, InferenceResult
from inference_app.core.errors import InvalidInputError
from inference_app.http import observe
from inference_app.http.api import (
    MODEL_HEADER,
    Blueprint,
    default_model_name,
    get_dataplane,
    get_registry,
    routing_key,
)
from inference_app.http.schemas import (
    ModelListResponseSchema,
    ModelResponseSchema,
    PredictRequestSchema,
    PredictResponseSchema,
    SinglePredictRequestSchema,
    SinglePredictResponseSchema,
)

blp = Blueprint(
    "v1",
    __name__,
    description="The native API: models, their metadata, and predictions.",
)


@blp.route("/v1/models")
class Models(MethodView):
    """The models served."""

    @blp.response(200, ModelListResponseSchema)
    def get(self) -> dict[str, Any]:
        """List the models served

        Each with its versions, the default (highest) version, whether it is ready and its task.
        """
        registry = get_registry()
        return {"models": [_summary(name) for name in registry.models]}


@blp.route("/v1/models/<segment:name>")
class ModelDetail(MethodView):
    """One model's metadata, for its default version."""

    @blp.response(200, ModelResponseSchema)
    @blp.alt_response(503, schema=ModelResponseSchema, description="Not warmed up yet")
    @blp.error(404)
    def get(self, name: str) -> tuple[dict[str, Any], int]:
        """Describe a model

        Its inputs (names, datatypes, training ranges), classes, methods, scikit-learn
        version and an example request, for its default version. 503 while it warms up, as
        KServe V1's model readiness check expects.
        """
        return _describe(get_registry().get(name))


@blp.route("/v1/models/<segment:name>/versions/<segment:version>")
class ModelVersionDetail(MethodView):
    """One model version's metadata."""

    @blp.response(200, ModelResponseSchema)
    @blp.alt_response(503, schema=ModelResponseSchema, description="Not warmed up yet")
    @blp.error(404)
    def get(self, name: str, version: str) -> tuple[dict[str, Any], int]:
        """Describe one version of a model"""
        return _describe(get_registry().get(name, version))


@blp.route(
    "/v1/models/<segment:name>/versions/<segment:version>:predict", endpoint="PredictVersion"
)
@blp.route("/v1/models/<segment:name>:predict", endpoint="Predict")
class Predict(MethodView):
    """Predictions of a model: its default version, or the one named."""

    @blp.arguments(PredictRequestSchema())  # one instance: webargs would build one per request
    @blp.response(200, PredictResponseSchema)
    @blp.error(404, 415, 422, 503)
    def post(self, body: dict[str, Any], name: str, version: str | None = None) -> dict[str, Any]:
        """Predict with a model

        Send rows as arrays in the model's feature order or as objects keyed by feature
        name; choose `method`: predict, predict_proba or decision_function. Without a
        version, the model's highest version answers.
        """
        response, result = predict(get_dataplane(), name, version, body, routing_key(name, version))
        observe.note_prediction(result)
        return response


@blp.route("/predict")
class PredictOne(MethodView):
    """The beginner's shape: one row in, one prediction out, default model."""

    @blp.arguments(SinglePredictRequestSchema())
    @blp.doc(
        parameters=[
            {
                "in": "header",
                "name": MODEL_HEADER,
                "schema": {"type": "string"},
                "description": "The model to use; default: DEFAULT_MODEL, else the only model.",
            }
        ]
    )
    @blp.response(200, SinglePredictResponseSchema)
    @blp.error(400, 404, 415, 422, 503)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Predict one row with the default model

        Send `{"instance": row}` (an array in the model's feature order, or an object keyed
        by feature name), `{"input": [values...]}`, the row's features as the body itself
        (`{"feature_a": ..., "feature_b": ...}`), or `{"text": "..."}` for a text model.
        Classifiers also answer the predicted class's probability as `confidence`. The
        model is the one the `X-Model-Name` header names, else the `DEFAULT_MODEL`
        setting, else the only model served.
        """
        bundle = get_registry().get(default_model_name(request.headers.get(MODEL_HEADER)))
        method = body.pop("method", "predict")
        row = single_row(body, bundle)
        confident = (
            method == "predict"
            and bundle.manifest.classes is not None
            and "predict_proba" in bundle.manifest.methods
        )
        methods = ("predict", "predict_proba") if confident else (method,)
        result = _infer(
            InferenceRequest(
                model=bundle.name,
                methods=methods,
                instances=[row],
                routing_key=routing_key(bundle.name),
            )
        )
        response = batch_response(result)
        response["prediction"] = response.pop("predictions")[0]
        if confident:
            probabilities = result.output("predict_proba")
            classes = probabilities.classes or []
            label = response["prediction"]
            row_probabilities = probabilities.values[0]
            response["confidence"] = (
                row_probabilities[classes.index(label)]
                if label in classes
                else max(row_probabilities)
            )
        return response


def single_row(body: dict[str, Any], bundle: Bundle) -> Any:
    """Return the one row of a ``POST /predict`` body (method taken out).

    :raises InvalidInputError: ``instance`` or ``input`` is sent with other fields.
    """
    for key in ("instance", "input"):
        if key in body:
            if len(body) > 1:
                others = ", ".join(sorted(set(body) - {key}))
                raise InvalidInputError(
                    f"send `{key}` alone (with `method`), not with {others}",
                    {key: ["Send this field alone."]},
                )
            return body[key]
    inputs = bundle.manifest.inputs
    if len(inputs) == 1 and inputs[0].kind == "text" and set(body) == {"text"}:
        return {inputs[0].name: body["text"]}
    return body


def predict(
    dataplane: DataPlane,
    name: str,
    version: str | None,
    body: dict[str, Any],
    routing_key: str | None = None,
) -> tuple[dict[str, Any], InferenceResult]:
    """Answer a ``:predict`` request loaded by :class:`PredictRequestSchema`: decode its rows,
    infer, encode.

    :param routing_key: the sticky header's value (:attr:`InferenceRequest.routing_key`).
    :returns: the response (before :class:`PredictResponseSchema`) and the result.
    :raises: as :meth:`inference_app.core.dataplane.DataPlane.infer`.
    """
    inference = InferenceRequest(
        model=name,
        version=version,
        methods=(body["method"],),
        instances=body["instances"],
        routing_key=routing_key,
    )
    result = dataplane.infer(inference)
    return batch_response(result), result


def _infer(inference: InferenceRequest) -> InferenceResult:
    result = get_dataplane().infer(inference)
    observe.note_prediction(result)
    return result


def batch_response(result: InferenceResult) -> dict[str, Any]:
    """Return the ``:predict`` answer for ``result``'s first output, before
    PredictResponseSchema."""
    output = result.outputs[0]
    response: dict[str, Any] = {
        "model_name": result.model_name,
        "model_version": result.model_version,
        "method": output.method,
        "predictions": output.values,
    }
    if output.classes is not None:
        response["classes"] = output.classes
    return response


def _summary(name: str) -> dict[str, Any]:
    registry = get_registry()
    model = registry.model(name)
    summary = {
        "name": name,
        "versions": list(model.versions),
        "default_version": model.default_version,
        "ready": registry.model_ready(name),
        "task": model.default.manifest.task,
    }
    if model.traffic is not None:
        summary["traffic"] = model.traffic.describe()
    return summary


def _describe(bundle: Bundle) -> tuple[dict[str, Any], int]:
    manifest = bundle.manifest
    ready = get_registry().is_ready(bundle)
    return {
        **_summary(bundle.name),
        "version": bundle.version,
        "ready": ready,
        "estimator": manifest.estimator,
        "format": manifest.format,
        "runtime": get_dataplane().engine_of(bundle),
        "layout": manifest.layout,
        "inputs": [describe_feature(feature, bundle) for feature in manifest.inputs],
        "classes": None if manifest.classes is None else list(manifest.classes),
        "methods": list(manifest.methods),
        "sklearn_version": manifest.sklearn_version,
        "created": manifest.created,
        "sha256": manifest.sha256,
        "warnings": list(bundle.warnings),
        "load_errors": list(get_registry().load_errors.get(bundle.name, [])),
        "example_request": example_request(bundle),
    }, 200 if ready else 503


def example_request(bundle: Bundle, rows: int = 2) -> dict[str, Any]:
    """Return a request body for ``:predict`` built from the bundle's reference rows."""
    names = bundle.manifest.feature_names
    reference = bundle.manifest.reference_rows[:rows]
    return {"instances": [dict(zip(names, row, strict=True)) for row in reference]}


def describe_feature(feature: Feature, bundle: Bundle) -> dict[str, Any]:
    """Return what ``GET /v1/models/<name>`` says of one input."""
    described: dict[str, Any] = {
        "name": feature.name,
        "datatype": feature.datatype,
        "kind": feature.kind,
        "nullable": feature.nullable,
        "min": feature.min,
        "max": feature.max,
    }
    if feature.kind == "categorical":
        described["categories"] = list(feature.categories or ())
        described["unknown_categories"] = feature.unknown_categories
    histogram = bundle.manifest.reference.get("histograms", {}).get(feature.name, {})
    if feature.kind == "text" and "lengths" in histogram:
        described["lengths"] = histogram["lengths"]
    return described
