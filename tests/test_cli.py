"""Tests of the ``inference-app`` command: init-demo, package and models, and its errors."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner, Result
from sklearn.datasets import load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from inference_app import cli, create_app
from inference_app.cli import main
from inference_app.core.bundle import load_bundle, write_bundle
from inference_app.core.compiled import TOLERANCE
from inference_app.core.errors import BundleError
from inference_app.demo import DEMOS, write_demo_bundles

REPO = Path(__file__).resolve().parent.parent

WINE_CLASSES = ["class_0", "class_1", "class_2"]


@pytest.fixture(scope="module")
def wine() -> tuple[pd.DataFrame, Pipeline]:
    """The wine dataset's features, and a pipeline fitted on them with named classes."""
    data = load_wine(as_frame=True)
    target = data.target.map(dict(enumerate(data.target_names)))
    estimator = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    return data.data, estimator.fit(data.data, target)


@pytest.fixture
def wine_files(tmp_path: Path, wine: tuple[pd.DataFrame, Pipeline]) -> tuple[Path, Path]:
    """The fitted wine pipeline dumped with joblib, and its training rows as a CSV sample."""
    frame, estimator = wine
    estimator_file = tmp_path / "wine.joblib"
    joblib.dump(estimator, estimator_file)
    sample = tmp_path / "wine.csv"
    frame.to_csv(sample, index=False)
    return estimator_file, sample


def package_args(estimator_file: Path, sample: Path, instance: Path, version: str) -> list[str]:
    """Return the arguments of ``package`` writing the wine model's ``version``."""
    return [
        "package",
        str(estimator_file),
        "--name",
        "wine",
        "--version",
        version,
        "--sample",
        str(sample),
        "--instance-path",
        str(instance),
    ]


def test_init_demo_writes_keeps_and_rewrites(runner: CliRunner, tmp_path: Path) -> None:
    instance = tmp_path / "instance"
    models = instance / "models"

    first = runner.invoke(main, ["init-demo", "--instance-path", str(instance)])

    assert first.exit_code == 0, first.output
    for name in DEMOS:
        assert f"wrote   {name} version 1" in first.output
        assert (models / name / "1" / "model.json").is_file()
        assert (models / name / "1" / "model.joblib").is_file()
        assert (models / name / "1" / "model.onnx").is_file()  # ONNX by default
        assert load_bundle(models / name / "1").name == name
        wrote = f"wrote   {name} version 1 to {models / name / '1'}\n"
        assert f"{wrote}        with an ONNX model (" in first.stdout

    tampered = models / "iris" / "1" / "model.joblib"
    with tampered.open("ab") as handle:
        handle.write(b"\0")
    changed = tampered.read_bytes()
    second = runner.invoke(main, ["init-demo", "--instance-path", str(instance)])

    assert second.exit_code == 0, second.output
    for name in DEMOS:
        assert f"kept    {name}" in second.output
    assert "wrote" not in second.output
    assert tampered.read_bytes() == changed

    third = runner.invoke(
        main, ["init-demo", "--instance-path", str(instance), "--force", "--no-onnx"]
    )

    assert third.exit_code == 0, third.output
    assert "ONNX" not in third.output
    for name in DEMOS:
        assert f"wrote   {name} version 1" in third.output
        # the rewritten iris file matches its checksum again; no conversion is kept
        assert load_bundle(models / name / "1").onnx is None
        assert not (models / name / "1" / "model.onnx").exists()
    assert tampered.read_bytes() != changed


