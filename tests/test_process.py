"""Process setup: the CPUs a worker may use (affinity, cgroup quotas), reloads on HUP, and
how a forked process ends."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask

from inference_app import create_app
from inference_app.core import registry as registry_module
from inference_app.core.bundle import load_bundle
from inference_app.http.api import EXTENSION
from inference_app.process import available_cpus, cpu_share, reload, share_engines, warm_up

AFFINITY = len(os.sched_getaffinity(0))


def write(root: Path, files: dict[str, str]) -> Path:
    """Write a fake cgroup folder."""
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({}, AFFINITY),
        ({"cpu.max": "max 100000\n"}, AFFINITY),
        ({"cpu.max": "100000 100000\n"}, 1),
        ({"cpu.max": "50000 100000"}, 1),  # half a CPU: at least one
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, AFFINITY),
        ({"cpu,cpuacct/cpu.cfs_quota_us": "100000", "cpu,cpuacct/cpu.cfs_period_us": "100000"}, 1),
        ({"cpu.max": "6400000 100000"}, AFFINITY),  # a quota above the affinity changes nothing
    ],
)
def test_available_cpus_follow_the_quota(
    tmp_path: Path, files: dict[str, str], expected: int
) -> None:
    assert available_cpus(str(write(tmp_path, files))) == expected


def test_each_worker_gets_its_share_and_at_least_one() -> None:
    assert cpu_share(1) == available_cpus()
    assert cpu_share(10_000) == 1


class Holder:
    """What Gunicorn's ``server.app`` is to ``reload``: the preloaded app, replaceable."""

    def __init__(self, app: Flask) -> None:
        self.callable = app

    def wsgi(self) -> Flask:
        return self.callable


def test_a_refused_reload_keeps_the_old_models_without_reading_them_again(
    tmp_path: Path,
    demo_instance: Path,
    monkeypatch: pytest.MonkeyPatch,
    new_iris_version: Callable[[Path, str], None],
) -> None:
    instance = tmp_path / "instance"
    shutil.copytree(demo_instance / "models", instance / "models")
    holder = Holder(create_app(instance_path=instance))
    registry = holder.callable.extensions[EXTENSION].registry
    before: dict[str, Any] = {b.name: b for b in registry.bundles()}
    new_iris_version(instance / "models", "2")
    with (instance / "models" / "iris" / "2" / "model.joblib").open("ab") as handle:
        handle.write(b"tampered")

    reads: list[Path] = []

    def counted(path: Path, *args: Any, **kwargs: Any) -> Any:
        reads.append(path)
        return load_bundle(path, *args, **kwargs)

    monkeypatch.setattr(registry_module, "load_bundle", counted)
    reloaded, message = reload(holder)

    assert len(reads) == len(before) + 1  # each folder read once, the new one included
    assert not reloaded
    assert message.startswith("reload failed, the previous models keep serving")
    assert holder.callable.extensions[EXTENSION].registry is registry
    assert {b.name: b for b in registry.bundles()} == before  # the same objects: not re-read
    (error,) = registry.load_errors["iris"]
    assert error.startswith("version 2:") and "sha256" in error
    assert str(instance) not in error

    shutil.rmtree(instance / "models" / "iris" / "2")
    new_iris_version(instance / "models", "2")
    reloaded, message = reload(holder)

    assert reloaded, message
    assert holder.callable.extensions[EXTENSION].registry.model("iris").default_version == "2"


def test_engines_made_before_fork_are_used_by_the_forked_worker(
    onnx_demo_instance: Path,
) -> None:
    app = create_app({"WARM_UP": "post_fork"}, instance_path=onnx_demo_instance)
    dataplane = app.extensions[EXTENSION].dataplane
    assert share_engines(app, workers=available_cpus())
    made = dict(dataplane.engines)
    bundles = {b.name: b for b in dataplane.registry.bundles()}
    assert {dataplane.engines[id(b)].name for b in bundles.values()} == {"onnx"}
    rows = np.asarray(bundles["breast_cancer"].manifest.reference_rows[:50], dtype=np.float64)
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # the worker: warm up with the master's sessions, then predict
        try:
            warm_up(app)
            same = all(dataplane.engines[key] is engine for key, engine in made.items())
            labels = dataplane.predict("breast_cancer", rows.tolist()).outputs[0].values
            os.write(writer, json.dumps({"same": same, "labels": labels}).encode())
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        answer = json.loads(pipe.read() or b"{}")
    os.waitpid(child, 0)
    assert answer["same"] is True
    assert answer["labels"] == bundles["breast_cancer"].estimator.predict(rows).tolist()


def test_engines_stay_per_worker_when_a_worker_has_several_cpus(
    onnx_demo_instance: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app({"WARM_UP": "post_fork"}, instance_path=onnx_demo_instance)
    monkeypatch.setattr("inference_app.process.available_cpus", lambda: 8)
    assert not share_engines(app, workers=2)
    assert app.extensions[EXTENSION].dataplane.engines == {}


#: A process that imports onnxruntime, forks, and reports how its child ended with
#: ``leave(STATUS)``: the child runs the exit functions (one of them prints) and its status
#: is what ``sys.exit(STATUS)`` would give.
FORKED_LEAVE = """
import atexit, os, sys
import onnxruntime
from inference_app.process import leave
child = os.fork()
if child == 0:
    atexit.register(print, "exit functions ran", flush=True)
    leave(STATUS)
_, waited = os.waitpid(child, 0)
print("status", os.waitstatus_to_exitcode(waited))
"""


@pytest.mark.parametrize(("status", "code"), [(None, 0), (0, 0), (3, 3), ("stopped", 1)])
def test_leave_ends_a_child_forked_after_onnxruntime_with_its_status(
    status: object, code: int
) -> None:
    script = FORKED_LEAVE.replace("STATUS", repr(status))

    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )

    assert done.stdout.splitlines() == ["exit functions ran", f"status {code}"], done.stderr
    assert done.stderr == ("stopped\n" if status == "stopped" else ""), done.stderr
