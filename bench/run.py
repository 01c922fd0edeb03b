"""Benchmark inference-app against the seed-style Flask and FastAPI apps, and measure memory.

Run it with ``make bench`` (or ``.venv/bin/python bench/run.py`` once the bench requirements
and wrk are installed). Every server listens on 127.0.0.1 only; every one is stopped at the
end, also on error or Ctrl-C. See ``bench/README.md`` for what each number means.

    python bench/run.py              throughput matrix, then memory
    python bench/run.py --memory     memory only (PSS with preload_app on and off)
    python bench/run.py --no-memory  throughput matrix only

Environment: ``BENCH_REPEATS`` (default 3), ``BENCH_SECONDS`` per measurement (default 5),
``BENCH_QUICK=1`` for one repeat of 2 seconds. ``BENCH_SERVERS``, ``BENCH_SCENARIOS`` and
``BENCH_CONNECTIONS`` (comma-separated) measure only those servers, scenarios and connection
counts. ``BENCH_BEFORE=<git revision>`` also serves that revision of this server, checked out
with ``git worktree`` into ``bench/work/before``, as ``app:before`` (numeric scenarios only).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import joblib
import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
WORK = BENCH / "work"
RESULTS = BENCH / "results"
BIN = Path(sys.executable).parent

# ---------------------------------------------------------------------------------------------
# What is measured. Edit here.
# ---------------------------------------------------------------------------------------------

#: Configurations of this server: a name and the environment it is started with, on top of
#: ``gunicorn -c gunicorn.conf.py wsgi:app`` (GUNICORN_* and INFERENCE_APP_* settings).
#: Add a profile to benchmark another configuration: it becomes the server ``app:<name>``.
#: Every profile serves the demo bundles as ``init-demo`` writes them, with their ONNX
#: conversions where exact (all but sentiment): ``default`` runs them on onnxruntime
#: (``RUNTIME=auto``), ``sklearn`` the same bundles on scikit-learn.
PROFILES: dict[str, dict[str, str]] = {
    "default": {"GUNICORN_WORKERS": "2"},
    "sklearn": {"GUNICORN_WORKERS": "2", "INFERENCE_APP_RUNTIME": "sklearn"},
    # The defaults with adaptive batching: kept off by default while this row is slower.
    "batching": {"GUNICORN_WORKERS": "2", "INFERENCE_APP_BATCHING": "true"},
    # Gunicorn's sync workers, the default before gthread: one connection per request.
    "sync": {"GUNICORN_WORKERS": "2", "GUNICORN_WORKER_CLASS": "sync", "GUNICORN_THREADS": "1"},
}
#: The profiles compared for the ONNX target (issue 6, item 4): the same server with the ONNX
#: runtime and with scikit-learn's. Not measured while PROFILES has no such profile.
ONNX_PROFILE = "default"
SKLEARN_PROFILE = "sklearn"
#: The baselines every server is compared with (apps in ``bench/baselines/``), each with the
#: demo models it serves.
BASELINES: dict[str, tuple[str, ...]] = {
    "seed_flask": ("iris", "breast_cancer"),
    "seed_fastapi": ("iris", "breast_cancer"),
    "seed_flask_pandas": ("penguins", "sentiment"),
    "mlserver": ("iris", "breast_cancer"),
    "bare_wsgi": ("iris", "breast_cancer"),
}
#: Gunicorn's settings for ``bare_wsgi``: the worker settings gunicorn.conf.py ships.
BARE_WSGI_ARGS = ("--workers=2", "--worker-class=gthread", "--threads=4")
#: The slow-client measurement: this many sockets each send one header line a second for
#: this long while wrk measures ``SLOW_SCENARIO`` at ``SLOW_CONNECTIONS`` (against the same
#: measurement without them, alternately).
SLOW_SOCKETS = 3
SLOW_SECONDS = 10
SLOW_SCENARIO = "iris_1"
SLOW_CONNECTIONS = 8
#: A revision of this server measured beside the working tree (``BENCH_BEFORE``): its name in
#: the tables, and the profile it is started with.
BEFORE_SERVER = "app:before"
BEFORE_PROFILE = "default"
#: "Numeric models no slower than before": ``app:default`` / ``app:before`` req/s at least
#: this, in each numeric scenario and connection count. Below 1 by the noise of a shared box:
#: two runs of the same server differ by more than 5 % (RESULTS.md).
BEFORE_TOLERANCE = 0.95


class Scenario(NamedTuple):
    """A demo model and the rows per request: the dataset's rows from ``start`` on."""

    model: str
    rows: int
    start: int = 0


#: Each scenario. penguins_1 is row 8 (``sex`` missing); the first 100 penguins hold 6 rows
#: with missing values (row 3 has only ``island``).
SCENARIOS: dict[str, Scenario] = {
    "iris_1": Scenario("iris", 1),
    "breast_cancer_1": Scenario("breast_cancer", 1),
    "breast_cancer_100": Scenario("breast_cancer", 100),
    "penguins_1": Scenario("penguins", 1, start=8),
    "penguins_100": Scenario("penguins", 100),
    "sentiment_1": Scenario("sentiment", 1),
    "sentiment_100": Scenario("sentiment", 100),
}
CONNECTIONS = (1, 8, 64)
#: wrk threads (at most one per connection).
WRK_THREADS = 2
#: Processes of the in-process floor: as many as the servers' workers, one per core.
FLOOR_PROCESSES = int(PROFILES["default"]["GUNICORN_WORKERS"])

#: The memory measurement: a random forest bundle of about this size, served by this many
#: workers with ``preload_app`` on and off.
MEMORY_TARGET_MIB = 200
MEMORY_RANGE_MIB = (150, 250)
MEMORY_WORKERS = 4

# Bounds of every wait.
START_TIMEOUT = 60.0
MEMORY_START_TIMEOUT = 240.0
STOP_TIMEOUT = 15.0
REQUEST_TIMEOUT = 30.0
WRK_LATENCY_TIMEOUT = "10s"
MAX_FLOOR_CALLS = 10_000_000

MIB = 1024 * 1024


class BenchError(RuntimeError):
    """The benchmark cannot go on: a server did not start, answered wrongly, or wrk failed."""


def names_list(value: str | None, known: Iterable[str], variable: str) -> tuple[str, ...] | None:
    """Return the comma-separated names of ``value`` in order, or ``None`` (all) when it is
    unset or blank.

    :raises BenchError: a name is not one of ``known``.
    """
    if value is None or not value.strip():
        return None
    names = tuple(dict.fromkeys(n.strip() for n in value.split(",") if n.strip()))
    unknown = [n for n in names if n not in known]
    if unknown:
        raise BenchError(f"{variable}: unknown {', '.join(unknown)}; known: {', '.join(known)}")
    return names


@dataclass(frozen=True)
class Settings:
    """How long and how often to measure, and what (``None``: everything)."""

    repeats: int
    seconds: int
    servers: tuple[str, ...] | None = None
    scenarios: tuple[str, ...] | None = None
    connections: tuple[int, ...] = CONNECTIONS
    before: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        """Read ``BENCH_QUICK``, ``BENCH_REPEATS``, ``BENCH_SECONDS``, ``BENCH_SERVERS``,
        ``BENCH_SCENARIOS``, ``BENCH_CONNECTIONS`` and ``BENCH_BEFORE``."""
        before = environ.get("BENCH_BEFORE", "").strip() or None
        known = [f"app:{p}" for p in PROFILES] + ([BEFORE_SERVER] if before else [])
        servers = names_list(environ.get("BENCH_SERVERS"), [*known, *BASELINES], "BENCH_SERVERS")
        if servers is not None and BEFORE_SERVER in servers and not before:
            raise BenchError(f"{BEFORE_SERVER} needs BENCH_BEFORE=<git revision>")
        scenarios = names_list(environ.get("BENCH_SCENARIOS"), SCENARIOS, "BENCH_SCENARIOS")
        counts = environ.get("BENCH_CONNECTIONS", "").strip()
        try:
            connections = (
                tuple(dict.fromkeys(int(n) for n in counts.split(",") if n.strip()))
                if counts
                else CONNECTIONS
            )
        except ValueError:
            raise BenchError(f"BENCH_CONNECTIONS must be integers; got {counts!r}") from None
        if not connections or min(connections) < 1:
            raise BenchError("BENCH_CONNECTIONS must be at least 1")
        chosen = {
            "servers": servers,
            "scenarios": scenarios,
            "connections": connections,
            "before": before,
        }
        if environ.get("BENCH_QUICK", "").lower() in ("1", "true", "yes"):
            return cls(repeats=1, seconds=2, **chosen)
        repeats = int(environ.get("BENCH_REPEATS", "3"))
        seconds = int(environ.get("BENCH_SECONDS", "5"))
        if repeats < 1 or seconds < 1:
            raise BenchError("BENCH_REPEATS and BENCH_SECONDS must be at least 1")
        return cls(repeats=repeats, seconds=seconds, **chosen)

    def chosen_scenarios(self) -> dict[str, Scenario]:
        """Return the scenarios to measure, in :data:`SCENARIOS` order."""
        return {k: v for k, v in SCENARIOS.items() if self.scenarios is None or k in self.scenarios}


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server: its command (``{port}`` is replaced), environment on top of a
    clean one, working folder, predict route (``{model}`` is replaced), readiness route and the
    demo models it serves (``None``: all)."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: Path
    route: str
    ready_path: str | None = None
    models: frozenset[str] | None = None
    #: The request body it takes: ``"instances"`` (``{"instances": [...]}``) or ``"v2"`` (an
    #: Open Inference Protocol REST body, :func:`v2_body`).
    protocol: str = "instances"

    def serves(self, model: str) -> bool:
        return self.models is None or model in self.models


@dataclass
class Running:
    """A started server."""

    spec: ServerSpec
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        """Return the last lines the server wrote."""
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def predict_url(self, model: str) -> str:
        return self.url + self.spec.route.format(model=model)


