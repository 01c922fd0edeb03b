"""The flask-smorest Api, its JSON parsing and blueprints, and the per-app services."""

from __future__ import annotations

import json
import time
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import flask_smorest
import marshmallow as ma
import orjson
from flask import Flask, Request, current_app, g, request
from flask.json.provider import DefaultJSONProvider
from webargs.flaskparser import FlaskParser, abort, is_json_request
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.routing import BaseConverter
from werkzeug.sansio.response import Response as WerkzeugResponse

from inference_app import config
from inference_app.core.dataplane import DataPlane
from inference_app.core.errors import NoDefaultModelError
from inference_app.core.registry import Registry
from inference_app.http import errors

EXTENSION = "inference_app"


class Server(Flask):
    """The Flask app class: no view here is a coroutine, so none is checked for being one
    (flask-smorest wraps each view in several layers, each checked on every request).

    ``fast_path``, when set, may answer a request before Flask does
    (:class:`inference_app.http.fastpath.FastPath`).
    """

    fast_path: Callable[[dict[str, Any], Any], Iterable[bytes] | None] | None = None

    def wsgi_app(self, environ: dict[str, Any], start_response: Any) -> Any:
        """Answer through the fast path if it takes the request, else through Flask."""
        if self.fast_path is not None and environ.get("REQUEST_METHOD") == "POST":
            answer = self.fast_path(environ, start_response)
            if answer is not None:
                return answer
        return super().wsgi_app(environ, start_response)

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        """Return ``func`` as it is."""
        return func


@dataclass(frozen=True)
class Services:
    """The serving core one app uses, kept in ``app.extensions["inference_app"]``."""

    registry: Registry
    dataplane: DataPlane


def init_services(app: Flask, registry: Registry, dataplane: DataPlane) -> None:
    """Attach the registry and dataplane to ``app``."""
    app.extensions[EXTENSION] = Services(registry=registry, dataplane=dataplane)


def get_registry() -> Registry:
    """Return the current app's registry."""
    services: Services = current_app.extensions[EXTENSION]
    return services.registry


def get_dataplane() -> DataPlane:
    """Return the current app's dataplane."""
    services: Services = current_app.extensions[EXTENSION]
    return services.dataplane


#: The request header naming the model on routes that take no model name in their path.
MODEL_HEADER = "X-Model-Name"


def default_model_name(header: str | None = None) -> str:
    """Return the model a route without a model name uses: the one the ``X-Model-Name``
    ``header`` names, else ``DEFAULT_MODEL``, else the only model served.

    With no model loaded, the name is empty, so the lookup answers 404 naming none.

    :raises NoDefaultModelError: several models are served and none is chosen, naming them
        and the two ways to choose.
    """
    if header:
        return header
    models = get_registry().models
    name = config.default_model(current_app, models)
    if not name and len(models) > 1:
        raise NoDefaultModelError(
            f"{len(models)} models are served ({', '.join(models)}) and none is the default: "
            "name one in the X-Model-Name header, or set DEFAULT_MODEL"
        )
    return name


def routing_key(name: str, version: str | None = None) -> str | None:
    """Return the current request's value of the header that routes model ``name``
    (``traffic.json``'s ``sticky``), when it names no ``version``; else ``None``."""
    if version is not None:
        return None
    traffic = get_registry().traffic(name)
    if traffic is None or traffic.sticky is None:
        return None
    return request.headers.get(traffic.sticky)


#: A model name or version in a URL: one path segment, no ``:`` (as ``bundle.NAME_PATTERN``).
SEGMENT = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}"


class SegmentConverter(BaseConverter):
    """Match a model name or version, so that ``iris:predict`` is never taken for a name."""

    regex = SEGMENT


def record_stage(stage: str, seconds: float) -> None:
    """Add ``seconds`` to the current request's time in ``stage``.

    :param stage: ``parse``, ``validate``, ``predict`` or ``serialise``.
    """
    stages: dict[str, float] | None = g.get("stages")
    if stages is not None:
        stages[stage] = stages.get(stage, 0.0) + seconds


