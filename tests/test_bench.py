"""The benchmark harness's pure parts (``bench/run.py``) and the three baseline apps.

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
import pandas as pd
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
    assert result["max_ms"] == pytest.approx(9.72)
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
    assert best["vs"] == {
        "seed_flask": 3.5,
        "seed_fastapi": 1.75,
        "seed_flask_pandas": None,
        "mlserver": None,
        "bare_wsgi": None,
    }
    assert best["vs_before"] is None
    assert best["vs_before_paired"] is None
    assert best["vs_floor"] == pytest.approx(700 / 1400)
    assert by_server["seed_flask"]["vs"]["seed_flask"] == 1.0


def test_summarize_counts_rows_per_request(bench: ModuleType) -> None:
    run = {**_run("app:best", 50, 9, rows=100), "scenario": "breast_cancer_100"}
    rows, _ = bench.summarize([run], [])
    assert rows[0]["rows_per_s"] == 5000
    assert set(rows[0]["vs"].values()) == {None}
    assert rows[0]["vs_floor"] is None
    assert "| breast_cancer_100 | 8 | app:best | 50 | 50-50 | 5,000 | 4.50 | 9.00 | 0 |" in (
        bench.format_table(rows, {})
    )


def test_targets_compare_with_goals(bench: ModuleType) -> None:
    rows, _ = bench.summarize(
        [
            {**_run("seed_flask", 100, 10), "scenario": "iris_1"},
            {**_run("seed_fastapi", 300, 10), "scenario": "iris_1"},
            {**_run("app:default", 225, 10), "scenario": "iris_1"},
            {**_run("app:batching", 250, 10), "scenario": "iris_1"},
            {**_run("mlserver", 10, 400, rows=100), "scenario": "breast_cancer_100"},
            {**_run("app:default", 11, 20, rows=100), "scenario": "breast_cancer_100"},
        ],
        [],
    )
    slow = {"ratio": 0.65, "max_ms": 1500.0}
    found = {
        t["target"]: t for t in bench.targets(rows, None, slow) if t["server"] == "app:default"
    }
    assert found["iris 1 row, 8 conn: >= 2.0x seed_flask"]["met"] is True
    assert found["iris 1 row, 8 conn: >= 1.0x seed_fastapi"]["met"] is False
    assert found["iris 1 row, 8 conn: >= 1.0x seed_fastapi"]["value"] == 0.75
    batches = found["forest 100-row batches (rows/s), 8 conn: >= 1.2x mlserver"]
    assert (batches["value"], batches["met"]) == (pytest.approx(1.1), False)
    fastest = found["iris_1, 8 conn: default row >= 0.95x the fastest other profile"]
    assert (fastest["value"], fastest["met"]) == (0.9, False)
    assert found["3 slow clients: others keep >= 0.7x their req/s"]["met"] is False
    assert found["3 slow clients: no request waits over 2 s (max, ms)"]["met"] is True


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


def test_settings_filters_from_env(bench: ModuleType) -> None:
    settings = bench.Settings.from_env(
        {
            "BENCH_SERVERS": "app:default, app:before,seed_flask_pandas",
            "BENCH_SCENARIOS": "penguins_100,iris_1",
            "BENCH_CONNECTIONS": "8,1,8",
            "BENCH_BEFORE": "7eeed69",
        }
    )
    assert settings.servers == ("app:default", "app:before", "seed_flask_pandas")
    assert settings.connections == (8, 1)
    assert settings.before == "7eeed69"
    assert list(settings.chosen_scenarios()) == ["iris_1", "penguins_100"]
    every = bench.Settings.from_env({"BENCH_SERVERS": " ", "BENCH_SCENARIOS": ""})
    assert every.servers is None
    assert every.connections == bench.CONNECTIONS
    assert every.chosen_scenarios() == bench.SCENARIOS


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"BENCH_SERVERS": "app:nope"}, "BENCH_SERVERS: unknown app:nope"),
        ({"BENCH_SERVERS": "app:before"}, "unknown app:before"),
        ({"BENCH_SCENARIOS": "iris_1,penguins_7"}, "BENCH_SCENARIOS: unknown penguins_7"),
        ({"BENCH_CONNECTIONS": "8,x"}, "must be integers"),
        ({"BENCH_CONNECTIONS": "0"}, "at least 1"),
    ],
)
def test_settings_refuse_unknown_names(bench: ModuleType, environ: dict, message: str) -> None:
    with pytest.raises(bench.BenchError, match=message):
        bench.Settings.from_env(environ)


def test_request_body_of_a_table_has_null_where_missing(bench: ModuleType) -> None:
    table = pd.DataFrame(
        {
            "island": pd.Series(["Biscoe", np.nan], dtype=object),
            "bill_length_mm": [39.1, np.nan],
        }
    )
    body = json.loads(bench.request_body(table))
    assert body == {
        "instances": [
            {"island": "Biscoe", "bill_length_mm": 39.1},
            {"island": None, "bill_length_mm": None},
        ]
    }
    texts = pd.Series(["good", "bad ]]"], name="text")
    assert json.loads(bench.request_body(texts)) == {
        "instances": [{"text": "good"}, {"text": "bad ]]"}]
    }


def test_penguin_scenarios_hold_missing_values(bench: ModuleType) -> None:
    one = bench.scenario_rows(*bench.SCENARIOS["penguins_1"])
    assert one.shape == (1, 6)
    assert one.isna().sum().to_dict() == {
        "island": 0,
        "bill_length_mm": 0,
        "bill_depth_mm": 0,
        "flipper_length_mm": 0,
        "body_mass_g": 0,
        "sex": 1,
    }
    hundred = bench.scenario_rows(*bench.SCENARIOS["penguins_100"])
    assert hundred.shape == (100, 6)
    assert int(hundred.isna().any(axis=1).sum()) == 6
    instances = json.loads(bench.request_body(hundred))["instances"]
    assert instances[3] == {
        "island": "Torgersen",
        "bill_length_mm": None,
        "bill_depth_mm": None,
        "flipper_length_mm": None,
        "body_mass_g": None,
        "sex": None,
    }


def test_scenarios_name_their_rows(bench: ModuleType) -> None:
    for name, scenario in bench.SCENARIOS.items():
        assert name == f"{scenario.model}_{scenario.rows}"


def _serves(*models: str):
    return lambda model: model in models


def test_measurement_plan_puts_the_servers_of_a_cell_back_to_back(bench: ModuleType) -> None:
    servers = [
        ("app:default", _serves("iris", "penguins")),
        ("app:before", _serves("iris")),
        ("seed_flask_pandas", _serves("penguins")),
    ]
    scenarios = {k: bench.SCENARIOS[k] for k in ("iris_1", "penguins_1")}
    assert bench.measurement_plan(servers, scenarios, (1, 8), repeat=1) == [
        ("app:default", "iris_1", 1),
        ("app:before", "iris_1", 1),
        ("app:default", "iris_1", 8),
        ("app:before", "iris_1", 8),
        ("app:default", "penguins_1", 1),
        ("seed_flask_pandas", "penguins_1", 1),
        ("app:default", "penguins_1", 8),
        ("seed_flask_pandas", "penguins_1", 8),
    ]
    assert bench.measurement_plan(servers, scenarios, (8,), repeat=2) == [
        ("app:before", "iris_1", 8),
        ("app:default", "iris_1", 8),
        ("seed_flask_pandas", "penguins_1", 8),
        ("app:default", "penguins_1", 8),
    ]


def test_summarize_compares_with_before(bench: ModuleType) -> None:
    iris = [
        {**_run(server, rps, 10), "scenario": "iris_1", "repeat": repeat}
        for server, series in (("app:default", (100, 180, 300)), ("app:before", (95, 200, 310)))
        for repeat, rps in enumerate(series, start=1)
    ]
    runs = [
        *iris,
        {**_run("app:default", 90, 10), "scenario": "breast_cancer_1", "repeat": 1},
        {**_run("app:before", 100, 10), "scenario": "breast_cancer_1", "repeat": 1},
        {**_run("app:default", 60, 10, rows=100), "scenario": "penguins_100"},
        {**_run("seed_flask_pandas", 20, 10, rows=100), "scenario": "penguins_100"},
    ]
    rows, _ = bench.summarize(runs, [])
    by_key = {(r["server"], r["scenario"]): r for r in rows}
    # Medians 180 / 200; within each repeat 100 / 95, 180 / 200, 300 / 310.
    assert by_key["app:default", "iris_1"]["vs_before"] == pytest.approx(0.9)
    assert by_key["app:default", "iris_1"]["vs_before_paired"] == pytest.approx(300 / 310)
    assert by_key["app:before", "iris_1"]["vs_before_paired"] == 1.0
    assert by_key["app:default", "breast_cancer_1"]["vs_before_paired"] == pytest.approx(0.9)
    assert by_key["app:default", "penguins_100"]["vs"]["seed_flask_pandas"] == 3.0
    assert by_key["app:default", "penguins_100"]["vs_before"] is None
    assert by_key["app:default", "penguins_100"]["vs_before_paired"] is None
    found = {t["target"]: t for t in bench.targets(rows, None) if "than before" in t["target"]}
    assert [(t["server"], t["met"]) for t in found.values()] == [
        ("app:default", True),
        ("app:default", False),
    ]
    target = (
        "numeric models no slower than before: iris_1, 8 conn, req/s >= 0.95x app:before "
        "(median of the repeats' ratios)"
    )
    assert found[target]["value"] == pytest.approx(300 / 310)
    table = bench.format_table(rows, {})
    header = table.splitlines()[0]
    assert header.endswith("| x seed_flask_pandas | x before | x floor |")
    assert "x seed_fastapi" not in header
    assert (
        "| iris_1 | 8 | app:default | 180 | 100-300 | 180 | 5.00 | 10.00 | 0 | - | 0.90x | - |"
        in table
    )
    assert "| penguins_100 | 8 | app:default | 60 | 60-60 | 6,000 |" in table
    assert table.count("| 3.00x | - | - |") == 1


def test_server_specs_of_before_run_its_checkout(bench: ModuleType, tmp_path: Path) -> None:
    tree = tmp_path / "before"
    before = bench.Before("7eeed69", "7eeed69" * 5, tree, tmp_path / "old", frozenset({"iris"}))
    specs = bench.server_specs(
        tmp_path / "instance", before, ["seed_flask_pandas", "app:before", "app:default"]
    )
    by_name = {spec.name: spec for spec in specs}
    assert list(by_name) == ["app:default", "app:before", "seed_flask_pandas"]
    old = by_name["app:before"]
    assert old.env["PYTHONPATH"] == str(tree / "src")
    assert old.env["INFERENCE_APP_INSTANCE_PATH"] == str(tmp_path / "old")
    assert old.env["GUNICORN_WORKERS"] == bench.PROFILES["default"]["GUNICORN_WORKERS"]
    assert old.argv[1:] == ("-c", str(tree / "gunicorn.conf.py"), f"--chdir={tree}", "wsgi:app")
    assert old.cwd == tree
    assert old.serves("iris") and not old.serves("penguins")
    assert "PYTHONPATH" not in by_name["app:default"].env
    assert by_name["app:default"].serves("sentiment")
    pandas_app = by_name["seed_flask_pandas"]
    assert pandas_app.env["BENCH_MODELS"] == "penguins,sentiment"
    assert not pandas_app.serves("iris")


def test_seed_flask_pandas_predicts_penguins(
    bench: ModuleType, tmp_path: Path, monkeypatch
) -> None:
    from inference_app.demo import write_demo_bundles

    write_demo_bundles(tmp_path, names=["penguins"])
    rows = bench.scenario_rows("penguins", 100)
    monkeypatch.setenv("BENCH_MODELS_DIR", str(tmp_path))
    monkeypatch.setenv("BENCH_MODELS", "penguins")
    seed = load(BENCH / "baselines" / "seed_flask_pandas.py", "seed_flask_pandas")
    body = json.loads(bench.request_body(rows))
    response = seed.app.test_client().post("/predict/penguins", json=body)
    assert response.status_code == 200
    expected = joblib.load(tmp_path / "penguins" / "1" / "model.joblib").predict(rows)
    assert response.get_json() == {"predictions": expected.tolist()}


def test_seed_flask_pandas_gives_a_text_pipeline_its_column(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inference_app.demo import sentiment_pipeline

    texts = pd.Series(
        ["good day", "good food", "very good", "bad day", "bad food", "very bad"], name="text"
    )
    labels = ["positive"] * 3 + ["negative"] * 3
    pipeline = sentiment_pipeline().fit(texts, labels)
    (tmp_path / "sentiment" / "1").mkdir(parents=True)
    joblib.dump(pipeline, tmp_path / "sentiment" / "1" / "model.joblib")
    monkeypatch.setenv("BENCH_MODELS_DIR", str(tmp_path))
    monkeypatch.setenv("BENCH_MODELS", "sentiment")
    seed = load(BENCH / "baselines" / "seed_flask_pandas.py", "seed_flask_pandas")
    asked = pd.Series(["a good day", "bad", "very very bad food"], name="text")
    response = seed.app.test_client().post(
        "/predict/sentiment", json=json.loads(bench.request_body(asked))
    )
    assert response.status_code == 200
    assert response.get_json() == {"predictions": pipeline.predict(asked).tolist()}
    assert len(response.get_json()["predictions"]) == 3


# A real h2load 1.52 report: 2 connections, 1 s, gRPC calls to this server's ModelInfer.
H2LOAD_OK = """\
starting benchmark...
Application protocol: h2c

