"""Configuration: defaults, the file, environment and test layers over them, and validation."""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from flask import Flask

ENV_PREFIX = "INFERENCE_APP"
INSTANCE_PATH_ENV = f"{ENV_PREFIX}_INSTANCE_PATH"

#: The first layer. ``instance/config.py``, ``INFERENCE_APP_<KEY>`` environment variables
#: (parsed as JSON where they parse) and the mapping given to ``create_app`` override it.
DEFAULTS: dict[str, Any] = {
    # Where bundles live, relative to the instance folder.
    "MODELS_DIR": "models",
    # The model ``POST /predict`` and ``/invocations`` use; default the only model, if one.
    "DEFAULT_MODEL": None,
    # Request bodies above this many bytes get 413 (Flask's own setting).
    "MAX_CONTENT_LENGTH": 16 * 1024 * 1024,
    # Requests with more rows than this get 422.
    "MAX_ROWS": 10_000,
    # Object rows with keys that are not features: "reject" (422) or "ignore".
    "UNKNOWN_FEATURES": "reject",
    # The longest string value a request may hold, in characters (422 above).
    "MAX_TEXT_LENGTH": 10_000,
    # When models run their first prediction: "on_load" in create_app, or "post_fork" in a
    # Gunicorn hook, so that a preloading master never runs inference (gunicorn.conf.py).
    "WARM_UP": "on_load",
    # Merge concurrent requests into one estimator call (threaded workers): true, false, or
    # a list of model names. Up to MAX_BATCH_SIZE rows, waiting up to MAX_BATCH_LATENCY_MS.
    "BATCHING": False,
    "MAX_BATCH_SIZE": 256,
    "MAX_BATCH_LATENCY_MS": 2.0,
    # What runs estimators: "auto" (a bundle's ONNX model when it has one and onnxruntime is
    # installed), "sklearn", or "onnx" (every bundle must have one).
    "RUNTIME": "auto",
    # Refuse bundles saved with another scikit-learn version (else: served, with a warning).
    "STRICT_SKLEARN_VERSION": False,
    # API keys: a list, or a comma-separated string; with none, the API is open.
    "API_KEYS": [],
    # A file of API key SHA-256 hex digests, one per line ('#' starts a comment).
    "API_KEYS_FILE": None,
    # Ask for a key on /docs and /openapi.json too (probes and /metrics never ask).
    "AUTH_DOCS": False,
    # Answers 429 beyond this many concurrent requests per worker (0: no cap).
    "MAX_CONCURRENT_REQUESTS": 0,
    # The deepest JSON nesting a request may use (a V2 tensor of shape [N, F] needs 4).
    "MAX_JSON_DEPTH": 32,
    # Origins allowed to call the API from a browser (CORS); none by default.
    "CORS_ORIGINS": [],
    # Write access log lines for probes and /metrics too.
    "LOG_PROBES": False,
    # The Open Inference Protocol over gRPC (docs/operations.md): each Gunicorn worker serves
    # it on this port beside HTTP, on the host of Gunicorn's first bind; null (unset) is 8081
    # under Gunicorn, 0 is off. The app alone (create_app, flask run) never serves gRPC.
    "GRPC_PORT": None,
    # Threads of each worker's gRPC server.
    "GRPC_THREADS": 4,
    # Seconds after which a gRPC connection is ended gracefully (GOAWAY), so clients
    # reconnect and spread again among the workers; a worker stopping on HUP hands its
    # clients over to the new workers within about this long.
    "GRPC_MAX_CONNECTION_AGE_S": 5.0,
    # Drift (docs/operations.md): a feature fails GET /v1/models/<name>/drift when the
    # population stability index of its served values against the training reference
    # exceeds this (rule of thumb: below 0.1 stable, above 0.25 a significant shift).
    "DRIFT_PSI_THRESHOLD": 0.2,
    # Payload logging (docs/operations.md): each answered inference as a CloudEvents request
    # and response event. A file path (JSON lines, shared by the workers) or an http(s):// URL
    # (POSTed in structured mode); null: off.
    "PAYLOAD_LOG": None,
    # The fraction of requests logged, 0 to 1 (both events of each logged request).
    "PAYLOAD_LOG_SAMPLE": 1.0,
    # Requests waiting per worker for the sender thread; beyond, their events are dropped.
    "PAYLOAD_LOG_QUEUE_SIZE": 1000,
    # A file sink is rotated past this many bytes (0: never), keeping this many old files.
    "PAYLOAD_LOG_MAX_BYTES": 100 * 1024 * 1024,
    "PAYLOAD_LOG_BACKUPS": 5,
    # Request headers to log (case-insensitive); none by default, so no API key or
    # Authorization value is ever logged unless named here.
    "PAYLOAD_LOG_HEADERS": [],
    # An HTTP sink's connect and read timeout, and events per POST (1: one event in
    # application/cloudevents+json; more: application/cloudevents-batch+json arrays).
    "PAYLOAD_LOG_TIMEOUT_MS": 500,
    "PAYLOAD_LOG_BATCH_SIZE": 1,
    # flask-smorest: the OpenAPI document and Swagger UI, served from local files.
    "API_TITLE": "inference-app",
    "API_VERSION": "v1",
    "OPENAPI_VERSION": "3.0.3",
    "OPENAPI_URL_PREFIX": "/",
    "OPENAPI_JSON_PATH": "openapi.json",
    "OPENAPI_SWAGGER_UI_PATH": "docs",
    "OPENAPI_SWAGGER_UI_URL": "docs/static/",
    "OPENAPI_SWAGGER_UI_CONFIG": {"tryItOutEnabled": True, "displayRequestDuration": True},
    "API_SPEC_OPTIONS": {
        "info": {
            "description": "Predictions from scikit-learn models. Each model under `models` "
            "has its own operation with its feature names and an example you can send as is. "
            "Errors answer `{code, status, message, errors}`; `errors` names the row and the "
            "feature at fault."
        }
    },
}