@dataclass
class Progress:
    """Prints one line per measurement with the estimated time left."""

    total: int
    done: int = 0
    started: float = field(default_factory=time.monotonic)

    def step(self, text: str) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.started
        left = elapsed / self.done * (self.total - self.done)
        width = len(str(self.total))
        print(f"[{self.done:>{width}}/{self.total}] {text}  (~{_duration(left)} left)", flush=True)


# ---------------------------------------------------------------------------------------------
# Pure parts: request bodies, wrk scripts and output, medians and ratios.
# ---------------------------------------------------------------------------------------------


def scenario_rows(model: str, rows: int, start: int = 0, cache: Path | None = None) -> Any:
    """Return ``rows`` rows of a demo dataset from row ``start`` on, as its model takes them:
    a numeric demo's ``(rows, n_features)`` array, the penguins' DataFrame (NaN where missing),
    the tweets' Series of texts (named ``text``).

    :param cache: where the tweets are downloaded once (default ``bench/work/cache``).
    """
    from inference_app.demo import DEMOS, TYPED_DEMOS, load_demo_data

    if model in DEMOS:
        data, _, _ = load_demo_data(model)
        return data[start : start + rows]
    sample, _ = TYPED_DEMOS[model].load(cache or WORK / "cache")
    return sample.iloc[start : start + rows].reset_index(drop=True)


def instances(rows: Any) -> list[Any]:
    """Return the JSON instances of ``rows``: lists of numbers for an array, an object per row
    keyed by column for a DataFrame and by name for a Series; ``None`` (``null``) where a value
    is missing."""
    import pandas as pd

    if isinstance(rows, pd.Series):
        rows = rows.to_frame()
    if isinstance(rows, pd.DataFrame):
        return [
            {str(k): None if pd.isna(v) else v for k, v in record.items()}
            for record in rows.to_dict("records")
        ]
    return np.asarray(rows).tolist()


def request_body(rows: Any) -> str:
    """Return the JSON body every server takes: ``{"instances": [[...], ...]}``, or
    ``{"instances": [{...}, ...]}`` for a DataFrame or Series (see :func:`instances`)."""
    return json.dumps({"instances": instances(rows)}, separators=(",", ":"), allow_nan=False)


def measurement_plan(
    servers: Sequence[tuple[str, Callable[[str], bool]]],
    scenarios: Mapping[str, Scenario],
    connections: Sequence[int],
    repeat: int,
) -> list[tuple[str, str, int]]:
    """Return one repeat's measurements, ``(server, scenario, connections)`` in order.

    Scenario by scenario and connection count by connection count, every server that serves
    the scenario's model in turn, so the servers compared in a cell are measured back to back;
    the servers' order is reversed on even repeats, so none is always first after a switch.

    :param servers: each server's name and whether it serves a model.
    """
    order = list(servers) if repeat % 2 else list(reversed(servers))
    return [
        (name, scenario, count)
        for scenario, (model, _, _) in scenarios.items()
        for count in connections
        for name, serves in order
        if serves(model)
    ]


def lua_script(body: str) -> str:
    """Return a wrk script that POSTs ``body`` as JSON on every request."""
    level = 1
    while "]" + "=" * level + "]" in body:
        level += 1
    quote = "=" * level
    return (
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = [{quote}[{body}]{quote}]\n"
    )


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_TIME = r"([\d.]+)(us|ms|s|m|h)"


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


def parse_wrk(text: str) -> dict[str, Any]:
    """Parse wrk's ``--latency`` report.

    :returns: ``requests``, ``duration_s``, ``rps``, ``p50_ms``, ``p75_ms``, ``p90_ms``,
        ``p99_ms``, ``max_ms`` (the slowest request), ``socket_errors`` (connect + read +
        write + timeout, each also given), ``non_2xx`` (wrk counts statuses above 399) and
        ``errors`` (their sum).
    :raises ValueError: the text is not a wrk report.
    """
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    total = re.search(rf"^\s*(\d+) requests in {_TIME}", text, re.M)
    if not rps or not total:
        raise ValueError(f"not a wrk report:\n{text}")
    result: dict[str, Any] = {
        "requests": int(total.group(1)),
        "duration_s": _ms(total.group(2), total.group(3)) / 1e3,
        "rps": float(rps.group(1)),
    }
    for percent, value, unit in re.findall(rf"^\s*(50|75|90|99)%\s+{_TIME}", text, re.M):
        result[f"p{percent}_ms"] = _ms(value, unit)
    if "p99_ms" not in result:
        raise ValueError(f"wrk ran without --latency:\n{text}")
    latency = re.search(rf"^\s*Latency\s+{_TIME}\s+{_TIME}\s+{_TIME}", text, re.M)
    if latency:
        result["max_ms"] = _ms(latency.group(5), latency.group(6))
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    kinds = ("connect", "read", "write", "timeout")
    counts = [int(n) for n in sockets.groups()] if sockets else [0, 0, 0, 0]
    result.update({f"{kind}_errors": n for kind, n in zip(kinds, counts, strict=True)})
    result["socket_errors"] = sum(counts)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    result["non_2xx"] = int(non_2xx.group(1)) if non_2xx else 0
    result["errors"] = result["socket_errors"] + result["non_2xx"]
    return result


def median(values: Iterable[float]) -> float:
    """Return the median of ``values`` (the mean of the middle two for an even count)."""
    return float(statistics.median(list(values)))


def ratio(value: float | None, reference: float | None) -> float | None:
    """Return ``value / reference``, or ``None`` when either is missing or the reference 0."""
    if value is None or not reference:
        return None
    return value / reference


