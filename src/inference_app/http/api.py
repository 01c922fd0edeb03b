"""The flask-smorest Api: JSON parsing, one error envelope for every status, per-app services."""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass
from typing import Any

import flask_smorest
from flask import Flask, Request, current_app
from flask.json.provider import DefaultJSONProvider
from webargs.flaskparser import FlaskParser, abort, is_json_request
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES

from inference_app.core.errors import (
    InferenceAppError,
    InvalidInputError,
    ModelNotFoundError,
    ModelNotReadyError,
)
from inference_app.core.registry import Registry
from inference_app.core.runtime import Runtime

EXTENSION = "inference_app"
#: The HTTP status of each domain error a request can meet; any other error is a 500.
STATUS_OF_ERROR: dict[type[InferenceAppError], int] = {
    ModelNotFoundError: 404,
    ModelNotReadyError: 503,
    InvalidInputError: 422,
}


@dataclass(frozen=True)
class Services:
    """The serving core one app uses, kept in ``app.extensions["inference_app"]``."""

    registry: Registry
    runtime: Runtime


def init_services(app: Flask, registry: Registry, runtime: Runtime) -> None:
    """Attach the registry and runtime to ``app``."""
    app.extensions[EXTENSION] = Services(registry=registry, runtime=runtime)


def get_registry() -> Registry:
    """Return the current app's registry."""
    services: Services = current_app.extensions[EXTENSION]
    return services.registry


def get_runtime() -> Runtime:
    """Return the current app's runtime."""
    services: Services = current_app.extensions[EXTENSION]
    return services.runtime


class JSONProvider(DefaultJSONProvider):
    """Flask's JSON with strict output and a clean error for deeply nested input."""

    sort_keys = False

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        """Serialise ``obj``; NaN and infinity raise instead of producing invalid JSON."""
        kwargs.setdefault("allow_nan", False)
        return super().dumps(obj, **kwargs)

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        """Parse JSON text.

        :raises json.JSONDecodeError: malformed text, or nesting deeper than the
            interpreter's recursion limit.
        """
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise json.JSONDecodeError("JSON nested too deeply", "(body)", 0) from None


class JSONBodyParser(FlaskParser):
    """webargs' parser with 415 for non-JSON bodies and the app's JSON provider."""

    def _raw_load_json(self, req: Request) -> Any:
        if not is_json_request(req):
            abort(
                415,
                message=(
                    "Send the request body as JSON with the header Content-Type: application/json"
                ),
            )
        try:
            return current_app.json.loads(req.get_data(cache=True))
        except json.JSONDecodeError as error:
            # webargs takes an error on an empty document for a missing body: it is a bad one.
            raise json.JSONDecodeError(error.msg, error.doc or "(empty body)", error.pos) from None

    def _handle_invalid_json_error(
        self, error: Exception, req: Request, *args: Any, **kwargs: Any
    ) -> typing.NoReturn:
        abort(
            400,
            message=f"The body is not valid JSON ({error}); send a JSON object.",
            messages={"json": ["Invalid JSON body."]},
        )


class Blueprint(flask_smorest.Blueprint):  # type: ignore[misc]
    """A flask-smorest blueprint whose JSON bodies go through :class:`JSONBodyParser`."""

    ARGUMENTS_PARSER = JSONBodyParser()


class Api(flask_smorest.Api):  # type: ignore[misc]
    """flask-smorest's Api, keeping Werkzeug's headers (``Allow`` on 405) in error responses."""

    def handle_http_exception(self, error: HTTPException) -> tuple[dict[str, Any], int, Any]:
        """Answer any HTTP error with ``{"code", "status", "message", "errors"}``."""
        payload, code, headers = super().handle_http_exception(error)
        payload.setdefault("message", _summary(payload.get("errors")) or _description(error))
        kept = [(key, value) for key, value in error.get_headers() if key != "Content-Type"]
        return payload, code, [*kept, *dict(headers or {}).items()]


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


def handle_domain_error(error: InferenceAppError) -> tuple[dict[str, Any], int]:
    """Answer a serving-core error with the same envelope and its mapped status."""
    status = next(STATUS_OF_ERROR[kind] for kind in type(error).__mro__ if kind in STATUS_OF_ERROR)
    payload: dict[str, Any] = {
        "code": status,
        "status": HTTP_STATUS_CODES[status],
        "message": str(error),
    }
    if isinstance(error, InvalidInputError) and error.errors:
        payload["errors"] = {"json": error.errors}
    return payload, status


def init_app(app: Flask) -> Api:
    """Create the Api over ``app``, with JSON and error handling in place."""
    app.json = JSONProvider(app)
    api = Api(app)
    for kind in STATUS_OF_ERROR:
        app.register_error_handler(kind, handle_domain_error)
    return api
