"""Experiment: how far above the seed apps can any WSGI app get on this machine?

``bare`` is the least a server can do per request: read the body, ``orjson.loads``, predict
with this server's dataplane (ONNX when the bundle has it, no batching), ``orjson.dumps``; no
Flask, no validation beyond the dataplane's row checks, no metrics, no logs. Run as a script,
it serves ``bare`` under Gunicorn (2 sync workers, then 2 gthread workers x 4 threads) beside
the seed Flask and seed FastAPI apps of ``bench/baselines`` and measures iris, one row per
request, 8 connections, with wrk, repeats interleaved. Needs ``make bench`` to have run once
(bench/work and wrk). Results in bench/RESULTS.md.
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path
from typing import Any

import orjson

from inference_app.core.dataplane import DataPlane
from inference_app.core.registry import Registry

_runtime: DataPlane | None = None


def bare(environ: dict[str, Any], start_response: Any) -> list[bytes]:
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


def main() -> None:
    """Measure ``bare`` and the seed apps; print each one's median req/s and its ratios."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import run as bench  # bench/run.py

    repeats = int(os.environ.get("BENCH_REPEATS", "3"))
    seconds = int(os.environ.get("BENCH_SECONDS", "5"))
    instance = bench.WORK / "instance"
    onnx_models = str(instance.with_name("instance-onnx") / "models")
    gunicorn = (str(bench.BIN / "gunicorn"), "--bind=127.0.0.1:{port}", "--workers=2")
    specs = [
        bench.ServerSpec(
            name=f"bare:{worker}",
            argv=(*gunicorn, f"--worker-class={worker}", "--threads=4", "ceiling:bare"),
            env={"BENCH_MODELS_DIR": onnx_models},
            cwd=Path(__file__).resolve().parent,
            route="/{model}",
        )
        for worker in ("sync", "gthread")
    ]
    specs += [spec for spec in bench.server_specs(instance) if spec.name in bench.BASELINES]
    script = bench.WORK / "scripts" / "iris_1.lua"
    body = bench.request_body(bench.scenario_rows("iris", 1)).encode()
    rps: dict[str, list[float]] = {}
    with bench.serving(specs, bench.WORK / "logs") as servers:
        for server in servers:
            bench.wait_ready(server, (server.predict_url("iris"), body))
            bench.run_wrk(server.predict_url("iris"), script, 8, 1)
        for repeat in range(repeats):
            for server in servers:
                result = bench.run_wrk(server.predict_url("iris"), script, 8, seconds)
                rps.setdefault(server.spec.name, []).append(result["rps"])
                print(f"repeat {repeat + 1}: {server.spec.name:<14} {result['rps']:>8,.0f} req/s")
    medians = {name: statistics.median(values) for name, values in rps.items()}
    for name, value in medians.items():
        ratios = "  ".join(f"{value / medians[b]:.2f}x {b}" for b in bench.BASELINES)
        print(f"{name:<14} {value:>8,.0f} req/s  {ratios}")


if __name__ == "__main__":
    main()
