"""Experiment: what a traffic.json costs per request, in process.

Answers ``POST /v1/models/iris:predict`` with one row through the app's WSGI callable (the fast
path, as Gunicorn calls it; no sockets), for four instance folders holding the same iris
versions 1, 2 and 3: no ``traffic.json``; weights 90/10; weights 90/10 with a sticky header
sent; and weights 90/10 with a shadow version answering every request. Runs interleaved
rounds and prints the median microseconds per request of each and its difference from the
first. Run: ``.venv/bin/python bench/experiments/traffic.py [requests per round] [rounds]``.
"""

from __future__ import annotations

import io
import json
import shutil
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

from inference_app import create_app
from inference_app.core.bundle import write_bundle
from inference_app.demo import load_demo_data, write_demo_bundles

CASES: dict[str, tuple[dict[str, Any] | None, dict[str, str]]] = {
    "no traffic.json": (None, {}),
    "weights 90/10": ({"weights": {"1": 90, "2": 10}}, {}),
    "weights 90/10, sticky header": (
        {"weights": {"1": 90, "2": 10}, "sticky": "X-User-ID"},
        {"HTTP_X_USER_ID": "user-12345"},
    ),
    "weights 90/10, shadow (sample 1)": ({"weights": {"1": 90, "2": 10}, "shadow": "3"}, {}),
}
BODY = json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]]}).encode()


def write_models(models: Path) -> None:
    rows, target, names = load_demo_data("iris")
    write_demo_bundles(models, names=["iris"])
    strong = LogisticRegression(C=0.02, max_iter=1000).fit(rows, target)
    write_bundle(strong, rows, models, "iris", "2", feature_names=names)
    stump = DecisionTreeClassifier(max_depth=1, random_state=0).fit(rows, target)
    write_bundle(stump, rows, models, "iris", "3", feature_names=names)


def environ(extra: dict[str, str]) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/v1/models/iris:predict",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(BODY)),
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "wsgi.url_scheme": "http",
        **extra,
    }


def round_us(app: Any, extra: dict[str, str], count: int) -> float:
    """Return the mean microseconds of ``count`` requests."""
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        statuses.append(status)

    base = environ(extra)
    started = time.perf_counter()
    for _ in range(count):
        env = dict(base)
        env["wsgi.input"] = io.BytesIO(BODY)
        b"".join(app(env, start_response))
    elapsed = time.perf_counter() - started
    assert set(statuses) == {"200 OK"}, set(statuses)
    return elapsed / count * 1e6


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    root = Path(tempfile.mkdtemp(prefix="traffic-bench-"))
    template = root / "template"
    write_models(template)
    apps = {}
    for index, (name, (traffic, _)) in enumerate(CASES.items()):
        instance = root / str(index)
        shutil.copytree(template, instance / "models")
        if traffic is not None:
            (instance / "models" / "iris" / "traffic.json").write_text(json.dumps(traffic))
        apps[name] = create_app({"TESTING": True}, instance_path=instance)
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for name in CASES:  # warm every path once
        round_us(apps[name], CASES[name][1], 200)
    for _ in range(rounds):
        for name in CASES:
            times[name].append(round_us(apps[name], CASES[name][1], count))
    base = statistics.median(times["no traffic.json"])
    print(f"{count} requests x {rounds} rounds, iris, 1 row, median microseconds per request")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:34} {median:8.1f} us  ({median - base:+6.1f} us)")
    print("the routing step alone (Registry.route), median of 7 x 100,000 calls:")
    for name, (_, extra) in CASES.items():
        registry = apps[name].extensions["inference_app"].registry
        key = extra.get("HTTP_X_USER_ID")
        calls = timeit.repeat(
            "route('iris', key)",
            globals={"route": registry.route, "key": key},
            number=100_000,
            repeat=7,
        )
        print(f"  {name:34} {statistics.median(calls) / 100_000 * 1e9:8.0f} ns")
    return 0


if __name__ == "__main__":
    sys.exit(main())