class JSONProvider(DefaultJSONProvider):
    """Flask's JSON through orjson, with the standard library's messages for bad input.

    Outputs must already be finite: :func:`~inference_app.core.dataplane.json_values` refuses
    NaN and infinity in predictions, and the standard library path refuses them elsewhere.
    """

    sort_keys = False
    #: orjson options: error bodies key rows by their index (an int).
    options = orjson.OPT_NON_STR_KEYS

    def response(self, *args: Any, **kwargs: Any) -> WerkzeugResponse:
        """Serialise a JSON response, timing it as the ``serialise`` stage."""
        started = time.perf_counter()
        body = self._dump_bytes(self._prepare_response_obj(args, kwargs))
        # Flask types the app's response class by its sans-IO base, whose first argument differs.
        response: WerkzeugResponse = self._app.response_class(body, mimetype=self.mimetype)  # type: ignore[arg-type]
        record_stage("serialise", time.perf_counter() - started)
        return response

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        """Serialise ``obj``; with formatting options (``indent``), the standard library does,
        raising on NaN and infinity."""
        if kwargs:
            kwargs.setdefault("allow_nan", False)
            return super().dumps(obj, **kwargs)
        return self._dump_bytes(obj).decode()

    def _dump_bytes(self, obj: Any) -> bytes:
        try:
            return orjson.dumps(obj, default=self.default, option=self.options)
        except orjson.JSONEncodeError:  # e.g. a lone surrogate echoed back in an error
            return json.dumps(obj, default=self.default, ensure_ascii=True).encode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        """Parse JSON text.

        Valid JSON takes orjson's fast path. Anything orjson refuses is parsed again by the
        standard library, which accepts ``NaN``, ``Infinity`` and numbers beyond float64 (so
        that the row checks can name the row and feature at fault) and words its errors.

        :raises json.JSONDecodeError: malformed text, or nesting deeper than the
            interpreter's recursion limit.
        :raises UnicodeDecodeError: bytes that are not UTF-8.
        """
        if not kwargs:
            try:
                return orjson.loads(s)
            except orjson.JSONDecodeError:
                pass
        if isinstance(s, bytes):
            s = s.decode("utf-8")  # strict: JSON is UTF-8 (RFC 8259, section 8.1)
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise json.JSONDecodeError("JSON nested too deeply", "(body)", 0) from None


def load_json(body: bytes) -> Any:
    """Parse a request body, timed as the ``parse`` stage, within ``MAX_JSON_DEPTH``.

    :raises json.JSONDecodeError: malformed JSON, an empty body included (webargs would take
        an error on an empty document for a missing body, which it is not).
    :raises werkzeug.exceptions.BadRequest: nesting deeper than ``MAX_JSON_DEPTH``.
    """
    started = time.perf_counter()
    try:
        data = current_app.json.loads(body)
    except json.JSONDecodeError as error:
        raise json.JSONDecodeError(error.msg, error.doc or "(empty body)", error.pos) from None
    finally:
        record_stage("parse", time.perf_counter() - started)
    check_depth(data, current_app.config["MAX_JSON_DEPTH"])
    return data


def check_depth(value: Any, limit: int) -> None:
    """Refuse JSON nested deeper than ``limit`` arrays and objects.

    Walks one level at a time and descends only into containers: a batch of numeric rows
    costs one ``set(map(type, row))`` per row.

    :raises werkzeug.exceptions.BadRequest: the document is nested too deeply.
    """
    level: list[Any] = [value] if isinstance(value, list | dict) else []
    for _ in range(limit):
        deeper: list[Any] = []
        for item in level:
            children = item.values() if type(item) is dict else item
            kinds = set(map(type, children))
            if list in kinds or dict in kinds:
                deeper.extend(child for child in children if type(child) in (list, dict))
        if not deeper:
            return
        level = deeper
    abort(400, message=f"The JSON is nested more than {limit} levels deep (MAX_JSON_DEPTH)")


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
        return load_json(req.get_data(cache=True))

    def _handle_invalid_json_error(
        self, error: Exception, req: Request, *args: Any, **kwargs: Any
    ) -> typing.NoReturn:
        abort(
            400,
            message=f"The body is not valid JSON ({error}); send a JSON object.",
            messages={"json": ["Invalid JSON body."]},
        )