def summarize(
    runs: Sequence[Mapping[str, Any]], floors: Sequence[Mapping[str, Any]]
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Reduce repeated measurements to medians, with ratios to each baseline and the floor.

    :param runs: one wrk measurement each: ``server``, ``scenario``, ``connections``,
        ``rows`` and the fields of :func:`parse_wrk`.
    :param floors: one floor measurement each: ``scenario``, ``rows_per_s``, ``call_us``.
    :returns: a row per server, scenario and connection count (in first-seen order), and the
        floor per scenario: the best of its repeats.
    """
    floor: dict[str, dict[str, Any]] = {}
    for scenario in dict.fromkeys(f["scenario"] for f in floors):
        mine = [f for f in floors if f["scenario"] == scenario]
        # Best of the repeats, not the median: other work on the machine only ever slows a
        # loop down, and the floor is the capacity of the cores.
        floor[scenario] = {
            "rows_per_s": max(f["rows_per_s"] for f in mine),
            "call_us": min(f["call_us"] for f in mine),
            "rows_per_s_median": median(f["rows_per_s"] for f in mine),
            "repeats": len(mine),
        }
    groups: dict[tuple[str, str, int], list[Mapping[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["server"], run["scenario"], run["connections"]), []).append(run)
    rows = []
    for (server, scenario, connections), mine in groups.items():
        rps = median(r["rps"] for r in mine)
        rows.append(
            {
                "server": server,
                "scenario": scenario,
                "connections": connections,
                "rows_per_request": mine[0]["rows"],
                "rps": rps,
                "rps_min": min(r["rps"] for r in mine),
                "rps_max": max(r["rps"] for r in mine),
                "rows_per_s": rps * mine[0]["rows"],
                "p50_ms": median(r["p50_ms"] for r in mine),
                "p99_ms": median(r["p99_ms"] for r in mine),
                "errors": median(r["errors"] for r in mine),
                "errors_total": sum(r["errors"] for r in mine),
                "repeats": len(mine),
            }
        )
    by_key = {(r["server"], r["scenario"], r["connections"]): r for r in rows}

    def vs(row: Mapping[str, Any], server: str) -> float | None:
        return ratio(
            row["rps"], by_key.get((server, row["scenario"], row["connections"]), {}).get("rps")
        )

    # Each repeat's req/s: app:before and the others are measured back to back in a repeat
    # (measurement_plan), so the ratio within a repeat cancels the drift between repeats.
    per_repeat: dict[tuple[str, str, int], dict[Any, list[float]]] = {}
    for run in runs:
        key = (run["server"], run["scenario"], run["connections"])
        per_repeat.setdefault(key, {}).setdefault(run.get("repeat"), []).append(run["rps"])

    def paired(row: Mapping[str, Any], server: str) -> float | None:
        mine = per_repeat[row["server"], row["scenario"], row["connections"]]
        theirs = per_repeat.get((server, row["scenario"], row["connections"]), {})
        ratios = [
            ratio(median(mine[repeat]), median(theirs[repeat]))
            for repeat in mine
            if repeat in theirs
        ]
        found = [r for r in ratios if r is not None]
        return median(found) if found else None

    for row in rows:
        row["vs"] = {baseline: vs(row, baseline) for baseline in BASELINES}
        row["vs_before"] = vs(row, BEFORE_SERVER)
        row["vs_before_paired"] = paired(row, BEFORE_SERVER)
        row["vs_floor"] = ratio(row["rows_per_s"], floor.get(row["scenario"], {}).get("rows_per_s"))
    return rows, floor


def _target(name: str, server: str, value: float | None, met: bool | None) -> dict[str, Any]:
    return {"target": name, "server": server, "value": value, "met": met}


def targets(
    rows: Sequence[Mapping[str, Any]],
    memory: Mapping[str, Any] | None,
    slow: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Return each target this bench measures (issue 10's for ``app:default``, the ONNX and
    "no slower than before" checks), with its measured value and whether it is met (``None``
    where it could not be measured)."""
    by_key = {(r["server"], r["scenario"], r["connections"]): r for r in rows}
    found: list[dict[str, Any]] = []
    server = "app:default"

    def versus(scenario: str, connections: int, baseline: str, goal: float, what: str) -> None:
        row = by_key.get((server, scenario, connections))
        if row is None or (baseline, scenario, connections) not in by_key:
            return
        value = ratio(row["rows_per_s"], by_key[baseline, scenario, connections]["rows_per_s"])
        found.append(
            _target(
                f"{what}, {connections} conn: >= {goal}x {baseline}",
                server,
                value,
                None if value is None else value >= goal,
            )
        )

    versus("iris_1", 8, "seed_fastapi", 1.0, "iris 1 row")
    versus("iris_1", 8, "seed_flask", 2.0, "iris 1 row")
    versus("breast_cancer_1", 64, "mlserver", 1.4, "forest 1 row")
    versus("breast_cancer_1", 64, "seed_flask", 5.0, "forest 1 row")
    versus("breast_cancer_100", 8, "mlserver", 1.2, "forest 100-row batches (rows/s)")
    forest = by_key.get((server, "breast_cancer_1", 64))
    flask = by_key.get(("seed_flask", "breast_cancer_1", 64))
    if forest and flask:
        value = ratio(forest["p99_ms"], flask["p99_ms"])
        found.append(
            _target(
                f"forest 1 row, 64 conn: p99 <= 0.2x seed_flask's ({flask['p99_ms']:.1f} ms)",
                server,
                value,
                None if value is None else value <= 0.2,
            )
        )
    for row in rows:
        if row["server"] == server and row["connections"] == 64:
            value = ratio(row["p99_ms"], row["p50_ms"])
            found.append(
                _target(
                    f"{row['scenario']}, 64 conn: p99 <= 2x p50 ({row['p50_ms']:.1f} ms)",
                    server,
                    value,
                    None if value is None else value <= 2.0,
                )
            )
    for (name, scenario, connections), row in by_key.items():
        others = [
            by_key[other, scenario, connections]["rps"]
            for other in (f"app:{p}" for p in PROFILES if p != "default")
            if (other, scenario, connections) in by_key
        ]
        if name == server and others:
            value = ratio(row["rps"], max(others))
            found.append(
                _target(
                    f"{scenario}, {connections} conn: default row >= 0.95x the fastest other "
                    "profile",
                    server,
                    value,
                    None if value is None else value >= 0.95,
                )
            )
    if slow:
        found.append(
            _target(
                f"{SLOW_SOCKETS} slow clients: others keep >= 0.7x their req/s",
                server,
                slow["ratio"],
                slow["ratio"] >= 0.7,
            )
        )
        found.append(
            _target(
                f"{SLOW_SOCKETS} slow clients: no request waits over 2 s (max, ms)",
                server,
                slow["max_ms"],
                slow["max_ms"] <= 2000,
            )
        )
    onnx = by_key.get((f"app:{ONNX_PROFILE}", "breast_cancer_1", 1))
    sklearn_runtime = by_key.get((f"app:{SKLEARN_PROFILE}", "breast_cancer_1", 1))
    value = ratio(onnx["p50_ms"], sklearn_runtime["p50_ms"]) if onnx and sklearn_runtime else None
    found.append(
        {
            "target": f"ONNX runtime: breast_cancer 1 row p50 <= 0.2x the scikit-learn "
            f"runtime's (app:{ONNX_PROFILE} / app:{SKLEARN_PROFILE}, 1 conn)",
            "server": f"app:{ONNX_PROFILE}",
            "value": value,
            "met": None if value is None else value <= 0.2,
        }
    )
    after = f"app:{BEFORE_PROFILE}"
    for row in rows:
        value = row.get("vs_before_paired")
        if row["server"] != after or value is None:
            continue
        found.append(
            {
                "target": f"numeric models no slower than before: {row['scenario']}, "
                f"{row['connections']} conn, req/s >= {BEFORE_TOLERANCE}x {BEFORE_SERVER} "
                "(median of the repeats' ratios)",
                "server": after,
                "value": value,
                "met": value >= BEFORE_TOLERANCE,
            }
        )
    preloaded = (memory or {}).get("preload_on")
    if preloaded:
        value = preloaded["ratio_total_pss_to_worker_rss"]
        found.append(
            {
                "target": f"preload on, {MEMORY_WORKERS} workers: total PSS <= 1.5x one worker's "
                "RSS",
                "server": "app:default",
                "value": value,
                "met": value <= 1.5,
            }
        )
    return found


# ---------------------------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Before:
    """A revision of this server checked out beside the working tree, and its instance folder
    (demo bundles written by that revision's code)."""

    revision: str
    commit: str
    tree: Path
    instance: Path
    models: frozenset[str]


def app_spec(
    name: str,
    env: Mapping[str, str],
    instance: Path,
    tree: Path = REPO,
    models: frozenset[str] | None = None,
) -> ServerSpec:
    """Return this server (the checkout at ``tree``) under Gunicorn with ``env`` on top."""
    extra: dict[str, str] = {}
    argv = [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"]
    if tree != REPO:
        # Another checkout, same virtualenv: its package first on sys.path, its config.
        extra["PYTHONPATH"] = str(tree / "src")
        argv = [
            str(BIN / "gunicorn"),
            "-c",
            str(tree / "gunicorn.conf.py"),
            f"--chdir={tree}",
            "wsgi:app",
        ]
    return ServerSpec(
        name=name,
        argv=tuple(argv),
        env={
            "GUNICORN_BIND": "127.0.0.1:{port}",
            # gRPC (8081 by default) only where a profile asks, on a port of its own.
            "INFERENCE_APP_GRPC_PORT": "0",
            "INFERENCE_APP_INSTANCE_PATH": str(instance),
            **extra,
            **env,
        },
        cwd=tree,
        route="/v1/models/{model}:predict",
        ready_path="/health/ready",
        models=models,
    )


def server_specs(
    instance: Path, before: Before | None = None, names: Iterable[str] | None = None
) -> list[ServerSpec]:
    """Return the servers of the matrix: each profile of this server, ``app:before`` when
    given, then the baselines; only those in ``names`` when given."""
    models = str(instance / "models")
    specs = [app_spec(f"app:{profile}", env, instance) for profile, env in PROFILES.items()]
    if before is not None:
        env = PROFILES[BEFORE_PROFILE]
        specs.append(app_spec(BEFORE_SERVER, env, before.instance, before.tree, before.models))
    specs.append(
        ServerSpec(
            name="seed_flask",
            argv=(
                str(BIN / "gunicorn"),
                "--workers=2",
                "--worker-class=sync",
                "--bind=127.0.0.1:{port}",
                "seed_flask:app",
            ),
            env={"BENCH_MODELS_DIR": models, "BENCH_MODELS": ",".join(BASELINES["seed_flask"])},
            cwd=BENCH / "baselines",
            route="/predict/{model}",
            models=frozenset(BASELINES["seed_flask"]),
        )
    )
    specs.append(
        ServerSpec(
            name="seed_fastapi",
            argv=(
                str(BIN / "uvicorn"),
                "seed_fastapi:app",
                "--host=127.0.0.1",
                "--port={port}",
                "--workers=2",
                "--no-access-log",
            ),
            env={
                "BENCH_MODELS_DIR": models,
                "BENCH_MODELS": ",".join(BASELINES["seed_fastapi"]),
            },
            cwd=BENCH / "baselines",
            route="/predict/{model}",
            models=frozenset(BASELINES["seed_fastapi"]),
        )
    )
    specs.append(
        ServerSpec(
            name="seed_flask_pandas",
            argv=(
                str(BIN / "gunicorn"),
                "--workers=2",
                "--worker-class=sync",
                "--bind=127.0.0.1:{port}",
                "seed_flask_pandas:app",
            ),
            env={
                "BENCH_MODELS_DIR": models,
                "BENCH_MODELS": ",".join(BASELINES["seed_flask_pandas"]),
            },
            cwd=BENCH / "baselines",
            route="/predict/{model}",
            models=frozenset(BASELINES["seed_flask_pandas"]),
        )
    )
    mlserver = mlserver_spec(
        {m: instance / "models" / m / "1" / "model.joblib" for m in BASELINES["mlserver"]},
        free_port(),
        name="mlserver",
    )
    if mlserver is not None:
        specs.append(mlserver)
    specs.append(
        ServerSpec(
            name="bare_wsgi",
            argv=(
                str(BIN / "gunicorn"),
                "--bind=127.0.0.1:{port}",
                *BARE_WSGI_ARGS,
                "bare_wsgi:app",
            ),
            env={"BENCH_MODELS_DIR": models},
            cwd=BENCH / "baselines",
            route="/{model}",
            models=frozenset(BASELINES["bare_wsgi"]),
        )
    )
    if names is not None:
        wanted = set(names)
        specs = [spec for spec in specs if spec.name in wanted]
    return specs


def free_port() -> int:
    """Return a TCP port of 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env(extra: Mapping[str, str], port: int) -> dict[str, str]:
    """Return this process's environment without server settings, plus ``extra``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("GUNICORN_", "INFERENCE_APP_", "UVICORN_", "WEB_CONCURRENCY"))
        and key not in ("PROMETHEUS_MULTIPROC_DIR", "BENCH_MODELS_DIR")
    }
    env.update({key: value.format(port=port) for key, value in extra.items()})
    return env


def start(spec: ServerSpec, logs: Path) -> Running:
    """Start ``spec`` on a free port of 127.0.0.1 in its own process group."""
    port = free_port()
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{spec.name.replace(':', '-')}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [arg.format(port=port) for arg in spec.argv],
            cwd=spec.cwd,
            env=clean_env(spec.env, port),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Running(spec, process, f"http://127.0.0.1:{port}", log_path)


def stop(server: Running) -> None:
    """Stop the server's whole process group: SIGTERM, then SIGKILL after a bounded wait."""
    if server.process.poll() is None:
        try:
            os.killpg(server.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            server.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
    try:  # workers left behind by a master that died
        os.killpg(server.process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if server.process.poll() is None:
        server.process.wait(timeout=STOP_TIMEOUT)


@contextmanager
def serving(specs: Sequence[ServerSpec], logs: Path) -> Iterator[list[Running]]:
    """Start every server in ``specs`` and stop them all on the way out, whatever happens."""
    running: list[Running] = []
    try:
        for spec in specs:
            running.append(start(spec, logs))
        yield running
    finally:
        for server in running:
            stop(server)


_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    """Send one request straight to ``url`` (never through a proxy); return status and body."""
    if not url.startswith("http://127.0.0.1:"):
        raise BenchError(f"the bench only talks to 127.0.0.1, not {url}")
    request = urllib.request.Request(
        url, data=body, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with _opener.open(request, timeout=REQUEST_TIMEOUT) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.25) -> bool:
    """Return whether ``condition`` became true within ``timeout`` seconds (bounded polling)."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 1):
        if condition():
            return True
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    return condition()


def wait_ready(server: Running, probe: tuple[str, bytes], timeout: float = START_TIMEOUT) -> None:
    """Wait until the server answers 200 on its readiness route, else on ``probe`` (a predict
    URL and body).

    :raises BenchError: the server exited or was not ready in time.
    """

    def ready() -> bool:
        if server.process.poll() is not None:
            raise BenchError(
                f"{server.spec.name} exited with {server.process.returncode} before it was "
                f"ready:\n{server.log_tail()}"
            )
        try:
            if server.spec.ready_path:
                return http("GET", server.url + server.spec.ready_path)[0] == 200
            return http("POST", *probe)[0] == 200
        except OSError:
            return False

    if not wait_until(ready, timeout):
        raise BenchError(f"{server.spec.name} not ready in {timeout} s:\n{server.log_tail()}")


def check_predictions(server: Running, model: str, rows: Any, estimator: Any) -> None:
    """Check the server's predictions for ``rows`` equal ``estimator.predict`` in process.

    :raises BenchError: a non-200 answer or different predictions.
    """
    status, body = http("POST", server.predict_url(model), body_for(server.spec, rows).encode())
    if status != 200:
        raise BenchError(f"{server.spec.name} answered {status} for {model}: {body[:500]!r}")
    answer = json.loads(body)
    got = answer["outputs"][0]["data"] if server.spec.protocol == "v2" else answer["predictions"]
    expected = estimator.predict(rows).tolist()
    if got != expected:
        raise BenchError(
            f"{server.spec.name} predicts {got[:5]}... for {model}, expected {expected[:5]}..."
        )


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------


def body_for(spec: ServerSpec, rows: Any) -> str:
    """Return the request body ``spec`` takes for ``rows``."""
    return v2_body(rows) if spec.protocol == "v2" else request_body(rows)


def script_for(spec: ServerSpec, scripts: Path, scenario: str) -> Path:
    """Return the wrk script sending ``scenario``'s body in the form ``spec`` takes."""
    return scripts / (f"{scenario}-v2.lua" if spec.protocol == "v2" else f"{scenario}.lua")


def run_wrk(url: str, script: Path, connections: int, seconds: int) -> dict[str, Any]:
    """Run wrk against ``url`` and return :func:`parse_wrk` of its report plus its command."""
    argv = [
        "wrk",
        f"-t{min(WRK_THREADS, connections)}",
        f"-c{connections}",
        f"-d{seconds}s",
        f"--timeout={WRK_LATENCY_TIMEOUT}",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=seconds + 60, check=False
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk did not finish: {' '.join(argv)}") from None
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    result = parse_wrk(done.stdout)
    result["command"] = " ".join(argv[:-3] + [script.name, url])
    return result


def _floor_process(
    model_path: str, rows: Any, seconds: float, threads: int, barrier: Any, queue: Any
) -> None:
    """Predict ``rows`` in a loop for ``seconds``; put ``(calls, elapsed seconds)``."""
    from threadpoolctl import threadpool_limits

    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    estimator = joblib.load(model_path)
    with threadpool_limits(limits=threads):
        for _ in range(3):
            estimator.predict(rows)
        barrier.wait(timeout=60)
        calls = 0
        begin = time.perf_counter()
        deadline = begin + seconds
        while calls < MAX_FLOOR_CALLS and time.perf_counter() < deadline:
            estimator.predict(rows)
            calls += 1
        elapsed = time.perf_counter() - begin
    queue.put((calls, elapsed))


def measure_floor(model_path: Path, rows: Any, seconds: int) -> dict[str, Any]:
    """Time ``estimator.predict(rows)`` in :data:`FLOOR_PROCESSES` fresh processes at once,
    each with its native thread pools capped like a server worker's.

    :returns: ``rows_per_s`` summed over the processes and ``call_us``, the median time of one
        call.
    """
    context = multiprocessing.get_context("spawn")
    threads = max(1, len(os.sched_getaffinity(0)) // FLOOR_PROCESSES)
    barrier = context.Barrier(FLOOR_PROCESSES)
    queue = context.Queue()
    processes = [
        context.Process(
            target=_floor_process,
            args=(str(model_path), rows, seconds, threads, barrier, queue),
        )
        for _ in range(FLOOR_PROCESSES)
    ]
    try:
        for process in processes:
            process.start()
        results = [queue.get(timeout=seconds + 120) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=STOP_TIMEOUT)
            if process.is_alive():
                process.kill()
                process.join(timeout=STOP_TIMEOUT)
    return {
        "rows_per_s": sum(calls * len(rows) / elapsed for calls, elapsed in results),
        "call_us": median(elapsed / calls * 1e6 for calls, elapsed in results),
        "processes": FLOOR_PROCESSES,
        "threads_per_process": threads,
    }


def git(*args: str, cwd: Path = REPO) -> str:
    """Run ``git args`` in ``cwd`` and return its output, stripped.

    :raises BenchError: git failed.
    """
    done = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"git {' '.join(args)} failed: {(done.stderr or done.stdout).strip()}")
    return done.stdout.strip()


def remove_worktree(tree: Path) -> None:
    """Remove the worktree at ``tree`` if there is one, and forget it."""
    if tree.exists():
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(tree)],
            cwd=REPO,
            capture_output=True,
            timeout=120,
            check=False,
        )
    subprocess.run(["git", "worktree", "prune"], cwd=REPO, capture_output=True, timeout=120)


@contextmanager
def before_checkout(revision: str) -> Iterator[Before]:
    """Check ``revision`` out into ``bench/work/before`` (``git worktree add --detach``), write
    its demo bundles with its own ``inference-app init-demo`` into
    ``bench/work/before-instance``, and remove the worktree on the way out, whatever happens.

    :raises BenchError: the revision is unknown, or its code does not write its bundles.
    """
    commit = git("rev-parse", "--verify", f"{revision}^{{commit}}")
    tree = WORK / "before"
    instance = WORK / "before-instance"
    remove_worktree(tree)  # left behind by an interrupted run
    git("worktree", "add", "--detach", str(tree), commit)
    try:
        env = {**clean_env({}, 0), "PYTHONPATH": str(tree / "src")}
        where = subprocess.run(
            [str(BIN / "python"), "-c", "import inference_app; print(inference_app.__file__)"],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        ).stdout.strip()
        if not Path(where).is_relative_to(tree):
            raise BenchError(f"PYTHONPATH={tree / 'src'} imports inference_app from {where!r}")
        print(f"Writing {revision} ({commit[:7]})'s demo bundles with its own code", flush=True)
        done = subprocess.run(
            [str(BIN / "inference-app"), "init-demo", "--force", "--instance-path", str(instance)],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            raise BenchError(f"{revision}'s init-demo failed:\n{done.stdout}{done.stderr}")
        written = frozenset(
            folder.name for folder in (instance / "models").iterdir() if folder.is_dir()
        )
        yield Before(revision, commit, tree, instance, written)
    finally:
        remove_worktree(tree)


def demo_bundles(instance: Path) -> dict[str, str]:
    """Write every demo bundle into ``instance/models`` as ``init-demo`` does, with its ONNX
    conversion where exact; return the demos skipped, with why."""
    from inference_app.demo import write_demo_bundles

    print(f"Writing the demo bundles into {instance / 'models'}", flush=True)
    written = write_demo_bundles(
        instance / "models", overwrite=True, onnx=True, cache_dir=WORK / "cache"
    )
    return {w.name: w.skipped for w in written if w.skipped}


def run_throughput(settings: Settings) -> dict[str, Any]:
    """Start every server, check its predictions, then measure the matrix ``repeats`` times."""
    scenarios = settings.chosen_scenarios()
    wanted = settings.servers or [
        *(f"app:{p}" for p in PROFILES),
        *([BEFORE_SERVER] if settings.before else []),
        *BASELINES,
    ]
    instance = WORK / "instance"
    skipped = demo_bundles(instance)
    models = {s.model for s in scenarios.values()}
    for model in models & set(skipped):
        raise BenchError(f"the {model} demo was not written: {skipped[model]}")
    model_files = {m: instance / "models" / m / "1" / "model.joblib" for m in models}
    estimators = {m: joblib.load(path) for m, path in model_files.items()}
    scripts = WORK / "scripts"
    scripts.mkdir(parents=True, exist_ok=True)
    bodies = {}
    for scenario, (model, count, start) in scenarios.items():
        bodies[scenario] = scenario_rows(model, count, start)
        (scripts / f"{scenario}.lua").write_text(lua_script(request_body(bodies[scenario])))
        (scripts / f"{scenario}-v2.lua").write_text(lua_script(v2_body(bodies[scenario])))
    runs: list[dict[str, Any]] = []
    floors: list[dict[str, Any]] = []
    with (
        before_checkout(settings.before)
        if settings.before and BEFORE_SERVER in wanted
        else nullcontext()
    ) as before:
        specs = server_specs(instance, before, wanted)
        plans = [
            measurement_plan(
                [(s.name, s.serves) for s in specs], scenarios, settings.connections, repeat
            )
            for repeat in range(1, settings.repeats + 1)
        ]
        progress = Progress(total=sum(len(plan) + len(scenarios) for plan in plans))
        print(
            f"Starting {len(specs)} servers; then {progress.total} measurements of "
            f"{settings.seconds} s ({settings.repeats} repeats)",
            flush=True,
        )
        with serving(specs, WORK / "logs") as servers:
            by_name = {server.spec.name: server for server in servers}
            for server in servers:
                mine = {k: v for k, v in scenarios.items() if server.spec.serves(v.model)}
                if not mine:
                    raise BenchError(f"{server.spec.name} serves none of the scenarios' models")
                first = next(iter(mine))
                probe = (
                    server.predict_url(mine[first].model),
                    body_for(server.spec, bodies[first]).encode(),
                )
                wait_ready(server, probe)
                for model in dict.fromkeys(s.model for s in mine.values()):
                    check_predictions(server, model, scenario_rows(model, 20), estimators[model])
                for scenario, (model, _, _) in mine.items():
                    check_predictions(server, model, bodies[scenario], estimators[model])
                # Warm every worker up on each of its models before the first measurement.
                for model in dict.fromkeys(s.model for s in mine.values()):
                    scenario = next(k for k, v in mine.items() if v.model == model)
                    run_wrk(
                        server.predict_url(model), script_for(server.spec, scripts, scenario), 8, 1
                    )
                print(
                    f"  {server.spec.name} ready at {server.url}, predictions checked", flush=True
                )
            for repeat, plan in enumerate(plans, start=1):
                for scenario, (model, _, _) in scenarios.items():
                    floor = measure_floor(model_files[model], bodies[scenario], settings.seconds)
                    floor.update(scenario=scenario, repeat=repeat)
                    floors.append(floor)
                    progress.step(
                        f"repeat {repeat}/{settings.repeats}  floor  {scenario:<18} "
                        f"{floor['rows_per_s']:>10,.0f} rows/s  {floor['call_us']:>8,.0f} us/call"
                    )
                for name, scenario, connections in plan:
                    server = by_name[name]
                    model, count, _ = scenarios[scenario]
                    if server.process.poll() is not None:
                        raise BenchError(f"{name} died:\n{server.log_tail()}")
                    result = run_wrk(
                        server.predict_url(model),
                        script_for(server.spec, scripts, scenario),
                        connections,
                        settings.seconds,
                    )
                    result.update(
                        server=name,
                        scenario=scenario,
                        connections=connections,
                        rows=count,
                        repeat=repeat,
                        load_average=os.getloadavg()[0],
                    )
                    runs.append(result)
                    progress.step(
                        f"repeat {repeat}/{settings.repeats}  {name:<17} "
                        f"{scenario:<18} c={connections:<3} {result['rps']:>9,.0f} req/s  "
                        f"p99 {result['p99_ms']:>8.2f} ms  errors {result['errors']}"
                    )
    rows, floor = summarize(runs, floors)
    return {
        "servers": [
            {
                "name": s.name,
                "argv": list(s.argv),
                "env": dict(s.env),
                "route": s.route,
                "models": None if s.models is None else sorted(s.models),
            }
            for s in specs
        ],
        "before": None
        if before is None
        else {
            "revision": before.revision,
            "commit": before.commit,
            "models": sorted(before.models),
        },
        "runs": runs,
        "floor_runs": floors,
        "summary": rows,
        "floor": floor,
    }


# ---------------------------------------------------------------------------------------------
# Protocols (issue 13): V2 REST against gRPC, this server's and MLServer's
# ---------------------------------------------------------------------------------------------

#: The protocol comparison: these scenarios at these connection counts, each over this
#: server's V2 REST (wrk, JSON tensors), its gRPC and MLServer's gRPC (h2load, the same
#: ModelInferRequest with raw contents, as tritonclient.grpc sends it).
PROTOCOL_SCENARIOS = ("iris_1", "breast_cancer_100")
PROTOCOL_CONNECTIONS = (8,)
#: The servers of the comparison, in the order of the table.
PROTOCOL_SERVERS = ("app v2 rest", "app grpc", "mlserver grpc")
#: This server's profile serving both, gRPC on: the scikit-learn runtime, as MLServer runs the
#: same model.joblib files with scikit-learn, so that only the protocols differ.
PROTOCOL_PROFILE = SKLEARN_PROFILE
#: h2load threads (at most one per connection); every stream waits for its answer (-m1).
H2LOAD_THREADS = 2
GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"
#: MLServer, in a virtualenv of its own (its pins, FastAPI below 0.116 among them, are not this
#: project's), with its scikit-learn runtime and this one's scikit-learn version so that it
#: loads the same model.joblib files; adaptive batching on, its inference pool of 2 workers.
MLSERVER_VERSION = "1.7.1"
MLSERVER_VENV = WORK / "mlserver-venv"
MLSERVER_BATCHING = {"max_batch_size": 32, "max_batch_time": 0.005}
MLSERVER_PARALLEL_WORKERS = 2


def grpc_frame(model: str, rows: Any) -> bytes:
    """Return one gRPC message frame (a 0 byte, the length as 4 big-endian bytes, the
    message; gRPC's "Length-Prefixed-Message") of a ModelInferRequest for ``rows``: one FP64
    tensor ``input-0`` of shape ``[N, n_features]`` in raw contents, output ``predict``."""
    from inference_app.grpc import grpc_predict_v2_pb2 as pb

    array = np.ascontiguousarray(rows, dtype="<f8")
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="input-0", datatype="FP64", shape=list(array.shape))
    request.raw_input_contents.append(array.tobytes())
    request.outputs.add(name="predict")
    message = request.SerializeToString()
    return b"\x00" + len(message).to_bytes(4, "big") + message


def v2_body(rows: Any) -> str:
    """Return a V2 REST inference body for ``rows``: ``input-0`` ``[N, n_features]`` FP64,
    its data flat, output ``predict``."""
    array = np.asarray(rows, dtype=np.float64)
    return json.dumps(
        {
            "inputs": [
                {
                    "name": "input-0",
                    "shape": list(array.shape),
                    "datatype": "FP64",
                    "data": array.ravel().tolist(),
                }
            ],
            "outputs": [{"name": "predict"}],
        },
        separators=(",", ":"),
    )


def parse_h2load(text: str, durations_us: Sequence[float]) -> dict[str, Any]:
    """Parse h2load's report, with the request durations of its ``--log-file``.

    :returns: ``requests`` (done), ``duration_s``, ``rps``, ``p50_ms``, ``p99_ms``,
        ``failed``, ``errored``, ``timeout``, ``non_2xx`` and ``errors`` (their sum; a gRPC
        error answers HTTP 200, so it is counted apart, see :func:`run_h2load`).
    :raises ValueError: the text is not an h2load report.
    """
    finished = re.search(r"^finished in ([\d.]+)(us|ms|s|m|h), ([\d.]+) req/s", text, re.M)
    requests = re.search(
        r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        text,
        re.M,
    )
    codes = re.search(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text, re.M)
    if not finished or not requests or not codes:
        raise ValueError(f"not an h2load report:\n{text}")
    done, failed, errored, timeout = (int(requests.group(i)) for i in (3, 5, 6, 7))
    non_2xx = sum(int(codes.group(i)) for i in (2, 3, 4))
    ordered = sorted(durations_us)

    def percentile(share: float) -> float:
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))] / 1e3

    return {
        "requests": done,
        "duration_s": _ms(finished.group(1), finished.group(2)) / 1e3,
        "rps": float(finished.group(3)),
        "p50_ms": percentile(0.50),
        "p99_ms": percentile(0.99),
        "failed": failed,
        "errored": errored,
        "timeout": timeout,
        "non_2xx": non_2xx,
        "errors": failed + errored + timeout + non_2xx,
    }


