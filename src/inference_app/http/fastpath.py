"""The hot path of predictions: ``:predict`` and V2 ``infer`` answered without Flask's work.

Successful predictions are most of a server's traffic, and Flask's request and app contexts,
routing, hooks and flask-smorest's wrappers cost more than the prediction itself
(bench/RESULTS.md). :class:`FastPath` answers a successful
``POST /v1/models/<name>[/versions/<version>]:predict`` or
``POST /v2/models/<name>[/versions/<version>]/infer`` straight from the WSGI environ with the
same schemas, dataplane, metrics, access log line and headers as the Flask route, so its answer
is byte for byte the route's (tests check this). Anything else falls through to Flask before
any answer is written: another route, a body without ``Content-Length`` (or, for ``:predict``,
not JSON), a missing or wrong API key, a full concurrency cap, CORS, or any error at all. The
Flask route then answers from the start (the body read here is handed back), so every error
keeps its one implementation in ``errors.py``.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from flask import Flask

from inference_app import metrics
from inference_app.core.dataplane import DataPlane, InferenceRequest
from inference_app.http import observe, security, v2
from inference_app.http.api import EXTENSION, SEGMENT, Services, check_depth
from inference_app.http.schemas import PredictRequestSchema, PredictResponseSchema
from inference_app.http.v1 import batch_response

StartResponse = Callable[..., Any]


@dataclass(frozen=True)
class Answer:
    """A prediction's answer and what the metrics and the access line say of it."""

    body: dict[str, Any]
    model: str
    version: str
    rows: int
    timings: dict[str, float]
    unseen: Mapping[str, int]


@dataclass(frozen=True)
class Route:
    """A route the fast path answers.

    :param pattern: the path, with groups ``name`` and ``version`` (optional).
    :param protocol: the protocol label of its metrics, as the Flask route's.
    :param labels: the route label without and with a version, as the Flask route's.
    :param json_only: whether only ``Content-Type: application/json`` bodies are taken (the
        V2 route takes bodies without one: ``tritonclient`` sends none).
    :param parse: the body's bytes and the request environ to the loaded JSON.
    :param answer: the dataplane, name, version and loaded JSON to the answer.
    """

    pattern: re.Pattern[str]
    protocol: str
    labels: tuple[str, str]
    json_only: bool
    parse: Callable[[bytes, dict[str, Any], Callable[[bytes], Any]], Any]
    answer: Callable[[DataPlane, str, str | None, Any], Answer]


_predict_request, _predict_response = PredictRequestSchema(), PredictResponseSchema()
_infer_request, _infer_response = v2.InferRequestSchema(), v2.InferResponseSchema()


def _predict(dataplane: DataPlane, name: str, version: str | None, data: Any) -> Answer:
    request = _predict_request.load(data)
    result = dataplane.infer(
        InferenceRequest(
            model=name,
            version=version,
            methods=(request["method"],),
            instances=request["instances"],
        )
    )
    return Answer(
        body=_predict_response.dump(batch_response(result)),
        model=result.model_name,
        version=result.model_version,
        rows=result.rows,
        timings=result.timings,
        unseen=result.unseen,
    )


def _infer(dataplane: DataPlane, name: str, version: str | None, data: Any) -> Answer:
    response, result = v2.infer(dataplane, name, version, _infer_request.load(data))
    return Answer(
        body=_infer_response.dump(response),
        model=result.model_name,
        version=result.model_version,
        rows=result.rows,
        timings=result.timings,
        unseen=result.unseen,
    )


ROUTES = (
    Route(
        pattern=re.compile(
            rf"/v1/models/(?P<name>{SEGMENT})(?:/versions/(?P<version>{SEGMENT}))?:predict"
        ),
        protocol="native",
        labels=("/v1/models/<name>:predict", "/v1/models/<name>/versions/<version>:predict"),
        json_only=True,
        parse=lambda body, environ, loads: loads(body),
        answer=_predict,
    ),
    Route(
        pattern=re.compile(
            rf"/v2/models/(?P<name>{SEGMENT})(?:/versions/(?P<version>{SEGMENT}))?/infer"
        ),
        protocol="v2",
        labels=("/v2/models/<name>/infer", "/v2/models/<name>/versions/<version>/infer"),
        json_only=False,
        parse=lambda body, environ, loads: v2.read_infer_body(
            body, environ.get("HTTP_INFERENCE_HEADER_CONTENT_LENGTH"), loads
        ),
        answer=_infer,
    ),
)


