"""Experiment: which Gunicorn worker class serves this app fastest, with keep-alive?

Serves the demo bundles (ONNX where exact) under each worker class of :data:`VARIANTS`
(2 workers each) beside the seed apps, and measures the bench's scenarios with wrk
(keep-alive connections), repeats interleaved, through ``bench/run.py``'s own machinery.
Run it as a script after
``make bench`` has run once (wrk, bench/work); ``BENCH_REPEATS``, ``BENCH_SECONDS``,
``BENCH_SCENARIOS``, ``BENCH_CONNECTIONS`` and ``BENCH_VARIANTS`` (comma-separated names)
narrow it. Each server's settings go through ``GUNICORN_CMD_ARGS``, which Gunicorn reads
after the configuration file. Results in bench/RESULTS.md.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import run  # noqa: E402  (bench/run.py)

VARIANTS: dict[str, dict[str, str]] = {
    "sync": {"GUNICORN_CMD_ARGS": "--worker-class sync"},
    "gthread1": {"GUNICORN_CMD_ARGS": "--worker-class gthread --threads 1"},
    "gthread2": {"GUNICORN_CMD_ARGS": "--worker-class gthread --threads 2"},
    "gthread4": {"GUNICORN_CMD_ARGS": "--worker-class gthread --threads 4"},
    "gthread8": {"GUNICORN_CMD_ARGS": "--worker-class gthread --threads 8"},
    "gthread1_reuseport": {"GUNICORN_CMD_ARGS": "--worker-class gthread --threads 1 --reuse-port"},
    "gthread4_reuseport": {"GUNICORN_CMD_ARGS": "--worker-class gthread --threads 4 --reuse-port"},
    "gthread4_batching": {
        "GUNICORN_CMD_ARGS": "--worker-class gthread --threads 4",
        "INFERENCE_APP_BATCHING": "true",
    },
    "gevent": {"GUNICORN_CMD_ARGS": "--worker-class gevent"},
    "gevent_reuseport": {"GUNICORN_CMD_ARGS": "--worker-class gevent --reuse-port"},
}


def main() -> int:
    chosen = os.environ.get("BENCH_VARIANTS")
    names = [n.strip() for n in chosen.split(",")] if chosen else list(VARIANTS)
    run.PROFILES.clear()
    for name in names:
        run.PROFILES[name] = {"GUNICORN_WORKERS": "2", **VARIANTS[name]}
    settings = run.Settings.from_env()
    result = run.run_throughput(settings)
    print(run.format_table(result["summary"], result["floor"]))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = run.RESULTS / f"workers-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
