"""Benchmark payload logging: request throughput with it off, to a file, and to HTTP sinks.

Run it with ``make bench-payload`` (or ``.venv/bin/python bench/payload.py`` once wrk is
installed). One Gunicorn server (2 sync workers, the demo iris and penguins bundles) per sink,
all started at once on 127.0.0.1 and stopped at the end, also on an error or Ctrl-C; the sinks
are measured interleaved in one run, in reverse order on even repeats, with wrk at
``BENCH_CONNECTIONS`` connections (default 8). See ``bench/README.md``.

Sinks (``BENCH_SINKS``, comma-separated; default ``off,file,stalled,down``):

- ``off``: no ``PAYLOAD_LOG``;
- ``file``: ``PAYLOAD_LOG`` a file in ``bench/work/payload/`` (rotated at 50 MiB, 1 backup);
- ``stalled``: an HTTP sink that accepts connections and never answers (a thread here);
- ``down``: an HTTP sink whose port is closed;
- ``http``: a sink that answers 202 at once, one event per POST (a process of its own on
  this machine: its CPU is taken from the servers); ``http_batch``: the same, 100 per POST.

Environment: ``BENCH_REPEATS`` (default 3), ``BENCH_SECONDS`` per measurement (default 5),
``BENCH_SCENARIOS`` (default ``iris_1,penguins_1``, names as in ``run.py``).

``python bench/payload.py --costs`` times the payload log's own steps in this process instead
(:func:`measure_costs`): no server, no wrk.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402 - bench/run.py, beside this script

WORK = run.WORK / "payload"
SINKS = ("off", "file", "stalled", "down", "http", "http_batch")
DEFAULT_SINKS = ("off", "file", "stalled", "down")
DEFAULT_SCENARIOS = ("iris_1", "penguins_1")
#: The target of the issue: throughput with a stalled or down sink within 10 % of logging off.
TARGET = 0.9
TARGET_SINKS = ("stalled", "down")


def settings() -> dict[str, Any]:
    """Read the run's settings from the environment (unknown names stop the run)."""
    sinks = run.names_list(os.environ.get("BENCH_SINKS"), SINKS, "BENCH_SINKS") or DEFAULT_SINKS
    scenarios = (
        run.names_list(os.environ.get("BENCH_SCENARIOS"), run.SCENARIOS, "BENCH_SCENARIOS")
        or DEFAULT_SCENARIOS
    )
    return {
        "sinks": list(sinks),
        "scenarios": list(scenarios),
        "repeats": int(os.environ.get("BENCH_REPEATS", "3")),
        "seconds": int(os.environ.get("BENCH_SECONDS", "5")),
        "connections": int(os.environ.get("BENCH_CONNECTIONS", "8")),
    }


@contextmanager
def stalled_sink() -> Iterator[str]:
    """Listen on 127.0.0.1, accept every connection and never answer; yield the URL."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=256)
    listener.settimeout(0.2)
    held: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/"
    finally:
        done.set()
        thread.join(5)
        for connection in held:
            connection.close()
        listener.close()


class Receiver(BaseHTTPRequestHandler):
    """A sink that reads each POST and answers 202 at once."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Write no line per event."""


@contextmanager
def receiver() -> Iterator[str]:
    """Run :class:`Receiver` in a process of its own on 127.0.0.1; yield its URL."""
    port = run.free_port()
    process = subprocess.Popen(
        [sys.executable, __file__, "--receive", str(port)], stdin=subprocess.DEVNULL
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        if not run.wait_until(lambda: _listening(port), run.START_TIMEOUT):
            raise run.BenchError("the HTTP receiver did not start")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=run.STOP_TIMEOUT)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def sink_env(sink: str, urls: dict[str, str]) -> dict[str, str]:
    """Return the settings a sink's server is started with, on top of 2 sync workers."""
    env = {"GUNICORN_WORKERS": "2"}
    if sink == "file":
        env.update(
            INFERENCE_APP_PAYLOAD_LOG=str(WORK / "events.jsonl"),
            INFERENCE_APP_PAYLOAD_LOG_MAX_BYTES=str(50 * 1024 * 1024),
            INFERENCE_APP_PAYLOAD_LOG_BACKUPS="1",
        )
    elif sink == "http_batch":
        env.update(
            INFERENCE_APP_PAYLOAD_LOG=urls["http"], INFERENCE_APP_PAYLOAD_LOG_BATCH_SIZE="100"
        )
    elif sink != "off":
        env["INFERENCE_APP_PAYLOAD_LOG"] = urls[sink]
    return env


