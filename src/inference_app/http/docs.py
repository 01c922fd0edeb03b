"""Interactive docs: Swagger UI from local package files, and one documented operation per model."""

from __future__ import annotations

from typing import Any

import swagger_ui_bundle
from flask import Blueprint, Flask
from werkzeug.routing import Rule

from inference_app.core.bundle import Bundle, Feature
from inference_app.core.registry import Registry
from inference_app.http.api import Api
from inference_app.http.v1 import example_request

#: OpenAPI types (3.0, "Data Types") of the bundle datatypes.
JSON_SCHEMA_TYPES = {"FP64": "number", "FP32": "number", "INT64": "integer", "BOOL": "boolean"}
TAG = "models"

blp = Blueprint(
    "swagger_ui",
    __name__,
    static_folder=str(swagger_ui_bundle.swagger_ui_path),
    static_url_path="/docs/static",
)


def init_app(app: Flask, api: Api, registry: Registry, default_model: str) -> None:
    """Serve Swagger UI's files and document a predict operation for each loaded model.

    :param default_model: the model ``POST /predict`` uses, whose row it documents exactly.
    """
    app.register_blueprint(blp)
    max_rows = app.config["MAX_ROWS"]
    schemas = api.spec.components.schemas
    # marshmallow cannot say "one of these two fields"; JSON Schema can.
    schemas["PredictRequest"]["oneOf"] = [{"required": ["instances"]}, {"required": ["inputs"]}]
    for field in ("instances", "inputs"):
        schemas["PredictRequest"]["properties"][field]["maxItems"] = max_rows
    schemas["InvocationsRequest"]["oneOf"] = [
        {"required": [field]}
        for field in ("dataframe_split", "dataframe_records", "instances", "inputs")
    ]
    api.spec.tag(
        {
            "name": TAG,
            "description": "One predict operation per loaded model, with its feature names, "
            "training ranges and an example built from its training data.",
        }
    )
    for model in registry.models.values():
        _document_model(api, model.default, max_rows)
    if default_model in registry.models:
        row = _row_schema(registry.model(default_model).default)
        schemas["SinglePredictRequest"]["properties"]["instance"] = {
            **schemas["SinglePredictRequest"]["properties"]["instance"],
            "oneOf": row["oneOf"],
        }


def _record_name(bundle: Bundle) -> str:
    return f"{bundle.name}.Record"


def _row_schema(bundle: Bundle) -> dict[str, Any]:
    """Return the schema of one row: a record of the model's features, or their values."""
    manifest = bundle.manifest
    width = len(manifest.inputs)
    values = {
        "type": "array",
        "description": "The values in the model's feature order.",
        "items": {"type": "number", "nullable": True} if manifest.allow_nan else {"type": "number"},
        "minItems": width,
        "maxItems": width,
    }
    return {"oneOf": [{"$ref": f"#/components/schemas/{_record_name(bundle)}"}, values]}


def _document_model(api: Api, bundle: Bundle, max_rows: int) -> None:
    manifest = bundle.manifest
    record = _record_name(bundle)
    api.spec.components.schema(
        record,
        {
            "type": "object",
            "description": f"One row for model {bundle.name}, keyed by feature name.",
            "properties": {
                feature.name: _property(feature, manifest.allow_nan) for feature in manifest.inputs
            },
            "required": manifest.feature_names,
            "additionalProperties": False,
        },
    )
    estimator = manifest.estimator.rsplit(".", 1)[-1]
    description = (
        f"A {manifest.task} model ({estimator}), version {bundle.version}, taking "
        f"{len(manifest.inputs)} features."
    )
    if manifest.classes is not None:
        description += f" Classes: {', '.join(map(str, manifest.classes))}."
    api.spec.path(
        # flask-smorest's plugin reads the path from a Werkzeug rule: here one without variables.
        rule=Rule(f"/v1/models/{bundle.name}:predict"),
        operations={
            "post": {
                "tags": [TAG],
                "summary": f"Predict with {bundle.name} ({estimator})",
                "description": description,
                "operationId": f"predict_{bundle.name}",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["instances"],
                                "additionalProperties": False,
                                "properties": {
                                    "instances": {
                                        "type": "array",
                                        "items": _row_schema(bundle),
                                        "minItems": 1,
                                        "maxItems": max_rows,
                                    },
                                    "method": {
                                        "type": "string",
                                        "enum": list(manifest.methods),
                                        "default": "predict",
                                    },
                                },
                            },
                            "example": example_request(bundle),
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "One prediction per row",
                        "content": {"application/json": {"schema": "PredictResponse"}},
                    },
                    "400": "ERROR",
                    "404": "ERROR",
                    "413": "ERROR",
                    "415": "ERROR",
                    "422": "ERROR",
                    "503": "ERROR",
                    "default": "ERROR",
                },
            }
        },
    )


def _property(feature: Feature, allow_nan: bool) -> dict[str, Any]:
    prop: dict[str, Any] = {"type": JSON_SCHEMA_TYPES[feature.datatype]}
    if feature.min is not None and feature.max is not None:
        prop["description"] = f"Seen in training from {feature.min:g} to {feature.max:g}."
    if allow_nan:
        prop["nullable"] = True
    return prop