class FastPath:
    """Answer successful predictions of ``app``; see the module docstring.

    :param app: the app, with its services, security guard and JSON provider in place.
    """

    def __init__(self, app: Flask) -> None:
        services: Services = app.extensions[EXTENSION]
        self.dataplane = services.dataplane
        self.guard: security.Guard = app.extensions[security.EXTENSION]
        self.max_content_length: int = app.config["MAX_CONTENT_LENGTH"]
        self.max_depth: int = app.config["MAX_JSON_DEPTH"]
        # CORS adds headers by the request's Origin: that stays with flask-cors.
        self.routes = () if app.config["CORS_ORIGINS"] else ROUTES
        self.json_options: int = app.json.options  # type: ignore[attr-defined]

    def __call__(
        self, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes] | None:
        """Answer the request, or return ``None`` for Flask to answer it.

        When it returns ``None``, ``environ["wsgi.input"]`` still holds the whole body.
        """
        path = environ.get("PATH_INFO", "")
        for route in self.routes:
            match = route.pattern.fullmatch(path)
            if match is not None:
                break
        else:
            return None
        if not self._admissible(environ, route):
            return None
        started = time.perf_counter()
        semaphore = self.guard.semaphore  # taken before the body is read, as Flask's hook does
        if semaphore is not None and not semaphore.acquire(blocking=False):
            return None  # Flask answers 429
        metrics.IN_FLIGHT.inc()
        try:
            length = int(environ["CONTENT_LENGTH"])
            try:
                body = environ["wsgi.input"].read(length)
            except Exception:  # the client went away: Flask answers as for a short body
                body = b""
            answer = None
            if len(body) == length:
                answer = self._answer(environ, route, match, body, started)
        finally:
            metrics.IN_FLIGHT.dec()
            if semaphore is not None:
                semaphore.release()
        if answer is None:
            environ["wsgi.input"] = io.BytesIO(body)
            return None
        payload, headers = answer
        start_response("200 OK", headers)
        return [payload]

    def _admissible(self, environ: dict[str, Any], route: Route) -> bool:
        """Whether the request has a body of known, allowed size (JSON if the route asks)
        and, if keys are asked for, an accepted key."""
        if route.json_only:
            mimetype = environ.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower()
            if mimetype != "application/json":
                return False
        length = environ.get("CONTENT_LENGTH", "")
        if not length.isdigit() or not 0 < int(length) <= self.max_content_length:
            return False
        if not self.guard.digests:
            return True
        key = security.presented_key(
            environ.get("HTTP_AUTHORIZATION", ""), environ.get("HTTP_X_API_KEY")
        )
        return key is not None and self.guard.accepts(key)

    def _loads(self, body: bytes) -> Any:
        """Parse JSON (orjson only: what it refuses, Flask's parser words) within the depth."""
        data = orjson.loads(body)
        check_depth(data, self.max_depth)
        return data

    def _answer(
        self,
        environ: dict[str, Any],
        route: Route,
        match: re.Match[str],
        body: bytes,
        started: float,
    ) -> tuple[bytes, list[tuple[str, str]]] | None:
        """Predict and serialise, or return ``None`` on any error (Flask answers it)."""
        try:
            data = route.parse(body, environ, self._loads)
            parsed = time.perf_counter()
            name, version = match.group("name", "version")
            answer = route.answer(self.dataplane, name, version, data)
            serialising = time.perf_counter()
            payload = orjson.dumps(answer.body, option=self.json_options)
        except Exception:  # any error: Flask answers it, in the route's words, and logs a bug
            return None
        finished = time.perf_counter()
        request_id = observe.request_id(environ.get("HTTP_X_REQUEST_ID"))
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(payload))),
            (observe.REQUEST_ID_HEADER, request_id),
            *security.JSON_POST_HEADERS,
        ]
        observe.account(
            request_id=request_id,
            method="POST",
            path=environ["PATH_INFO"],
            route=route.labels[version is not None],
            kind=route.protocol,
            status=200,
            model=answer.model,
            version=answer.version,
            rows=answer.rows,
            duration=finished - started,
            stages={
                "parse": parsed - started,
                **answer.timings,
                "serialise": finished - serialising,
            },
            remote_addr=environ.get("REMOTE_ADDR"),
            user_agent=environ.get("HTTP_USER_AGENT"),
        )
        observe.count_unseen(answer.model, answer.unseen)
        return payload, headers
