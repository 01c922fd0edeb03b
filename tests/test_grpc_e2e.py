"""gRPC on real Gunicorn with 2 workers: tritonclient.grpc and KServe's client answered like
in-process predictions, the port shared by the workers, HUP and kill -9 under load."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pandas as pd
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc

from inference_app.core.bundle import load_bundle
from inference_app.datasets import load_penguins
from inference_app.demo import DEMO_VERSION, DEMOS, load_demo_data, write_demo_bundles
from servers import (
    REPO,
    REQUEST_TIMEOUT,
    START_TIMEOUT,
    Server,
    free_port,
    log_lines,
    log_records,
    start_gunicorn,
    stop,
    wait_ready,
    wait_until,
)

pytestmark = pytest.mark.e2e

NUMERIC = list(DEMOS)
MODELS = [*NUMERIC, "penguins"]
#: The virtualenv of KServe's Python SDK (`make kserve-client`): its pins (pandas < 3) do not
#: fit this project's, so its client runs there, in a process of its own.
KSERVE_PYTHON = REPO / ".venv-kserve" / "bin" / "python"
KSERVE_SCRIPT = Path(__file__).resolve().parent / "kserve_grpc_client.py"
#: Seconds of load around a HUP or a kill, and client threads (each its own connection).
LOAD_SECONDS = 20.0
LOAD_THREADS = 4
#: Channel options giving a channel a connection of its own: the channels of one process
#: otherwise share one per address (gRPC's global subchannel pool), as separate clients never do.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


class GrpcServer:
    """A Gunicorn server with its gRPC address."""

    def __init__(self, server: Server, grpc_port: int) -> None:
        self.server = server
        self.address = f"127.0.0.1:{grpc_port}"


def start(root: Path, workers: int = 2) -> GrpcServer:
    """Start Gunicorn over the demo models, gRPC on a free port; connections recycled after
    2 s (not 5), so that a HUP hands clients over sooner."""
    instance = root / "instance"
    if not (instance / "models").exists():
        write_demo_bundles(instance / "models", names=MODELS)
    port = free_port()
    server = start_gunicorn(
        instance,
        root / "gunicorn.log",
        workers=workers,
        INFERENCE_APP_GRPC_PORT=str(port),
        INFERENCE_APP_GRPC_MAX_CONNECTION_AGE_S="2",
    )
    wait_ready(server)
    serving = re.compile(r"worker (\d+) serves gRPC")
    assert wait_until(
        lambda: sum(bool(serving.search(m)) for _, m in log_records(server.log())) >= workers,
        START_TIMEOUT,
    ), server.log()
    return GrpcServer(server, port)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("grpc-e2e")
    write_demo_bundles(root / "instance" / "models", names=MODELS)
    return root


@pytest.fixture(scope="module")
def served(models: Path) -> Iterator[GrpcServer]:
    """Gunicorn with 2 workers serving HTTP and gRPC, shared by the module."""
    found = start(models)
    try:
        yield found
    finally:
        stop(found.server)


@pytest.fixture(scope="module")
def estimators(models: Path) -> dict[str, Any]:
    return {
        name: load_bundle(models / "instance" / "models" / name / DEMO_VERSION).estimator
        for name in MODELS
    }


@pytest.fixture(scope="module")
def triton(served: GrpcServer) -> Iterator[Any]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(served.address)
    try:
        yield client
    finally:
        client.close()


def written_lines(server: Server) -> list[dict[str, Any]]:
    """The server's log lines written so far, without a last line still being written."""
    log = server.log()
    return log_lines(log[: log.rfind("\n") + 1])


def penguin_rows() -> pd.DataFrame:
    """The penguins whose strings are all present (BYTES tensors carry no missing value)."""
    frame = load_penguins()[0]
    return frame[frame[["island", "sex"]].notna().all(axis=1)].reset_index(drop=True)