def run_h2load(url: str, frame: Path, connections: int, seconds: int) -> dict[str, Any]:
    """POST ``frame`` as a gRPC call to ``url`` over ``connections`` HTTP/2 connections (h2c,
    one call at a time on each) for ``seconds``; return :func:`parse_h2load` and the command.

    :raises BenchError: h2load failed or did not finish.
    """
    log = frame.with_suffix(".h2load.tsv")
    argv = [
        "h2load",
        f"-c{connections}",
        "-m1",
        f"-t{min(H2LOAD_THREADS, connections)}",
        f"-D{seconds}",
        "-d",
        str(frame),
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        f"--log-file={log}",
        url,
    ]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=seconds + 60, check=False
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"h2load did not finish: {' '.join(argv)}") from None
    if done.returncode != 0:
        raise BenchError(f"h2load failed ({done.returncode}): {done.stderr or done.stdout}")
    durations = [float(line.split("\t")[2]) for line in log.read_text().splitlines() if line]
    log.unlink()
    result = parse_h2load(done.stdout, durations)
    if not result["requests"]:
        raise BenchError(f"h2load got no answer from {url}:\n{done.stdout[-2000:]}")
    result["command"] = " ".join([*argv[:-2], url])
    return result


def grpc_errors(server: Running) -> float:
    """Return the gRPC error answers this server has counted (``/metrics``)."""
    status, body = http("GET", server.url + "/metrics")
    if status != 200:
        raise BenchError(f"{server.spec.name} /metrics answered {status}")
    return sum(
        float(value)
        for value in re.findall(
            r'^inference_app_errors_total\{[^}]*protocol="grpc"[^}]*\} ([\d.e+]+)$',
            body.decode(),
            re.M,
        )
    )


