"""Benchmark batch scoring: `inference-app score`, the in-process floor, HTTP requests, Spark.

For each model (`breast_cancer`, the 100-tree forest; `penguins`, the ColumnTransformer
pipeline with strings and missing values) it writes its demo data tiled to ``BENCH_ROWS`` rows
(default 1,000,000) as CSV and Parquet under ``bench/work/batch/``, then measures, each
``BENCH_REPEATS`` times (default 3), interleaved:

- ``floor``: ``estimator.predict`` on the whole frame, in one process, data already in memory;
- ``floor command``: the same as a whole process, what a user writes by hand
  (:data:`FLOOR_SCRIPT`: import, ``joblib.load`` the estimator, read the whole file with
  pandas, ``predict``, write the predictions to Parquet), from CSV and from Parquet;
- ``score`` with ``--workers auto`` (the default: as many as the input's rows and row groups
  pay for), ``--workers 1`` and ``--workers N`` (the usable CPUs), CSV and Parquet in;
- ``http``: the same rows POSTed in 1,000-row ``:predict`` requests, 4 at a time, to
  ``gunicorn -c gunicorn.conf.py wsgi:app`` with 2 workers on 127.0.0.1;
- ``spark``: :func:`inference_app.spark.score_file` in ``local[N]`` mode from Parquet, and the
  start-up of its session alone.

It prints rows/s, the ratio to the floor and, for ``score``, to the floor command from the same
format (whole process against whole process) two ways per core used:

- per worker: the ratio divided by the workers (``auto``'s from its summary), as if each
  worker held a core for the whole command;
- per CPU second: rows per second of CPU time (user and system, the command and its workers,
  as the kernel accounts them) against the floor command's; ``cores`` is CPU time over wall
  time, the cores a command kept busy on average (a single process uses more than 1 when
  OpenBLAS, OpenMP or Arrow threads run).

``score_file in process`` is :func:`inference_app.batch.score_file` called in the bench's own
process (no interpreter start-up or imports, as a Spark or Dask partition calls the library):
reading, checking, scoring and writing against the floor's ``predict`` alone. It also prints
the peak RSS of the ``score`` processes for 10,000 rows and for all of them (flat memory).
Results go to ``bench/results/batch-<timestamp>.json``. Run it as ``make bench-batch``.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "bench" / "work" / "batch"
RESULTS = REPO / "bench" / "results"
BIN = Path(sys.executable).parent
MODELS = ("breast_cancer", "penguins")
REQUEST_ROWS = 1_000
HTTP_CONCURRENCY = 4


def cpus() -> int:
    """Return the CPUs this process may use."""
    return len(os.sched_getaffinity(0))


def demo_frame(name: str, instance: Path) -> tuple[pd.DataFrame, Any]:
    """Return a demo model's full dataset as a DataFrame of its features, and its estimator."""
    from inference_app.core.bundle import load_bundle
    from inference_app.datasets import load_penguins
    from inference_app.demo import load_demo_data

    bundle = load_bundle(instance / "models" / name / "1")
    if name == "penguins":
        frame, _ = load_penguins()
    else:
        rows, _, names = load_demo_data(name)
        frame = pd.DataFrame(rows, columns=names)
    return frame[bundle.manifest.feature_names], bundle.estimator


