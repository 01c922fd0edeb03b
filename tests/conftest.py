"""Shared fixtures: demo bundles fitted once per session, the app, client and runner, and
Gunicorn servers stopped after each test."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from sklearn.linear_model import LogisticRegression

from inference_app import create_app
from inference_app.core.bundle import load_bundle, write_bundle
from inference_app.demo import DEMO_VERSION, DEMOS, load_demo_data, write_demo_bundles
from servers import Server, start_gunicorn, stop, wait_ready


@pytest.fixture(scope="session")
def demo_instance(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An instance folder with the demo bundles and the repository's ``instance/config.py``."""
    instance = tmp_path_factory.mktemp("instance")
    write_demo_bundles(instance / "models", names=DEMOS)
    shutil.copy(Path(__file__).parents[1] / "instance" / "config.py", instance / "config.py")
    return instance


@pytest.fixture(scope="session")
def onnx_demo_instance(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An instance folder with the numeric demo bundles as ``init-demo`` ships them: each with
    its ONNX conversion, checked on the training data."""
    instance = tmp_path_factory.mktemp("onnx-instance")
    written = write_demo_bundles(instance / "models", names=DEMOS, onnx=True)
    assert all(item.bundle is not None and item.bundle.onnx is not None for item in written)
    shutil.copy(Path(__file__).parents[1] / "instance" / "config.py", instance / "config.py")
    return instance


@pytest.fixture
def app(demo_instance: Path) -> Iterator[Flask]:
    """The app over the demo bundles, warmed up, in testing mode."""
    yield create_app({"TESTING": True}, instance_path=demo_instance)


@pytest.fixture
def cold_app(demo_instance: Path) -> Iterator[Flask]:
    """An app whose models wait for :func:`inference_app.process.warm_up`."""
    yield create_app({"TESTING": True, "WARM_UP": "post_fork"}, instance_path=demo_instance)


@pytest.fixture(scope="session")
def demo_estimators(demo_instance: Path) -> dict[str, Any]:
    """The demo estimators as loaded from their bundles, for in-process predictions."""
    models = demo_instance / "models"
    return {name: load_bundle(models / name / DEMO_VERSION).estimator for name in DEMOS}


@pytest.fixture
def new_iris_version() -> Callable[[Path, str], None]:
    """Write another iris version, fitted with other settings, into a models folder."""

    def write(models: Path, version: str) -> None:
        rows, target, names = load_demo_data("iris")
        model = LogisticRegression(C=0.5, max_iter=1000).fit(rows, target)
        write_bundle(model, rows, models, "iris", version, feature_names=names)

    return write


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client of the app."""
    return app.test_client()


@pytest.fixture
def runner() -> CliRunner:
    """A runner of the ``inference-app`` command."""
    return CliRunner()


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Any]:
    """Start Gunicorn servers for one test and stop them all afterwards."""
    servers: list[Server] = []

    def start(instance: Path, **settings: str) -> Server:
        server = start_gunicorn(instance, tmp_path / f"gunicorn-{len(servers)}.log", **settings)
        servers.append(server)
        wait_ready(server)
        return server

    yield start
    for server in servers:
        stop(server)
