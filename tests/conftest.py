"""Shared fixtures: demo bundles fitted once per session, and the app, client and runner."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient

from inference_app import create_app
from inference_app.demo import write_demo_bundles


@pytest.fixture(scope="session")
def demo_instance(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An instance folder with the demo bundles and the repository's ``instance/config.py``."""
    instance = tmp_path_factory.mktemp("instance")
    write_demo_bundles(instance / "models")
    shutil.copy(Path(__file__).parents[1] / "instance" / "config.py", instance / "config.py")
    return instance


@pytest.fixture
def app(demo_instance: Path) -> Iterator[Flask]:
    """The app over the demo bundles, warmed up, in testing mode."""
    yield create_app({"TESTING": True}, instance_path=demo_instance)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client of the app."""
    return app.test_client()


@pytest.fixture
def runner() -> CliRunner:
    """A runner of the ``inference-app`` command."""
    return CliRunner()
