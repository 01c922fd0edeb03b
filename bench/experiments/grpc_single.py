"""Experiment: gRPC served by every Gunicorn worker (SO_REUSEPORT) against one gRPC process.

The design kept (``inference_app.grpc.lifecycle``) serves gRPC from each of the 2 workers on
one port; the alternative is a single process serving gRPC for the whole server, beside the
HTTP workers, as a Gunicorn dirty arbiter's worker or a process of its own would (one
process, one interpreter lock, its own thread pool). Both are measured with h2load on the
same calls as ``make bench``'s gRPC scenarios (``bench/run.py``: raw-contents
ModelInferRequest, one call at a time per connection), interleaved, on the demo bundles of
``bench/work/instance`` (``make bench`` writes them). Loopback only; results in RESULTS.md.

    .venv/bin/python bench/experiments/grpc_single.py   # BENCH_REPEATS, BENCH_SECONDS
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[1]
THREADS = 8  # the single process's gRPC threads: the 2 workers' 4 each


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_run", BENCH / "run.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = module
    spec.loader.exec_module(module)
    return module


def serve_alone(port: int) -> None:
    """Serve gRPC for the demo bundles in this process until killed."""
    from inference_app import create_app
    from inference_app.grpc import service

    app = create_app(instance_path=BENCH / "work" / "instance")
    running = service.serve(app, port, threads=THREADS)  # the server stops when collected
    print(f"single gRPC process serving on {running.port}", flush=True)
    while True:
        time.sleep(3600)


def main() -> None:
    b = _bench()
    repeats = int(os.environ.get("BENCH_REPEATS", "3"))
    seconds = int(os.environ.get("BENCH_SECONDS", "3"))
    instance = b.WORK / "instance"
    workers_port, single_port = b.free_port(), b.free_port()
    specs = [
        b.app_spec(
            "per-worker",
            {"GUNICORN_WORKERS": "2", "INFERENCE_APP_GRPC_PORT": str(workers_port)},
            instance,
        ),
        b.ServerSpec(
            name="single-process",
            argv=(sys.executable, __file__, "--serve", str(single_port)),
            env={"OMP_NUM_THREADS": "1"},
            cwd=BENCH.parent,
            route="/v2/models/{model}/infer",
        ),
    ]
    addresses = {"per-worker": workers_port, "single-process": single_port}
    scripts = b.WORK / "scripts"
    rows_of = {name: b.SCENARIOS[name] for name in b.PROTOCOL_SCENARIOS}
    for name, scenario in rows_of.items():
        rows = b.scenario_rows(scenario.model, scenario.rows, scenario.start)
        (scripts / f"grpc_{name}.bin").write_bytes(b.grpc_frame(scenario.model, rows))
    results: dict[tuple[str, str], list[float]] = {}
    with b.serving(specs, b.WORK / "logs") as servers:
        url = {
            s.spec.name: f"http://127.0.0.1:{addresses[s.spec.name]}{b.GRPC_INFER}" for s in servers
        }
        for server in servers:
            deadline = time.monotonic() + 60
            while True:
                try:
                    b.run_h2load(url[server.spec.name], scripts / "grpc_iris_1.bin", 1, 1)
                    break
                except b.BenchError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
        for repeat in range(repeats):
            order = servers if repeat % 2 == 0 else list(reversed(servers))
            for name in rows_of:
                for server in order:
                    found = b.run_h2load(
                        url[server.spec.name], scripts / f"grpc_{name}.bin", 8, seconds
                    )
                    results.setdefault((server.spec.name, name), []).append(found["rps"])
                    print(
                        f"{server.spec.name:<15} {name:<18} {found['rps']:>8,.0f} req/s  "
                        f"p99 {found['p99_ms']:.2f} ms  errors {found['errors']}",
                        flush=True,
                    )
    print("\n| scenario | design | req/s (median) |\n|---|---|---:|")
    for (design, name), values in results.items():
        print(f"| {name} | {design} | {b.median(values):,.0f} |")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve_alone(int(sys.argv[2]))
    else:
        main()
