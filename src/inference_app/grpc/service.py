"""The gRPC server of one serving process: the Open Inference Protocol's GRPCInferenceService
and the standard health service, over the app's registry, dataplane, keys and metrics.

Specification: KServe ``docs/predict-api/v2/required_api.md``, section "GRPC" (the service and
its messages, ``grpc_predict_v2.proto`` beside this module); gRPC's health checking protocol
(``grpc.health.v1.Health``, https://github.com/grpc/grpc/blob/master/doc/health-checking.md);
status codes from ``google/rpc/code.proto``, whose comments also give the HTTP status each
one maps to (:data:`HTTP_STATUS`, used for the metrics' ``status_class`` and access lines).

Every call gets what a REST request gets: the API key check (``authorization: Bearer <key>``
or ``x-api-key`` metadata; the health RPCs are open, as ``/v2/health/*``), the per-worker
concurrency cap, a request id (``x-request-id`` metadata, or a new one, sent back in the
initial metadata), the metrics with ``protocol="grpc"`` and the RPC's path as ``route``, one
access line, and the payload log. Inference goes through :meth:`DataPlane.infer
<inference_app.core.dataplane.DataPlane.infer>`, so its observers see gRPC requests too.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from flask import Flask
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from inference_app import __version__, metrics
from inference_app.core.bundle import METHODS
from inference_app.core.dataplane import DataPlane, InferenceRequest, InferenceResult
from inference_app.core.errors import (
    InferenceAppError,
    InvalidInputError,
    ModelNotFoundError,
    ModelNotReadyError,
)
from inference_app.core.registry import Registry
from inference_app.grpc import codec
from inference_app.grpc import grpc_predict_v2_pb2 as pb
from inference_app.http import observe, security, v2
from inference_app.http.api import EXTENSION, Services

logger = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
SERVER_NAME = "inference-app"
#: The RPCs that never ask for a key nor take a slot of the concurrency cap (probes).
OPEN_METHODS = frozenset({"ServerLive", "ServerReady"})
#: The HTTP status each gRPC status maps to (``google/rpc/code.proto``).
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.INTERNAL: 500,
}
#: The gRPC status of each serving-core error (as http/errors.py maps them to HTTP).
STATUS_OF_ERROR: dict[type[InferenceAppError], grpc.StatusCode] = {
    InvalidInputError: grpc.StatusCode.INVALID_ARGUMENT,
    ModelNotFoundError: grpc.StatusCode.NOT_FOUND,
    ModelNotReadyError: grpc.StatusCode.UNAVAILABLE,
}
#: The longest error message sent in ``grpc-message``, in characters.
MAX_MESSAGE = 2000


class Refusal(Exception):
    """A call refused before it reaches the serving core.

    :param code: its gRPC status.
    :param kind: the ``kind`` label of ``inference_app_errors_total``.
    """

    def __init__(self, code: grpc.StatusCode, message: str, kind: str) -> None:
        super().__init__(message)
        self.code = code
        self.kind = kind


@dataclass
class Call:
    """What one call did, for its metrics and access line."""

    model: str = ""
    version: str = ""
    rows: int = 0
    stages: dict[str, float] = field(default_factory=dict)
    result: InferenceResult | None = None


#: One RPC's implementation: the parsed request and the call's record in, the response out.
Handler = Callable[[Any, Call, Mapping[str, str]], Message]


class InferenceService:
    """The GRPCInferenceService over one app's registry, dataplane and API keys.

    :param app: the app whose services, guard and settings (``LOG_PROBES``) to use.
    """

    def __init__(self, app: Flask) -> None:
        services: Services = app.extensions[EXTENSION]
        self.registry: Registry = services.registry
        self.dataplane: DataPlane = services.dataplane
        self.guard: security.Guard = app.extensions[security.EXTENSION]
        self.log_probes = bool(app.config["LOG_PROBES"])
        self.methods: dict[str, tuple[type[Message], Handler]] = {
            "ServerLive": (pb.ServerLiveRequest, self.server_live),
            "ServerReady": (pb.ServerReadyRequest, self.server_ready),
            "ModelReady": (pb.ModelReadyRequest, self.model_ready),
            "ServerMetadata": (pb.ServerMetadataRequest, self.server_metadata),
            "ModelMetadata": (pb.ModelMetadataRequest, self.model_metadata),
            "ModelInfer": (pb.ModelInferRequest, self.model_infer),
        }

    def handler(self) -> grpc.GenericRpcHandler:
        """Return the service's handler for :meth:`grpc.Server.add_generic_rpc_handlers`.

        Requests reach the methods as bytes and are parsed there, so that a malformed
        message is ``INVALID_ARGUMENT`` (grpcio's own parsing would answer ``INTERNAL``).
        """
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                name: grpc.unary_unary_rpc_method_handler(
                    self._rpc(name, message, implementation),
                    response_serializer=_serialize,
                )
                for name, (message, implementation) in self.methods.items()
            },
        )

    # The RPCs

    def server_live(
        self, request: pb.ServerLiveRequest, call: Call, metadata: Mapping[str, str]
    ) -> pb.ServerLiveResponse:
        """Say the server is live; never touches the models."""
        return pb.ServerLiveResponse(live=True)

    def server_ready(
        self, request: pb.ServerReadyRequest, call: Call, metadata: Mapping[str, str]
    ) -> pb.ServerReadyResponse:
        """Say whether every model is loaded and warmed up (REST's ``/v2/health/ready``)."""
        return pb.ServerReadyResponse(ready=self.registry.readiness()[0])

    def model_ready(
        self, request: pb.ModelReadyRequest, call: Call, metadata: Mapping[str, str]
    ) -> pb.ModelReadyResponse:
        """Say whether one version (default: the default one) of a model is warmed up.

        :raises ModelNotFoundError: no such model or version.
        """
        bundle = self.registry.get(request.name, request.version or None)
        call.model, call.version = bundle.name, bundle.version
        return pb.ModelReadyResponse(ready=self.registry.is_ready(bundle))

    def server_metadata(
        self, request: pb.ServerMetadataRequest, call: Call, metadata: Mapping[str, str]
    ) -> pb.ServerMetadataResponse:
        """Describe the server: its name and version; it has no gRPC extension."""
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=[])

    def model_metadata(
        self, request: pb.ModelMetadataRequest, call: Call, metadata: Mapping[str, str]
    ) -> pb.ModelMetadataResponse:
        """Describe a model's inputs and outputs, as REST's ``GET /v2/models/<name>``.

        :raises ModelNotFoundError: no such model or version.
        """
        found = v2.model_metadata(self.registry, request.name, request.version or None)
        call.model = found["name"]
        return pb.ModelMetadataResponse(
            name=found["name"],
            versions=found["versions"],
            platform=found["platform"],
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**item) for item in found["inputs"]],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(**item) for item in found["outputs"]],
        )

    def model_infer(
        self, request: pb.ModelInferRequest, call: Call, metadata: Mapping[str, str]
    ) -> pb.ModelInferResponse:
        """Infer: decode the inputs, answer through the dataplane, encode one output per
        requested method (default ``predict``).

        :raises InvalidInputError: an output that is no method, or inputs that do not fit.
        :raises: as :meth:`inference_app.core.dataplane.DataPlane.infer`.
        """
        methods = tuple(output.name for output in request.outputs) or ("predict",)
        for index, method in enumerate(methods):
            if method not in METHODS:
                raise InvalidInputError(
                    f"outputs[{index}].name {method[:100]!r} is not one of {', '.join(METHODS)}"
                )
        name, version = request.model_name, request.model_version or None
        if name in self.registry.models:
            call.model = name
        started = time.perf_counter()
        rows = codec.decode_inputs(request)
        decoded = time.perf_counter() - started
        result = self.dataplane.infer(
            InferenceRequest(
                model=name,
                version=version,
                methods=methods,
                where="inputs",
                routing_key=self._routing_key(name, version, metadata),
                **rows,
            )
        )
        call.model, call.version, call.rows, call.result = (
            result.model_name,
            result.model_version,
            result.rows,
            result,
        )
        call.stages.update(result.timings)
        call.stages["validate"] = call.stages.get("validate", 0.0) + decoded
        observe.count_unseen(result.model_name, result.unseen)
        started = time.perf_counter()
        response = codec.encode_result(result, request.id)
        call.stages["serialise"] = time.perf_counter() - started
        return response

    # What every call gets

    def _rpc(
        self, name: str, message: type[Message], implementation: Handler
    ) -> Callable[[bytes, grpc.ServicerContext], Message]:
        path = f"/{SERVICE}/{name}"
        is_open = name in OPEN_METHODS

        def rpc(body: bytes, context: grpc.ServicerContext) -> Message:
            started = time.perf_counter()
            metadata = {
                key: value for key, value in context.invocation_metadata() if type(value) is str
            }
            request_id = observe.request_id(metadata.get("x-request-id"))
            context.send_initial_metadata(((observe.REQUEST_ID_HEADER.lower(), request_id),))
            metrics.in_flight(1)
            call, slot, response = Call(), None, None
            code, details, kind = grpc.StatusCode.OK, "", None
            try:
                if not is_open:
                    self._authenticate(metadata)
                    slot = self._enter()
                parse_started = time.perf_counter()
                try:
                    request = message.FromString(body)
                except DecodeError as error:
                    raise Refusal(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"the request is not a valid {message.DESCRIPTOR.full_name} message "
                        f"({error})",
                        "invalid_message",
                    ) from None
                call.stages["parse"] = time.perf_counter() - parse_started
                response = implementation(request, call, metadata)
            except Refusal as refusal:
                code, details, kind = refusal.code, str(refusal), refusal.kind
            except InferenceAppError as error:
                code = next(
                    (STATUS_OF_ERROR[t] for t in type(error).__mro__ if t in STATUS_OF_ERROR),
                    grpc.StatusCode.INTERNAL,
                )
                details, kind = str(error), error_kind(error)
            except Exception:  # never a traceback to the client; the log has it
                logger.exception("gRPC %s failed (request id %s)", name, request_id)
                code = grpc.StatusCode.INTERNAL
                details = f"the server failed to answer; the request id is {request_id}"
                kind = "internal"
            finally:
                if slot is not None:
                    slot.release()
                metrics.in_flight(-1)
            elapsed = time.perf_counter() - started
            observe.account(
                request_id=request_id,
                method="POST",
                path=path,
                route=path,
                kind="grpc",
                status=HTTP_STATUS.get(code, 500),
                model=call.model,
                version=call.version,
                rows=call.rows,
                duration=elapsed,
                stages=call.stages,
                error_kind=kind,
                remote_addr=_peer_address(context.peer()),
                user_agent=metadata.get("user-agent"),
                log=not is_open or self.log_probes,
                grpc_status=code.name,
            )
            if call.result is not None:
                observe.log_payload(
                    self.registry, request_id, call.result, "grpc", metadata, elapsed
                )
            if code is not grpc.StatusCode.OK or response is None:
                context.abort(code, details[:MAX_MESSAGE])
            return response

        return rpc

    def _authenticate(self, metadata: Mapping[str, str]) -> None:
        """Refuse a call without a valid key when keys are configured (as REST does).

        :raises Refusal: ``UNAUTHENTICATED``, saying how to send the key.
        """
        if not self.guard.digests:
            return
        key = security.presented_key(metadata.get("authorization", ""), metadata.get("x-api-key"))
        if not key or not self.guard.accepts(key):
            raise Refusal(
                grpc.StatusCode.UNAUTHENTICATED,
                "Send a valid API key: the metadata authorization: Bearer <key>, or x-api-key"
                if key
                else "This API needs a key: send the metadata authorization: Bearer <key>, or "
                "x-api-key",
                "http_401",
            )

    def _enter(self) -> threading.BoundedSemaphore | None:
        """Take a slot of the worker's concurrency cap, shared with HTTP.

        :raises Refusal: ``RESOURCE_EXHAUSTED`` when every slot is taken.
        """
        semaphore = self.guard.semaphore
        if semaphore is None:
            return None
        if not semaphore.acquire(blocking=False):
            raise Refusal(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "This worker is answering as many requests as it may: retry in a second",
                "http_429",
            )
        return semaphore

    def _routing_key(
        self, name: str, version: str | None, metadata: Mapping[str, str]
    ) -> str | None:
        """Return the value of the model's sticky metadata (``traffic.json``'s ``sticky``,
        looked up in lower case as gRPC metadata keys are) when the call names no version."""
        if version is not None:
            return None
        traffic = self.registry.traffic(name)
        if traffic is None or traffic.sticky is None:
            return None
        return metadata.get(traffic.sticky.lower())


