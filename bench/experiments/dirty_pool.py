"""Experiment: a model pool in Gunicorn's dirty arbiters against in-worker prediction.

Two WSGI callables answer ``POST`` with ``{"instances": [...]}`` for the model named by the
path (``/<model>``): ``direct`` predicts in the HTTP worker (the design kept), ``pooled`` sends
the rows to a dirty worker (``ModelPool``) over Gunicorn's IPC, where batching merges requests
from all HTTP workers. Run by ``bench/experiments/run_dirty.sh``; results in bench/RESULTS.md.
"""

from __future__ import annotations

import json
import os
from typing import Any

from gunicorn.dirty import DirtyApp, get_dirty_client

from inference_app.core.dataplane import DataPlane
from inference_app.core.registry import Registry

MODELS = os.environ.get("BENCH_MODELS_DIR", "")


def _runtime(batching: bool) -> DataPlane:
    registry = Registry(MODELS)
    registry.load()
    runtime = DataPlane(registry, batching=batching)
    runtime.warm_up()
    return runtime


class ModelPool(DirtyApp):
    """The models, loaded once in each dirty worker, batching concurrent calls."""

    def init(self) -> None:
        """Load and warm every model."""
        self.runtime = _runtime(batching=True)

    def predict(self, name: str, instances: list[Any]) -> list[Any]:
        """Return the predictions of ``name`` for ``instances``."""
        return self.runtime.predict(name, instances).outputs[0].values

    def close(self) -> None:
        """Nothing to release."""


_direct: DataPlane | None = None


def _answer(start_response: Any, predictions: list[Any]) -> list[bytes]:
    body = json.dumps({"predictions": predictions}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


def direct(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Predict in this HTTP worker, batching its threads' requests."""
    global _direct
    if _direct is None:
        _direct = _runtime(batching=True)
    body = json.loads(environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)))
    name = environ["PATH_INFO"].strip("/")
    return _answer(start_response, _direct.predict(name, body["instances"]).outputs[0].values)


def pooled(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Predict in the dirty worker pool."""
    body = json.loads(environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)))
    name = environ["PATH_INFO"].strip("/")
    client = get_dirty_client()
    predictions = client.execute("dirty_pool:ModelPool", "predict", name, body["instances"])
    return _answer(start_response, predictions)
