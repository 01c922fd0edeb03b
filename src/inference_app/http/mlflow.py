"""MLflow's scoring-server contract, shared by SageMaker containers: ping, version, invocations.

The request formats are MLflow 2's (``mlflow.pyfunc.scoring_server``): a JSON object with
exactly one of ``dataframe_split``, ``dataframe_records``, ``instances`` or ``inputs`` (and
optional ``params``), or CSV with a header row.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from flask import Response, request
from flask.views import MethodView
from marshmallow import Schema, ValidationError, fields, validates_schema
from webargs.flaskparser import abort

from inference_app import __version__
from inference_app.core.dataplane import InferenceRequest
from inference_app.core.errors import InvalidInputError
from inference_app.http import observe
from inference_app.http.api import (
    MODEL_HEADER,
    Blueprint,
    default_model_name,
    get_dataplane,
    get_registry,
    load_json,
    routing_key,
)
from inference_app.http.schemas import ROW_SCHEMA, Array, Rows

INPUT_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")
#: The response header naming the model version that answered (MLflow's body has no room).
VERSION_HEADER = "X-Model-Version"


class DataFrameSplitSchema(Schema):
    """``DataFrame.to_json(orient="split")``: column names, rows, and an index (ignored)."""

    columns = fields.List(fields.Raw())
    data = Array(required=True)
    index = fields.List(fields.Raw())


class InvocationsRequestSchema(Schema):
    """An MLflow 2 scoring request: exactly one input field, optional ``params``."""

    dataframe_split = fields.Nested(DataFrameSplitSchema)
    dataframe_records = Rows(
        metadata={
            "description": "`DataFrame.to_json(orient='records')`",
            "items": {"type": "object"},
        }
    )
    instances = Rows(metadata={"description": "Rows: arrays or objects"})
    inputs = fields.Raw(
        metadata={
            "description": "Rows (an array), or columns (an object of arrays)",
            "oneOf": [
                {"type": "array", "items": ROW_SCHEMA, "minItems": 1},
                {"type": "object", "additionalProperties": {"type": "array", "minItems": 1}},
            ],
        }
    )
    params = fields.Dict(metadata={"description": "Accepted; scikit-learn models take none."})

    @validates_schema(pass_original=True)
    def _one_input(self, data: dict[str, Any], original: Any, **kwargs: Any) -> None:
        given = [key for key in INPUT_KEYS if key in data]
        if len(given) != 1:
            raise ValidationError(
                f"Send exactly one of {', '.join(INPUT_KEYS)}; got "
                f"{', '.join(given) if given else 'none'}."
            )


class InvocationsResponseSchema(Schema):
    """Predictions, one per row."""

    predictions = Array(required=True)


blp = Blueprint(
    "mlflow",
    __name__,
    description="MLflow's scoring server and SageMaker's container contract.",
    error_response="MLFLOW_ERROR",
)

_REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": InvocationsRequestSchema,
            "example": {
                "dataframe_split": {
                    "columns": [
                        "sepal length (cm)",
                        "sepal width (cm)",
                        "petal length (cm)",
                        "petal width (cm)",
                    ],
                    "data": [[5.1, 3.5, 1.4, 0.2]],
                }
            },
        },
        "text/csv": {
            "schema": {"type": "string"},
            "example": "sepal length (cm),sepal width (cm),petal length (cm),petal width (cm)\n"
            "5.1,3.5,1.4,0.2\n",
        },
    },
}


@blp.route("/ping")
class Ping(MethodView):
    """SageMaker's health check."""

    @blp.doc(responses={"200": {"description": "Every model is ready"}}, security=[])
    @blp.error(503)
    def get(self) -> Response:
        """Say whether the server is ready"""
        ready, reason = get_registry().readiness()
        if not ready:
            abort(503, message=reason)
        return Response("\n", status=200, mimetype="application/json")


@blp.route("/version")
class Version(MethodView):
    """The server's version."""

    @blp.doc(responses={"200": {"description": "The version, as text"}})
    def get(self) -> Response:
        """Give the server's version"""
        return Response(__version__, mimetype="text/plain")