def check_grpc_predictions(address: str, model: str, rows: Any, estimator: Any, name: str) -> None:
    """Check that tritonclient.grpc gets ``estimator.predict(rows)`` from ``address``.

    :raises BenchError: an error answer or different predictions.
    """
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(address)
    try:
        array = np.asarray(rows, dtype=np.float64)
        tensor = grpcclient.InferInput("input-0", list(array.shape), "FP64")
        tensor.set_data_from_numpy(array)
        result = client.infer(model, [tensor], outputs=[grpcclient.InferRequestedOutput("predict")])
        labels = result.as_numpy("predict").ravel().tolist()  # MLServer's shape is [N, 1]
        got = [v.decode() if isinstance(v, bytes) else v for v in labels]
    except InferenceServerException as error:
        raise BenchError(f"{name} answered {model} over gRPC with {error}") from None
    finally:
        client.close()
    expected = estimator.predict(rows).tolist()
    if got != expected:
        raise BenchError(f"{name} predicts {got[:5]}... for {model}, expected {expected[:5]}...")


def mlserver_spec(
    models: Mapping[str, Path], grpc_port: int, name: str = "mlserver grpc"
) -> ServerSpec | None:
    """Return MLServer serving ``models`` (name: model.joblib) with adaptive batching, or
    ``None`` when its virtualenv is missing (``make bench`` makes it)."""
    binary = MLSERVER_VENV / "bin" / "mlserver"
    if not binary.exists():
        return None
    folder = WORK / "mlserver-models"
    for model, path in models.items():
        (folder / model).mkdir(parents=True, exist_ok=True)
        settings = {
            "name": model,
            "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": str(path), "version": "1"},
            **MLSERVER_BATCHING,
        }
        (folder / model / "model-settings.json").write_text(json.dumps(settings, indent=2))
    return ServerSpec(
        name=name,
        argv=(str(binary), "start", str(folder)),
        env={
            "MLSERVER_HOST": "127.0.0.1",
            "MLSERVER_HTTP_PORT": "{port}",
            "MLSERVER_GRPC_PORT": str(grpc_port),
            "MLSERVER_METRICS_PORT": str(free_port()),
            "MLSERVER_PARALLEL_WORKERS": str(MLSERVER_PARALLEL_WORKERS),
        },
        cwd=folder,
        route="/v2/models/{model}/infer",
        ready_path="/v2/health/ready",
        models=frozenset(models),
        protocol="v2",
    )