def payload_counts(server: run.Running) -> dict[str, float]:
    """The server's payload events sent and dropped (by reason), from /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = run.http("GET", server.url + "/metrics")
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == "inference_app_payload_events_sent_total":
                counts["sent"] = counts.get("sent", 0.0) + sample.value
            elif sample.name == "inference_app_payload_events_dropped_total":
                key = f"dropped_{sample.labels['reason']}"
                counts[key] = counts.get(key, 0.0) + sample.value
    return counts


def measure(config: dict[str, Any]) -> dict[str, Any]:
    """Start one server per sink, measure them interleaved, and summarise."""
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    instance = WORK / "instance"
    from inference_app.demo import write_demo_bundles

    write_demo_bundles(
        instance / "models", names=["iris", "penguins"], cache_dir=run.WORK / "cache"
    )
    sinks = config["sinks"]
    bodies = {}
    for name in config["scenarios"]:
        model, rows, start = run.SCENARIOS[name]
        body = run.request_body(run.scenario_rows(model, rows, start))
        script = WORK / f"{name}.lua"
        script.write_text(run.lua_script(body))
        bodies[name] = (model, body, script)
    urls: dict[str, str] = {"down": f"http://127.0.0.1:{run.free_port()}/"}
    with stalled_sink() as stalled, _maybe_receiver(sinks) as healthy:
        urls["stalled"] = stalled
        if healthy:
            urls["http"] = healthy
        specs = [run.app_spec(f"payload:{sink}", sink_env(sink, urls), instance) for sink in sinks]
        with run.serving(specs, WORK / "logs") as servers:
            by_sink = dict(zip(sinks, servers, strict=True))
            for server in servers:
                model, body, _ = next(iter(bodies.values()))
                run.wait_ready(server, (server.predict_url(model), body.encode()))
                for model, body, _ in bodies.values():
                    status, answer = run.http("POST", server.predict_url(model), body.encode())
                    if status != 200:
                        raise run.BenchError(f"{server.spec.name}: {status} {answer[:300]!r}")
            runs: list[dict[str, Any]] = []
            total = config["repeats"] * len(bodies) * len(sinks)
            progress = run.Progress(total)
            for repeat in range(1, config["repeats"] + 1):
                order = sinks if repeat % 2 else list(reversed(sinks))
                for scenario, (model, _, script) in bodies.items():
                    for sink in order:
                        pid = by_sink[sink].process.pid
                        used = server_cpu(pid)
                        result = run.run_wrk(
                            by_sink[sink].predict_url(model),
                            script,
                            config["connections"],
                            config["seconds"],
                        )
                        result["server_cpu_us"] = (
                            (server_cpu(pid) - used) / max(result["requests"], 1) * 1e6
                        )
                        runs.append(
                            {"sink": sink, "scenario": scenario, "repeat": repeat, **result}
                        )
                        progress.step(
                            f"{scenario} {sink:<10} repeat {repeat}: "
                            f"{result['rps']:.0f} req/s, p99 {result['p99_ms']:.1f} ms, "
                            f"{result['server_cpu_us']:.0f} us server CPU per request"
                        )
            counts = {sink: payload_counts(server) for sink, server in by_sink.items()}
    return {"runs": runs, "counts": counts, "summary": summarise(runs, sinks, list(bodies))}


def server_cpu(pid: int) -> float:
    """Return the CPU seconds (user and system) a Gunicorn master and its workers used so far."""
    pids = [pid, *map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]
    ticks = 0
    for process in pids:
        fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (proc(5))
    return ticks / os.sysconf("SC_CLK_TCK")


@contextmanager
def _maybe_receiver(sinks: list[str]) -> Iterator[str | None]:
    if "http" in sinks or "http_batch" in sinks:
        with receiver() as url:
            yield url
    else:
        yield None


def summarise(runs: list[dict[str, Any]], sinks: list[str], scenarios: list[str]) -> list[Any]:
    """Per scenario and sink: median req/s, p50 and p99, errors, and the ratio to ``off``
    (the median over repeats of the ratio within each repeat, measured back to back)."""
    rows = []
    for scenario in scenarios:
        cell = [r for r in runs if r["scenario"] == scenario]
        off = {r["repeat"]: r["rps"] for r in cell if r["sink"] == "off"}
        for sink in sinks:
            mine = [r for r in cell if r["sink"] == sink]
            ratios = [r["rps"] / off[r["repeat"]] for r in mine if off.get(r["repeat"])]
            rows.append(
                {
                    "scenario": scenario,
                    "sink": sink,
                    "rps": statistics.median(r["rps"] for r in mine),
                    "p50_ms": statistics.median(r["p50_ms"] for r in mine),
                    "p99_ms": statistics.median(r["p99_ms"] for r in mine),
                    "errors": statistics.median(r["errors"] for r in mine),
                    "server_cpu_us": statistics.median(r["server_cpu_us"] for r in mine),
                    "vs_off": statistics.median(ratios) if ratios else None,
                }
            )
    return rows


def report(result: dict[str, Any]) -> str:
    """Return the Markdown tables: throughput per sink, then events sent and dropped."""
    lines = [
        "| scenario | sink | req/s | x off | p50 ms | p99 ms | errors | server CPU us/req |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in result["summary"]:
        ratio = "-" if row["vs_off"] is None else f"{row['vs_off']:.2f}"
        lines.append(
            f"| {row['scenario']} | {row['sink']} | {row['rps']:.0f} | {ratio} | "
            f"{row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['errors']:.0f} | "
            f"{row['server_cpu_us']:.0f} |"
        )
    lines += ["", "| sink | events sent | dropped (by reason) |", "| --- | ---: | --- |"]
    for sink, counts in result["counts"].items():
        dropped = ", ".join(
            f"{key.removeprefix('dropped_')} {value:.0f}"
            for key, value in sorted(counts.items())
            if key.startswith("dropped_") and value
        )
        lines.append(f"| {sink} | {counts.get('sent', 0):.0f} | {dropped or '-'} |")
    lines += ["", f"Target: x off >= {TARGET} with the sink stalled or down."]
    for row in result["summary"]:
        if row["sink"] in TARGET_SINKS and row["vs_off"] is not None:
            met = "met" if row["vs_off"] >= TARGET else "NOT met"
            lines.append(f"- {row['scenario']} {row['sink']}: {row['vs_off']:.2f} ({met})")
    return "\n".join(lines)


def measure_costs() -> dict[str, float]:
    """Microseconds of the payload log's own steps, in this process (the least of 5 timings):
    a request's ``record`` when the queue is full (what a stalled or down sink costs), the
    encoding of one request's two events for iris and penguins (the sender's work per
    request), and one event built and written by the ``cloudevents`` package's
    ``CloudEvent`` and ``JSONFormat`` against this server's formatter."""
    import time
    import timeit
    from datetime import datetime

    from inference_app import create_app, payload, process
    from inference_app.core.dataplane import InferenceRequest
    from inference_app.demo import write_demo_bundles

    process.cap_threads(1)
    instance = WORK / "instance"
    write_demo_bundles(
        instance / "models", names=["iris", "penguins"], cache_dir=run.WORK / "cache"
    )
    app = create_app(
        {"PAYLOAD_LOG": f"http://127.0.0.1:{run.free_port()}/"}, instance_path=instance
    )
    dataplane = app.extensions["inference_app"].dataplane
    log = payload.PayloadLog(payload.HTTPSink("http://127.0.0.1:9/", 0.5, 1), queue_size=1)

    def least(call: Any, number: int) -> float:
        return min(timeit.repeat(call, number=number, repeat=5)) / number * 1e6

    costs: dict[str, float] = {}
    queued = {}
    for model in ("iris", "penguins"):
        name, rows, start = run.SCENARIOS[f"{model}_1"]
        instances = run.instances(run.scenario_rows(name, rows, start))
        result = dataplane.infer(InferenceRequest(model=model, instances=instances))
        bundle = dataplane.registry.get(model, result.model_version)
        now = time.time()
        queued[model] = payload.Queued("7d3f0c9e2b6a4e1f", bundle, result, "native", None, now, now)
        costs[f"encode_pair_{model}_us"] = least(lambda q=queued[model]: payload.encode(q), 2000)
    iris = queued["iris"]
    for _ in range(3):  # fill the queue (one request); its sender fails and waits
        log.record("x", iris.bundle, iris.result, protocol="native")
    costs["record_queue_full_us"] = least(
        lambda: log.record("x", iris.bundle, iris.result, protocol="native"), 20000
    )
    from cloudevents.core.formats.json import JSONFormat
    from cloudevents.core.v1.event import CloudEvent

    event = payload.orjson.loads(payload.encode(iris)[0])
    data = event.pop("data")
    attributes = {key: value for key, value in event.items() if key != "specversion"}
    attributes["time"] = datetime.fromisoformat(event["time"])
    formatter = JSONFormat()
    costs["cloudevents_sdk_event_us"] = least(
        lambda: formatter.write(CloudEvent(dict(attributes), data)), 5000
    )
    costs["own_event_us"] = least(
        lambda: payload.orjson.dumps(
            payload._event(iris, payload.REQUEST_TYPE, iris.received, data),
            option=payload.JSON_OPTIONS,
            default=payload._json_default,
        ),
        5000,
    )
    return costs


def main() -> int:
    if sys.argv[1:2] == ["--receive"]:
        ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), Receiver).serve_forever()
        return 0
    if sys.argv[1:2] == ["--costs"]:
        costs = measure_costs()
        for key, value in costs.items():
            print(f"{key}: {value:.1f}")
        return 0
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk (make bench-payload does)")
    config = settings()
    machine = run.machine()
    print(f"payload logging bench: {config}; load average {machine['load_average_at_start']}")
    result = measure(config)
    machine["load_average_at_end"] = list(os.getloadavg())
    text = report(result)
    print(text)
    run.RESULTS.mkdir(exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = run.RESULTS / f"payload-{stamp}.json"
    path.write_text(json.dumps({"settings": config, "machine": machine, **result}, indent=1))
    print(f"\nraw results: {path.relative_to(run.REPO)}")
    shutil.rmtree(WORK / "instance", ignore_errors=True)
    for events in WORK.glob("events.jsonl*"):
        events.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