@blp.route("/invocations")
class Invocations(MethodView):
    """Predictions, MLflow style."""

    @blp.doc(
        requestBody=_REQUEST_BODY,
        parameters=[
            {
                "in": "header",
                "name": MODEL_HEADER,
                "schema": {"type": "string"},
                "description": "The model to use; default: the DEFAULT_MODEL setting.",
            }
        ],
    )
    @blp.response(
        200,
        InvocationsResponseSchema,
        headers={
            MODEL_HEADER: {"description": "The model that answered", "schema": {"type": "string"}},
            VERSION_HEADER: {
                "description": "The model version that answered",
                "schema": {"type": "string"},
            },
        },
    )
    @blp.error(400, 404, 415, 503)
    def post(self) -> tuple[dict[str, Any], int, dict[str, str]]:
        """Predict, as MLflow's scoring server does

        JSON with one of `dataframe_split`, `dataframe_records`, `instances` or `inputs`, or
        CSV with a header row. The model is the one the `X-Model-Name` header names, else
        the default model. The `X-Model-Name` and `X-Model-Version` response headers say
        which version answered.
        """
        name = default_model_name(request.headers.get(MODEL_HEADER))
        if request.mimetype == "text/csv":
            rows = _csv_columns(request.get_data())
        elif request.mimetype == "application/json":
            rows = _json_rows(request.get_data())
        else:
            abort(
                415,
                message="Send Content-Type: application/json (MLflow's JSON formats) or "
                "text/csv (with a header row)",
            )
        result = get_dataplane().infer(
            InferenceRequest(model=name, routing_key=routing_key(name), **rows)
        )
        observe.note_prediction(result)
        headers = {MODEL_HEADER: result.model_name, VERSION_HEADER: result.model_version}
        return {"predictions": result.outputs[0].values}, 200, headers


def _json_rows(body: bytes) -> dict[str, Any]:
    """Decode MLflow's JSON formats into :class:`InferenceRequest` fields: ``instances``
    (rows) or ``columns`` (``dataframe_split`` with columns, ``inputs`` as columns)."""
    try:
        data = load_json(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        abort(400, message=f"The body is not valid JSON ({error})")
    if (
        isinstance(data, dict)
        and not set(INPUT_KEYS) & set(data)
        and {"columns", "data"} & set(data)
    ):
        abort(
            400,
            message="This is MLflow 1.x's pandas-split format; MLflow 2 wraps it: send "
            '{"dataframe_split": {"columns": [...], "data": [[...]]}}',
        )
    if isinstance(data, list):
        abort(
            400,
            message="This is a bare list of rows (DataFrame.to_json(orient='records')); MLflow "
            '2 wraps it: send {"dataframe_records": [...]}',
        )
    try:
        loaded: dict[str, Any] = InvocationsRequestSchema().load(data)
    except ValidationError as error:
        abort(400, messages={"json": error.messages})
    if "dataframe_split" in loaded:
        split = loaded["dataframe_split"]
        rows: list[Any] = split["data"]
        columns = split.get("columns")
        if columns is None:
            return {"instances": rows, "where": "dataframe_split"}
        if any(type(row) is not list or len(row) != len(columns) for row in rows):
            raise InvalidInputError(
                f"dataframe_split: every row of `data` must hold {len(columns)} values, one "
                "per column"
            )
        if len(set(map(str, columns))) != len(columns):
            raise InvalidInputError("dataframe_split: a column is named twice")
        by_name = {str(column): [row[i] for row in rows] for i, column in enumerate(columns)}
        return {"columns": by_name, "where": "dataframe_split"}
    key = next(key for key in INPUT_KEYS if key in loaded)
    value = loaded[key]
    if isinstance(value, dict):  # columns: {"feature": [values], ...}
        if any(type(column) is not list for column in value.values()):
            raise InvalidInputError(f"{key}: every column must be an array of the same length")
        return {"columns": value, "where": key}
    if type(value) is not list:
        raise InvalidInputError(f"{key}: send an array of rows or an object of columns")
    return {"instances": value, "where": key}


def _csv_columns(body: bytes) -> dict[str, Any]:
    """Parse CSV with a header row into columns of text cells, typed later by the model's
    features; an unnamed first column is a pandas index and is dropped."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        abort(400, message="The CSV is not UTF-8")
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader, None)
        if not header:
            abort(400, message="The CSV is empty: send a header row of feature names, then rows")
        skip = 1 if header[0] == "" else 0
        names = header[skip:]
        if len(set(names)) != len(names):
            abort(400, message="The CSV header names a column twice")
        columns: dict[str, list[str]] = {name: [] for name in names}
        for number, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                abort(400, message=f"CSV line {number}: {len(row)} cells for {len(header)} columns")
            for name, cell in zip(names, row[skip:], strict=True):
                columns[name].append(cell)
    except csv.Error as error:
        abort(400, message=f"CSV line {reader.line_num}: {error}")
    return {"columns": columns, "cells": True, "where": "csv"}