def run_protocols(settings: Settings) -> dict[str, Any]:
    """Measure V2 REST against gRPC on this server, and MLServer's gRPC, in the same run.

    Each repeat measures, scenario by scenario, the servers back to back (in reverse order
    on even repeats). ``x v2 rest`` is the median over repeats of each repeat's ratio to this
    server's V2 REST req/s.
    """
    if subprocess.run(["sh", "-c", "command -v h2load"], capture_output=True).returncode:
        raise BenchError(
            "h2load is not installed: run `make bench`, or apt-get install nghttp2-client"
        )
    instance = WORK / "instance"
    if not (instance / "models").exists():
        demo_bundles(instance)
    scenarios = {name: SCENARIOS[name] for name in PROTOCOL_SCENARIOS}
    models = {s.model for s in scenarios.values()}
    files = {m: instance / "models" / m / "1" / "model.joblib" for m in models}
    estimators = {m: joblib.load(path) for m, path in files.items()}
    scripts = WORK / "scripts"
    scripts.mkdir(parents=True, exist_ok=True)
    rows = {name: scenario_rows(s.model, s.rows, s.start) for name, s in scenarios.items()}
    for name, scenario in scenarios.items():
        (scripts / f"v2_{name}.lua").write_text(lua_script(v2_body(rows[name])))
        (scripts / f"grpc_{name}.bin").write_bytes(grpc_frame(scenario.model, rows[name]))
    app_grpc, mlserver_grpc = free_port(), free_port()
    app = app_spec(
        "app grpc",
        {
            **PROFILES[PROTOCOL_PROFILE],
            "INFERENCE_APP_GRPC_PORT": str(app_grpc),
            # A connection's graceful end (GOAWAY) at its maximum age makes h2load fail the
            # streams it had sent past it; gRPC clients send those again by themselves.
            "INFERENCE_APP_GRPC_MAX_CONNECTION_AGE_S": "3600",
        },
        instance,
    )
    specs = [app]
    mlserver = mlserver_spec(files, mlserver_grpc)
    if mlserver is None:
        print(f"MLServer is not installed in {MLSERVER_VENV}: `make bench` installs it", flush=True)
    else:
        specs.append(mlserver)
    grpc_address = {
        "app grpc": f"127.0.0.1:{app_grpc}",
        "mlserver grpc": f"127.0.0.1:{mlserver_grpc}",
    }
    runs: list[dict[str, Any]] = []
    with serving(specs, WORK / "logs") as servers:
        by_name = {server.spec.name: server for server in servers}
        for server in servers:
            probe = (server.predict_url("iris"), v2_body(rows["iris_1"]).encode())
            wait_ready(server, probe, timeout=START_TIMEOUT * 2)
            for name, scenario in scenarios.items():
                check_grpc_predictions(
                    grpc_address[server.spec.name],
                    scenario.model,
                    rows[name],
                    estimators[scenario.model],
                    server.spec.name,
                )
            print(f"  {server.spec.name} ready, gRPC predictions checked", flush=True)
        app_server = by_name["app grpc"]
        for name, scenario in scenarios.items():  # this server's V2 REST answers too
            status, body = http(
                "POST",
                f"{app_server.url}/v2/models/{scenario.model}/infer",
                v2_body(rows[name]).encode(),
            )
            expected = estimators[scenario.model].predict(rows[name]).tolist()
            if status != 200 or json.loads(body)["outputs"][0]["data"] != expected:
                raise BenchError(f"app v2 rest answered {status} for {name}: {body[:300]!r}")
        plan = [
            (server, name, count)
            for name in scenarios
            for count in PROTOCOL_CONNECTIONS
            for server in PROTOCOL_SERVERS
            if server != "mlserver grpc" or mlserver is not None
        ]
        for name, _ in scenarios.items():  # warm every worker up
            run_wrk(
                f"{app_server.url}/v2/models/{scenarios[name].model}/infer",
                scripts / f"v2_{name}.lua",
                8,
                1,
            )
            for server in by_name:
                run_h2load(
                    f"http://{grpc_address[server]}{GRPC_INFER}", scripts / f"grpc_{name}.bin", 8, 1
                )
        progress = Progress(total=len(plan) * settings.repeats)
        for repeat in range(1, settings.repeats + 1):
            order = (
                plan
                if repeat % 2
                else [
                    item
                    for name in scenarios
                    for item in reversed([p for p in plan if p[1] == name])
                ]
            )
            for server, name, count in order:
                scenario = scenarios[name]
                if server == "app v2 rest":
                    result = run_wrk(
                        f"{app_server.url}/v2/models/{scenario.model}/infer",
                        scripts / f"v2_{name}.lua",
                        count,
                        settings.seconds,
                    )
                else:
                    before = grpc_errors(app_server) if server == "app grpc" else 0.0
                    result = run_h2load(
                        f"http://{grpc_address[server]}{GRPC_INFER}",
                        scripts / f"grpc_{name}.bin",
                        count,
                        settings.seconds,
                    )
                    if server == "app grpc":
                        result["grpc_errors"] = grpc_errors(app_server) - before
                        result["errors"] += result["grpc_errors"]
                for spec_name, running in by_name.items():
                    if running.process.poll() is not None:
                        raise BenchError(f"{spec_name} died:\n{running.log_tail()}")
                result.update(
                    server=server,
                    scenario=name,
                    connections=count,
                    rows=scenario.rows,
                    repeat=repeat,
                    load_average=os.getloadavg()[0],
                )
                runs.append(result)
                progress.step(
                    f"repeat {repeat}/{settings.repeats}  {server:<14} {name:<18} c={count:<3} "
                    f"{result['rps']:>9,.0f} req/s  p99 {result['p99_ms']:>8.2f} ms  "
                    f"errors {result['errors']:g}"
                )
    return {
        "protocol_servers": [
            {"name": s.name, "argv": list(s.argv), "env": dict(s.env)} for s in specs
        ],
        "protocol_runs": runs,
        "protocol_summary": summarize_protocols(runs),
        "mlserver": None
        if mlserver is None
        else {
            "version": MLSERVER_VERSION,
            **MLSERVER_BATCHING,
            "parallel_workers": MLSERVER_PARALLEL_WORKERS,
        },
    }


