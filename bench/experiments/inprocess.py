"""Time successful ``:predict`` requests in process, through the app's WSGI callable.

No sockets and no load generator: what a request costs the server itself, for comparing two
revisions of the code on a noisy machine. Run it once per revision, each with bundles that
revision wrote, and compare the whole commands with a timer such as ``/usr/bin/time``::

    git worktree add /tmp/before <rev>
    PYTHONPATH=/tmp/before/src .venv/bin/python -c \\
        "from inference_app.demo import write_demo_bundles; write_demo_bundles('/tmp/b/models')"
    .venv/bin/python -c "from inference_app.demo import DEMOS, write_demo_bundles; \\
        write_demo_bundles('/tmp/a/models', names=DEMOS)"
    PYTHONPATH=/tmp/before/src .venv/bin/python bench/experiments/inprocess.py /tmp/b iris 1 30000
    .venv/bin/python bench/experiments/inprocess.py /tmp/a iris 1 30000

It prints the mean microseconds per request after 50 warm-up requests.
"""

from __future__ import annotations

import io
import json
import logging
import sys
import time
from typing import Any

from inference_app import create_app
from inference_app.demo import load_demo_data


def main(instance: str, model: str, rows: int, count: int) -> None:
    """Send ``count`` requests of ``rows`` rows of ``model``'s demo data and print the mean."""
    app = create_app({}, instance_path=instance)
    data, _, _ = load_demo_data(model)
    body = json.dumps({"instances": data[:rows].tolist()}).encode()
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": f"/v1/models/{model}:predict",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
    }

    def call() -> None:
        statuses: list[str] = []

        def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
            statuses.append(status)

        answer = b"".join(app({**environ, "wsgi.input": io.BytesIO(body)}, start_response))
        if not statuses[0].startswith("200"):
            raise SystemExit(f"{statuses[0]}: {answer[:200]!r}")

    logging.disable(logging.CRITICAL)  # access lines would time the terminal
    for _ in range(50):
        call()
    started = time.perf_counter()
    for _ in range(count):
        call()
    print(f"{(time.perf_counter() - started) / count * 1e6:.1f} us/request")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
