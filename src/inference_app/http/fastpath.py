"""The hot path of native predictions: ``:predict`` answered without Flask's per-request work.

A successful ``POST /v1/models/<name>[/versions/<version>]:predict`` is most of a server's
traffic, and Flask's request and app contexts, routing, hooks and flask-smorest's wrappers
cost more than the prediction itself (bench/RESULTS.md). :class:`FastPath` answers such a
request straight from the WSGI environ with the same schemas, runtime, metrics, access log
line and headers as the Flask route, so its answer is byte for byte the route's (tests check
this). Anything else falls through to Flask before any answer is written: another route, a
body that is not JSON or has no ``Content-Length``, a missing or wrong API key, a full
concurrency cap, CORS, or any error at all. The Flask route then answers from the start (the
body read here is handed back), so every error keeps its one implementation in ``errors.py``.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from flask import Flask

from inference_app import metrics
from inference_app.http import observe, security
from inference_app.http.api import EXTENSION, SEGMENT, Services, check_depth
from inference_app.http.schemas import PredictRequestSchema, PredictResponseSchema
from inference_app.http.v1 import batch_response

#: The ``:predict`` routes taken, with the route label each is counted under (as Flask's).
PREDICT_PATH = re.compile(
    rf"/v1/models/(?P<name>{SEGMENT})(?:/versions/(?P<version>{SEGMENT}))?:predict"
)
ROUTES = {
    False: "/v1/models/<name>:predict",
    True: "/v1/models/<name>/versions/<version>:predict",
}
StartResponse = Callable[..., Any]


class FastPath:
    """Answer successful ``:predict`` requests of ``app``; see the module docstring.

    :param app: the app, with its services, security guard and JSON provider in place.
    """

    def __init__(self, app: Flask) -> None:
        services: Services = app.extensions[EXTENSION]
        self.runtime = services.runtime
        self.guard: security.Guard = app.extensions[security.EXTENSION]
        self.max_content_length: int = app.config["MAX_CONTENT_LENGTH"]
        self.max_depth: int = app.config["MAX_JSON_DEPTH"]
        # CORS adds headers by the request's Origin: that stays with flask-cors.
        self.enabled = not app.config["CORS_ORIGINS"]
        self.request_schema = PredictRequestSchema()
        self.response_schema = PredictResponseSchema()
        self.json_options: int = app.json.options  # type: ignore[attr-defined]

    def __call__(
        self, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes] | None:
        """Answer the request, or return ``None`` for Flask to answer it.

        When it returns ``None``, ``environ["wsgi.input"]`` still holds the whole body.
        """
        match = PREDICT_PATH.fullmatch(environ.get("PATH_INFO", ""))
        if match is None or not self.enabled or not self._admissible(environ):
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
            answer = self._answer(environ, match, body, started) if len(body) == length else None
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

    def _admissible(self, environ: dict[str, Any]) -> bool:
        """Whether the request has a JSON body of known, allowed size and, if keys are asked
        for, an accepted key."""
        mimetype = environ.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower()
        length = environ.get("CONTENT_LENGTH", "")
        if mimetype != "application/json" or not length.isdigit():
            return False
        if not 0 < int(length) <= self.max_content_length:
            return False
        if not self.guard.digests:
            return True
        key = security.presented_key(
            environ.get("HTTP_AUTHORIZATION", ""), environ.get("HTTP_X_API_KEY")
        )
        return key is not None and self.guard.accepts(key)

    def _answer(
        self, environ: dict[str, Any], match: re.Match[str], body: bytes, started: float
    ) -> tuple[bytes, list[tuple[str, str]]] | None:
        """Predict and serialise, or return ``None`` on any error (Flask answers it)."""
        try:
            data = orjson.loads(body)
            check_depth(data, self.max_depth)
            parsed = time.perf_counter()
            request = self.request_schema.load(data)
            name, version = match.group("name", "version")
            prediction = self.runtime.predict(
                name, request["instances"], version=version, method=request["method"]
            )
            serialising = time.perf_counter()
            response = self.response_schema.dump(batch_response(prediction))
            payload = orjson.dumps(response, option=self.json_options)
        except Exception:  # any error: Flask answers it, in the route's words, and logs a bug
            return None
        finished = time.perf_counter()
        request_id = observe.request_id(environ.get("HTTP_X_REQUEST_ID"))
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(payload))),
            (observe.REQUEST_ID_HEADER, request_id),
            *security.SAFE_HEADERS,
            ("Cache-Control", "no-store"),
            ("Content-Security-Policy", security.API_POLICY),
        ]
        stages = {"parse": parsed - started, **prediction.timings}
        stages["serialise"] = finished - serialising
        observe.account(
            request_id=request_id,
            method="POST",
            path=environ["PATH_INFO"],
            route=ROUTES[version is not None],
            kind="native",
            status=200,
            model=prediction.model_name,
            version=prediction.model_version,
            rows=prediction.rows,
            duration=finished - started,
            stages=stages,
            remote_addr=environ.get("REMOTE_ADDR"),
            user_agent=environ.get("HTTP_USER_AGENT"),
        )
        return payload, headers