def test_package_writes_a_bundle_from_a_real_estimator(
    runner: CliRunner,
    tmp_path: Path,
    wine: tuple[pd.DataFrame, Pipeline],
    wine_files: tuple[Path, Path],
) -> None:
    frame, estimator = wine
    estimator_file, sample = wine_files
    instance = tmp_path / "instance"

    result = runner.invoke(main, package_args(estimator_file, sample, instance, "3"))

    assert result.exit_code == 0, result.output
    folder = instance / "models" / "wine" / "3"
    assert "wrote wine version 3" in result.output
    manifest = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    assert manifest["name"] == "wine"
    assert manifest["version"] == "3"
    assert manifest["task"] == "classification"
    assert manifest["classes"] == WINE_CLASSES
    assert [feature["name"] for feature in manifest["inputs"]] == list(frame.columns)
    assert [feature["min"] for feature in manifest["inputs"]] == frame.min().tolist()
    assert [feature["max"] for feature in manifest["inputs"]] == frame.max().tolist()
    assert manifest["sha256"] == hashlib.sha256((folder / "model.joblib").read_bytes()).hexdigest()
    assert manifest["reference"]["n_samples"] == len(frame)
    assert "predict_proba" in manifest["methods"]
    bundle = load_bundle(folder)
    assert bundle.estimator.predict(frame).tolist() == estimator.predict(frame).tolist()


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    """Write ``rows`` (the first is the header) to a CSV file and return its path."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    return path


@pytest.mark.parametrize(
    ("damage", "line", "reason"),
    [
        pytest.param("long", 3, "14 values for 13 columns", id="long"),
        pytest.param("short", 4, "12 values for 13 columns", id="ragged"),
    ],
)
def test_package_refuses_a_bad_sample_naming_the_line(
    runner: CliRunner,
    tmp_path: Path,
    wine: tuple[pd.DataFrame, Pipeline],
    wine_files: tuple[Path, Path],
    damage: str,
    line: int,
    reason: str,
) -> None:
    frame, _ = wine
    estimator_file, _ = wine_files
    rows = [list(frame.columns)] + [[repr(v) for v in row] for row in frame.values.tolist()]
    if damage == "long":  # pandas would take the first value for an index
        rows[line - 1] = [*rows[line - 1], "1.0"]
    else:  # pandas would fill the missing value with NaN
        rows[line - 1] = rows[line - 1][:-1]
    sample = write_csv(tmp_path / "bad.csv", rows)
    instance = tmp_path / "instance"

    result = runner.invoke(main, package_args(estimator_file, sample, instance, "1"))

    assert result.exit_code != 0
    assert f"{sample}:{line}: {reason}" in result.output
    assert not (instance / "models" / "wine").exists()


def test_package_reads_a_sample_with_a_byte_order_mark(
    runner: CliRunner,
    tmp_path: Path,
    wine: tuple[pd.DataFrame, Pipeline],
    wine_files: tuple[Path, Path],
) -> None:
    frame, _ = wine
    estimator_file, _ = wine_files
    sample = tmp_path / "excel.csv"
    frame.to_csv(sample, index=False, encoding="utf-8-sig")
    instance = tmp_path / "instance"

    result = runner.invoke(main, package_args(estimator_file, sample, instance, "1"))

    assert result.exit_code == 0, result.output
    bundle = load_bundle(instance / "models" / "wine" / "1")
    assert bundle.manifest.feature_names == list(frame.columns)


def unusable_estimator(kind: str, frame: pd.DataFrame, path: Path) -> Path:
    """Write an estimator file the server cannot serve, of the given ``kind``, to ``path``."""
    if kind == "no-predict":
        joblib.dump(StandardScaler().fit(frame), path)
    elif kind == "unfitted":
        joblib.dump(LogisticRegression(), path)
    else:
        path.write_text("alcohol,malic_acid\n1,2\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("no-predict", "predict"), ("unfitted", "fitted"), ("not-joblib", "model.bin")],
)
def test_package_refuses_an_unservable_estimator_file(
    runner: CliRunner,
    tmp_path: Path,
    wine: tuple[pd.DataFrame, Pipeline],
    wine_files: tuple[Path, Path],
    kind: str,
    expected: str,
) -> None:
    frame, _ = wine
    _, sample = wine_files
    estimator_file = unusable_estimator(kind, frame, tmp_path / "model.bin")
    instance = tmp_path / "instance"

    result = runner.invoke(main, package_args(estimator_file, sample, instance, "1"))

    # A clean refusal: click's error exit with a message, not a traceback.
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1
    assert expected in result.output
    assert not (instance / "models" / "wine" / "1").exists()


def test_package_keeps_an_existing_version_unless_forced(
    runner: CliRunner, tmp_path: Path, wine_files: tuple[Path, Path]
) -> None:
    estimator_file, sample = wine_files
    instance = tmp_path / "instance"
    args = package_args(estimator_file, sample, instance, "1")
    assert runner.invoke(main, args).exit_code == 0
    manifest = instance / "models" / "wine" / "1" / "model.json"
    manifest.write_text(manifest.read_text(encoding="utf-8").replace('"wine"', '"wine" '))
    edited = manifest.read_text(encoding="utf-8")

    again = runner.invoke(main, args)

    assert again.exit_code != 0
    assert "already holds a bundle" in again.output
    assert manifest.read_text(encoding="utf-8") == edited

    forced = runner.invoke(main, [*args, "--force"])

    assert forced.exit_code == 0, forced.output
    assert manifest.read_text(encoding="utf-8") != edited
    assert load_bundle(manifest.parent).version == "1"


def served_lines(result: Result) -> dict[str, str]:
    """Return the ``models`` command's lines, by their model and version (``wine 1``)."""
    lines = [line for line in result.stdout.splitlines() if line.startswith(("serve", "REFUSED"))]
    return {" ".join(line.split(":")[0].split()[1:3]): line for line in lines}


