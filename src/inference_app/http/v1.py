"""The native v1 API: list models, read one model's metadata, predict."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView

from inference_app.core.bundle import Bundle
from inference_app.core.runtime import Prediction
from inference_app.http import observe
from inference_app.http.api import Blueprint, default_model_name, get_registry, get_runtime
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
        return batch_response(_predict(name, version, body["instances"], body["method"]))


@blp.route("/predict")
class PredictOne(MethodView):
    """The beginner's shape: one row in, one prediction out, default model."""

    @blp.arguments(SinglePredictRequestSchema())
    @blp.response(200, SinglePredictResponseSchema)
    @blp.error(404, 415, 422, 503)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Predict one row with the default model

        The default model is the `DEFAULT_MODEL` setting, else the first model by name.
        """
        prediction = _predict(default_model_name(), None, [body["instance"]], body["method"])
        response = batch_response(prediction)
        response["prediction"] = response.pop("predictions")[0]
        return response


def _predict(name: str, version: str | None, instances: list[Any], method: str) -> Prediction:
    prediction = get_runtime().predict(name, instances, version=version, method=method)
    observe.note_prediction(prediction)
    return prediction


def batch_response(prediction: Prediction) -> dict[str, Any]:
    """Return the ``:predict`` answer for ``prediction``, before PredictResponseSchema."""
    response: dict[str, Any] = {
        "model_name": prediction.model_name,
        "model_version": prediction.model_version,
        "method": prediction.method,
        "predictions": prediction.outputs,
    }
    if prediction.classes is not None:
        response["classes"] = prediction.classes
    return response


def _summary(name: str) -> dict[str, Any]:
    registry = get_registry()
    model = registry.model(name)
    return {
        "name": name,
        "versions": list(model.versions),
        "default_version": model.default_version,
        "ready": registry.model_ready(name),
        "task": model.default.manifest.task,
    }


def _describe(bundle: Bundle) -> tuple[dict[str, Any], int]:
    manifest = bundle.manifest
    ready = get_registry().is_ready(bundle)
    return {
        **_summary(bundle.name),
        "version": bundle.version,
        "ready": ready,
        "estimator": manifest.estimator,
        "format": manifest.format,
        "runtime": get_runtime().engine_of(bundle),
        "inputs": [
            {"name": f.name, "datatype": f.datatype, "min": f.min, "max": f.max}
            for f in manifest.inputs
        ],
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
