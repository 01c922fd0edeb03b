"""Interactive docs: Swagger UI from local package files, and one documented operation per model."""

from __future__ import annotations

from typing import Any

import swagger_ui_bundle
from flask import Blueprint, Flask
from werkzeug.routing import Rule

from inference_app.core.bundle import Bundle, Feature
from inference_app.core.datatypes import DATATYPES
from inference_app.core.registry import Registry
from inference_app.http.api import Api
from inference_app.http.v1 import example_request

TAG = "models"
#: How many categories a feature's description lists.
SHOWN_CATEGORIES = 20

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
    max_text_length = app.config["MAX_TEXT_LENGTH"]
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
        _document_model(api, model.default, max_rows, max_text_length)
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
    types = {DATATYPES[feature.datatype].openapi["type"] for feature in manifest.inputs}
    items: dict[str, Any] = {"type": types.pop()} if len(types) == 1 else {}
    if any(feature.nullable for feature in manifest.inputs):
        items["nullable"] = True
    values = {
        "type": "array",
        "description": "The values in the model's feature order.",
        "items": items,
        "minItems": width,
        "maxItems": width,
    }
    return {"oneOf": [{"$ref": f"#/components/schemas/{_record_name(bundle)}"}, values]}


def _document_model(api: Api, bundle: Bundle, max_rows: int, max_text_length: int) -> None:
    manifest = bundle.manifest
    record = _record_name(bundle)
    api.spec.components.schema(
        record,
        {
            "type": "object",
            "description": f"One row for model {bundle.name}, keyed by feature name.",
            "properties": {
                feature.name: feature_schema(feature, max_text_length)
                for feature in manifest.inputs
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


def feature_schema(feature: Feature, max_text_length: int) -> dict[str, Any]:
    """Return the OpenAPI 3.0 schema of one feature's value: its type and format, ``enum``
    for a categorical feature whose encoder refuses others, ``nullable`` where a value may
    be missing, ``maxLength`` for strings, and its training range in the description.

    :param max_text_length: the ``MAX_TEXT_LENGTH`` setting, in characters.
    """
    prop: dict[str, Any] = dict(DATATYPES[feature.datatype].openapi)
    if feature.kind == "categorical" and feature.categories is not None:
        categories = list(feature.categories)
        if feature.unknown_categories == "error":
            prop["enum"] = categories + ([None] if feature.nullable else [])
            prop["description"] = "One of the categories seen in training."
        else:
            shown = ", ".join(map(str, categories[:SHOWN_CATEGORIES]))
            more = " ..." if len(categories) > SHOWN_CATEGORIES else ""
            prop["description"] = f"Seen in training: {shown}{more}; others are accepted."
    elif feature.kind == "text":
        prop["description"] = "Free text."
    elif feature.min is not None and feature.max is not None:
        low, high = feature.min, feature.max
        if isinstance(low, float) and isinstance(high, float):
            prop["description"] = f"Seen in training from {low:g} to {high:g}."
        else:
            prop["description"] = f"Seen in training from {low} to {high}."
    if DATATYPES[feature.datatype].wire == "BYTES":
        prop["maxLength"] = max_text_length
    if feature.nullable:
        prop["nullable"] = True
    return prop
