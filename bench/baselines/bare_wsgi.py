"""The bare-WSGI floor of the benchmark: the least a Python server can do per prediction.

It reads the body, ``orjson.loads`` it, predicts with inference-app's dataplane (ONNX when the
bundle has it, like the server's default; no batching) and ``orjson.dumps`` the answer: no
Flask, no schema validation beyond the dataplane's row checks, no metrics, no logs. Served by
Gunicorn with the same worker settings as inference-app's defaults (``BARE_WSGI_ARGS`` in
``bench/run.py``), it bounds what this server could reach on the machine. It loads the bundles
of ``$BENCH_MODELS_DIR``.

    POST /<name>   {"instances": [[...], ...]} -> {"predictions": [...]}
"""

from __future__ import annotations

import os
from typing import Any

import orjson

from inference_app.core.dataplane import DataPlane
from inference_app.core.registry import Registry

_runtime: DataPlane | None = None


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Answer ``POST /<model>`` with ``{"instances": [...]}`` by the dataplane, nothing else."""
    global _runtime
    if _runtime is None:
        _runtime = DataPlane(Registry(os.environ["BENCH_MODELS_DIR"]))
        _runtime.registry.load()
        _runtime.warm_up()
    body = orjson.loads(environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)))
    prediction = _runtime.predict(environ["PATH_INFO"].strip("/"), body["instances"])
    start_response("200 OK", [("Content-Type", "application/json")])
    return [orjson.dumps({"predictions": prediction.outputs[0].values})]