def test_health_and_metadata_match_rest(served: GrpcServer, triton: Any) -> None:
    assert triton.is_server_live() and triton.is_server_ready()
    metadata = triton.get_server_metadata(as_json=True)
    assert metadata["name"] == "inference-app" and metadata["version"]
    for name in MODELS:
        assert triton.is_model_ready(name) and triton.is_model_ready(name, "1")
        found = triton.get_model_metadata(name, as_json=True)
        rest = requests.get(f"{served.server.url}/v2/models/{name}", timeout=REQUEST_TIMEOUT)
        expected = rest.json()
        assert found["name"] == name and found["versions"] == expected["versions"]
        for key in ("inputs", "outputs"):
            assert [
                {
                    "name": t["name"],
                    "datatype": t["datatype"],
                    "shape": [int(d) for d in t["shape"]],
                }
                for t in found[key]
            ] == expected[key]
    with grpc.insecure_channel(served.address) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert check.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(
    ("name", "method"),
    [
        ("iris", "predict"),
        ("iris", "predict_proba"),
        ("breast_cancer", "predict"),
        ("breast_cancer", "predict_proba"),
        ("diabetes", "predict"),
    ],
)
def test_tritonclient_raw_infer_on_full_datasets_matches_in_process(
    triton: Any, estimators: dict[str, Any], name: str, method: str
) -> None:
    import tritonclient.grpc as grpcclient

    rows = load_demo_data(name)[0]
    tensor = grpcclient.InferInput("input-0", list(rows.shape), "FP64")
    tensor.set_data_from_numpy(rows)
    result = triton.infer(
        name, [tensor], outputs=[grpcclient.InferRequestedOutput(method)], request_id=name
    )
    assert result.get_response().id == name
    expected = getattr(estimators[name], method)(rows)
    found = result.as_numpy(method)
    if expected.dtype.kind in "OUS":
        assert found.astype(str).tolist() == expected.tolist()
    else:
        np.testing.assert_allclose(found, expected, rtol=1e-12, atol=1e-15)
    if method != "predict":
        classes = result.get_output(method).parameters["classes"].string_param
        assert json.loads(classes) == estimators[name].classes_.tolist()


@pytest.mark.parametrize("method", ["predict", "predict_proba"])
@pytest.mark.parametrize("name", ["iris", "breast_cancer"])
def test_typed_contents_per_feature_match_in_process(
    served: GrpcServer, estimators: dict[str, Any], name: str, method: str
) -> None:
    from tritonclient.grpc import InferResult, service_pb2, service_pb2_grpc

    rows, _, names = load_demo_data(name)
    request = service_pb2.ModelInferRequest(model_name=name)
    for index, feature in enumerate(names):
        tensor = request.inputs.add(name=feature, datatype="FP64", shape=[len(rows)])
        tensor.contents.fp64_contents.extend(rows[:, index].tolist())
    request.outputs.add(name=method)
    with grpc.insecure_channel(served.address) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    found = InferResult(response).as_numpy(method)
    expected = getattr(estimators[name], method)(rows)
    if method == "predict":
        assert found.astype(str).tolist() == expected.tolist()
    else:
        np.testing.assert_allclose(found, expected, rtol=1e-12)


@pytest.mark.parametrize("form", ["raw", "typed"])
def test_the_penguins_pipeline_through_per_feature_bytes_and_fp64_inputs(
    served: GrpcServer, triton: Any, estimators: dict[str, Any], form: str
) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.grpc import InferResult, service_pb2, service_pb2_grpc

    frame = penguin_rows()
    frame.loc[::9, "bill_length_mm"] = np.nan  # numeric features the pipeline imputes
    model = estimators["penguins"]
    methods = ("predict", "predict_proba")
    if form == "raw":
        tensors = []
        for column in frame.columns:
            strings = frame[column].dtype == object
            tensor = grpcclient.InferInput(column, [len(frame)], "BYTES" if strings else "FP64")
            values = frame[column].to_numpy(dtype=object if strings else np.float64)
            tensor.set_data_from_numpy(values)
            tensors.append(tensor)
        outputs = [grpcclient.InferRequestedOutput(method) for method in methods]
        result = triton.infer("penguins", tensors, outputs=outputs)
    else:
        request = service_pb2.ModelInferRequest(model_name="penguins")
        for column in frame.columns:
            if frame[column].dtype == object:
                tensor = request.inputs.add(name=column, datatype="BYTES", shape=[len(frame)])
                tensor.contents.bytes_contents.extend(v.encode() for v in frame[column])
            else:
                tensor = request.inputs.add(name=column, datatype="FP64", shape=[len(frame)])
                tensor.contents.fp64_contents.extend(frame[column].tolist())
        for method in methods:
            request.outputs.add(name=method)
        with grpc.insecure_channel(served.address) as channel:
            response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
        result = InferResult(response)
    assert result.as_numpy("predict").astype(str).tolist() == model.predict(frame).tolist()
    np.testing.assert_allclose(
        result.as_numpy("predict_proba"), model.predict_proba(frame), rtol=1e-9
    )


