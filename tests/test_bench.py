"""The benchmark harness's pure parts (``bench/run.py``) and the two baseline apps.

Nothing here starts a server or runs wrk.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import joblib
import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"

# Real wrk 4.1.0 reports, captured from runs against the bench's servers on 127.0.0.1.
WRK_OK = """\
Running 2s test @ http://127.0.0.1:48195/predict/iris
  1 threads and 1 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     0.94ms    0.91ms   9.72ms   93.17%
    Req/Sec     1.13k   265.80     1.56k    60.00%
  Latency Distribution
     50%  651.00us
     75%    0.91ms
     90%    1.39ms
     99%    5.24ms
  2248 requests in 2.00s, 377.74KB read
Requests/sec:   1123.72
Transfer/sec:    188.82KB
"""
WRK_NON_2XX = """\
Running 1s test @ http://127.0.0.1:50571/v1/models/iris:predict
  2 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    25.22ms    5.86ms  44.00ms   70.19%
    Req/Sec   156.00     18.56   190.00     70.00%
  Latency Distribution
     50%   25.04ms
     75%   28.57ms
     90%   32.81ms
     99%   39.62ms
  312 requests in 1.00s, 195.61KB read
  Non-2xx or 3xx responses: 312
Requests/sec:    310.47
Transfer/sec:    194.65KB
"""
WRK_TIMEOUTS = """\
Running 3s test @ http://127.0.0.1:45315/predict/breast_cancer
  2 threads and 400 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   487.70ms  279.21ms 996.20ms   59.26%
    Req/Sec   141.91     70.48   280.00     71.43%
  Latency Distribution
     50%  453.96ms
     75%  727.80ms
     90%  893.36ms
     99%  991.42ms
  534 requests in 3.04s, 657.07KB read
  Socket errors: connect 0, read 0, write 0, timeout 345
Requests/sec:    175.41
Transfer/sec:    215.84KB
"""


def load(path: Path, name: str) -> ModuleType:
    """Import the file at ``path`` as a fresh module called ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """``bench/run.py``, imported (it does nothing at import)."""
    return load(BENCH / "run.py", "bench_run")


def test_parse_wrk_report(bench: ModuleType) -> None:
    result = bench.parse_wrk(WRK_OK)
    assert result["requests"] == 2248
    assert result["duration_s"] == pytest.approx(2.0)
    assert result["rps"] == pytest.approx(1123.72)
    assert result["p50_ms"] == pytest.approx(0.651)
    assert result["p75_ms"] == pytest.approx(0.91)
    assert result["p90_ms"] == pytest.approx(1.39)
    assert result["p99_ms"] == pytest.approx(5.24)
    assert (result["socket_errors"], result["non_2xx"], result["errors"]) == (0, 0, 0)


def test_parse_wrk_counts_non_2xx(bench: ModuleType) -> None:
    result = bench.parse_wrk(WRK_NON_2XX)
    assert result["non_2xx"] == 312
    assert result["socket_errors"] == 0
    assert result["errors"] == 312
    assert result["p99_ms"] == pytest.approx(39.62)


def test_parse_wrk_counts_socket_errors(bench: ModuleType) -> None:
    result = bench.parse_wrk(WRK_TIMEOUTS)
    assert result["timeout_errors"] == 345
    assert result["connect_errors"] == result["read_errors"] == result["write_errors"] == 0
    assert result["errors"] == 345
    assert result["duration_s"] == pytest.approx(3.04)
    assert result["p50_ms"] == pytest.approx(453.96)


@pytest.mark.parametrize(
    ("text", "unit", "ms"),
    [("1.50us", "us", 0.0015), ("2.00s", "s", 2000.0), ("1.00m", "m", 60_000.0)],
)
def test_parse_wrk_time_units(bench: ModuleType, text: str, unit: str, ms: float) -> None:
    report = WRK_OK.replace("5.24ms", text)
    assert bench.parse_wrk(report)["p99_ms"] == pytest.approx(ms)