def summarize_protocols(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Return a row per server, scenario and connection count: medians over repeats, and
    ``vs_v2_rest``, the median of each repeat's ratio to ``app v2 rest``'s req/s."""
    groups: dict[tuple[str, str, int], list[Mapping[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["server"], run["scenario"], run["connections"]), []).append(run)
    rows = []
    for (server, scenario, connections), mine in groups.items():
        reference = {
            r["repeat"]: r["rps"] for r in groups.get(("app v2 rest", scenario, connections), [])
        }
        ratios = [ratio(r["rps"], reference.get(r["repeat"])) for r in mine]
        found = [value for value in ratios if value is not None]
        rows.append(
            {
                "server": server,
                "scenario": scenario,
                "connections": connections,
                "rows_per_request": mine[0]["rows"],
                "rps": median(r["rps"] for r in mine),
                "rows_per_s": median(r["rps"] for r in mine) * mine[0]["rows"],
                "p50_ms": median(r["p50_ms"] for r in mine),
                "p99_ms": median(r["p99_ms"] for r in mine),
                "errors": median(r["errors"] for r in mine),
                "errors_total": sum(r["errors"] for r in mine),
                "vs_v2_rest": median(found) if found else None,
                "repeats": len(mine),
            }
        )
    order = {name: index for index, name in enumerate(PROTOCOL_SERVERS)}
    rows.sort(
        key=lambda r: (
            PROTOCOL_SCENARIOS.index(r["scenario"]),
            r["connections"],
            order.get(r["server"], 99),
        )
    )
    return rows


def format_protocols(rows: Sequence[Mapping[str, Any]]) -> str:
    """Return the protocol comparison as a Markdown table."""
    lines = [
        "| scenario | conn | server | req/s | rows/s | p50 ms | p99 ms | errors | x v2 rest |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scenario']} | {r['connections']} | {r['server']} | {r['rps']:,.0f} | "
            f"{r['rows_per_s']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['errors']:g} | {_x(r['vs_v2_rest'])} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Memory (issue 6, item 5)
# ---------------------------------------------------------------------------------------------


def forest_bundle(models_dir: Path) -> Path:
    """Write (once) a RandomForestClassifier bundle of about :data:`MEMORY_TARGET_MIB` MiB.

    The forest is fitted on a noisy synthetic dataset so its trees grow deep; the number of
    trees is chosen from the size of a small probe forest.

    :returns: the bundle's ``model.joblib``.
    :raises BenchError: the file is not within :data:`MEMORY_RANGE_MIB`.
    """
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    from inference_app.core.bundle import JOBLIB_FILE, MANIFEST_FILE, ONNX_FILE, write_bundle

    folder = models_dir / "forest" / "1"
    low, high = MEMORY_RANGE_MIB
    path = folder / JOBLIB_FILE
    if (
        (folder / MANIFEST_FILE).exists()
        and (folder / ONNX_FILE).exists()
        and low <= path.stat().st_size / MIB <= high
    ):
        return path
    rows, target = make_classification(
        n_samples=20_000, n_features=20, n_informative=12, flip_y=0.3, random_state=0
    )
    probe = RandomForestClassifier(n_estimators=8, n_jobs=-1, random_state=0).fit(rows, target)
    per_tree = len(joblib_bytes(probe)) / 8
    trees = min(2000, max(8, round(MEMORY_TARGET_MIB * MIB / per_tree)))
    print(f"Fitting a {trees}-tree forest (~{per_tree / MIB:.2f} MiB a tree)...", flush=True)
    forest = RandomForestClassifier(n_estimators=trees, n_jobs=-1, random_state=0)
    forest.fit(rows, target)
    forest.set_params(n_jobs=None)
    # With its ONNX conversion, as `package` writes it by default.
    write_bundle(forest, rows[:2000], models_dir, "forest", "1", overwrite=True, onnx=True)
    size = path.stat().st_size / MIB
    if not low <= size <= high:
        raise BenchError(f"the forest bundle is {size:.0f} MiB, not within {low}-{high} MiB")
    return path


def joblib_bytes(estimator: Any) -> bytes:
    """Return ``estimator`` serialized by ``joblib.dump``, as a bundle stores it."""
    import io

    buffer = io.BytesIO()
    joblib.dump(estimator, buffer)
    return buffer.getvalue()


def smaps_rollup(pid: int) -> dict[str, int]:
    """Return the ``Rss`` and ``Pss`` (and other) totals of a process, in KiB."""
    totals = {}
    text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    for key, value in re.findall(r"^(\w+):\s+(\d+) kB", text, re.M):
        totals[key] = int(value)
    return totals


def children(pid: int) -> list[int]:
    """Return the pids of the direct children of ``pid``."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found.extend(int(n) for n in (task / "children").read_text().split())
        except FileNotFoundError:
            continue
    return sorted(set(found))


def measure_memory_once(instance: Path, preload: bool, rows: np.ndarray) -> dict[str, Any]:
    """Serve the forest with :data:`MEMORY_WORKERS` workers and ``preload_app`` as given;
    once every worker is warm and has answered predictions, sum the PSS of the master and
    its workers."""
    spec = ServerSpec(
        name=f"memory-preload-{'on' if preload else 'off'}",
        argv=(str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"),
        env={
            "GUNICORN_BIND": "127.0.0.1:{port}",
            "GUNICORN_WORKERS": str(MEMORY_WORKERS),
            "GUNICORN_PRELOAD_APP": "true" if preload else "false",
            "GUNICORN_TIMEOUT": "120",
            "INFERENCE_APP_INSTANCE_PATH": str(instance),
            "INFERENCE_APP_GRPC_PORT": "0",
        },
        cwd=REPO,
        route="/v1/models/{model}:predict",
        ready_path="/health/ready",
    )
    with serving([spec], WORK / "logs") as (server,):
        begin = time.monotonic()
        wait_ready(server, ("", b""), timeout=MEMORY_START_TIMEOUT)

        def all_warm() -> bool:
            return (
                len(children(server.process.pid)) >= MEMORY_WORKERS
                and server.log_tail(10_000).count("warmed its models") >= MEMORY_WORKERS
            )

        warm = wait_until(all_warm, MEMORY_START_TIMEOUT, interval=0.5)
        started_s = time.monotonic() - begin
        body = request_body(rows).encode()
        url = server.predict_url("forest")
        with ThreadPoolExecutor(max_workers=2 * MEMORY_WORKERS) as pool:
            statuses = list(pool.map(lambda _: http("POST", url, body)[0], range(40)))
        if set(statuses) != {200}:
            raise BenchError(f"forest predictions answered {statuses}:\n{server.log_tail()}")
        time.sleep(1)
        master = server.process.pid
        workers = children(master)
        master_mem = smaps_rollup(master)
        worker_mem = [smaps_rollup(pid) for pid in workers]
    total_pss = master_mem["Pss"] + sum(w["Pss"] for w in worker_mem)
    one_pss = max(w["Pss"] for w in worker_mem)
    one_rss = max(w["Rss"] for w in worker_mem)
    return {
        "preload": preload,
        "workers": len(workers),
        "all_workers_warm": warm,
        "start_s": round(started_s, 1),
        "master_pss_mib": master_mem["Pss"] / 1024,
        "master_rss_mib": master_mem["Rss"] / 1024,
        "worker_pss_mib": [w["Pss"] / 1024 for w in worker_mem],
        "worker_rss_mib": [w["Rss"] / 1024 for w in worker_mem],
        "total_pss_mib": total_pss / 1024,
        "one_worker_pss_mib": one_pss / 1024,
        "one_worker_rss_mib": one_rss / 1024,
        "ratio_total_pss_to_worker_pss": total_pss / one_pss,
        "ratio_total_pss_to_worker_rss": total_pss / one_rss,
    }


def _trickle(port: int, seconds: float) -> int:
    """Open a connection, send a request line, then one header line a second for
    ``seconds``; return the header lines sent."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT) as sock:
        sock.sendall(b"POST /v1/models/iris:predict HTTP/1.1\r\nHost: slow\r\n")
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(1.0)
            try:
                sock.sendall(f"X-Slow-{sent}: {sent}\r\n".encode())
            except OSError:  # the server may close a socket it finds too slow
                break
            sent += 1
    return sent


def run_slow_clients(settings: Settings) -> dict[str, Any]:
    """Serve the defaults (``app:default``) alone, straight from Gunicorn; measure
    :data:`SLOW_SCENARIO` with wrk for :data:`SLOW_SECONDS`, with and without
    :data:`SLOW_SOCKETS` sockets trickling header lines, alternately ``repeats`` times."""
    instance = WORK / "instance"
    demo_bundles(instance)
    model, count, start = SCENARIOS[SLOW_SCENARIO]
    rows = scenario_rows(model, count, start)
    script = WORK / "scripts" / f"{SLOW_SCENARIO}.lua"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(lua_script(request_body(rows)))
    (spec,) = server_specs(instance, names=["app:default"])
    runs: list[dict[str, Any]] = []
    with serving([spec], WORK / "logs") as (server,):
        wait_ready(server, (server.predict_url(model), request_body(rows).encode()))
        run_wrk(server.predict_url(model), script, SLOW_CONNECTIONS, 1)
        port = int(server.url.rsplit(":", 1)[1])
        for repeat in range(1, settings.repeats + 1):
            for slow in (False, True):
                with ThreadPoolExecutor(max_workers=SLOW_SOCKETS) as pool:
                    trickling = [
                        pool.submit(_trickle, port, SLOW_SECONDS + 2)
                        for _ in range(SLOW_SOCKETS if slow else 0)
                    ]
                    if slow:
                        time.sleep(1.5)  # connected, first header lines sent
                    result = run_wrk(
                        server.predict_url(model), script, SLOW_CONNECTIONS, SLOW_SECONDS
                    )
                    lines = [f.result() for f in trickling]
                result.update(slow=slow, repeat=repeat, header_lines=lines)
                runs.append(result)
                print(
                    f"  slow clients {'on ' if slow else 'off'} repeat {repeat}: "
                    f"{result['rps']:,.0f} req/s, max {result.get('max_ms', 0):,.0f} ms, "
                    f"errors {result['errors']}",
                    flush=True,
                )
    off = median(r["rps"] for r in runs if not r["slow"])
    on = median(r["rps"] for r in runs if r["slow"])
    return {
        "runs": runs,
        "rps_without": off,
        "rps_with": on,
        "ratio": on / off,
        "max_ms": max(r.get("max_ms", 0.0) for r in runs if r["slow"]),
    }


def run_memory() -> dict[str, Any]:
    """Measure the forest server's memory with ``preload_app`` on, then off."""
    instance = WORK / "memory-instance"
    path = forest_bundle(instance / "models")
    from inference_app.core.bundle import MANIFEST_FILE, Manifest

    manifest = Manifest.from_dict(json.loads((path.parent / MANIFEST_FILE).read_text()))
    rows = np.asarray(manifest.reference_rows, dtype=np.float64)
    result: dict[str, Any] = {"bundle_mib": path.stat().st_size / MIB}
    for preload in (True, False):
        print(f"Memory: {MEMORY_WORKERS} workers, preload_app={preload}...", flush=True)
        measured = measure_memory_once(instance, preload, rows)
        result["preload_on" if preload else "preload_off"] = measured
        print(
            f"  total PSS {measured['total_pss_mib']:.0f} MiB, one worker PSS "
            f"{measured['one_worker_pss_mib']:.0f} MiB / RSS {measured['one_worker_rss_mib']:.0f}"
            f" MiB",
            flush=True,
        )
    return result


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def format_table(rows: Sequence[Mapping[str, Any]], floor: Mapping[str, Mapping[str, Any]]) -> str:
    """Return the summary as a Markdown table, a floor line per scenario first.

    Ratio columns: each baseline measured, and ``x before`` when ``app:before`` was.
    """
    measured = {r["server"] for r in rows}
    baselines = [b for b in BASELINES if b in measured]
    before = BEFORE_SERVER in measured
    ratios = len(baselines) + before + 1
    lines = [
        "| scenario | conn | server | req/s | req/s min-max | rows/s | p50 ms | p99 ms | errors | "
        + "".join(f"x {b} | " for b in baselines)
        + ("x before | " if before else "")
        + "x floor |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|" + "---:|" * ratios,
    ]
    for scenario in SCENARIOS:
        if scenario in floor:
            f = floor[scenario]
            calls = f["rows_per_s"] / SCENARIOS[scenario].rows
            lines.append(
                f"| {scenario} | - | in-process floor | {calls:,.0f} | - | {f['rows_per_s']:,.0f}"
                f" | {f['call_us'] / 1e3:.3f} | - | - | " + "- | " * (ratios - 1) + "1.00x |"
            )
        for r in rows:
            if r["scenario"] != scenario:
                continue
            lines.append(
                f"| {scenario} | {r['connections']} | {r['server']} | {r['rps']:,.0f} | "
                f"{r['rps_min']:,.0f}-{r['rps_max']:,.0f} | "
                f"{r['rows_per_s']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                f"{r['errors']:g} | "
                + "".join(f"{_x(r['vs'][b])} | " for b in baselines)
                + (f"{_x(r.get('vs_before'))} | " if before else "")
                + f"{_x(r['vs_floor'])} |"
            )
    return "\n".join(lines)


def format_memory(memory: Mapping[str, Any]) -> str:
    """Return the memory results as a Markdown table."""
    lines = [
        f"Forest bundle: {memory['bundle_mib']:.0f} MiB (model.joblib), {MEMORY_WORKERS} workers",
        "",
        "| preload_app | total PSS MiB | master PSS | one worker PSS | one worker RSS | "
        "total / worker PSS | total / worker RSS |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key in ("preload_on", "preload_off"):
        if key in memory:
            m = memory[key]
            lines.append(
                f"| {'on' if m['preload'] else 'off'} | {m['total_pss_mib']:.0f} | "
                f"{m['master_pss_mib']:.0f} | {m['one_worker_pss_mib']:.0f} | "
                f"{m['one_worker_rss_mib']:.0f} | {m['ratio_total_pss_to_worker_pss']:.2f}x | "
                f"{m['ratio_total_pss_to_worker_rss']:.2f}x |"
            )
    return "\n".join(lines)


def format_targets(found: Sequence[Mapping[str, Any]]) -> str:
    """Return the targets as a Markdown table."""
    lines = ["| target | server | measured | met |", "|---|---|---:|---|"]
    for t in found:
        value = "-" if t["value"] is None else f"{t['value']:.2f}"
        met = {True: "yes", False: "**no**", None: "-"}[t["met"]]
        lines.append(f"| {t['target']} | {t['server']} | {value} | {met} |")
    return "\n".join(lines)


def plot(rows: Sequence[Mapping[str, Any]], floor: Mapping[str, Any], path: Path) -> None:
    """Draw rows/s against connections, one panel per scenario, one line per server."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = [s for s in SCENARIOS if any(r["scenario"] == s for r in rows)]
    counts = sorted({r["connections"] for r in rows})
    columns = min(4, max(1, len(scenarios)))
    lines = -(-max(1, len(scenarios)) // columns)
    figure, axes = plt.subplots(lines, columns, figsize=(5 * columns, 4.2 * lines), squeeze=False)
    for axis in axes.flat[len(scenarios) :]:
        axis.set_visible(False)
    for axis, scenario in zip(axes.flat, scenarios, strict=False):
        for server in dict.fromkeys(r["server"] for r in rows):
            mine = sorted(
                (r for r in rows if r["server"] == server and r["scenario"] == scenario),
                key=lambda r: r["connections"],
            )
            axis.plot(
                [r["connections"] for r in mine],
                [r["rows_per_s"] for r in mine],
                marker="o",
                label=server,
            )
        if scenario in floor:
            axis.axhline(
                floor[scenario]["rows_per_s"], color="grey", linestyle="--", label="in-process"
            )
        axis.set_xscale("log", base=2)
        axis.set_xticks(counts, [str(c) for c in counts])
        axis.set_yscale("log")
        axis.set_title(scenario)
        axis.set_xlabel("connections")
        axis.set_ylabel("rows/s (median, log scale)")
        axis.grid(alpha=0.3)
    axes.flat[0].legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def machine() -> dict[str, Any]:
    """Describe the machine and the versions measured."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("gunicorn", "flask", "scikit-learn", "numpy", "fastapi", "uvicorn"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    try:
        wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10)
        versions["wrk"] = (wrk.stdout or wrk.stderr).split("\n")[0].strip()
    except (OSError, subprocess.TimeoutExpired):
        versions["wrk"] = None
    git: dict[str, Any] = {}
    for key, command in (
        ("commit", ["rev-parse", "--short", "HEAD"]),
        ("changed", ["status", "--porcelain", "src", "gunicorn.conf.py", "wsgi.py"]),
    ):
        try:
            git[key] = subprocess.run(
                ["git", *command], cwd=REPO, capture_output=True, text=True, timeout=10
            ).stdout.rstrip()
        except (OSError, subprocess.TimeoutExpired):
            git[key] = None
    return {
        "cpus": len(os.sched_getaffinity(0)),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "commit": git["commit"],
        # Uncommitted changes to the server measured.
        "uncommitted": (git["changed"] or "").splitlines(),
        # Other work on the machine skews every number: compare with the number of CPUs.
        "load_average_at_start": list(os.getloadavg()),
        "versions": versions,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--memory", action="store_true", help="measure memory only")
    group.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    group.add_argument(
        "--protocols", action="store_true", help="compare V2 REST and gRPC only (and MLServer)"
    )
    parser.add_argument(
        "--no-protocols", action="store_true", help="skip the V2 REST against gRPC comparison"
    )
    parser.add_argument(
        "--no-slow-clients", action="store_true", help="skip the slow-client measurement"
    )
    args = parser.parse_args(argv)
    # Let SIGTERM unwind through the finally blocks that stop the servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    settings = Settings.from_env()
    started = dt.datetime.now(dt.UTC)
    results: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {
            "repeats": settings.repeats,
            "seconds": settings.seconds,
            "connections": list(settings.connections),
            "scenarios": {k: v._asdict() for k, v in settings.chosen_scenarios().items()},
            "servers": None if settings.servers is None else list(settings.servers),
            "before": settings.before,
            "profiles": PROFILES,
            "wrk_threads": WRK_THREADS,
            "floor_processes": FLOOR_PROCESSES,
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"Note: load average {load:.1f} before the start; other work skews the numbers.")
    stamp = started.strftime("%Y%m%dT%H%M%SZ")

    def save() -> None:
        results["targets"] = targets(
            results.get("summary", []), results.get("memory"), results.get("slow_clients")
        )
        results["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        results["machine"]["load_average_at_end"] = list(os.getloadavg())
        text = json.dumps(results, indent=2) + "\n"
        if args.protocols:  # a part of the bench: latest.json keeps the last whole run
            (RESULTS / f"protocols-{stamp}.json").write_text(text)
            return
        (RESULTS / f"{stamp}.json").write_text(text)
        (RESULTS / "latest.json").write_text(text)

    if subprocess.run(["sh", "-c", "command -v wrk"], capture_output=True).returncode:
        if not args.memory:
            print("wrk is not installed: run `make bench`, or apt-get install wrk", file=sys.stderr)
            return 2
    if args.protocols:
        args.no_memory = True
    if not args.memory and not args.protocols:
        results.update(run_throughput(settings))
        save()  # kept even if the memory measurement fails
        print(
            f"\nMedians of {settings.repeats} repeat(s) of {settings.seconds} s, "
            f"{results['machine']['cpus']} CPUs:\n"
        )
        print(format_table(results["summary"], results["floor"]))
        for r in results["runs"]:
            if r["errors"]:
                print(
                    f"  errors: {r['server']} {r['scenario']} c={r['connections']} repeat "
                    f"{r['repeat']}: {r['socket_errors']} socket, {r['non_2xx']} non-2xx"
                )
        plot(results["summary"], results["floor"], RESULTS / "throughput.png")
        print(f"\nPlot: {RESULTS / 'throughput.png'}\n")
    if not args.memory and not args.protocols and not args.no_slow_clients:
        print(f"\nSlow clients: {SLOW_SOCKETS} sockets trickling headers, {SLOW_SCENARIO}:")
        results["slow_clients"] = run_slow_clients(settings)
        save()
    if not args.memory and not args.no_protocols:
        results.update(run_protocols(settings))
        save()
        print(
            f"\nV2 REST against gRPC, medians of {settings.repeats} repeat(s) of "
            f"{settings.seconds} s:\n"
        )
        print(format_protocols(results["protocol_summary"]))
    if not args.no_memory:
        results["memory"] = run_memory()
        save()
        print()
        print(format_memory(results["memory"]))
    if results["targets"] and not args.protocols:
        print()
        print(format_targets(results["targets"]))
    if args.protocols:
        print(f"\nResults: {RESULTS / f'protocols-{stamp}.json'}")
    else:
        print(f"\nResults: {RESULTS / f'{stamp}.json'} (and latest.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