def test_a_bad_input_names_the_feature_over_the_wire(triton: Any) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    frame = penguin_rows().head(3)
    tensors = []
    for column in frame.columns:
        tensor = grpcclient.InferInput(column, [3], "FP64")  # strings sent as numbers
        tensor.set_data_from_numpy(np.zeros(3))
        tensors.append(tensor)
    with pytest.raises(InferenceServerException) as raised:
        triton.infer("penguins", tensors)
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "island" in str(raised.value) and "Traceback" not in str(raised.value)


def test_the_workers_share_the_port_and_the_master_never_loads_grpc(served: GrpcServer) -> None:
    import tritonclient.grpc as grpcclient

    rows = load_demo_data("iris")[0][:1]
    clients = [
        grpcclient.InferenceServerClient(served.address, channel_args=OWN_CONNECTION)
        for _ in range(16)
    ]
    try:
        for index, client in enumerate(clients):
            tensor = grpcclient.InferInput("input-0", [1, 4], "FP64")
            tensor.set_data_from_numpy(rows)
            client.infer("iris", [tensor], headers={"x-request-id": f"share-{index}"})
    finally:
        for client in clients:
            client.close()
    lines = [line for line in written_lines(served.server) if line.get("protocol") == "grpc"]
    answered = {line["pid"] for line in lines if str(line.get("request_id")).startswith("share-")}
    master = served.server.process.pid
    workers = {
        int(pid) for pid in Path(f"/proc/{master}/task/{master}/children").read_text().split()
    }
    assert answered <= workers and len(answered) == 2, (answered, workers)
    assert "cygrpc" not in Path(f"/proc/{master}/maps").read_text()
    for worker in workers:
        assert "cygrpc" in Path(f"/proc/{worker}/maps").read_text()
    access = [line for line in lines if line.get("request_id") == "share-0"]
    assert access and access[0]["route"] == "/inference.GRPCInferenceService/ModelInfer"
    assert access[0]["grpc_status"] == "OK" and access[0]["model"] == "iris"
    metrics = requests.get(f"{served.server.url}/metrics", timeout=REQUEST_TIMEOUT).text
    assert re.search(
        r'inference_app_requests_total\{model="iris",protocol="grpc",'
        r'route="/inference.GRPCInferenceService/ModelInfer",status_class="2xx",version="1"\} '
        r"([0-9.]+)",
        metrics,
    )


class Load:
    """Client threads calling ModelInfer in a loop, each over its own connection, until
    stopped (bounded by ``seconds``); failures are kept with their status codes.

    :param wait_for_ready: calls wait while their channel reconnects, rather than failing at
        once (gRPC's fail-fast default), so that only the calls sent before a connection
        broke can fail.
    """

    def __init__(self, address: str, seconds: float, wait_for_ready: bool = False) -> None:
        self.address, self.deadline = address, time.monotonic() + seconds
        self.wait_for_ready = wait_for_ready
        self.stopped = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self.lock = threading.Lock()
        body = _iris_request()
        self.threads = [
            threading.Thread(target=self._run, args=(body,), daemon=True)
            for _ in range(LOAD_THREADS)
        ]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def _run(self, body: bytes) -> None:
        with grpc.insecure_channel(self.address, options=OWN_CONNECTION) as channel:
            infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            while not self.stopped.is_set() and time.monotonic() < self.deadline:
                try:
                    infer(body, timeout=10, wait_for_ready=self.wait_for_ready)
                except grpc.RpcError as error:
                    with self.lock:
                        self.failures.append(f"{error.code()}: {error.details()}")
                else:
                    with self.lock:
                        self.ok += 1

    def count(self) -> int:
        with self.lock:
            return self.ok


def _iris_request() -> bytes:
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name="iris")
    request.inputs.add(name="input-0", datatype="FP64", shape=[1, 4])
    request.raw_input_contents.append(np.asarray([[5.1, 3.5, 1.4, 0.2]], "<f8").tobytes())
    return request.SerializeToString()