class Blueprint(flask_smorest.Blueprint):  # type: ignore[misc]
    """A flask-smorest blueprint whose JSON bodies go through :class:`JSONBodyParser`.

    :param error_response: the response component documenting its errors (``"ERROR"``:
        the native envelope; see :data:`ERROR_RESPONSES`).
    """

    ARGUMENTS_PARSER = JSONBodyParser()

    def __init__(self, *args: Any, error_response: str = "ERROR", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.error_response = error_response

    def _prepare_response_doc(self, doc: Any, doc_info: Any, **kwargs: Any) -> Any:
        """Document this blueprint's error envelope as every operation's default response."""
        responses = doc_info.setdefault("response", {}).setdefault("responses", {})
        responses.setdefault("default", []).append(self.error_response)
        return super()._prepare_response_doc(doc, doc_info, **kwargs)

    def error(self, *codes: int) -> Any:
        """Document error responses by status, in this blueprint's envelope."""

        def decorate(view: Any) -> Any:
            for code in codes:
                view = self.alt_response(
                    code,
                    schema=ERROR_SCHEMAS[self.error_response],
                    description=HTTP_STATUS_CODES[code],
                )(view)
            return view

        return decorate


class NativeErrorSchema(ma.Schema):
    """The native API's error envelope (flask-smorest's)."""

    code = ma.fields.Integer(required=True, metadata={"description": "HTTP status code"})
    status = ma.fields.String(required=True, metadata={"description": "HTTP status name"})
    message = ma.fields.String(required=True, metadata={"description": "What to send instead"})
    errors = ma.fields.Dict(metadata={"description": "Where: row index, then feature name"})


class V2ErrorSchema(ma.Schema):
    """The Open Inference Protocol's error body."""

    error = ma.fields.String(required=True)


class MLflowErrorSchema(ma.Schema):
    """MLflow's scoring-server error body."""

    error_code = ma.fields.String(required=True)
    message = ma.fields.String(required=True)


#: Each protocol's error envelope, by response component name.
ERROR_SCHEMAS: dict[str, type[ma.Schema]] = {
    "ERROR": NativeErrorSchema,
    "V2_ERROR": V2ErrorSchema,
    "MLFLOW_ERROR": MLflowErrorSchema,
}


class Api(flask_smorest.Api):  # type: ignore[misc]
    """flask-smorest's Api, answering HTTP errors in the dialect of the request's protocol."""

    # Each blueprint documents its own protocol's envelope (Blueprint.error_response).
    DEFAULT_ERROR_RESPONSE_NAME = None

    def handle_http_exception(self, error: HTTPException) -> tuple[dict[str, Any], int, Any]:
        """Answer any HTTP error; see :func:`inference_app.http.errors.handle_http_exception`."""
        return errors.handle_http_exception(error)


def init_app(app: Flask) -> Api:
    """Create the Api over ``app``, with JSON and error handling in place."""
    app.json = JSONProvider(app)
    app.url_map.converters["segment"] = SegmentConverter
    api = Api(app)
    api.register_converter(
        SegmentConverter, lambda converter: {"type": "string", "pattern": SEGMENT}
    )
    for name, schema in ERROR_SCHEMAS.items():
        api.spec.components.response(
            name,
            {"description": "Error", "content": {"application/json": {"schema": schema}}},
        )
    errors.init_app(app)
    return api