def tiled(frame: pd.DataFrame, rows: int) -> pd.DataFrame:
    """Return ``frame`` repeated to ``rows`` rows."""
    repeats = -(-rows // len(frame))
    return pd.concat([frame] * repeats, ignore_index=True).iloc[:rows]


#: The floor as a command: ``python -c FLOOR_SCRIPT MODEL_FILE INPUT OUTPUT``.
FLOOR_SCRIPT = """
import sys
import joblib
import pandas as pd
model_file, source, output = sys.argv[1:4]
estimator = joblib.load(model_file)
frame = pd.read_parquet(source) if source.endswith(".parquet") else pd.read_csv(source)
rows = frame if hasattr(estimator, "feature_names_in_") else frame.to_numpy()
pd.DataFrame({"prediction": estimator.predict(rows)}).to_parquet(output)
"""


def children_cpu() -> float:
    """Return the CPU seconds (user and system) of this process's finished children, and of
    theirs that were waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def floor_command(instance: Path, name: str, source: Path) -> tuple[float, float]:
    """Run :data:`FLOOR_SCRIPT` on ``source`` and return its wall and CPU seconds."""
    model_file = instance / "models" / name / "1" / "model.joblib"
    output = WORK / f"floor-{name}.parquet"
    command = [sys.executable, "-c", FLOOR_SCRIPT, str(model_file), str(source), str(output)]
    cpu = children_cpu()
    started = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - started
    output.unlink()
    return seconds, children_cpu() - cpu


def timed(function: Callable[..., Any], *args: Any, **kwargs: Any) -> float:
    """Return the seconds ``function(*args, **kwargs)`` takes."""
    started = time.perf_counter()
    function(*args, **kwargs)
    return time.perf_counter() - started


def score_command(
    instance: Path, name: str, source: Path, workers: int | str, expected: Any = None
) -> tuple[float, float, int, int]:
    """Run ``inference-app score`` with ``--workers`` (a number or ``auto``) and return its
    wall and CPU seconds (the command and its workers), its peak RSS in KiB (the largest
    single process: the command or one of its workers) and the workers it used (from its
    summary)."""
    output = WORK / f"out-{name}-{workers}{source.suffix}"
    command = [
        str(BIN / "inference-app"),
        "score",
        name,
        str(source),
        str(output),
        "--instance-path",
        str(instance),
        "--workers",
        str(workers),
    ]
    # GNU time, a small process, forks the command: a child forked by this bench would
    # inherit its peak RSS (Linux keeps the high-water mark across exec).
    peak_file = WORK / "peak-kib"
    timed_command = ["/usr/bin/time", "-f", "%M", "-o", str(peak_file), *command]
    cpu = children_cpu()
    started = time.perf_counter()
    finished = subprocess.run(timed_command, capture_output=True)
    seconds = time.perf_counter() - started
    cpu = children_cpu() - cpu
    if finished.returncode:
        raise SystemExit(f"{' '.join(command)} failed: {finished.stderr.decode()[-500:]}")
    peak = int(peak_file.read_text().split()[-1])
    # "model    NAME version 1, predict, runtime sklearn, 2 workers (auto: 2 CPUs)"
    used = int(finished.stdout.decode().splitlines()[0].split(", ")[3].split()[0])
    if expected is not None:  # the job's answers are the in-process predictions, row for row
        got = pd.read_parquet(output) if output.suffix == ".parquet" else pd.read_csv(output)
        assert got["row"].tolist() == list(range(len(expected))), "rows out of order"
        assert got["prediction"].tolist() == list(expected), f"{name}: predictions differ"
    output.unlink(missing_ok=True)
    return seconds, cpu, peak, used


def free_port() -> int:
    """Return a free TCP port on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def serve(instance: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start the server with 2 workers on a free port; return it and its base URL, ready."""
    port = free_port()
    environment = {
        **os.environ,
        "INFERENCE_APP_INSTANCE_PATH": str(instance),
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "GUNICORN_WORKERS": "2",
        "INFERENCE_APP_MAX_ROWS": str(REQUEST_ROWS),
        "INFERENCE_APP_GRPC_PORT": "0",  # HTTP is measured; gRPC's default port may be taken
    }
    server = subprocess.Popen(
        [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"],
        cwd=REPO,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health/ready", timeout=1) as answer:
                if answer.status == 200:
                    return server, url
        except OSError:
            time.sleep(0.25)
    server.terminate()
    raise SystemExit("the server did not become ready within 60 s")


def post_all(url: str, name: str, frame: pd.DataFrame) -> list[Any]:
    """POST ``frame`` in :data:`REQUEST_ROWS`-row requests, a few at a time; return the
    predictions in order."""
    bodies = [
        json.dumps(
            {
                "instances": json.loads(
                    frame.iloc[start : start + REQUEST_ROWS].to_json(orient="records")
                )
            }
        ).encode()
        for start in range(0, len(frame), REQUEST_ROWS)
    ]

    def post(body: bytes) -> list[Any]:
        request = urllib.request.Request(
            f"{url}/v1/models/{name}:predict",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as answer:
            predictions: list[Any] = json.loads(answer.read())["predictions"]
            return predictions

    with ThreadPoolExecutor(HTTP_CONCURRENCY) as pool:
        return [value for part in pool.map(post, bodies) for value in part]


def main() -> int:
    """Measure every model and method; print and save the results."""
    from inference_app import batch
    from inference_app.demo import write_demo_bundles

    rows = int(os.environ.get("BENCH_ROWS", "1000000"))
    repeats = int(os.environ.get("BENCH_REPEATS", "3"))
    with_spark = os.environ.get("BENCH_SPARK", "1") != "0"
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    instance = WORK / "instance"
    write_demo_bundles(instance / "models", names=MODELS)
    cores = cpus()
    results: dict[str, Any] = {"rows": rows, "cpus": cores, "repeats": repeats, "models": {}}
    # the 1-minute load average after each score command: the machine may be shared
    loads: list[float] = results.setdefault("load_1min", [os.getloadavg()[0]])
    server, url = serve(instance)
    try:
        for name in MODELS:
            frame, estimator = demo_frame(name, instance)
            big = tiled(frame, rows)
            # the estimator's own input: an array where it was fitted on one
            model_rows = big if hasattr(estimator, "feature_names_in_") else big.to_numpy()
            sources = {"csv": WORK / f"{name}.csv", "parquet": WORK / f"{name}.parquet"}
            big.to_csv(sources["csv"], index=False)
            # in 100,000-row row groups, as Spark and most writers split a file (pandas
            # writes one group up to 1,048,576 rows): `score` workers read their own
            big.to_parquet(sources["parquet"], index=False, row_group_size=100_000)
            small = WORK / f"{name}-10k.csv"
            big.iloc[:10_000].to_csv(small, index=False)
            http_rows = big.iloc[: min(rows, 100_000)]
            floor_predictions = estimator.predict(model_rows)
            expected = floor_predictions[: len(http_rows)]
            assert list(post_all(url, name, http_rows)) == expected.tolist(), name
            times: dict[str, list[float]] = {}
            cpu: dict[str, list[float]] = {}  # CPU seconds of each command, by label
            peaks: dict[str, int] = {}
            used: dict[str, int] = {}  # workers per label: what auto chose
            score_command(instance, name, sources["parquet"], "auto", floor_predictions)
            for repeat in range(repeats):
                times.setdefault("floor", []).append(timed(estimator.predict, model_rows))
                job = batch.score_file(
                    instance / "models" / name / "1",
                    sources["parquet"],
                    WORK / f"in-process-{name}.parquet",
                    batch.Options(),
                    workers=1,
                    progress=False,
                )
                times.setdefault("score_file in process, parquet w1", []).append(job.seconds)
                for kind, source in sources.items():
                    seconds, used_cpu = floor_command(instance, name, source)
                    times.setdefault(f"floor command {kind}", []).append(seconds)
                    cpu.setdefault(f"floor command {kind}", []).append(used_cpu)
                    counts: list[int | str] = ["auto", *sorted({1, cores})]
                    # interleaved, the order turned round on every other repeat
                    for workers in counts if repeat % 2 == 0 else counts[::-1]:
                        seconds, used_cpu, peak, count = score_command(
                            instance, name, source, workers
                        )
                        what = "auto" if workers == "auto" else f"w{workers}"
                        label = f"score {kind} {what}"
                        times.setdefault(label, []).append(seconds)
                        cpu.setdefault(label, []).append(used_cpu)
                        peaks[f"{kind} {what}"] = peak
                        used[label] = count
                        loads.append(os.getloadavg()[0])
                seconds = timed(post_all, url, name, http_rows)
                times.setdefault("http", []).append(seconds * rows / len(http_rows))
            # 10,000 rows: the command's start-up (imports, bundle, pool) and flat memory
            seconds, _, peaks["csv 10k w1"], _ = score_command(instance, name, small, 1)
            times["score start-up (10k rows)"] = [seconds]
            if with_spark:
                times.update(spark_times(instance, name, sources["parquet"], cores, repeats))
            floor = statistics.median(times["floor"])
            summary = {}
            for label, values in times.items():
                seconds = statistics.median(values)
                entry = {"seconds": seconds, "rows_per_s": rows / seconds if seconds else None}
                if "start-up" not in label:
                    entry["x_floor"] = floor / seconds
                if label in cpu:
                    entry["cpu_seconds"] = statistics.median(cpu[label])
                    entry["cores"] = statistics.median(
                        c / s for c, s in zip(cpu[label], values, strict=True)
                    )
                if label in used:
                    workers = used[label]
                    entry["workers"] = workers
                    entry["x_floor_per_worker"] = floor / seconds / workers
                    command = f"floor command {label.split()[1]}"
                    entry["x_floor_command_per_worker"] = (
                        statistics.median(times[command]) / seconds / workers
                    )
                    entry["x_floor_command_per_cpu_second"] = (
                        statistics.median(cpu[command]) / entry["cpu_seconds"]
                    )
                summary[label] = entry
            results["models"][name] = {
                "summary": summary,
                "peak_rss_kib": peaks,
                "raw": times,
                "raw_cpu": cpu,
            }
            print_model(name, rows, summary, peaks)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(
        f"\nload average (1 min) after each score command: min {min(loads):.1f}, median "
        f"{statistics.median(loads):.1f}, max {max(loads):.1f}"
    )
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (RESULTS / f"batch-{stamp}.json").write_text(json.dumps(results, indent=2) + "\n")
    shutil.rmtree(WORK, ignore_errors=True)
    return 0


def spark_times(
    instance: Path, name: str, source: Path, cores: int, repeats: int
) -> dict[str, list[float]]:
    """Return Spark's session start-up seconds and its scoring seconds from Parquet."""
    from pyspark.sql import SparkSession

    from inference_app import spark

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # workers import inference_app
    startup: list[float] = []
    scoring: list[float] = []
    for _ in range(repeats):
        started = time.perf_counter()
        session = (
            SparkSession.builder.master(f"local[{cores}]")
            .config("spark.driver.host", "127.0.0.1")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.ui.enabled", "false")
            .getOrCreate()
        )
        session.sparkContext.setLogLevel("ERROR")
        startup.append(time.perf_counter() - started)
        with tempfile.TemporaryDirectory(dir=WORK) as folder:
            output = Path(folder) / "out.parquet"
            scoring.append(
                timed(
                    spark.score_file,
                    instance,
                    name,
                    str(source),
                    str(output),
                    master=f"local[{cores}]",
                )
            )
        session.stop()
    return {"spark start-up": startup, f"spark local[{cores}] parquet": scoring}


def print_model(name: str, rows: int, summary: dict[str, Any], peaks: dict[str, int]) -> None:
    """Print one model's table."""
    print(f"\n{name}, {rows:,} rows (medians; x command: against the floor command)")
    print(
        f"{'what':36} {'seconds':>8} {'rows/s':>10} {'cores':>6} {'x floor':>8} "
        f"{'x command/worker':>16} {'x command/CPU s':>15}"
    )
    for label, entry in summary.items():
        if "workers" in entry:
            label = f"{label} ({entry['workers']})"
        cells = [
            f"{entry[key]:.2f}x" if entry.get(key) is not None else ""
            for key in ("x_floor", "x_floor_command_per_worker", "x_floor_command_per_cpu_second")
        ]
        cores = f"{entry['cores']:.2f}" if "cores" in entry else ""
        print(
            f"{label:36} {entry['seconds']:8.2f} {entry['rows_per_s'] or 0:10,.0f} {cores:>6} "
            f"{cells[0]:>8} {cells[1]:>16} {cells[2]:>15}"
        )
    print("peak RSS of score (MiB): " + ", ".join(f"{k} {v / 1024:.0f}" for k, v in peaks.items()))


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
