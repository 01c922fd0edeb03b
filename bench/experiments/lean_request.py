"""Experiment: what one request's access line, metric writes and drift counting cost, in process.

Answers ``POST /v1/models/iris:predict`` (one row, the fast path, as Gunicorn calls the app:
its WSGI callable, no sockets) with the logging configuration Gunicorn installs (JSON lines
on stderr, here a temporary file) and prometheus-client's multiprocess mode (a temporary
folder), the app's objects frozen out of the collector (``gc.freeze``), as in a worker.

It prints microseconds per request (this thread's CPU time, ``time.thread_time_ns``, so that
other processes on a shared machine count less), medians of ``rounds`` rounds:

- ``request``: the whole request, everything on;
- ``access line``: ``observe.account`` with its line minus without it (the same call, so the
  difference is the line alone: building it, formatting it and writing it);
- ``metrics``: ``observe.account`` without its line, plus the fast path's in-flight gauge
  (one ``inc`` and one ``dec``): every metric write of a request but the drift counters;
- ``drift``: the drift observer alone (binning the row, then its counter writes);
- ``request without X``: the whole request with X switched off (the access logger's level
  raised; the metric calls replaced by no-ops; the drift observer taken off the dataplane),
  measured in rounds alternating with ``request`` (in a shuffled order each round), as a
  check of the direct figures.

Run: ``.venv/bin/python bench/experiments/lean_request.py [requests per round] [rounds]``.
To compare with another revision, interleaved (one run of each in turn, ``--runs`` times,
then the median of each figure over the runs), check it out and pass its folder::

    git worktree add /tmp/before <rev>
    .venv/bin/python bench/experiments/lean_request.py 2000 7 --against /tmp/before --runs 5
"""

from __future__ import annotations

import os
import sys
import tempfile

if __name__ == "__main__" and "--against" not in sys.argv:
    import atexit
    import shutil

    # Before prometheus_client is imported: the metrics write to files, as in a worker.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="lean-bench-metrics-")
    atexit.register(shutil.rmtree, os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)

import argparse  # noqa: E402
import atexit  # noqa: E402
import gc  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import logging.config  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

MODEL = "iris"
FIGURES = (
    "request",
    "access line",
    "metrics",
    "drift",
    "request without access line",
    "request without metrics",
    "request without drift",
)


class Null:
    """A metric series that records nothing (for the runs with metrics off)."""

    def inc(self, amount: float = 1) -> None:
        """Record nothing."""

    def dec(self, amount: float = 1) -> None:
        """Record nothing."""

    def observe(self, amount: float) -> None:
        """Record nothing."""

    def labels(self, *labels: str) -> Null:
        """Return itself."""
        return self


def per_call_us(call: Callable[[], Any], count: int) -> float:
    """Return the mean CPU microseconds of this thread over ``count`` calls of ``call``
    (CPU time, not wall time: on a shared machine, time spent descheduled is left out)."""
    started = time.thread_time_ns()
    for _ in range(count):
        call()
    return (time.thread_time_ns() - started) / count / 1000