def test_package_converts_to_onnx_by_default_and_the_server_runs_it(
    runner: CliRunner,
    tmp_path: Path,
    wine: tuple[pd.DataFrame, Pipeline],
    wine_files: tuple[Path, Path],
) -> None:
    frame, estimator = wine
    instance = tmp_path / "instance"

    result = runner.invoke(main, package_args(*wine_files, instance, "1"))

    assert result.exit_code == 0, result.output
    assert "with an ONNX model (float64 input), checked on the sample" in result.stdout
    assert "warning" not in result.output
    folder = instance / "models" / "wine" / "1"
    manifest = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    assert manifest["onnx"]["file"] == "model.onnx"
    assert (
        manifest["onnx"]["sha256"]
        == hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest()
    )
    listed = runner.invoke(main, ["models", "--instance-path", str(instance)])
    assert listed.exit_code == 0, listed.output
    assert served_lines(listed)["wine 1"].endswith(", 13 features, runtime onnx")
    client = create_app({"TESTING": True}, instance_path=instance).test_client()
    assert client.get("/v1/models/wine").get_json()["runtime"] == "onnx"
    records = json.loads(frame.to_json(orient="records"))
    for method in ("predict", "predict_proba"):
        answer = client.post(
            "/v1/models/wine:predict", json={"instances": records, "method": method}
        )
        assert answer.status_code == 200, answer.get_json()
        expected = getattr(estimator, method)(frame)
        if method == "predict":
            assert answer.get_json()["predictions"] == expected.tolist()
        else:
            np.testing.assert_allclose(
                answer.get_json()["predictions"], expected, atol=TOLERANCE, rtol=0
            )