def error_kind(error: Exception) -> str:
    """Return the ``kind`` label of a serving-core error, as the HTTP layer names it:
    ``InvalidInputError`` is ``invalid_input``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(error).__name__).lower().removesuffix("_error")


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _peer_address(peer: str) -> str | None:
    """Return the address of a gRPC peer (``ipv4:127.0.0.1:5000``, ``ipv6:[::1]:5000``)."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None
    return rest.rsplit(":", 1)[0].strip("[]")


@dataclass
class Running:
    """A started gRPC server: stop it with :meth:`stop`, or hand its clients over to the
    other listeners of its port first with :meth:`drain`."""

    server: grpc.Server
    health: health.HealthServicer
    port: int

    def drain(self, deadline: float) -> int:
        """Leave the port to the other processes listening on it, and wait until this
        server's clients have moved there, or until ``deadline`` (``time.monotonic()``).

        The listening socket is shut down (``shutdown(2)`` takes it out of the port's
        ``SO_REUSEPORT`` group: new connections go to the other listeners, and gRPC closes
        its acceptor). The connections it accepted keep working until their maximum age
        (``GRPC_MAX_CONNECTION_AGE_S``), when gRPC ends each gracefully: an HTTP/2 ``GOAWAY``
        once the calls under way are answered, so the client sends its next calls over a new
        connection, to another listener. A :meth:`stop` at once would refuse the calls that
        had arrived but not started (``CANCELLED``).

        :returns: the connections still open at the end.
        """
        self.health.enter_graceful_shutdown()
        for fd in _sockets_on(self.port, LISTEN):
            with socket.socket(fileno=os.dup(fd)) as listener:
                listener.shutdown(socket.SHUT_RD)
        while _sockets_on(self.port, ESTABLISHED) and time.monotonic() < deadline:
            time.sleep(0.05)
        return len(_sockets_on(self.port, ESTABLISHED))

    def stop(self, grace: float | None) -> bool:
        """Stop taking calls, tell health checks ``NOT_SERVING``, and let the calls under
        way finish for up to ``grace`` seconds (``None``: cancel them now).

        :returns: whether every call finished in time.
        """
        self.health.enter_graceful_shutdown()
        done = self.server.stop(grace)
        return done.wait((grace or 0) + 1.0)


