"""Experiment: what counting rows for drift costs per request, in process.

For iris (logistic regression, one row per request) and breast_cancer (a 100-tree random
forest, 100 rows per request), answers ``POST /v1/models/<name>:predict`` through the app's WSGI
callable (the fast path, as Gunicorn calls it; no sockets), in rounds alternating with the
drift observer on and taken off the dataplane, and times the observer alone (binning the
checked rows, then one counter ``inc`` per non-empty bin) and its binning alone, garbage
collection on. As under Gunicorn, metrics are in prometheus-client's multiprocess mode (a
temporary folder) and the app's objects are frozen out of the collector (``gc.freeze``). Prints
medians in microseconds.
Run: ``.venv/bin/python bench/experiments/drift.py [requests per round] [rounds]``.
"""

from __future__ import annotations

import os
import tempfile

# Before prometheus_client is imported: the counters write to files, as in a Gunicorn worker.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="drift-bench-"))

import gc  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import timeit  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from inference_app import create_app, monitoring  # noqa: E402
from inference_app.core.dataplane import InferenceRequest  # noqa: E402
from inference_app.demo import load_demo_data, write_demo_bundles  # noqa: E402

CASES = {"iris, 1 row": ("iris", 1), "breast_cancer forest, 100 rows": ("breast_cancer", 100)}


def environ(name: str, body: bytes) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": f"/v1/models/{name}:predict",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "wsgi.url_scheme": "http",
    }


def round_us(app: Any, name: str, body: bytes, count: int) -> float:
    """Return the mean microseconds of ``count`` requests."""
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        statuses.append(status)

    base = environ(name, body)
    started = time.perf_counter()
    for _ in range(count):
        env = dict(base)
        env["wsgi.input"] = io.BytesIO(body)
        b"".join(app(env, start_response))
    elapsed = time.perf_counter() - started
    assert set(statuses) == {"200 OK"}, set(statuses)
    return elapsed / count * 1e6


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    instance = Path(tempfile.mkdtemp(prefix="drift-bench-instance-"))
    write_demo_bundles(instance / "models", names=["iris", "breast_cancer"])
    app = create_app({"TESTING": True}, instance_path=instance)
    dataplane = app.extensions["inference_app"].dataplane
    monitor = app.extensions[monitoring.EXTENSION]
    gc.freeze()  # as gunicorn.conf.py's pre_fork: the app's objects out of the collector's way
    print(f"{count} requests x {rounds} rounds, median microseconds per request")
    for label, (name, rows) in CASES.items():
        data, _, _ = load_demo_data(name)
        instances = data[:rows].tolist()
        body = json.dumps({"instances": instances}).encode()
        times: dict[str, list[float]] = {"drift on": [], "drift off": []}
        round_us(app, name, body, 50)  # warm up
        for _ in range(rounds):
            times["drift on"].append(round_us(app, name, body, count))
            dataplane.observers.remove(monitor)
            times["drift off"].append(round_us(app, name, body, count))
            dataplane.observers.append(monitor)
        on, off = (statistics.median(times[key]) for key in ("drift on", "drift off"))
        result = dataplane.infer(InferenceRequest(model=name, instances=instances))
        bundle = dataplane.serving(name)
        plan = monitor.track(bundle).plan
        assert result.input is not None
        bins = int((plan.count(result.input) > 0).sum())
        number = 2_000
        observer = timeit.repeat(
            "monitor(bundle, result)",
            "gc.enable()",
            globals={**globals(), **locals()},
            number=number,
            repeat=7,
        )
        binning = timeit.repeat(
            "plan.count(result.input)",
            "gc.enable()",
            globals={**globals(), **locals()},
            number=number,
            repeat=7,
        )
        print(f"{label}:")
        print(f"  request, drift on   {on:8.1f} us")
        print(f"  request, drift off  {off:8.1f} us  (difference {on - off:+.1f} us)")
        print(
            f"  observer alone      {statistics.median(observer) / number * 1e6:8.1f} us "
            f"({bins} non-empty bins of {plan.size}: {bins} counter incs)"
        )
        print(f"  binning alone       {statistics.median(binning) / number * 1e6:8.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
