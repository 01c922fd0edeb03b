"""Tests of the configuration layers (defaults, file, environment, test) and their checks."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from inference_app import create_app, process
from inference_app.config import ENV_PREFIX, INSTANCE_PATH_ENV, ConfigError
from inference_app.http.api import EXTENSION, Services


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Remove every ``INFERENCE_APP_*`` variable of the caller's shell for each test."""
    for key in list(os.environ):
        if key.startswith(f"{ENV_PREFIX}_"):
            monkeypatch.delenv(key)
    yield


@pytest.fixture
def instance(tmp_path: Path, demo_instance: Path) -> Path:
    """A fresh instance folder with the demo bundles and no ``config.py`` of its own yet."""
    instance = Path(shutil.copytree(demo_instance, tmp_path / "instance"))
    (instance / "config.py").unlink(missing_ok=True)
    return instance


def services(app: Flask) -> Services:
    """Return the registry and runtime of ``app``."""
    services: Services = app.extensions[EXTENSION]
    return services


def iris_row(app: Flask) -> dict[str, Any]:
    """Return the first reference row of the iris demo as an object keyed by feature name."""
    manifest = services(app).registry.get("iris").manifest
    return dict(zip(manifest.feature_names, manifest.reference_rows[0], strict=True))


def test_defaults(instance: Path) -> None:
    app = create_app(instance_path=instance)

    assert app.config["MAX_ROWS"] == 10_000
    assert app.config["MAX_CONTENT_LENGTH"] == 16 * 1024 * 1024
    assert app.config["UNKNOWN_FEATURES"] == "reject"
    assert app.config["WARM_UP"] == "on_load"
    assert app.config["MODELS_DIR"] == "models"
    assert app.config["DEFAULT_MODEL"] is None
    assert app.instance_path == str(instance.resolve())
    assert services(app).dataplane.limits.max_rows == 10_000
    assert services(app).dataplane.limits.unknown_features == "reject"
    assert list(services(app).registry.models) == ["breast_cancer", "diabetes", "iris"]


#: The value of MAX_ROWS each layer sets, when it is present.
LAYER_VALUES = {"file": 111, "env": 222, "test": 333}


@pytest.mark.parametrize(
    "layers",
    [
        (),
        ("file",),
        ("env",),
        ("test",),
        ("file", "env"),
        ("file", "test"),
        ("env", "test"),
        ("file", "env", "test"),
    ],
    ids=lambda layers: "+".join(layers) or "defaults",
)
def test_later_layers_win(
    instance: Path, monkeypatch: pytest.MonkeyPatch, layers: tuple[str, ...]
) -> None:
    if "file" in layers:
        (instance / "config.py").write_text(f"MAX_ROWS = {LAYER_VALUES['file']}\n")
    if "env" in layers:
        monkeypatch.setenv(f"{ENV_PREFIX}_MAX_ROWS", str(LAYER_VALUES["env"]))
    test_config = {"MAX_ROWS": LAYER_VALUES["test"]} if "test" in layers else None

    app = create_app(test_config, instance_path=instance)

    expected = LAYER_VALUES[layers[-1]] if layers else 10_000
    assert app.config["MAX_ROWS"] == expected
    assert services(app).dataplane.limits.max_rows == expected


def test_instance_config_file_overrides_defaults(instance: Path) -> None:
    (instance / "config.py").write_text(
        'UNKNOWN_FEATURES = "ignore"\nDEFAULT_MODEL = "diabetes"\nlowercase = "skipped"\n'
    )

    app = create_app(instance_path=instance)

    assert app.config["UNKNOWN_FEATURES"] == "ignore"
    assert app.config["DEFAULT_MODEL"] == "diabetes"
    assert services(app).dataplane.limits.unknown_features == "ignore"
    assert "lowercase" not in app.config
    # Only the instance's file is read: no names of the package's own modules leak in.
    assert "DEFAULTS" not in app.config
    assert "CHECKS" not in app.config


@pytest.mark.parametrize(
    ("key", "raw", "value"),
    [
        ("MAX_ROWS", "500", 500),
        ("MAX_CONTENT_LENGTH", "1048576", 1_048_576),
        ("UNKNOWN_FEATURES", "ignore", "ignore"),
        ("UNKNOWN_FEATURES", '"ignore"', "ignore"),
        ("WARM_UP", "post_fork", "post_fork"),
        ("DEFAULT_MODEL", "iris", "iris"),
        ("DEFAULT_MODEL", "null", None),
    ],
)
def test_environment_values_are_parsed_as_json(
    demo_instance: Path, monkeypatch: pytest.MonkeyPatch, key: str, raw: str, value: Any
) -> None:
    monkeypatch.setenv(f"{ENV_PREFIX}_{key}", raw)
    app = create_app(instance_path=demo_instance)
    assert app.config[key] == value
    assert type(app.config[key]) is type(value)


