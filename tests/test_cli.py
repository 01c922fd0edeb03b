"""Tests of the ``inference-app`` command: init-demo, package and models."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import joblib
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.datasets import load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from inference_app.cli import main
from inference_app.core.bundle import load_bundle, write_bundle
from inference_app.demo import DEMOS

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
        assert load_bundle(models / name / "1").name == name

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

    third = runner.invoke(main, ["init-demo", "--instance-path", str(instance), "--force"])

    assert third.exit_code == 0, third.output
    for name in DEMOS:
        assert f"wrote   {name} version 1" in third.output
        load_bundle(models / name / "1")  # the rewritten iris file matches its checksum again
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
        pytest.param("word", 3, "could not convert string to float: 'abc'", id="non-numeric"),
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
    if damage == "word":
        rows[line - 1][5] = "abc"
    else:
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
