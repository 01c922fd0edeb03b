"""The hot path of predictions: ``:predict`` and V2 ``infer`` answered without Flask's work.

Successful predictions are most of a server's traffic, and Flask's request and app contexts,
routing, hooks and flask-smorest's wrappers cost more than the prediction itself
(bench/RESULTS.md). :class:`FastPath` answers a successful
``POST /v1/models/<name>[/versions/<version>]:predict`` or
``POST /v2/models/<name>[/versions/<version>]/infer`` straight from the WSGI environ with the
same schemas, dataplane, metrics, access log line and headers as the Flask route, so its answer
is byte for byte the route's (tests check this). Anything else falls through to Flask before
any answer is written: another route (the routes are the views' own rules, read from the URL
map), a body without ``Content-Length`` (or, for ``:predict``,
not JSON), a missing or wrong API key, a full concurrency cap, CORS, or any error at all. The
Flask route then answers from the start (the body read here is handed back), so every error
keeps its one implementation in ``errors.py``.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from flask import Flask
from marshmallow import Schema
from werkzeug.datastructures import EnvironHeaders

from inference_app import metrics
from inference_app.core.dataplane import DataPlane, InferenceResult
from inference_app.http import observe, security, v1, v2
from inference_app.http.api import EXTENSION, Services, check_depth
from inference_app.http.schemas import PredictRequestSchema, PredictResponseSchema

StartResponse = Callable[..., Any]


@dataclass(frozen=True)
class Protocol:
    """How the fast path answers one protocol's prediction route: the same schemas and the
    same decode, dataplane, encode function as the Flask view.

    :param json_only: whether only ``Content-Type: application/json`` bodies are taken (the
        V2 route takes bodies without one: ``tritonclient`` sends none).
    :param parse: the body's bytes and the request environ to the loaded JSON.
    :param answer: the view's own function: dataplane, name, version, the loaded request and
        the routing key (the sticky header's value) to the response (before the response
        schema) and the inference result.
    """

    request: Schema
    response: Schema
    json_only: bool
    parse: Callable[[bytes, dict[str, Any], Callable[[bytes], Any]], Any]
    answer: Callable[
        [DataPlane, str, str | None, Any, str | None], tuple[dict[str, Any], InferenceResult]
    ]


NATIVE = Protocol(
    request=PredictRequestSchema(),
    response=PredictResponseSchema(),
    json_only=True,
    parse=lambda body, environ, loads: loads(body),
    answer=v1.predict,
)
V2 = Protocol(
    request=v2.InferRequestSchema(),
    response=v2.InferResponseSchema(),
    json_only=False,
    parse=lambda body, environ, loads: v2.read_infer_body(
        body, environ.get("HTTP_INFERENCE_HEADER_CONTENT_LENGTH"), loads
    ),
    answer=v2.infer,
)
#: The Flask endpoints the fast path answers; their rules (paths, converters) are read from
#: the app's URL map, so the routes are defined once, by the views.
ENDPOINTS = {
    "v1.Predict": NATIVE,
    "v1.PredictVersion": NATIVE,
    "v2.ModelInfer": V2,
    "v2.ModelVersionInfer": V2,
}


@dataclass(frozen=True)
class Route:
    """A route the fast path answers: its path pattern, labels and protocol.

    :param pattern: the rule's path as a regular expression, groups named as its variables.
    :param label: the route label of its metrics and access line, as the Flask route's.
    :param protocol: the protocol label, as the Flask route's.
    """

    pattern: re.Pattern[str]
    label: str
    protocol: str
    answers: Protocol


def routes(app: Flask) -> tuple[Route, ...]:
    """Return the fast path's routes, made from ``app``'s URL rules for :data:`ENDPOINTS`."""
    converters = app.url_map.converters
    found = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint not in ENDPOINTS:
            continue
        pattern = ""
        for static, converter, variable in re.findall(
            r"([^<]*)(?:<(?:([^:<>]+):)?([^<>]+)>)?", rule.rule
        ):
            pattern += re.escape(static)
            if variable:
                pattern += f"(?P<{variable}>{converters[converter or 'default'].regex})"
        found.append(
            Route(
                pattern=re.compile(pattern),
                label=observe.route_label(rule.rule),
                protocol=observe.PROTOCOLS[rule.endpoint.split(".")[0]],
                answers=ENDPOINTS[rule.endpoint],
            )
        )
    return tuple(found)


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
        self.routes = () if app.config["CORS_ORIGINS"] else routes(app)
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
        metrics.in_flight(1)
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
            metrics.in_flight(-1)
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
        if route.answers.json_only:
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
            protocol = route.answers
            data = protocol.parse(body, environ, self._loads)
            parsed = time.perf_counter()
            variables = match.groupdict()
            name, version = variables["name"], variables.get("version")
            key = None
            if version is None:
                traffic = self.dataplane.registry.traffic(name)
                if traffic is not None and traffic.environ_key is not None:
                    key = environ.get(traffic.environ_key)
            response, result = protocol.answer(
                self.dataplane, name, version, protocol.request.load(data), key
            )
            body_out = protocol.response.dump(response)
            serialising = time.perf_counter()
            payload = orjson.dumps(body_out, option=self.json_options)
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
            route=route.label,
            kind=route.protocol,
            status=200,
            model=result.model_name,
            version=result.model_version,
            rows=result.rows,
            duration=finished - started,
            stages={
                "parse": parsed - started,
                **result.timings,
                "serialise": finished - serialising,
            },
            remote_addr=environ.get("REMOTE_ADDR"),
            user_agent=environ.get("HTTP_USER_AGENT"),
        )
        observe.count_unseen(result.model_name, result.unseen)
        observe.log_payload(
            self.dataplane.registry,
            request_id,
            result,
            route.protocol,
            EnvironHeaders(environ),
            finished - started,
        )
        return payload, headers