#: TCP states in ``/proc/net/tcp`` (``include/net/tcp_states.h``).
ESTABLISHED, LISTEN = "01", "0A"


def _sockets_on(port: int, state: str) -> list[int]:
    """Return the file descriptors of this process's TCP sockets whose local port is
    ``port``, in ``state``, from ``/proc/self/fd`` and ``/proc/net/tcp{,6}`` (proc(5))."""
    inodes: dict[int, int] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # closed meanwhile
            continue
        if link.startswith("socket:["):
            inodes[int(link[8:-1])] = int(name)
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table, encoding="ascii").read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, status, inode = fields[1], fields[3], int(fields[9])
            if status == state and int(local.rsplit(":", 1)[1], 16) == port and inode in inodes:
                found.append(inodes[inode])
    return found


def serve(
    app: Flask,
    port: int,
    *,
    host: str = "127.0.0.1",
    threads: int = 4,
    max_connection_age: float = 5.0,
) -> Running:
    """Start serving the GRPCInferenceService and the health service of ``app`` on
    ``host:port`` in this process, with ``threads`` threads.

    The port is opened with ``SO_REUSEPORT``, so every Gunicorn worker listens on it and the
    kernel spreads connections among them; messages above ``MAX_CONTENT_LENGTH`` bytes are
    refused with ``RESOURCE_EXHAUSTED``. The health service answers ``SERVING`` for the
    whole server (``""``) and for ``inference.GRPCInferenceService`` when every model is
    ready (the readiness of ``/health/ready``), else ``NOT_SERVING``.

    :param port: the TCP port; 0 picks a free one (see :attr:`Running.port`).
    :param max_connection_age: seconds after which gRPC ends a connection gracefully (plus or
        minus 10 %): clients reconnect, so connections spread again among the workers, and
        a worker that stops can hand its clients over (:meth:`Running.drain`).
    :raises RuntimeError: the port cannot be opened.
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="grpc"),
        handlers=[InferenceService(app).handler()],
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", int(app.config["MAX_CONTENT_LENGTH"])),
            ("grpc.max_send_message_length", -1),
            ("grpc.max_connection_age_ms", int(max_connection_age * 1000)),
        ],
    )
    checks = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as error:
        raise RuntimeError(f"cannot listen for gRPC on {address}: {error}") from None
    if not bound:
        raise RuntimeError(f"cannot listen for gRPC on {address}")
    services: Services = app.extensions[EXTENSION]
    ready = services.registry.readiness()[0]
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if ready
        else (health_pb2.HealthCheckResponse.NOT_SERVING)
    )
    for name in ("", SERVICE):
        checks.set(name, status)
    server.start()
    return Running(server, checks, bound)