def test_no_onnx_packages_for_scikit_learn_and_runtime_onnx_refuses_that_bundle(
    runner: CliRunner,
    tmp_path: Path,
    wine_files: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    instance = tmp_path / "instance"
    assert runner.invoke(main, package_args(*wine_files, instance, "1")).exit_code == 0
    assert runner.invoke(main, package_args(*wine_files, instance, "2")).exit_code == 0
    stale = instance / "models" / "wine" / "2" / "model.onnx"
    assert stale.is_file()

    skipped = runner.invoke(
        main, [*package_args(*wine_files, instance, "2"), "--force", "--no-onnx"]
    )

    assert skipped.exit_code == 0, skipped.output
    assert "without an ONNX model (--no-onnx): scikit-learn serves it" in skipped.stdout
    assert not stale.exists()  # the replaced bundle's conversion is gone with it
    assert json.loads(stale.with_name("model.json").read_text(encoding="utf-8"))["onnx"] is None
    listed = served_lines(runner.invoke(main, ["models", "--instance-path", str(instance)]))
    assert listed["wine 1"].endswith("runtime onnx")
    assert listed["wine 2"].endswith("runtime sklearn")

    monkeypatch.setenv("INFERENCE_APP_RUNTIME", "onnx")
    refused = runner.invoke(main, ["models", "--instance-path", str(instance)])

    assert_one_error_line(refused, "some bundles are refused; the server will not start")
    listed = served_lines(refused)
    assert listed["wine 1"].endswith("runtime onnx")
    assert listed["wine 2"].startswith(
        "REFUSED wine 2: model 'wine' version '2' has no ONNX model (RUNTIME is onnx)"
    )
    with pytest.raises(BundleError, match="has no ONNX model"):
        create_app(instance_path=instance)


def test_a_conversion_that_fails_still_packages_saying_why_in_one_line(
    runner: CliRunner, tmp_path: Path, wine: tuple[pd.DataFrame, Pipeline]
) -> None:
    frame, fitted = wine
    # skl2onnx converts a FunctionTransformer only when it is the identity.
    estimator = make_pipeline(
        FunctionTransformer(np.log1p), StandardScaler(), LogisticRegression(max_iter=1000)
    ).fit(frame, fitted.predict(frame))
    joblib.dump(estimator, tmp_path / "logs.joblib")
    frame.to_csv(tmp_path / "wine.csv", index=False)
    instance = tmp_path / "instance"

    result = runner.invoke(
        main, package_args(tmp_path / "logs.joblib", tmp_path / "wine.csv", instance, "1")
    )

    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and result.stderr == ""
    [line] = [line for line in result.stdout.splitlines() if "ONNX" in line]
    assert line.startswith("warning: no ONNX model for wine 1, scikit-learn serves it: ")
    assert "float64, float32: skl2onnx cannot convert it: RuntimeError: FunctionTransformer" in line
    folder = instance / "models" / "wine" / "1"
    assert not (folder / "model.onnx").exists()
    bundle = load_bundle(folder)
    assert bundle.onnx is None
    assert bundle.estimator.predict(frame).tolist() == estimator.predict(frame).tolist()
    listed = runner.invoke(main, ["models", "--instance-path", str(instance)])
    assert served_lines(listed)["wine 1"].endswith("runtime sklearn")


def test_the_documented_onnx_example_is_what_the_commands_print(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    section = text.split("\n## ONNX by default\n", 1)[1].split("\n## ", 1)[0]
    [block] = re.findall(r"```sh\n(.*?)```", section, re.S)
    script, commands = block.split("\nPY\n", 1)
    subprocess.run(
        [sys.executable, "-c", script.split("<<'PY'\n", 1)[1]],
        cwd=tmp_path,
        check=True,
        timeout=120,
    )
    monkeypatch.chdir(tmp_path)
    printed: list[str] = []
    documented: list[str] = []
    for line in commands.splitlines():
        if line.startswith("#   "):  # a documented line, continued
            documented[-1] += " " + line[4:]
        elif line.startswith("# "):
            documented.append(line[2:].replace("/srv/app", str(tmp_path)))
        elif line.startswith("curl"):
            break  # needs the server: its runtime field is tested above
        else:
            env, _, command = f" {line}".rpartition(" inference-app ")
            with monkeypatch.context() as scoped:
                if "=" in env:
                    scoped.setenv(*env.strip().split("=", 1))
                result = runner.invoke(main, shlex.split(command))
            printed += result.output.splitlines()
    assert len(documented) == 9
    for line in documented:
        if line.endswith(" ..."):
            assert any(out.startswith(line[:-4]) for out in printed), (line, printed)
        else:
            assert line in printed, (line, printed)


def test_models_lists_the_highest_version_as_default_and_refuses_tampered(
    runner: CliRunner, tmp_path: Path, wine: tuple[pd.DataFrame, Pipeline]
) -> None:
    frame, estimator = wine
    instance = tmp_path / "instance"
    for version in ("1", "2", "10"):
        write_bundle(estimator, frame, instance / "models", "wine", version)

    listed = runner.invoke(main, ["models", "--instance-path", str(instance)])

    assert listed.exit_code == 0, listed.output
    lines = [line for line in listed.output.splitlines() if line.startswith("serve")]
    assert [line.split(":")[0].split() for line in lines] == [
        ["serve", "wine", "1"],
        ["serve", "wine", "2"],
        ["serve", "wine", "10", "(default)"],
    ]
    assert "13 features" in lines[-1]
    assert "REFUSED" not in listed.output

    with (instance / "models" / "wine" / "2" / "model.joblib").open("ab") as handle:
        handle.write(b"\0")
    refused = runner.invoke(main, ["models", "--instance-path", str(instance)])

    assert refused.exit_code != 0
    [line] = [line for line in refused.output.splitlines() if line.startswith("REFUSED")]
    assert line.startswith("REFUSED wine 2: ")
    assert "sha256" in line
    assert "serve   wine 10 (default)" in refused.output


def test_models_with_no_bundles_says_where_it_looked(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(main, ["models", "--instance-path", str(tmp_path)])

    assert result.exit_code == 0, result.output
    assert f"no bundles under {tmp_path / 'models'}" in result.output


def test_console_script_is_installed(tmp_path: Path) -> None:
    env = {**os.environ, "INFERENCE_APP_INSTANCE_PATH": str(tmp_path)}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "inference-app"), "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    commands = result.stdout.split("Commands:", 1)[1].split()
    for command in ("init-demo", "package", "models"):
        assert command in commands, result.stdout


# A fresh clone, before `make serve`: the repository's instance/config.py names iris the
# default model, and instance/models is missing, empty or holds a refused bundle.


def fresh_instance(tmp_path: Path, models: str) -> Path:
    """An instance folder with the repository's ``config.py`` and ``models`` in a state:
    ``missing``, ``empty`` or ``refused`` (the demo bundles, iris tampered with)."""
    instance = tmp_path / "instance"
    instance.mkdir()
    shutil.copy(REPO / "instance" / "config.py", instance / "config.py")
    if models == "empty":
        (instance / "models").mkdir()
    elif models == "refused":
        write_demo_bundles(instance / "models", names=DEMOS)
        with (instance / "models" / "iris" / "1" / "model.joblib").open("ab") as handle:
            handle.write(b"\0")
    return instance


def assert_one_error_line(result: Result, *expected: str) -> str:
    """Assert that a command failed with exit status 1 or 2 and one ``Error:`` line on
    stderr holding each of ``expected``, without a traceback; return that line."""
    assert result.exit_code in (1, 2), (result.exit_code, result.output)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: "), line
    for text in expected:
        assert text in line, line
    return line


@pytest.mark.parametrize("models", ["missing", "empty", "refused"])
def test_help_loads_no_model(
    runner: CliRunner, tmp_path: Path, models: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    instance = fresh_instance(tmp_path, models)
    monkeypatch.setenv("INFERENCE_APP_INSTANCE_PATH", str(instance))

    def no_app() -> None:
        raise AssertionError("--help created the app")

    monkeypatch.setattr(cli, "create_app", no_app)

    for args in (["--help"], ["package", "--help"], ["models", "--help"], ["run", "--help"]):
        result = runner.invoke(main, args)

        assert result.exit_code == 0, (args, result.output)
        assert result.stderr == "", (args, result.stderr)
        assert result.stdout.startswith("Usage: "), result.stdout
    bare = runner.invoke(main, [])  # the help too, with click's usage-error status
    assert bare.exit_code == 2 and "Traceback" not in bare.output
    assert "Commands:" in bare.output
    commands = runner.invoke(main, ["--help"]).stdout.split("Commands:", 1)[1].split()
    for command in ("init-demo", "package", "models", "run", "routes", "shell"):
        assert command in commands


@pytest.mark.parametrize("models", ["missing", "empty", "refused"])
def test_init_demo_and_models_work_before_any_model_loads(
    runner: CliRunner, tmp_path: Path, models: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    instance = fresh_instance(tmp_path, models)
    monkeypatch.setenv("INFERENCE_APP_INSTANCE_PATH", str(instance))

    listed = runner.invoke(main, ["models"])

    if models == "refused":
        line = assert_one_error_line(listed, "some bundles are refused")
        refusals = [row for row in listed.stdout.splitlines() if row.startswith("REFUSED")]
        assert len(refusals) == 1 and "iris 1" in refusals[0] and "sha256" in refusals[0]
        assert line == "Error: some bundles are refused; the server will not start"
    else:
        assert listed.exit_code == 0, listed.output
        assert f"no bundles under {instance / 'models'}" in listed.stdout

    written = runner.invoke(main, ["init-demo", "--force"])

    assert written.exit_code == 0, written.output
    for name in DEMOS:
        assert f"wrote   {name} version 1" in written.stdout
    assert runner.invoke(main, ["models"]).exit_code == 0


@pytest.mark.parametrize("models", ["empty", "refused"])
def test_app_commands_refuse_in_one_line_when_the_app_does_not_load(
    runner: CliRunner, tmp_path: Path, models: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    instance = fresh_instance(tmp_path, models)
    monkeypatch.setenv("INFERENCE_APP_INSTANCE_PATH", str(instance))
    reason = (
        ["refused model bundles:", "iris/1/model.joblib", "sha256 mismatch"]
        if models == "refused"
        else ["DEFAULT_MODEL", "'iris', which is not loaded"]
    )

    for args in (["routes"], ["openapi", "print"], ["no-such-command"]):
        result = runner.invoke(main, args)

        line = assert_one_error_line(result, "does not load: ", *reason)
        if args[0] == "routes":
            assert line.startswith("Error: the app does not load: "), line
        else:  # the app's commands, or none: say which was looked for
            assert line.startswith(f"Error: no built-in command {args[0]!r}, and the app"), line


def test_app_commands_run_when_the_app_loads(runner: CliRunner, demo_instance: Path) -> None:
    routes = runner.invoke(
        main, ["routes"], env={"INFERENCE_APP_INSTANCE_PATH": str(demo_instance)}
    )
    spec = runner.invoke(
        main, ["openapi", "print"], env={"INFERENCE_APP_INSTANCE_PATH": str(demo_instance)}
    )

    assert routes.exit_code == 0, routes.output
    assert "/v1/models/<segment:name>:predict" in routes.stdout
    assert spec.exit_code == 0, spec.output
    assert json.loads(spec.stdout)["openapi"].startswith("3.")


def test_a_bad_setting_is_one_line_for_every_command(
    runner: CliRunner,
    tmp_path: Path,
    wine_files: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    estimator_file, sample = wine_files
    instance = tmp_path / "instance"
    monkeypatch.setenv("INFERENCE_APP_INSTANCE_PATH", str(instance))
    monkeypatch.setenv("INFERENCE_APP_MAX_ROWS", "lots")

    for args in (
        ["models"],
        ["init-demo"],
        package_args(estimator_file, sample, instance, "1"),
        ["routes"],
    ):
        result = runner.invoke(main, args)

        assert_one_error_line(result, "MAX_ROWS", "'lots'")
    assert not (instance / "models").exists()


def test_console_script_help_on_a_fresh_clone(tmp_path: Path) -> None:
    instance = fresh_instance(tmp_path, "missing")
    env = {**os.environ, "INFERENCE_APP_INSTANCE_PATH": str(instance)}
    script = str(Path(sys.executable).parent / "inference-app")

    helped = subprocess.run(
        [script, "--help"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    routes = subprocess.run(
        [script, "routes"], env=env, capture_output=True, text=True, timeout=60, check=False
    )

    assert helped.returncode == 0, helped.stderr
    assert helped.stderr == ""
    assert "init-demo" in helped.stdout
    assert routes.returncode == 1
    assert routes.stdout == ""
    [line] = routes.stderr.splitlines()
    assert line.startswith("Error: the app does not load: setting DEFAULT_MODEL"), line


# package: CSV and Parquet samples


def test_package_reads_a_parquet_sample(
    runner: CliRunner,
    tmp_path: Path,
    wine: tuple[pd.DataFrame, Pipeline],
    wine_files: tuple[Path, Path],
) -> None:
    frame, estimator = wine
    estimator_file, _ = wine_files
    instance = tmp_path / "instance"
    for version, suffix in (("1", ".parquet"), ("2", ".pq")):
        sample = tmp_path / f"wine{suffix}"
        frame.to_parquet(sample, index=False)

        result = runner.invoke(main, package_args(estimator_file, sample, instance, version))

        assert result.exit_code == 0, result.output
        bundle = load_bundle(instance / "models" / "wine" / version)
        manifest = json.loads((bundle.path / "model.json").read_text(encoding="utf-8"))
        assert bundle.manifest.feature_names == list(frame.columns)
        assert [feature["min"] for feature in manifest["inputs"]] == frame.min().tolist()
        assert [feature["max"] for feature in manifest["inputs"]] == frame.max().tolist()
        assert bundle.estimator.predict(frame).tolist() == estimator.predict(frame).tolist()


@pytest.fixture
def handed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """What ``package`` hands to ``write_bundle``, which is replaced by a recorder."""
    calls: dict[str, Any] = {}

    def record(estimator: Any, sample: Any, models_dir: Path, name: str, version: str, **kw: Any):
        calls.update(estimator=estimator, sample=sample, models_dir=models_dir, **kw)
        manifest = SimpleNamespace(trusted_types=())
        return SimpleNamespace(
            name=name, version=version, path=tmp_path, onnx=None, warnings=(), manifest=manifest
        )

    monkeypatch.setattr(cli, "write_bundle", record)
    return calls


def mixed_frame() -> pd.DataFrame:
    """A sample with a column of each kind a pipeline may take."""
    return pd.DataFrame(
        {
            "count": pd.Series([1, 2, 3], dtype="int64"),
            "ratio": [0.5, 1.5, 2.5],
            "city": pd.Series(["Oslo", "Lima", "Pune"], dtype="str"),
            "plan": pd.Categorical(["free", "pro", "free"]),
            "since": pd.to_datetime(["2020-01-01", "2021-06-30", "2024-02-29"]),
            "active": [True, False, True],
        }
    )


def test_package_hands_a_parquet_sample_over_with_its_dtypes(
    runner: CliRunner,
    tmp_path: Path,
    wine_files: tuple[Path, Path],
    handed: dict[str, Any],
) -> None:
    estimator_file, _ = wine_files
    frame = mixed_frame()
    sample = tmp_path / "mixed.parquet"
    frame.to_parquet(sample)

    result = runner.invoke(main, package_args(estimator_file, sample, tmp_path / "i", "1"))

    assert result.exit_code == 0, result.output
    pd.testing.assert_frame_equal(handed["sample"], frame)
    assert "feature_names" not in handed  # the DataFrame's columns are the names


def test_package_hands_a_csv_sample_over_as_pandas_reads_it(
    runner: CliRunner,
    tmp_path: Path,
    wine_files: tuple[Path, Path],
    handed: dict[str, Any],
) -> None:
    estimator_file, _ = wine_files
    sample = tmp_path / "mixed.csv"
    mixed_frame().to_csv(sample, index=False)

    result = runner.invoke(main, package_args(estimator_file, sample, tmp_path / "i", "1"))

    # Strings are not refused here: which dtypes a model takes is write_bundle's to say.
    assert result.exit_code == 0, result.output
    pd.testing.assert_frame_equal(handed["sample"], pd.read_csv(sample))
    assert handed["sample"]["city"].tolist() == ["Oslo", "Lima", "Pune"]
    assert handed["sample"]["count"].dtype == "int64"


def write_damaged_sample(kind: str, folder: Path) -> tuple[Path, str]:
    """Write a sample file damaged in one way; return it and what the error must say."""
    header = "alcohol,malic_acid\n"
    samples = {
        "unclosed-quote": ("bad.csv", header + '1.0,"2.0\n', "not a valid CSV file"),
        "not-parquet": ("bad.parquet", header + "1.0,2.0\n", "not a valid Parquet file"),
        "csv-as-pq": ("bad.pq", header + "1.0,2.0\n", "Parquet magic bytes not found"),
        "empty-csv": ("empty.csv", "", "empty; expected a header row"),
        "empty-parquet": ("empty.parquet", "", "Parquet file size is 0 bytes"),
        "header-only": ("header.csv", header, "no rows"),
        "unknown-extension": ("sample.txt", header + "1.0,2.0\n", "unknown sample format '.txt'"),
        "no-extension": ("sample", header + "1.0,2.0\n", "unknown sample format"),
        "index-column": ("index.csv", ",alcohol\n0,1.0\n", "column 1 has no name"),
        "repeated-name": ("twice.csv", "alcohol,alcohol\n1.0,2.0\n", "repeated column names"),
        "not-utf8": ("latin1.csv", "café\n1.0\n", "not UTF-8 text"),
        "missing": ("missing.csv", None, "cannot read: No such file or directory"),
        "directory": ("folder.csv", "dir", "cannot read"),
    }
    name, content, reason = samples[kind]
    path = folder / name
    if content == "dir":
        path.mkdir()
    elif kind == "not-utf8":
        path.write_bytes(content.encode("latin-1"))
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    return path, reason


@pytest.mark.parametrize(
    "kind",
    [
        "unclosed-quote",
        "not-parquet",
        "csv-as-pq",
        "empty-csv",
        "empty-parquet",
        "header-only",
        "unknown-extension",
        "no-extension",
        "index-column",
        "repeated-name",
        "not-utf8",
        "missing",
        "directory",
    ],
)
def test_package_refuses_a_malformed_sample_in_one_line(
    runner: CliRunner, tmp_path: Path, wine_files: tuple[Path, Path], kind: str
) -> None:
    estimator_file, _ = wine_files
    sample, reason = write_damaged_sample(kind, tmp_path)
    instance = tmp_path / "instance"

    result = runner.invoke(main, package_args(estimator_file, sample, instance, "1"))

    line = assert_one_error_line(result, reason)
    assert line.startswith(f"Error: {sample}"), line
    assert not (instance / "models").exists()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        pytest.param(None, "cannot read: No such file or directory", id="missing"),
        pytest.param(b"", "cannot load it as a joblib file: EOFError", id="empty"),
        pytest.param(b"alcohol,malic_acid\n1,2\n", "cannot load it as a joblib file", id="csv"),
    ],
)
def test_package_refuses_an_estimator_file_that_is_not_a_pickle_in_one_line(
    runner: CliRunner,
    tmp_path: Path,
    wine_files: tuple[Path, Path],
    content: bytes | None,
    reason: str,
) -> None:
    _, sample = wine_files
    estimator_file = tmp_path / "model.joblib"
    if content is not None:
        estimator_file.write_bytes(content)
    instance = tmp_path / "instance"

    result = runner.invoke(main, package_args(estimator_file, sample, instance, "1"))

    line = assert_one_error_line(result, reason)
    assert line.startswith(f"Error: {estimator_file}: "), line
    assert not (instance / "models").exists()


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        pytest.param(
            BundleError("refused model bundles:\n  a/1: bad\n  b/2: worse"),
            "Error: refused model bundles: a/1: bad; b/2: worse",
            id="bundle-error",
        ),
        pytest.param(
            PermissionError(13, "Permission denied", "/srv/models/wine"),
            "Error: [Errno 13] Permission denied: '/srv/models/wine'",
            id="os-error",
        ),
    ],
)
def test_package_errors_from_writing_are_one_line(
    runner: CliRunner,
    tmp_path: Path,
    wine_files: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
    expected: str,
) -> None:
    estimator_file, sample = wine_files

    def fail(*args: Any, **kwargs: Any) -> None:
        raise error

    monkeypatch.setattr(cli, "write_bundle", fail)

    result = runner.invoke(main, package_args(estimator_file, sample, tmp_path / "i", "1"))

    assert assert_one_error_line(result) == expected