@pytest.mark.parametrize("text", ["", "unable to connect to 127.0.0.1:9 Connection refused"])
def test_parse_wrk_rejects_other_text(bench: ModuleType, text: str) -> None:
    with pytest.raises(ValueError, match="not a wrk report"):
        bench.parse_wrk(text)


def test_parse_wrk_needs_latency(bench: ModuleType) -> None:
    without = re.sub(r"\s+\d+%\s+\S+\n", "\n", WRK_OK)
    with pytest.raises(ValueError, match="--latency"):
        bench.parse_wrk(without)


def test_median_and_ratio(bench: ModuleType) -> None:
    assert bench.median([3, 1, 2]) == 2
    assert bench.median([4, 1, 3, 2]) == 2.5
    assert bench.ratio(300.0, 200.0) == 1.5
    assert bench.ratio(1.0, 0.0) is None
    assert bench.ratio(None, 2.0) is None
    assert bench.ratio(1.0, None) is None


def _run(server: str, rps: float, p99: float, errors: int = 0, rows: int = 1) -> dict:
    return {
        "server": server,
        "scenario": "s",
        "connections": 8,
        "rows": rows,
        "rps": rps,
        "p50_ms": p99 / 2,
        "p99_ms": p99,
        "errors": errors,
    }


def test_summarize_takes_medians_and_ratios(bench: ModuleType) -> None:
    runs = [
        _run("seed_flask", 100, 10),
        _run("seed_flask", 300, 30),
        _run("seed_flask", 200, 20),
        _run("seed_fastapi", 400, 5),
        _run("app:best", 800, 4, errors=3),
        _run("app:best", 600, 2),
        _run("app:best", 700, 3),
    ]
    floors = [
        {"scenario": "s", "rows_per_s": 1000.0, "call_us": 90.0},
        {"scenario": "s", "rows_per_s": 1400.0, "call_us": 70.0},
    ]
    rows, floor = bench.summarize(runs, floors)
    assert floor["s"] == {
        "rows_per_s": 1400.0,
        "call_us": 70.0,
        "rows_per_s_median": 1200.0,
        "repeats": 2,
    }
    by_server = {row["server"]: row for row in rows}
    assert list(by_server) == ["seed_flask", "seed_fastapi", "app:best"]
    best = by_server["app:best"]
    assert (best["rps"], best["p99_ms"], best["p50_ms"]) == (700, 3, 1.5)
    assert (best["rps_min"], best["rps_max"]) == (600, 800)
    assert (best["errors"], best["errors_total"], best["repeats"]) == (0, 3, 3)
    assert best["vs"] == {"seed_flask": 3.5, "seed_fastapi": 1.75}
    assert best["vs_floor"] == pytest.approx(700 / 1400)
    assert by_server["seed_flask"]["vs"]["seed_flask"] == 1.0


def test_summarize_counts_rows_per_request(bench: ModuleType) -> None:
    run = {**_run("app:best", 50, 9, rows=100), "scenario": "breast_cancer_100"}
    rows, _ = bench.summarize([run], [])
    assert rows[0]["rows_per_s"] == 5000
    assert rows[0]["vs"] == {"seed_flask": None, "seed_fastapi": None}
    assert rows[0]["vs_floor"] is None
    assert "| breast_cancer_100 | 8 | app:best | 50 | 50-50 | 5,000 | 4.50 | 9.00 | 0 |" in (
        bench.format_table(rows, {})
    )


def test_targets_compare_with_goals(bench: ModuleType) -> None:
    rows, _ = bench.summarize(
        [
            {**_run("seed_flask", 100, 10), "scenario": "iris_1"},
            {**_run("seed_fastapi", 200, 10), "scenario": "iris_1"},
            {**_run("app:best", 150, 10), "scenario": "iris_1"},
        ],
        [],
    )
    found = {t["target"]: t for t in bench.targets(rows, None) if t["server"] == "app:best"}
    assert found["iris 1 row, 8 conn: >= 1.3x seed_flask"]["met"] is True
    assert found["iris 1 row, 8 conn: >= 1.0x seed_fastapi"]["met"] is False
    assert found["iris 1 row, 8 conn: >= 1.0x seed_fastapi"]["value"] == 0.75