def _workers(server: Server) -> set[int]:
    master = server.process.pid
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return {int(pid) for pid in children}


def test_hup_under_grpc_load_fails_no_request(tmp_path: Path, new_iris_version: Any) -> None:
    """A HUP with a new iris version: the load sees no failure, both generations of workers
    answer, the new version is served over gRPC, and the master still has no gRPC in it."""
    found = start(tmp_path)
    try:
        old = _workers(found.server)
        with Load(found.address, LOAD_SECONDS) as load:
            assert wait_until(lambda: load.count() > 50, 5.0)
            new_iris_version(tmp_path / "instance" / "models", "2")
            os.kill(found.server.process.pid, signal.SIGHUP)
            serving = re.compile(r"worker (\d+) serves gRPC")

            def replaced() -> bool:
                pids = {
                    int(m.group(1))
                    for _, msg in log_records(found.server.log())
                    if (m := serving.search(msg))
                }
                return len(pids - old) >= 2 and not (_workers(found.server) & old)

            assert wait_until(replaced, START_TIMEOUT), found.server.log()
            after = load.count()
            assert wait_until(lambda: load.count() > after + 50, 5.0)
        assert load.failures == [], load.failures[:5]
        lines = written_lines(found.server)
        answered = {line["pid"] for line in lines if line.get("protocol") == "grpc"}
        assert answered & old and answered - old, "both generations answered"
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(found.address)
        try:
            assert client.get_model_metadata("iris", as_json=True)["versions"] == ["1", "2"]
            assert client.is_model_ready("iris", "2")
        finally:
            client.close()
        master = found.server.process.pid
        assert "cygrpc" not in Path(f"/proc/{master}/maps").read_text()
    finally:
        stop(found.server)


def test_kill_9_of_a_worker_fails_at_most_its_calls_in_flight(tmp_path: Path) -> None:
    found = start(tmp_path)
    try:
        with Load(found.address, LOAD_SECONDS, wait_for_ready=True) as load:
            assert wait_until(lambda: load.count() > 50, 5.0)
            victim = min(_workers(found.server))
            os.kill(victim, signal.SIGKILL)
            assert wait_until(lambda: victim not in _workers(found.server), 5.0)
            after = load.count()
            assert wait_until(lambda: load.count() > after + 50, 5.0)
        # Each client thread has one call in flight at most, on one connection; a thread whose
        # connection was to the killed worker may also lose the first call of a connection
        # its dying listener accepted as the kernel closed it (never more: wait_for_ready).
        assert len(load.failures) <= 2 * LOAD_THREADS, load.failures
        assert all(failure.startswith("StatusCode.UNAVAILABLE") for failure in load.failures)
    finally:
        stop(found.server)


def test_a_grpc_port_in_use_stops_the_server_with_the_setting_named(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        write_demo_bundles(tmp_path / "instance" / "models", names=["iris"])
        server = start_gunicorn(
            tmp_path / "instance", tmp_path / "gunicorn.log", INFERENCE_APP_GRPC_PORT=str(port)
        )
        try:
            server.process.wait(timeout=START_TIMEOUT)
        finally:
            stop(server)
    assert server.process.returncode != 0
    assert f"GRPC_PORT {port} is in use" in server.log()
    assert "Traceback" not in server.log()


def test_kserve_grpc_client_matches_in_process(
    served: GrpcServer, estimators: dict[str, Any]
) -> None:
    assert KSERVE_PYTHON.exists(), "make kserve-client installs KServe's SDK in .venv-kserve"
    datasets = {name: load_demo_data(name)[0].tolist() for name in ("iris", "breast_cancer")}
    answer = subprocess.run(
        [str(KSERVE_PYTHON), str(KSERVE_SCRIPT), served.address],
        input=json.dumps(datasets),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert answer.returncode == 0, answer.stderr[-4000:]
    found = json.loads(answer.stdout)
    assert found["live"] and found["ready"] and found["model_ready"]
    for name in ("iris", "breast_cancer"):
        rows = load_demo_data(name)[0]
        model = estimators[name]
        for form in ("raw", "typed"):
            assert found[name][form]["id"] == f"kserve-{name}-{form}"
            assert found[name][form]["predict"] == model.predict(rows).tolist()
            np.testing.assert_allclose(
                found[name][form]["predict_proba"], model.predict_proba(rows), rtol=1e-12
            )