class ConfigError(ValueError):
    """A setting has a value the server cannot start with; the message names the key."""


def _positive_int(value: Any) -> bool:
    return type(value) is int and value > 0


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _strings(value: Any) -> bool:
    return isinstance(value, str) or (
        isinstance(value, list) and all(isinstance(item, str) and item for item in value)
    )


#: Settings that take a list, also given as a comma-separated string (as from the env).
LIST_SETTINGS = ("API_KEYS", "CORS_ORIGINS", "BATCHING", "PAYLOAD_LOG_HEADERS")


def string_list(value: str | list[str]) -> list[str]:
    """Return a list setting given as a list or as a comma-separated string."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return list(value)


#: Each validated setting: a check of its value, and what the value must be.
CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "MODELS_DIR": (_text, "a non-empty string"),
    "DEFAULT_MODEL": (lambda value: value is None or _text(value), "a model name or null"),
    "MAX_CONTENT_LENGTH": (_positive_int, "a positive integer (bytes)"),
    "MAX_ROWS": (_positive_int, "a positive integer"),
    "MAX_TEXT_LENGTH": (_positive_int, "a positive integer (characters)"),
    "UNKNOWN_FEATURES": (lambda value: value in ("reject", "ignore"), "'reject' or 'ignore'"),
    "WARM_UP": (lambda value: value in ("on_load", "post_fork"), "'on_load' or 'post_fork'"),
    "LOG_PROBES": (lambda value: type(value) is bool, "true or false"),
    "DRIFT_PSI_THRESHOLD": (
        lambda value: type(value) in (int, float) and 0 < value < float("inf"),
        "a positive number",
    ),
    "STRICT_SKLEARN_VERSION": (lambda value: type(value) is bool, "true or false"),
    "AUTH_DOCS": (lambda value: type(value) is bool, "true or false"),
    "API_KEYS": (lambda value: _strings(value), "a list of keys or a comma-separated string"),
    "API_KEYS_FILE": (lambda value: value is None or _text(value), "a file path or null"),
    "MAX_CONCURRENT_REQUESTS": (
        lambda value: type(value) is int and value >= 0,
        "a non-negative integer (0: no cap)",
    ),
    "MAX_JSON_DEPTH": (_positive_int, "a positive integer"),
    "GRPC_PORT": (
        lambda value: value is None or (type(value) is int and 0 <= value <= 65535),
        "a TCP port (1 to 65535), 0 (off) or null (8081 under Gunicorn)",
    ),
    "GRPC_THREADS": (_positive_int, "a positive integer"),
    "GRPC_MAX_CONNECTION_AGE_S": (
        lambda value: type(value) in (int, float) and 0 < value <= 3600,
        "a number of seconds above 0, at most 3600",
    ),
    "BATCHING": (
        lambda value: type(value) is bool or _strings(value),
        "true, false, or a list of model names",
    ),
    "MAX_BATCH_SIZE": (_positive_int, "a positive integer"),
    "RUNTIME": (lambda value: value in ("auto", "sklearn", "onnx"), "'auto', 'sklearn' or 'onnx'"),
    "MAX_BATCH_LATENCY_MS": (
        lambda value: type(value) in (int, float) and 0 <= value <= 1000,
        "a number of milliseconds from 0 to 1000",
    ),
    "CORS_ORIGINS": (
        lambda value: _strings(value),
        "a list of origins or a comma-separated string",
    ),
    "PAYLOAD_LOG": (lambda value: value is None or _text(value), "a file path, a URL or null"),
    "PAYLOAD_LOG_SAMPLE": (
        lambda value: type(value) in (int, float) and 0 <= value <= 1,
        "a fraction from 0 to 1",
    ),
    "PAYLOAD_LOG_QUEUE_SIZE": (_positive_int, "a positive integer (requests)"),
    "PAYLOAD_LOG_MAX_BYTES": (
        lambda value: type(value) is int and value >= 0,
        "a non-negative integer (bytes; 0: never rotate)",
    ),
    "PAYLOAD_LOG_BACKUPS": (
        lambda value: type(value) is int and value >= 0,
        "a non-negative integer (files)",
    ),
    "PAYLOAD_LOG_HEADERS": (
        lambda value: _strings(value),
        "a list of header names or a comma-separated string",
    ),
    "PAYLOAD_LOG_TIMEOUT_MS": (
        lambda value: type(value) in (int, float) and 0 < value <= 60_000,
        "a number of milliseconds above 0, at most 60000",
    ),
    "PAYLOAD_LOG_BATCH_SIZE": (_positive_int, "a positive integer (events per POST)"),
}


def resolve_instance_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Return the absolute instance folder: ``explicit``, else ``INFERENCE_APP_INSTANCE_PATH``,
    else ``instance/`` in the working directory."""
    chosen: str | os.PathLike[str] = explicit or os.environ.get(INSTANCE_PATH_ENV) or "instance"
    return Path(chosen).resolve()