def _lua_body(script: str) -> str:
    match = re.search(r"wrk\.body = \[(=+)\[(.*)\]\1\]\n", script, re.S)
    assert match, script
    return match.group(2)


@pytest.mark.parametrize(("model", "count"), [("iris", 1), ("breast_cancer", 100)])
def test_lua_script_posts_the_rows(bench: ModuleType, model: str, count: int) -> None:
    rows = bench.scenario_rows(model, count)
    script = bench.lua_script(bench.request_body(rows))
    assert 'wrk.method = "POST"' in script
    assert 'wrk.headers["Content-Type"] = "application/json"' in script
    body = json.loads(_lua_body(script))
    assert list(body) == ["instances"]
    assert np.array_equal(np.asarray(body["instances"]), rows)
    assert np.asarray(body["instances"]).shape == (count, 4 if model == "iris" else 30)


def test_lua_script_long_bracket_never_closes_early(bench: ModuleType) -> None:
    body = '{"a": "]=]", "b": "]==]"}'
    script = bench.lua_script(body)
    assert "[===[" in script
    assert _lua_body(script) == body


def test_settings_from_env(bench: ModuleType) -> None:
    assert bench.Settings.from_env({}) == bench.Settings(repeats=3, seconds=5)
    assert bench.Settings.from_env({"BENCH_QUICK": "1", "BENCH_REPEATS": "9"}) == (
        bench.Settings(repeats=1, seconds=2)
    )
    assert bench.Settings.from_env({"BENCH_REPEATS": "5", "BENCH_SECONDS": "10"}) == (
        bench.Settings(repeats=5, seconds=10)
    )
    with pytest.raises(bench.BenchError):
        bench.Settings.from_env({"BENCH_REPEATS": "0"})


def test_http_refuses_other_hosts(bench: ModuleType) -> None:
    with pytest.raises(bench.BenchError, match="127.0.0.1"):
        bench.http("GET", "http://example.com/")


def _expected(demo_instance: Path, model: str, rows: np.ndarray) -> list:
    estimator = joblib.load(demo_instance / "models" / model / "1" / "model.joblib")
    return estimator.predict(rows).tolist()


@pytest.mark.parametrize(("model", "count"), [("iris", 3), ("breast_cancer", 100)])
def test_seed_flask_predicts(
    bench: ModuleType,
    demo_instance: Path,
    monkeypatch: pytest.MonkeyPatch,
    model: str,
    count: int,
) -> None:
    monkeypatch.setenv("BENCH_MODELS_DIR", str(demo_instance / "models"))
    seed = load(BENCH / "baselines" / "seed_flask.py", "seed_flask")
    rows = bench.scenario_rows(model, count)
    response = seed.app.test_client().post(f"/predict/{model}", json={"instances": rows.tolist()})
    assert response.status_code == 200
    assert response.get_json() == {"predictions": _expected(demo_instance, model, rows)}


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient` is deprecated")
@pytest.mark.parametrize(("model", "count"), [("iris", 3), ("breast_cancer", 100)])
def test_seed_fastapi_predicts(
    bench: ModuleType,
    demo_instance: Path,
    monkeypatch: pytest.MonkeyPatch,
    model: str,
    count: int,
) -> None:
    pytest.importorskip("fastapi", reason="fastapi is a bench requirement (the bench extra)")
    if importlib.util.find_spec("httpx2") is None:
        pytest.importorskip("httpx", reason="TestClient needs httpx2 (the bench extra)")
    from fastapi.testclient import TestClient

    monkeypatch.setenv("BENCH_MODELS_DIR", str(demo_instance / "models"))
    seed = load(BENCH / "baselines" / "seed_fastapi.py", "seed_fastapi")
    rows = bench.scenario_rows(model, count)
    with TestClient(seed.app) as client:
        response = client.post(f"/predict/{model}", json={"instances": rows.tolist()})
    assert response.status_code == 200
    assert response.json() == {"predictions": _expected(demo_instance, model, rows)}