finished in 1.01s, 1159.00 req/s, 173.67KB/s
requests: 1159 total, 1161 started, 1159 done, 1159 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 1160 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 173.67KB (177840) total, 56.79KB (58150) headers (space savings 59.90%)
                     min         max         mean         sd        +/- sd
time for request:      566us     17.97ms      1.71ms      1.69ms    90.25%
"""


def test_parse_h2load_report(bench: ModuleType) -> None:
    durations = [1000.0 * (i + 1) for i in range(100)]  # 1 ms to 100 ms, in microseconds
    result = bench.parse_h2load(H2LOAD_OK, durations)
    assert result["requests"] == 1159 and result["rps"] == pytest.approx(1159.0)
    assert result["duration_s"] == pytest.approx(1.01)
    assert result["p50_ms"] == pytest.approx(51.0) and result["p99_ms"] == pytest.approx(100.0)
    assert result["errors"] == 0
    failing = H2LOAD_OK.replace("1159 succeeded, 0 failed", "1150 succeeded, 9 failed").replace(
        "0 3xx, 0 4xx, 0 5xx", "0 3xx, 0 4xx, 2 5xx"
    )
    assert bench.parse_h2load(failing, durations)["errors"] == 11
    with pytest.raises(ValueError, match="not an h2load report"):
        bench.parse_h2load("h2load: connection refused", durations)


def test_protocol_bodies_are_answered_like_in_process(
    bench: ModuleType, demo_instance: Path, demo_estimators: dict, tmp_path: Path
) -> None:
    """The V2 REST body and the gRPC frame h2load sends get this server's predictions, and
    h2load's calls are all answered (a gRPC error would still be HTTP 200: counted apart)."""
    from prometheus_client import REGISTRY

    from inference_app import create_app
    from inference_app.demo import load_demo_data
    from inference_app.grpc import grpc_predict_v2_pb2 as pb
    from inference_app.grpc import service

    rows = load_demo_data("breast_cancer")[0][:100]
    expected = demo_estimators["breast_cancer"].predict(rows).tolist()
    app = create_app({"TESTING": True}, instance_path=demo_instance)
    answer = app.test_client().post(
        "/v2/models/breast_cancer/infer", data=bench.v2_body(rows), content_type="application/json"
    )
    assert answer.get_json()["outputs"][0]["data"] == expected
    frame = bench.grpc_frame("breast_cancer", rows)
    assert frame[0] == 0 and int.from_bytes(frame[1:5], "big") == len(frame) - 5
    request = pb.ModelInferRequest.FromString(frame[5:])
    assert [o.name for o in request.outputs] == ["predict"]
    body = tmp_path / "frame.bin"
    body.write_bytes(frame)
    running = service.serve(app, 0)
    errors = {"protocol": "grpc", "kind": "model_not_found"}
    before = REGISTRY.get_sample_value("inference_app_errors_total", errors) or 0.0
    try:
        url = f"http://127.0.0.1:{running.port}{bench.GRPC_INFER}"
        result = bench.run_h2load(url, body, 2, 1)
        assert result["requests"] > 0 and result["errors"] == 0
        assert result["p50_ms"] <= result["p99_ms"]
        body.write_bytes(bench.grpc_frame("nope", rows))
        refused = bench.run_h2load(url, body, 1, 1)
    finally:
        running.stop(None)
    assert refused["errors"] == 0  # HTTP 200 whatever grpc-status says
    counted = (REGISTRY.get_sample_value("inference_app_errors_total", errors) or 0.0) - before
    # h2load counts the calls done within its duration; one more may be answered after it.
    assert refused["requests"] <= counted <= refused["requests"] + 1


def test_summarize_protocols_pairs_each_repeat_with_v2_rest(bench: ModuleType) -> None:
    runs = []
    for repeat, (rest, grpc) in enumerate([(100, 300), (200, 300), (100, 500)], start=1):
        for server, rps in (("app v2 rest", rest), ("app grpc", grpc)):
            runs.append({**_run(server, rps, 10), "scenario": "iris_1", "repeat": repeat})
    rows = {r["server"]: r for r in bench.summarize_protocols(runs)}
    assert rows["app grpc"]["rps"] == 300 and rows["app v2 rest"]["rps"] == 100
    assert rows["app grpc"]["vs_v2_rest"] == 3.0  # median of 3.0, 1.5 and 5.0
    assert rows["app v2 rest"]["vs_v2_rest"] == 1.0
    assert "| iris_1 | 8 | app grpc | 300 |" in bench.format_protocols(list(rows.values()))