def test_environment_row_cap_reaches_requests(
    demo_instance: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(f"{ENV_PREFIX}_MAX_ROWS", "2")
    client = create_app({"TESTING": True}, instance_path=demo_instance).test_client()
    row = list(iris_row(client.application).values())

    assert client.post("/v1/models/iris:predict", json={"instances": [row] * 2}).status_code == 200
    response = client.post("/v1/models/iris:predict", json={"instances": [row] * 3})
    assert response.status_code == 422
    assert "3 rows" in response.json["message"]


def test_instance_path_comes_from_the_environment(
    instance: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(INSTANCE_PATH_ENV, str(instance))
    monkeypatch.chdir(tmp_path)

    app = create_app({"TESTING": True})

    assert app.instance_path == str(instance.resolve())
    assert list(services(app).registry.models) == ["breast_cancer", "diabetes", "iris"]


def test_explicit_instance_path_wins_over_the_environment(
    instance: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv(INSTANCE_PATH_ENV, str(empty))

    app = create_app({"TESTING": True}, instance_path=instance)

    assert app.instance_path == str(instance.resolve())
    assert list(services(app).registry.models) == ["breast_cancer", "diabetes", "iris"]


BAD_VALUES = [
    ("MAX_ROWS", "abc"),
    ("MAX_ROWS", 0),
    ("MAX_ROWS", -1),
    ("MAX_ROWS", True),
    ("MAX_ROWS", 1.5),
    ("MAX_ROWS", None),
    ("MAX_CONTENT_LENGTH", 0),
    ("MAX_CONTENT_LENGTH", "16MB"),
    ("UNKNOWN_FEATURES", "maybe"),
    ("UNKNOWN_FEATURES", "REJECT"),
    ("WARM_UP", "later"),
    ("MODELS_DIR", ""),
    ("DEFAULT_MODEL", "penguins"),
    ("DEFAULT_MODEL", 3),
]


@pytest.mark.parametrize("layer", ["test", "env"])
@pytest.mark.parametrize(("key", "value"), BAD_VALUES, ids=lambda v: json.dumps(v))
def test_bad_value_stops_the_app_naming_the_key(
    demo_instance: Path, monkeypatch: pytest.MonkeyPatch, layer: str, key: str, value: Any
) -> None:
    if layer == "env":
        raw = value if isinstance(value, str) else json.dumps(value)
        monkeypatch.setenv(f"{ENV_PREFIX}_{key}", raw)
        test_config = None
    else:
        test_config = {key: value}

    with pytest.raises(ConfigError) as caught:
        create_app(test_config, instance_path=demo_instance)
    message = str(caught.value)
    assert f"setting {key} " in message
    assert f"{ENV_PREFIX}_{key}" in message


def test_default_model_that_is_loaded_serves_single_predictions(demo_instance: Path) -> None:
    app = create_app({"TESTING": True, "DEFAULT_MODEL": "diabetes"}, instance_path=demo_instance)
    manifest = services(app).registry.get("diabetes").manifest

    response = app.test_client().post("/predict", json={"instance": manifest.reference_rows[0]})

    assert response.status_code == 200
    assert response.json["model_name"] == "diabetes"
    assert isinstance(response.json["prediction"], float)


def test_post_fork_warm_up_makes_models_ready(demo_instance: Path) -> None:
    app = create_app({"TESTING": True, "WARM_UP": "post_fork"}, instance_path=demo_instance)
    client = app.test_client()
    body = {"instances": [iris_row(app)]}

    assert list(services(app).registry.models) == ["breast_cancer", "diabetes", "iris"]
    assert client.get("/health/live").status_code == 200
    response = client.get("/health/ready")
    assert response.status_code == 503
    assert response.json["models"] == {"breast_cancer": False, "diabetes": False, "iris": False}
    assert client.post("/v1/models/iris:predict", json=body).status_code == 503

    process.warm_up(app)

    response = client.get("/health/ready")
    assert response.status_code == 200
    assert response.json["models"] == {"breast_cancer": True, "diabetes": True, "iris": True}
    assert client.post("/v1/models/iris:predict", json=body).status_code == 200


def test_on_load_warm_up_makes_models_ready_at_once(demo_instance: Path) -> None:
    client = create_app({"TESTING": True}, instance_path=demo_instance).test_client()
    assert client.get("/health/ready").status_code == 200


@pytest.mark.parametrize(
    ("policy", "status"),
    [
        ("reject", 422),
        ("ignore", 200),
    ],
)
def test_unknown_features_setting(demo_instance: Path, policy: str, status: int) -> None:
    app = create_app({"TESTING": True, "UNKNOWN_FEATURES": policy}, instance_path=demo_instance)
    client = app.test_client()
    row = iris_row(app)

    response = client.post(
        "/v1/models/iris:predict", json={"instances": [{**row, "petal colour": 1.0}]}
    )

    assert response.status_code == status
    if status == 422:
        assert "'petal colour'" in response.json["message"]
    else:
        plain = client.post("/v1/models/iris:predict", json={"instances": [row]})
        assert response.json["predictions"] == plain.json["predictions"]
