"""Every error answer: domain and HTTP errors mapped to statuses and each protocol's envelope."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app, g, request
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES

from inference_app.core.errors import (
    InferenceAppError,
    InvalidInputError,
    ModelNotFoundError,
    ModelNotReadyError,
    NoDefaultModelError,
)

#: What an envelope is built from: the status, one sentence, and marshmallow-style details.
Envelope = Callable[[int, str, Mapping[str, Any] | None], dict[str, Any]]


def native_envelope(code: int, message: str, errors: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return flask-smorest's ``{"code", "status", "message", "errors"}``."""
    payload: dict[str, Any] = {"code": code, "status": HTTP_STATUS_CODES.get(code, "Error")}
    payload["message"] = message
    if errors:
        payload["errors"] = dict(errors)
    return payload


def v2_envelope(code: int, message: str, errors: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return the Open Inference Protocol's ``{"error": "..."}`` (required_api.md, "Errors")."""
    return {"error": message}


#: MLflow's error codes (``mlflow.protos.databricks_pb2``) by HTTP status.
MLFLOW_ERROR_CODES = {
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "RESOURCE_DOES_NOT_EXIST",
    429: "REQUEST_LIMIT_EXCEEDED",
    500: "INTERNAL_ERROR",
    503: "TEMPORARILY_UNAVAILABLE",
}


def mlflow_envelope(code: int, message: str, errors: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return MLflow's scoring-server ``{"error_code", "message"}``, with no stack trace."""
    return {"error_code": MLFLOW_ERROR_CODES.get(code, "BAD_REQUEST"), "message": message}


@dataclass(frozen=True)
class Dialect:
    """A protocol's error conventions.

    :param prefixes: the request paths it owns.
    :param input_status: the status of a request whose rows do not fit the model.
    :param envelope: builds the error body.
    """

    name: str
    prefixes: tuple[str, ...]
    input_status: int
    envelope: Envelope


NATIVE = Dialect("native", ("/",), 422, native_envelope)
V2 = Dialect("v2", ("/v2/", "/v2"), 400, v2_envelope)
MLFLOW = Dialect("mlflow", ("/invocations", "/ping", "/version"), 400, mlflow_envelope)
DIALECTS = (V2, MLFLOW)

#: The HTTP status of each domain error a request can meet (InvalidInputError: the dialect's).
STATUS_OF_ERROR: dict[type[InferenceAppError], int] = {
    ModelNotFoundError: 404,
    NoDefaultModelError: 400,
    ModelNotReadyError: 503,
}


def dialect() -> Dialect:
    """Return the dialect of the current request, by its path."""
    path = request.path
    for candidate in DIALECTS:
        if any(path == prefix or path.startswith(prefix + "/") for prefix in candidate.prefixes):
            return candidate
    return NATIVE


def handle_http_exception(error: HTTPException) -> tuple[dict[str, Any], int, list[Any]]:
    """Answer any HTTP error (aborts, Werkzeug's own, unhandled exceptions as 500).

    Werkzeug's headers are kept, so a 405 keeps its ``Allow``.
    """
    code = error.code or 500
    data: Mapping[str, Any] = getattr(error, "data", None) or {}
    errors = data.get("errors", data.get("messages"))
    message = data.get("message") or _summary(errors) or _description(error)
    headers = [(key, value) for key, value in error.get_headers() if key != "Content-Type"]
    headers += list(dict(data.get("headers") or {}).items())
    g.error_kind = g.get("error_kind") or f"http_{code}"
    return dialect().envelope(code, message, errors), code, headers


def handle_domain_error(error: InferenceAppError) -> tuple[dict[str, Any], int]:
    """Answer a serving-core error with the current dialect's status and envelope."""
    current = dialect()
    g.error_kind = (
        re.sub(r"(?<!^)(?=[A-Z])", "_", type(error).__name__).lower().removesuffix("_error")
    )
    if isinstance(error, InvalidInputError):
        status = current.input_status
        errors = {"json": error.errors} if error.errors else None
    else:
        status = next(
            STATUS_OF_ERROR[kind] for kind in type(error).__mro__ if kind in STATUS_OF_ERROR
        )
        errors = None
    return current.envelope(status, str(error), errors), status


def init_app(app: Flask) -> None:
    """Register the domain error handler (the Api sends HTTP errors to the other one)."""
    for kind in (*STATUS_OF_ERROR, InvalidInputError):
        app.register_error_handler(kind, handle_domain_error)


def _description(error: HTTPException) -> str:
    """Return what the caller should do about a Werkzeug error raised outside our views."""
    if error.code == 413:
        limit = current_app.config["MAX_CONTENT_LENGTH"]
        return f"The body is larger than {limit} bytes: send fewer rows per request."
    if error.code == 404:
        return "No such route: the routes are listed at /docs and /openapi.json."
    return error.description or HTTP_STATUS_CODES.get(error.code or 500, "Error")


def _summary(errors: Any, prefix: str = "") -> str:
    """Return the first validation message of marshmallow-style ``errors`` with its path."""
    if isinstance(errors, dict):
        for key, value in errors.items():
            found = _summary(value, f"{prefix}{key}.")
            if found:
                return found
    elif isinstance(errors, list) and errors:
        first = errors[0]
        if isinstance(first, str):
            return f"{prefix.rstrip('.')}: {first}" if prefix else first
        return _summary(first, prefix)
    return ""