def measure(count: int, rounds: int) -> dict[str, float]:
    """Return the median microseconds of each of :data:`FIGURES`."""
    from inference_app import create_app, logs, metrics, monitoring
    from inference_app.core.dataplane import InferenceRequest
    from inference_app.demo import load_demo_data, write_demo_bundles
    from inference_app.http import observe

    instance = Path(tempfile.mkdtemp(prefix="lean-bench-instance-"))
    atexit.register(shutil.rmtree, instance, ignore_errors=True)
    write_demo_bundles(instance / "models", names=[MODEL])
    app = create_app({}, instance_path=instance)
    # The logging Gunicorn installs (gunicorn.conf.py's logconfig_dict), on a file as stderr.
    log = tempfile.NamedTemporaryFile(prefix="lean-bench-", suffix=".log")  # noqa: SIM115
    os.dup2(log.fileno(), 2)
    logging.config.dictConfig(logs.logging_config("json", "INFO"))
    access_logger = logging.getLogger(logs.ACCESS_LOGGER)
    dataplane = app.extensions["inference_app"].dataplane
    monitor = app.extensions[monitoring.EXTENSION]

    data, _, _ = load_demo_data(MODEL)
    instances = data[:1].tolist()
    body = json.dumps({"instances": instances}).encode()
    base: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": f"/v1/models/{MODEL}:predict",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_USER_AGENT": "lean-bench/1",
        "wsgi.url_scheme": "http",
    }
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        statuses.append(status)

    def request() -> None:
        environ = dict(base)
        environ["wsgi.input"] = io.BytesIO(body)
        b"".join(app(environ, start_response))

    result = dataplane.infer(InferenceRequest(model=MODEL, instances=instances))
    bundle = dataplane.serving(MODEL)
    stages = {"parse": 1.2e-5, **result.timings, "serialise": 4e-6}

    def account(log: bool) -> Callable[[], None]:
        def call() -> None:
            observe.account(
                request_id="0f3c2a9be4d84f61a1b2c3d4e5f60718",
                method="POST",
                path=base["PATH_INFO"],
                route="/v1/models/<name>:predict",
                kind="native",
                status=200,
                model=MODEL,
                version=result.model_version,
                rows=1,
                duration=6.1e-5,
                stages=stages,
                remote_addr="127.0.0.1",
                user_agent="lean-bench/1",
                log=log,
            )

        return call

    def in_flight() -> None:
        if hasattr(metrics, "in_flight"):
            metrics.in_flight(1)
            metrics.in_flight(-1)
        else:
            metrics.IN_FLIGHT.inc()
            metrics.IN_FLIGHT.dec()

    def drift() -> None:
        monitor(bundle, result)

    # Switches for the whole-request runs: each returns the function that switches back.
    def no_access_line() -> Callable[[], None]:
        access_logger.setLevel(logging.WARNING)
        return lambda: access_logger.setLevel(logging.NOTSET)

    def no_metrics() -> Callable[[], None]:
        if hasattr(metrics, "record_request"):  # one call writes a request's metrics
            patched: dict[Any, dict[str, Any]] = {
                metrics: {
                    "record_request": lambda *args, **kwargs: None,
                    "in_flight": lambda change: None,
                }
            }
        else:  # one labels() and one inc() or observe() per sample
            patched = {
                metrics: {"IN_FLIGHT": Null()},
                observe: {"_child": lambda metric, *labels: Null()},
            }
        saved = {m: {name: getattr(m, name) for name in names} for m, names in patched.items()}
        for module, names in patched.items():
            for name, value in names.items():
                setattr(module, name, value)

        def undo() -> None:
            for module, names in saved.items():
                for name, value in names.items():
                    setattr(module, name, value)

        return undo

    def no_drift() -> Callable[[], None]:
        dataplane.observers.remove(monitor)
        return lambda: dataplane.observers.append(monitor)

    for _ in range(200):  # warm up every path
        request()
        account(True)()
        drift()
    assert set(statuses) == {"200 OK"}, set(statuses)
    gc.freeze()  # as gunicorn.conf.py's pre_fork

    times: dict[str, list[float]] = {figure: [] for figure in FIGURES}
    switches = {
        "request without access line": no_access_line,
        "request without metrics": no_metrics,
        "request without drift": no_drift,
    }
    order = ["request", *switches]
    for number in range(rounds):
        random.Random(number).shuffle(order)  # no phase always first (or always after one)
        for figure in order:
            undo = switches[figure]() if figure in switches else (lambda: None)
            try:
                times[figure].append(per_call_us(request, count))
            finally:
                undo()
        with_line = per_call_us(account(True), count)
        without = per_call_us(account(False), count)
        times["access line"].append(with_line - without)
        times["metrics"].append(without + per_call_us(in_flight, count))
        times["drift"].append(per_call_us(drift, count))
    assert set(statuses) == {"200 OK"}, set(statuses)
    lines = Path(log.name).read_bytes().splitlines()
    assert lines and all(json.loads(line) for line in lines[-10:]), lines[-10:]
    return {figure: statistics.median(values) for figure, values in times.items()}


def report(label: str, figures: dict[str, float]) -> None:
    """Print one revision's figures."""
    print(f"{label}:")
    for figure in FIGURES:
        print(f"  {figure:30} {figures[figure]:7.1f} us")


def compare(count: int, rounds: int, against: str, runs: int) -> None:
    """Run this revision and the one in ``against`` in turn, ``runs`` times each."""
    here = Path(__file__).resolve().parents[2]
    revisions = {"this revision": here / "src", f"{against}": Path(against) / "src"}
    results: dict[str, list[dict[str, float]]] = {label: [] for label in revisions}
    for _ in range(runs):
        for label, source in revisions.items():
            environ = {**os.environ, "PYTHONPATH": str(source)}
            environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
            out = subprocess.run(
                [sys.executable, __file__, str(count), str(rounds), "--json"],
                env=environ,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            figures = json.loads(out.splitlines()[-1])
            assert figures.pop("source").startswith(str(source)), (source, figures)
            results[label].append(figures)
    print(f"{count} requests x {rounds} rounds per run, {runs} runs each, interleaved;")
    print("medians over the runs of each run's medians, microseconds per request")
    for label, runs_of in results.items():
        report(label, {f: statistics.median(r[f] for r in runs_of) for f in FIGURES})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("count", nargs="?", type=int, default=2000, help="requests per round")
    parser.add_argument("rounds", nargs="?", type=int, default=7)
    parser.add_argument("--against", help="the checkout of another revision to compare with")
    parser.add_argument("--runs", type=int, default=5, help="runs of each revision")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if args.against:
        compare(args.count, args.rounds, args.against, args.runs)
        return 0
    figures = measure(args.count, args.rounds)
    if args.json:
        from inference_app import __file__ as source

        print(json.dumps({**figures, "source": source}))
    else:
        print(f"{args.count} requests x {args.rounds} rounds, median microseconds per request")
        report("iris, one row, fast path", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
