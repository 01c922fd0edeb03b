"""Per-request observation: the request id, stage timings, metrics and the access log line."""

from __future__ import annotations

import functools
import logging
import re
import time
import uuid
from collections.abc import Mapping

from flask import Flask, Response, current_app, g, request
from flask.views import MethodView

from inference_app import metrics, payload
from inference_app.core.dataplane import InferenceResult
from inference_app.core.registry import Registry
from inference_app.http import security
from inference_app.http.api import MODEL_HEADER, Blueprint, get_registry, record_stage
from inference_app.logs import ACCESS_LOGGER, AccessLog, milliseconds

REQUEST_ID_HEADER = "X-Request-ID"
#: A request id taken from the caller: printable, without spaces, at most 128 characters.
REQUEST_ID_PATTERN = re.compile(r"[\x21-\x7e]{1,128}")
access_log = logging.getLogger(ACCESS_LOGGER)
#: Writes the access lines (straight to stderr when that is where they go as JSON).
access_line = AccessLog(access_log)
logger = logging.getLogger(__name__)


blp = Blueprint("metrics", __name__, description="Prometheus metrics of every worker.")


@blp.route("/metrics")
class Metrics(MethodView):
    """Prometheus exposition."""

    @blp.doc(
        responses={
            "200": {
                "description": "Prometheus text exposition format, merged over all workers",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
        security=[],
    )
    def get(self) -> Response:
        """Expose the metrics of every worker"""
        body, content_type = metrics.collect()
        return Response(body, content_type=content_type)


def note_prediction(result: InferenceResult) -> None:
    """Record the model, version, rows and stage timings of this request's inference, and
    count the unseen categories its model tolerated."""
    g.model, g.version, g.rows = result.model_name, result.model_version, result.rows
    g.result = result  # for the payload log, once the answer is made
    for stage, seconds in result.timings.items():
        record_stage(stage, seconds)
    count_unseen(result.model_name, result.unseen)


def count_unseen(model: str, unseen: Mapping[str, int]) -> None:
    """Count the categories a model never saw that it served (its encoder ignores them)."""
    for feature, count in unseen.items():
        metrics.UNSEEN_CATEGORIES.labels(model, feature).inc(count)


#: The protocol label of each blueprint's requests.
PROTOCOLS = {"v1": "native", "v2": "v2", "mlflow": "mlflow"}


def protocol() -> str:
    """Return the protocol of the current request, from its blueprint."""
    return PROTOCOLS.get(request.blueprint or "", "other")


def _start() -> None:
    g.started = time.perf_counter()
    g.stages = {}
    g.request_id = request_id(request.headers.get(REQUEST_ID_HEADER))
    metrics.in_flight(1)


def _finish(response: Response) -> Response:
    context = g._get_current_object()  # one proxy lookup, not one per attribute
    if "started" not in context:  # a request that failed before its first hook
        return response
    req = request._get_current_object()  # type: ignore[attr-defined]
    response.headers[REQUEST_ID_HEADER] = context.request_id
    model, version = _known_model()
    account(
        request_id=context.request_id,
        method=req.method,
        path=req.path,
        route=route_label(req.url_rule.rule) if req.url_rule is not None else "unmatched",
        kind=protocol(),
        status=response.status_code,
        model=model,
        version=version,
        rows=getattr(context, "rows", 0),
        duration=time.perf_counter() - context.started,
        stages=context.stages,
        error_kind=getattr(context, "error_kind", None),
        remote_addr=req.remote_addr,
        user_agent=req.environ.get("HTTP_USER_AGENT"),
        log=not security.is_probe(req.path) or current_app.config["LOG_PROBES"],
    )
    result = getattr(context, "result", None)
    if result is not None and response.status_code < 300:
        log_payload(
            get_registry(),
            context.request_id,
            result,
            protocol(),
            req.headers,
            time.perf_counter() - context.started,
        )
    return response


def log_payload(
    registry: Registry,
    request_id: str,
    result: InferenceResult,
    kind: str,
    headers: payload.Headers,
    elapsed: float,
) -> None:
    """Hand an answered inference to the payload log (:func:`inference_app.payload.record`),
    when payload logging is on; never raises.

    :param headers: the request's headers, case-insensitive (Werkzeug's ``EnvironHeaders``).
    :param elapsed: seconds since the request arrived.
    """
    if payload.current() is None:
        return
    try:
        bundle = registry.get(result.model_name, result.model_version)
    except Exception:  # the version that answered is always there; never fail the answer
        logger.exception("payload log: no bundle %s %s", result.model_name, result.model_version)
        return
    payload.record(request_id, bundle, result, protocol=kind, headers=headers, elapsed=elapsed)


def account(
    *,
    request_id: str,
    method: str,
    path: str,
    route: str,
    kind: str,
    status: int,
    model: str,
    version: str,
    rows: int,
    duration: float,
    stages: dict[str, float],
    error_kind: str | None = None,
    remote_addr: str | None = None,
    user_agent: str | None = None,
    log: bool = True,
    grpc_status: str | None = None,
) -> None:
    """Count one answered request in the metrics and write its access log line.

    :param route: the URL rule without converters, e.g. ``/v1/models/<name>:predict``; for
        gRPC, the method's path, ``/inference.GRPCInferenceService/ModelInfer``.
    :param kind: the protocol: ``native``, ``v2``, ``mlflow``, ``grpc`` or ``other``.
    :param status: the HTTP status; for gRPC, the one its status code maps to.
    :param model: the model's name, empty when the request named none the registry knows.
    :param duration: seconds from the request's arrival in the app to its answer.
    :param stages: seconds per stage (``parse``, ``validate``, ``predict``, ``serialise``).
    :param error_kind: the domain error's name for an error answer; default its status.
    :param log: whether to write the access line (probes are not logged by default).
    :param grpc_status: the gRPC status code's name (``OK``, ``INVALID_ARGUMENT``, ...), for
        the access line of a gRPC call.
    """
    metrics.record_request(kind, route, model, version, status, duration, rows, stages, error_kind)
    if not log:
        return
    stages_ms = {}
    for stage, seconds in stages.items():
        stages_ms[stage] = milliseconds(seconds)
    fields = {
        "request_id": request_id,
        "method": method,
        "path": path,
        "route": route,
        "protocol": kind,
        "status": status,
        "model": model or None,
        "version": version or None,
        "rows": rows,
        "duration_ms": milliseconds(duration),
        "stages_ms": stages_ms,
        "remote_addr": remote_addr,
        "user_agent": user_agent or None,
    }
    if grpc_status:
        fields["grpc_status"] = grpc_status
    access_line.write(method, path, status, fields)


def request_id(given: str | None) -> str:
    """Return the caller's ``X-Request-ID`` if it is printable and short, else a new one."""
    return given if given and REQUEST_ID_PATTERN.fullmatch(given) else uuid.uuid4().hex


@functools.lru_cache(maxsize=256)
def route_label(rule: str) -> str:
    """Return a URL rule without its converters: ``/v1/models/<name>:predict``."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"<\1>", rule)


#: The endpoints that take their model from the ``X-Model-Name`` header, not the path.
MODEL_HEADER_ENDPOINTS = frozenset({"v1.PredictOne", "mlflow.Invocations"})


def _known_model() -> tuple[str, str]:
    """Return the model and version labels of a request: what answered it, else the model
    and version it names if the registry serves them, else empty (bounded series: a name or
    version that is not served never becomes a label)."""
    if "model" in g:
        return g.model, g.version
    variables = request.view_args or {}
    name = variables.get("name")
    if name is None and request.endpoint in MODEL_HEADER_ENDPOINTS:
        name = request.headers.get(MODEL_HEADER)
    model = get_registry().models.get(name) if isinstance(name, str) else None
    if model is None:
        return "", ""
    version = variables.get("version")
    return model.name, version if isinstance(version, str) and version in model.versions else ""


def _stop_in_flight(error: BaseException | None) -> None:
    if "started" in g:
        metrics.in_flight(-1)


def init_app(app: Flask) -> None:
    """Install the request hooks on ``app``."""
    app.before_request(_start)
    app.after_request(_finish)
    app.teardown_request(_stop_in_flight)
