"""The Flask application factory of inference-app."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

__version__ = "0.1.0"


def create_app(
    test_config: Mapping[str, Any] | None = None,
    *,
    instance_path: str | os.PathLike[str] | None = None,
) -> Flask:
    """Create the inference server: config, registry, dataplane, API, blueprints, docs.

    :param test_config: settings that override every other configuration layer.
    :param instance_path: the instance folder holding ``config.py`` and ``models/``; default
        ``INFERENCE_APP_INSTANCE_PATH``, else ``instance/`` in the working directory.
    :raises inference_app.config.ConfigError: a setting has a bad value.
    :raises inference_app.core.errors.BundleError: a model bundle cannot be loaded.
    """
    # Imported here so that importing the serving core (inference_app.core) loads no Flask.
    from inference_app import config, metrics, monitoring, payload
    from inference_app.core.dataplane import DataPlane
    from inference_app.core.registry import Registry
    from inference_app.http import (
        api,
        docs,
        drift,
        fastpath,
        health,
        mlflow,
        observe,
        security,
        v1,
        v2,
    )

    app = api.Server(
        __name__,
        instance_path=str(config.resolve_instance_path(instance_path)),
        instance_relative_config=True,
    )
    config.init_app(app, test_config)
    payload_log = payload.from_settings(app.config)

    registry = Registry(
        config.models_dir(app), strict_sklearn_version=app.config["STRICT_SKLEARN_VERSION"]
    )
    registry.load()
    default_model = config.default_model(app, registry.models)
    dataplane = DataPlane.from_settings(
        registry, app.config, on_batch=metrics.record_batch, on_shadow=metrics.record_shadow
    )
    metrics.record_loads(registry)
    if app.config["WARM_UP"] == "on_load":
        dataplane.warm_up()
        metrics.record_served(registry)
    api.init_services(app, registry, dataplane)
    monitoring.init_app(app, registry, dataplane)
    observe.init_app(app)

    smorest = api.init_app(app)
    security.init_app(app, smorest)
    smorest.register_blueprint(health.blp)
    smorest.register_blueprint(v1.blp)
    smorest.register_blueprint(v2.blp)
    smorest.register_blueprint(mlflow.blp)
    smorest.register_blueprint(observe.blp)
    smorest.register_blueprint(drift.blp)
    docs.init_app(app, smorest, registry, default_model)
    app.fast_path = fastpath.FastPath(app)
    payload.install(payload_log)  # this process's payload log (the last app made)
    return app