def init_app(app: Flask, test_config: Mapping[str, Any] | None = None) -> None:
    """Layer the configuration onto ``app``, validate it, and turn comma-separated strings
    of :data:`LIST_SETTINGS` into lists.

    :raises ConfigError: a setting has a bad value.
    """
    app.config.from_mapping(DEFAULTS)
    app.config.from_pyfile("config.py", silent=True)
    app.config.from_prefixed_env(ENV_PREFIX)
    if test_config is not None:
        app.config.from_mapping(test_config)
    validate(app.config)
    for key in LIST_SETTINGS:  # BATCHING may also be true or false
        if isinstance(app.config[key], str):
            app.config[key] = string_list(app.config[key])


def validate(config: Mapping[str, Any]) -> None:
    """Check every setting in :data:`CHECKS`.

    :raises ConfigError: naming the key, its environment variable and what it must be.
    """
    for key, (check, expected) in CHECKS.items():
        value = config.get(key)
        if not check(value):
            raise ConfigError(
                f"setting {key} (environment variable {ENV_PREFIX}_{key}) must be "
                f"{expected}; got {value!r}"
            )


def settings(instance_path: str | os.PathLike[str] | None = None) -> Flask:
    """Return a bare app holding an instance's configuration, with no model loaded (for the
    commands and jobs that do not serve).

    :raises ConfigError: a setting has a bad value.
    """
    app = Flask(
        "inference_app",
        instance_path=str(resolve_instance_path(instance_path)),
        instance_relative_config=True,
    )
    init_app(app)
    return app


def models_dir(app: Flask) -> Path:
    """Return the folder of model bundles, resolved against the instance folder."""
    return Path(app.instance_path) / str(app.config["MODELS_DIR"])


def default_model(app: Flask, names: Collection[str]) -> str:
    """Return the model ``POST /predict`` and MLflow's ``/invocations`` use: ``DEFAULT_MODEL``,
    else the only one of ``names``; ``""`` when there is none or the choice is the caller's.

    :raises ConfigError: ``DEFAULT_MODEL`` names a model that is not loaded.
    """
    chosen: str | None = app.config["DEFAULT_MODEL"]
    if chosen is not None and chosen not in names:
        raise ConfigError(
            f"setting DEFAULT_MODEL (environment variable {ENV_PREFIX}_DEFAULT_MODEL) names "
            f"{chosen!r}, which is not loaded; loaded: {', '.join(sorted(names)) or 'none'}"
        )
    if chosen is None and len(names) == 1:
        return next(iter(names))
    return chosen or ""
