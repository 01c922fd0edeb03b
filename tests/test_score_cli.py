"""``inference-app score``: files in every format, scored as the server scores them; its errors."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result
from flask.testing import FlaskClient

from inference_app import batch, create_app
from inference_app.cli import main
from inference_app.core.bundle import load_bundle
from inference_app.core.errors import BundleError
from inference_app.datasets import load_penguins, load_tweets
from inference_app.demo import DEMOS, load_demo_data, write_demo_bundles

FORMATS = {"csv": ".csv", "parquet": ".parquet", "jsonl": ".jsonl"}
ISLANDS = "'Biscoe', 'Dream', 'Torgersen'"
#: The rows ``bad_penguins`` spoils, and why each is refused (from CSV cells).
BAD_ROWS = {
    3: "bill_length_mm: Expected a number.",
    5: f"island: Must be one of: {ISLANDS}.",
    8: "island: Missing values are not accepted: send a string.",
}
#: From JSON, which is typed: a string is not a number.
BAD_JSON_ROWS = {**BAD_ROWS, 3: "bill_length_mm: Expected a number, got a string."}


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An instance folder with the numeric demos and penguins."""
    instance = tmp_path_factory.mktemp("score")
    write_demo_bundles(instance / "models", names=[*DEMOS, "penguins"])
    return instance


@pytest.fixture(scope="module")
def server(instance: Path) -> FlaskClient:
    """A test client of the app serving the same bundles."""
    return create_app({"TESTING": True}, instance_path=instance).test_client()


@pytest.fixture
def score(instance: Path, runner: CliRunner) -> Callable[..., Result]:
    """Run ``inference-app score`` with the instance's models (one worker unless asked)."""

    def run(*args: str | Path) -> Result:
        arguments = [str(arg) for arg in args]
        if "--workers" not in arguments:
            arguments += ["--workers", "1"]
        return runner.invoke(main, ["score", *arguments, "--instance-path", str(instance)])

    return run


def dataset(name: str) -> pd.DataFrame:
    """Return a demo's full dataset, a column per feature."""
    if name == "penguins":
        frame, _ = load_penguins()
        return frame.reset_index(drop=True)
    rows, _, names = load_demo_data(name)
    return pd.DataFrame(rows, columns=names)


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Return the rows as JSON objects, ``None`` where a value is missing."""
    return [
        {k: None if isinstance(v, float) and v != v else v for k, v in row.items()}
        for row in frame.astype(object).to_dict(orient="records")
    ]


def write(frame: pd.DataFrame, path: Path) -> Path:
    """Write rows in the format of the path's extension, numbers exactly."""
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        path.write_bytes(
            b"".join(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE) for row in records(frame))
        )
    return path


def read(path: Path) -> pd.DataFrame:
    """Read an output file back, numbers exactly, missing values as ``None``."""
    if path.suffix == ".csv":
        frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
    elif path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    else:
        frame = pd.DataFrame([orjson.loads(line) for line in path.read_bytes().splitlines()])
    return frame.astype(object).where(frame.notna(), None)


def served(server: FlaskClient, name: str, frame: pd.DataFrame, method: str = "predict") -> Any:
    """Return the server's predictions for the rows."""
    answer = server.post(
        f"/v1/models/{name}:predict", json={"instances": records(frame), "method": method}
    )
    assert answer.status_code == 200, answer.get_json()
    return answer.get_json()["predictions"]


def no_leftovers(folder: Path, *allowed: Path) -> None:
    """Assert that ``folder`` holds only the ``allowed`` files: no output, no temporary."""
    assert sorted(folder.iterdir()) == sorted(allowed)


@pytest.mark.parametrize("source", FORMATS)
@pytest.mark.parametrize("target", FORMATS)
def test_each_format_in_and_out_gives_the_servers_predictions(
    score: Callable[..., Result], server: FlaskClient, tmp_path: Path, source: str, target: str
) -> None:
    frame = dataset("penguins")
    given = write(frame, tmp_path / f"penguins{FORMATS[source]}")
    output = tmp_path / f"scores{FORMATS[target]}"

    result = score("penguins", given, output)

    assert result.exit_code == 0, result.output
    scores = read(output)
    assert list(scores.columns) == ["row", "prediction"]
    assert scores["row"].tolist() == list(range(len(frame)))
    assert scores["prediction"].tolist() == served(server, "penguins", frame)


@pytest.mark.parametrize(
    ("name", "method", "source", "target"),
    [
        ("breast_cancer", "predict_proba", "csv", "parquet"),
        ("iris", "decision_function", "parquet", "jsonl"),
        ("diabetes", "predict", "jsonl", "csv"),
        ("breast_cancer", "predict", "csv", "csv"),
        ("penguins", "predict_proba", "csv", "jsonl"),
    ],
)
def test_outputs_equal_the_servers_on_the_full_datasets(
    score: Callable[..., Result],
    server: FlaskClient,
    tmp_path: Path,
    name: str,
    method: str,
    source: str,
    target: str,
) -> None:
    frame = dataset(name)
    given = write(frame, tmp_path / f"{name}{FORMATS[source]}")
    output = tmp_path / f"scores{FORMATS[target]}"

    result = score(name, given, output, "--method", method)

    assert result.exit_code == 0, result.output
    scores = read(output)
    expected = served(server, name, frame, method)
    if method == "predict":
        assert scores["prediction"].tolist() == expected
    else:
        classes = server.get(f"/v1/models/{name}").get_json()["classes"]
        assert list(scores.columns) == ["row", *map(str, classes)]
        assert scores[list(map(str, classes))].to_numpy().tolist() == expected


@pytest.mark.parametrize("source", FORMATS)
def test_many_small_chunks_write_what_one_chunk_writes(
    score: Callable[..., Result], tmp_path: Path, source: str
) -> None:
    given = write(dataset("penguins"), tmp_path / f"penguins{FORMATS[source]}")

    for method in ("predict", "predict_proba"):
        one = score("penguins", given, tmp_path / f"one-{method}.csv", "--method", method)
        many = score(
            "penguins",
            given,
            tmp_path / f"many-{method}.csv",
            "--method",
            method,
            "--chunk-rows",
            "7",
        )
        assert one.exit_code == many.exit_code == 0, (one.output, many.output)

    one_label, many_label = (read(tmp_path / f"{n}-predict.csv") for n in ("one", "many"))
    pd.testing.assert_frame_equal(many_label, one_label)
    # The model's matrix products sum in an order that depends on the rows per call: the
    # probabilities of 7-row chunks may differ from those of one chunk in the last bit.
    one_proba, many_proba = (read(tmp_path / f"{n}-predict_proba.csv") for n in ("one", "many"))
    assert one_proba.columns.tolist() == ["row", "Adelie", "Chinstrap", "Gentoo"]
    assert many_proba["row"].tolist() == one_proba["row"].tolist()
    np.testing.assert_allclose(
        many_proba.to_numpy(dtype=float), one_proba.to_numpy(dtype=float), rtol=1e-13, atol=0
    )


def bad_penguins() -> pd.DataFrame:
    """The penguins with three rows spoiled (:data:`BAD_ROWS`): a text where a number goes,
    an island the model does not know, and no island, which the model cannot do without."""
    frame = dataset("penguins").astype(object)
    frame = frame.where(frame.notna(), None)
    frame.loc[3, "bill_length_mm"] = "abc"
    frame.loc[5, "island"] = "Atlantis"
    frame.loc[8, "island"] = None
    return frame


def good_rows() -> list[int]:
    """Return the rows of :func:`bad_penguins` that are not spoiled."""
    return [row for row in range(len(dataset("penguins"))) if row not in BAD_ROWS]


@pytest.mark.parametrize("source", ["csv", "jsonl"])
def test_skip_leaves_refused_rows_out_and_counts_them(
    score: Callable[..., Result], server: FlaskClient, tmp_path: Path, source: str
) -> None:
    given = write(bad_penguins(), tmp_path / f"bad{FORMATS[source]}")
    output = tmp_path / "scores.parquet"

    result = score("penguins", given, output, "--on-error", "skip", "--chunk-rows", "4")

    assert result.exit_code == 0, result.output
    scores = read(output)
    assert scores["row"].tolist() == good_rows()
    expected = served(server, "penguins", dataset("penguins").iloc[good_rows()])
    assert scores["prediction"].tolist() == expected
    assert "rows     344 read, 341 scored, 3 refused (left out)" in result.stdout
    for reason in (BAD_ROWS if source == "csv" else BAD_JSON_ROWS).values():
        assert f"       1  {reason}" in result.stdout


def test_mark_keeps_refused_rows_with_the_reason(
    score: Callable[..., Result], server: FlaskClient, tmp_path: Path
) -> None:
    given = write(bad_penguins(), tmp_path / "bad.csv")
    output = tmp_path / "scores.jsonl"

    result = score("penguins", given, output, "--on-error", "mark", "--chunk-rows", "5")

    assert result.exit_code == 0, result.output
    scores = read(output)
    assert list(scores.columns) == ["row", "prediction", "error"]
    assert scores["row"].tolist() == list(range(344))
    assert {row: scores["error"][row] for row in BAD_ROWS} == BAD_ROWS
    assert scores["prediction"][list(BAD_ROWS)].isna().all()
    good = scores.drop(index=list(BAD_ROWS))
    assert good["error"].isna().all()
    expected = served(server, "penguins", dataset("penguins").iloc[good_rows()])
    assert good["prediction"].tolist() == expected
    assert "rows     344 read, 341 scored, 3 refused (marked)" in result.stdout


@pytest.mark.parametrize(
    ("source", "first", "line"),
    [
        ("csv", 3, "row 3, CSV line 5, column 'bill_length_mm': 'abc' is not a number"),
        ("jsonl", 3, "row 3, feature 'bill_length_mm': expected a number, got a string"),
        ("csv", 5, "row 5, feature 'island': 'Atlantis' is not a category the model knows"),
        ("parquet", 8, "row 8, feature 'island': this feature cannot be missing"),
    ],
)
def test_fail_stops_at_the_first_refused_row_and_leaves_no_file(
    score: Callable[..., Result], tmp_path: Path, source: str, first: int, line: str
) -> None:
    frame = bad_penguins()
    for row in BAD_ROWS:
        if row < first:  # keep the row as it was
            frame.loc[row] = pd.Series(records(dataset("penguins").iloc[[row]])[0])
    if source == "parquet":  # Parquet columns have one type: a number column holds no text
        frame["bill_length_mm"] = frame["bill_length_mm"].astype(float)
    given = write(frame, tmp_path / f"bad{FORMATS[source]}")

    # Chunks of 4 rows: the refused row is in a later chunk than the first, or in the first.
    result = score("penguins", given, tmp_path / "scores.csv", "--chunk-rows", "4")

    assert result.exit_code == 1
    assert result.stdout == ""
    [error] = result.stderr.splitlines()
    assert error.startswith(f"Error: {line}"), error
    no_leftovers(tmp_path, given)


def test_unseen_categories_are_served_and_counted(
    score: Callable[..., Result], server: FlaskClient, tmp_path: Path
) -> None:
    frame = dataset("penguins")
    frame.loc[[2, 30, 31], "sex"] = "unknown"
    given = write(frame, tmp_path / "penguins.csv")

    result = score("penguins", given, tmp_path / "scores.csv")

    assert result.exit_code == 0, result.output
    assert read(tmp_path / "scores.csv")["prediction"].tolist() == served(server, "penguins", frame)
    assert "unseen          3  sex: categories the model never saw (served)" in result.stdout


def test_summary_and_progress(score: Callable[..., Result], tmp_path: Path) -> None:
    given = write(dataset("breast_cancer"), tmp_path / "cells.csv")
    output = tmp_path / "scores.parquet"

    quiet = score("breast_cancer", given, output)
    shown = score("breast_cancer", given, output, "--progress", "--chunk-rows", "100")

    assert quiet.exit_code == shown.exit_code == 0, (quiet.output, shown.output)
    lines = quiet.stdout.splitlines()
    assert lines[:-1] == [
        "model    breast_cancer version 1, predict, runtime sklearn, 1 worker",
        f"input    {given} (CSV)",
        "rows     569 read, 569 scored, 0 refused",
        f"output   {output} (Parquet)",
    ]
    assert lines[-1].startswith("time     ") and lines[-1].endswith(" rows/s")
    assert quiet.stderr == ""  # not a terminal: no progress bar unless asked
    assert "569/569" in shown.stderr and "rows/s" in shown.stderr and "100%" in shown.stderr


def test_two_workers_write_what_one_writes(
    score: Callable[..., Result], instance: Path, tmp_path: Path
) -> None:
    given = write(bad_penguins(), tmp_path / "bad.csv")
    one = score("penguins", given, tmp_path / "one.csv", "--on-error", "mark", "--chunk-rows", "9")
    assert one.exit_code == 0, one.output

    # The installed command, in its own process: the pool forks it, not pytest.
    script = Path(sys.executable).with_name("inference-app")
    two = subprocess.run(
        [str(script), "score", "penguins", str(given), str(tmp_path / "two.csv"), "--workers", "2"]
        + ["--on-error", "mark", "--chunk-rows", "9", "--instance-path", str(instance)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert two.returncode == 0, two.stderr
    assert (tmp_path / "two.csv").read_bytes() == (tmp_path / "one.csv").read_bytes()
    assert "2 workers" in two.stdout.splitlines()[0]
    assert two.stdout.splitlines()[2] == one.stdout.splitlines()[2]
    # The console script leaves without the interpreter's teardown: the summary is whole.
    assert two.stdout.splitlines()[-1].startswith("time     ")


def grouped_penguins(path: Path) -> Path:
    """Write the penguins to Parquet in row groups of 50 rows, an unknown island at row 120
    (the third group) and a missing one at row 260 (the sixth)."""
    frame = dataset("penguins")
    frame.loc[120, "island"] = "Atlantis"
    frame.loc[260, "island"] = None
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=50)
    assert pq.ParquetFile(path).metadata.num_row_groups == 7
    return path


def score_in_process(instance: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    """Run the installed command in its own process (a pool forks it, not pytest)."""
    script = Path(sys.executable).with_name("inference-app")
    return subprocess.run(
        [str(script), "score", *arguments, "--instance-path", str(instance)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("target", FORMATS)
def test_two_workers_read_parquet_row_groups_themselves_and_write_what_one_writes(
    score: Callable[..., Result], instance: Path, tmp_path: Path, target: str
) -> None:
    given = grouped_penguins(tmp_path / "grouped.parquet")
    options = ["--on-error", "mark", "--chunk-rows", "20"]
    one = score("penguins", given, tmp_path / f"one{FORMATS[target]}", *options)
    assert one.exit_code == 0, one.output

    output = tmp_path / f"two{FORMATS[target]}"
    two = score_in_process(
        instance, "penguins", str(given), str(output), "--workers", "2", *options
    )

    assert two.returncode == 0, two.stderr
    scores = read(output)
    assert scores.equals(read(tmp_path / f"one{FORMATS[target]}"))
    assert scores["row"].tolist() == list(range(344))
    assert scores["error"][120] == BAD_ROWS[5] and scores["error"][260] == BAD_ROWS[8]
    assert two.stdout.splitlines()[2] == one.stdout.splitlines()[2]
    assert "344 read, 342 scored, 2 refused" in two.stdout


def test_two_workers_name_the_first_refused_row_of_a_later_row_group(
    instance: Path, tmp_path: Path
) -> None:
    given = grouped_penguins(tmp_path / "grouped.parquet")

    result = score_in_process(
        instance, "penguins", str(given), str(tmp_path / "out.csv"), "--workers", "2"
    )

    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: row 120, feature 'island': 'Atlantis' is not a category"), line
    no_leftovers(tmp_path, given)


def test_two_workers_stop_at_the_first_refused_row(
    score: Callable[..., Result], tmp_path: Path
) -> None:
    given = write(bad_penguins(), tmp_path / "bad.jsonl")

    result = score("penguins", given, tmp_path / "out.csv", "--workers", "2", "--chunk-rows", "2")

    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: row 3, feature 'bill_length_mm': expected a number"), line
    no_leftovers(tmp_path, given)


def test_the_default_version_is_the_highest_as_served(
    runner: CliRunner,
    instance: Path,
    tmp_path: Path,
    new_iris_version: Callable[[Path, str], None],
) -> None:
    other = tmp_path / "instance"
    shutil.copytree(instance / "models" / "iris", other / "models" / "iris")
    for version in ("2", "10"):
        new_iris_version(other / "models", version)
    given = write(dataset("iris"), tmp_path / "iris.csv")

    def run(*options: str) -> Result:
        args = ["score", "iris", str(given), str(tmp_path / "out.csv"), "--workers", "1"]
        return runner.invoke(main, [*args, *options, "--instance-path", str(other)])

    assert run().stdout.startswith("model    iris version 10, predict")
    assert run("--version", "2").stdout.startswith("model    iris version 2, predict")
    [line] = run("--version", "7").stderr.splitlines()
    assert line == "Error: model 'iris' has no version '7'; it has 1, 2, 10"


def broken(tmp_path: Path, name: str, content: bytes) -> Path:
    """Write a file of ``content``."""
    path = tmp_path / name
    path.write_bytes(content)
    return path


HEADER = "island,bill_length_mm,bill_depth_mm,flipper_length_mm,body_mass_g,sex\n"
ROW = "Biscoe,46.5,14.8,217,5200,female\n"


@pytest.mark.parametrize(
    ("name", "make", "options", "expected"),
    [
        ("penguins", lambda d: d / "missing.csv", [], "missing.csv: cannot read: No such file"),
        ("nope", lambda d: broken(d, "in.csv", HEADER.encode()), [], "no model 'nope' in"),
        ("penguins", lambda d: broken(d, "in.txt", b"x"), [], "in.txt: unknown format '.txt'"),
        ("penguins", lambda d: broken(d, "in.csv", b""), [], "in.csv: empty; expected a header"),
        (
            "penguins",
            lambda d: broken(d, "in.parquet", b"PAR1 not really"),
            [],
            "in.parquet: not a valid Parquet file:",
        ),
        (
            "penguins",
            lambda d: broken(d, "in.csv", (HEADER + ROW + "Dream,1,2,3,4,male,extra\n").encode()),
            [],
            "in.csv:3: 7 cells for 6 columns",
        ),
        (
            "penguins",
            lambda d: broken(d, "in.csv", (HEADER + "Dream,1,2,3,4,male,extra\n" + ROW).encode()),
            [],
            "in.csv:2: more cells than the header's 6 columns",
        ),
        (
            "penguins",
            lambda d: broken(d, "in.csv", (HEADER + ROW + '"Dream,1,2,3,4,male\n').encode()),
            [],
            "in.csv: not a valid CSV file: Error tokenizing data. C error: EOF inside string",
        ),
        (
            "penguins",
            lambda d: broken(d, "in.csv", b"island,sex\nBiscoe,male\n"),
            [],
            "in.csv: no column 'bill_length_mm', 'bill_depth_mm'",
        ),
        (
            "penguins",
            lambda d: broken(d, "in.csv", (HEADER.replace("sex", "island") + ROW).encode()),
            [],
            "in.csv: the header names a column twice: 'island'",
        ),
        (
            "penguins",
            lambda d: broken(d, "in.csv", (HEADER + "Dr\xe9am,1,2,3,4,male\n").encode("latin-1")),
            [],
            "in.csv: not UTF-8 text",
        ),
        (
            "penguins",
            lambda d: broken(d, "in.jsonl", b'{"island": "Dream"}\n\n{"island": \n'),
            [],
            "in.jsonl:3: not JSON: Expecting value",
        ),
        (
            "penguins",
            lambda d: broken(d, "in.jsonl", b'["Dream", 1, 2, 3, 4, "male"]\n'),
            [],
            "in.jsonl:1: not a JSON object; each line holds one row",
        ),
        (
            "diabetes",
            lambda d: broken(d, "in.csv", b"age\n1\n"),
            ["--method", "predict_proba"],
            "model 'diabetes' has no method 'predict_proba'; it has predict",
        ),
        (
            "iris",
            lambda d: broken(d, "in.csv", b"a\n1\n"),
            ["--runtime", "onnx"],
            "model 'iris' version '1' has no ONNX model (--runtime onnx)",
        ),
    ],
)
def test_each_error_is_one_line_and_leaves_no_file(
    score: Callable[..., Result],
    tmp_path: Path,
    name: str,
    make: Callable[[Path], Path],
    options: list[str],
    expected: str,
) -> None:
    given = make(tmp_path)

    result = score(name, given, tmp_path / "out.csv", *options)

    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: ") and expected in line, line
    assert result.stdout == ""
    no_leftovers(tmp_path, *([given] if given.exists() else []))


@pytest.mark.parametrize("where", ["input", "folder", "extension"])
def test_an_output_that_cannot_be_written_is_one_line(
    score: Callable[..., Result], tmp_path: Path, where: str
) -> None:
    given = write(dataset("iris"), tmp_path / "iris.csv")
    output = {
        "input": given,
        "folder": tmp_path / "no" / "such" / "out.csv",
        "extension": tmp_path / "out.xlsx",
    }[where]

    result = score("iris", given, output)

    assert result.exit_code == 1, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith(f"Error: {output}: "), line
    no_leftovers(tmp_path, given)


@pytest.mark.parametrize("target", FORMATS)
def test_a_file_without_rows_gives_a_file_without_rows(
    score: Callable[..., Result], tmp_path: Path, target: str
) -> None:
    given = broken(tmp_path, "empty.csv", HEADER.encode())
    output = tmp_path / f"out{FORMATS[target]}"

    result = score("penguins", given, output, "--on-error", "mark")

    assert result.exit_code == 0, result.output
    assert "rows     0 read, 0 scored, 0 refused" in result.stdout
    if target == "csv":
        assert output.read_text() == "row,prediction,error\n"
    elif target == "parquet":
        assert pd.read_parquet(output).columns.tolist() == ["row", "prediction", "error"]
    else:
        assert output.read_bytes() == b""


def test_csv_cells_are_typed_as_the_api_types_csv(
    score: Callable[..., Result], server: FlaskClient, tmp_path: Path
) -> None:
    # Numbers pandas parses are read as the API's CSV reads them: the predictions equal
    # those of POST /invocations with the same CSV.
    text = (
        HEADER
        + "Biscoe, 46.5 ,1.48e1,217,+5200,female\n"
        + "Dream,4.9e1,19.5,,3950,\n"
        + "Torgersen,38.9,17.8,181.000,3625,\n"
        + "Biscoe,-0,.5,217,1E3,male\n"
    )
    given = broken(tmp_path, "cells.csv", text.encode())

    result = score("penguins", given, tmp_path / "out.jsonl")

    assert result.exit_code == 0, result.output
    answer = server.post(
        "/invocations",
        data=text,
        headers={"Content-Type": "text/csv", "X-Model-Name": "penguins"},
    )
    assert read(tmp_path / "out.jsonl")["prediction"].tolist() == answer.get_json()["predictions"]


def test_csv_cells_that_are_not_numbers_are_refused_as_the_api_refuses_them(
    score: Callable[..., Result], server: FlaskClient, tmp_path: Path
) -> None:
    lines = [
        "Biscoe,46.5,14.8,217,5_200,female\n",
        "Biscoe,46.5,14.8,217,nan,female\n",
        "Biscoe,46.5,14.8,217,inf,female\n",
        "Biscoe,46.5,14.8, ,5200,female\n",
    ]
    given = broken(tmp_path, "cells.csv", (HEADER + "".join(lines)).encode())

    result = score("penguins", given, tmp_path / "out.jsonl", "--on-error", "mark")

    assert result.exit_code == 0, result.output
    errors = read(tmp_path / "out.jsonl")["error"].tolist()
    assert errors[0] == "body_mass_g: Expected a number."
    assert errors[1] is None  # nan reads as a number, a missing one, which this feature may be
    assert errors[2].startswith("body_mass_g: Expected a finite number; infinity")
    assert errors[3] is None  # a blank cell is missing
    for line, error in zip(lines, errors, strict=True):
        answer = server.post(
            "/invocations",
            data=HEADER + line,
            headers={"Content-Type": "text/csv", "X-Model-Name": "penguins"},
        )
        assert (answer.status_code == 200) == (error is None), answer.get_json()


def test_a_text_model_scores_quoted_csv_text_as_the_server(
    runner: CliRunner, tmp_path_factory: pytest.TempPathFactory
) -> None:
    instance = tmp_path_factory.mktemp("text")
    cache = tmp_path_factory.mktemp("tweets")
    [written] = write_demo_bundles(instance / "models", names=["sentiment"], cache_dir=cache)
    assert written.bundle is not None, written.skipped
    texts, _ = load_tweets(cache)
    frame = pd.DataFrame({"text": texts["text"]})
    frame.loc[0, "text"] = 'a "quoted", comma\nand a line break'
    given = write(frame, instance / "tweets.csv")
    output = instance / "scores.parquet"

    result = runner.invoke(
        main,
        ["score", "sentiment", str(given), str(output), "--method", "predict_proba"]
        + ["--workers", "1", "--instance-path", str(instance)],
    )

    assert result.exit_code == 0, result.output
    server = create_app({"TESTING": True}, instance_path=instance).test_client()
    classes = server.get("/v1/models/sentiment").get_json()["classes"]
    scores = read(output)
    assert list(scores.columns) == ["row", *classes]
    assert scores[classes].to_numpy().tolist() == served(
        server, "sentiment", frame, "predict_proba"
    )


def test_the_onnx_engine_scores_as_the_server_under_runtime_onnx(
    runner: CliRunner, tmp_path_factory: pytest.TempPathFactory
) -> None:
    instance = tmp_path_factory.mktemp("onnx")
    [written] = write_demo_bundles(instance / "models", names=["penguins"], onnx=True)
    assert written.bundle is not None and written.bundle.onnx is not None
    given = write(dataset("penguins"), instance / "penguins.parquet")
    output = instance / "scores.jsonl"

    # Two workers: each makes its own onnxruntime session, after the fork.
    result = runner.invoke(
        main,
        ["score", "penguins", str(given), str(output), "--method", "predict_proba"]
        + ["--runtime", "onnx", "--workers", "2", "--chunk-rows", "100"]
        + ["--instance-path", str(instance)],
    )

    assert result.exit_code == 0, result.output
    assert "predict_proba, runtime onnx, 2 workers" in result.stdout
    server = create_app({"TESTING": True, "RUNTIME": "onnx"}, instance_path=instance)
    expected = served(server.test_client(), "penguins", dataset("penguins"), "predict_proba")
    scores = read(output)
    np.testing.assert_allclose(
        scores[["Adelie", "Chinstrap", "Gentoo"]].to_numpy(dtype=float), expected, rtol=1e-6
    )


def test_a_worker_that_cannot_make_its_engine_is_one_line(
    score: Callable[..., Result], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any) -> Any:
        raise BundleError("onnxruntime refuses the model")

    monkeypatch.setattr(batch, "_scorer", refuse)  # the forked workers inherit it
    given = write(dataset("iris"), tmp_path / "iris.csv")

    result = score("iris", given, tmp_path / "out.csv", "--workers", "2")

    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines() == ["Error: onnxruntime refuses the model"]
    no_leftovers(tmp_path, given)


def test_a_worker_that_dies_stops_the_job_in_one_line(
    score: Callable[..., Result], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scored = batch.score_chunk

    def die_at_row_60(scorer: Any, chunk: batch.Chunk) -> Any:
        if chunk.offset == 60:
            os._exit(9)  # as the kernel's out-of-memory killer would end it
        return scored(scorer, chunk)

    monkeypatch.setattr(batch, "score_chunk", die_at_row_60)
    given = write(dataset("iris"), tmp_path / "iris.csv")

    result = score("iris", given, tmp_path / "out.csv", "--workers", "2", "--chunk-rows", "30")

    assert result.exit_code == 1, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: a worker process stopped ("), line
    no_leftovers(tmp_path, given)


TRICKY_CSV = (
    "\ufeff\n"  # a byte-order mark, and a blank line before the header
    + HEADER
    + ROW * 5
    + "\n"  # a blank line
    + ROW * 4
    + "  \t\n"  # a line of spaces
    + ROW * 3
    + 'Dream,49,19.5,,3950,"fe\nmale"\n'  # a line break in a quoted cell
    + ROW.replace("\n", "\r\n") * 3
    + "Torgersen,38.9,17.8,181,3625,\n" * 6
    + "Biscoe,46.5,14.8,217,5200,female"  # no line feed at the end
)


@pytest.mark.parametrize("block", [16, 64, 1 << 20])
@pytest.mark.parametrize("chunk_rows", [1, 3, 100])
def test_csv_split_for_workers_reads_what_pandas_reads(
    instance: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int, chunk_rows: int
) -> None:
    path = tmp_path / "tricky.csv"
    path.write_text(TRICKY_CSV, encoding="utf-8")
    features = load_bundle(instance / "models" / "penguins" / "1").manifest.inputs
    monkeypatch.setattr(batch, "BLOCK_BYTES", block)
    whole = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={"island": str})
    assert len(whole) == 23

    for split in (False, True):
        chunks = list(batch.CsvReader(path, features, chunk_rows, split=split))
        frames = [
            c.table.parse() if isinstance(c.table, batch.CsvText) else c.table for c in chunks
        ]
        # Each chunk starts where the one before ends; at most chunk_rows rows each.
        assert [c.offset for c in chunks] == [0, *np.cumsum([len(f) for f in frames])[:-1]]
        assert max(len(frame) for frame in frames) <= chunk_rows
        joined = pd.concat(frames, ignore_index=True)
        pd.testing.assert_frame_equal(joined, whole[joined.columns], check_dtype=False)


def test_a_malformed_line_read_by_a_worker_is_named_in_the_file(
    score: Callable[..., Result], tmp_path: Path
) -> None:
    # With workers, plain lines are split off as bytes and parsed in the workers.
    lines = [HEADER, *[ROW] * 38, "Dream,1,2,3,4,male,extra\n", *[ROW] * 20]
    given = broken(tmp_path, "in.csv", "".join(lines).encode())

    result = score("penguins", given, tmp_path / "out.csv", "--workers", "2", "--chunk-rows", "8")

    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines() == [f"Error: {given}:40: 7 cells for 6 columns"]
    no_leftovers(tmp_path, given)


def first_line(result: Result) -> str:
    """Return the summary's first line: model, method, runtime, workers."""
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()[0]


def test_auto_scores_a_small_file_in_one_worker_and_says_why(
    score: Callable[..., Result], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batch, "available_cpus", lambda: 2)
    given = write(dataset("penguins"), tmp_path / "penguins.csv")
    grouped = grouped_penguins(tmp_path / "grouped.parquet")
    per_worker = f"{2 * batch.AUTO_ROWS_PER_WORKER:,}"

    for source in (given, grouped):
        # auto is the default; the fixture asks for 1 worker unless told
        output = tmp_path / "out.csv"
        line = first_line(
            score("penguins", source, output, "--workers", "auto", "--on-error", "mark")
        )
        assert line.endswith(f", 1 worker (auto: 344 rows; 2 need {per_worker})"), line


@pytest.mark.parametrize("source", ["parquet", "csv", "jsonl"])
def test_auto_takes_as_many_workers_as_rows_row_groups_and_cpus_allow(
    runner: CliRunner,
    instance: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    source: str,
) -> None:
    # Lowered thresholds stand for millions of rows; the forked workers inherit them.
    monkeypatch.setattr(batch, "AUTO_ROWS_PER_WORKER", 50)
    monkeypatch.setattr(batch, "available_cpus", lambda: 3)
    if source == "parquet":
        given = grouped_penguins(tmp_path / "grouped.parquet")  # 7 row groups of 50 rows
    else:
        given = write(bad_penguins(), tmp_path / f"penguins{FORMATS[source]}")
    options = ["--on-error", "mark", "--chunk-rows", "40", "--instance-path", str(instance)]

    def run(output: str, *more: str) -> Result:
        return runner.invoke(main, ["score", "penguins", str(given), output, *options, *more])

    one = run(str(tmp_path / "one.csv"), "--workers", "1")
    auto = run(str(tmp_path / "auto.csv"))
    assert first_line(one).endswith(", 1 worker")
    assert first_line(auto).endswith(", 3 workers (auto: 3 CPUs)")

    monkeypatch.setattr(batch, "AUTO_ROWS_PER_WORKER", 150)  # 344 rows: 2 workers
    fewer = run(str(tmp_path / "fewer.csv"))
    assert first_line(fewer).endswith(", 2 workers (auto: 344 rows; 3 need 450)")

    for name, result in (("auto", auto), ("fewer", fewer)):
        assert (tmp_path / f"{name}.csv").read_bytes() == (tmp_path / "one.csv").read_bytes()
        assert result.stdout.splitlines()[2] == one.stdout.splitlines()[2]  # rows, refused


def test_default_chunks_are_sized_in_values_not_rows(
    runner: CliRunner, instance: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert batch.default_chunk_rows(30) == 50_000  # the forest
    assert batch.default_chunk_rows(6) == 250_000  # penguins: the most rows
    assert batch.default_chunk_rows(100_000) == 1_000  # the fewest
    # Lowered: 600 values are 100 of penguins' 6-feature rows, so 344 rows are 4 chunks,
    # which auto (one worker per row here, 64 CPUs) shows as its limit.
    monkeypatch.setattr(batch, "CHUNK_CELLS", 600)
    monkeypatch.setattr(batch, "CHUNK_ROWS_RANGE", (1, 250_000))
    monkeypatch.setattr(batch, "AUTO_ROWS_PER_WORKER", 1)
    monkeypatch.setattr(batch, "available_cpus", lambda: 64)
    given = write(bad_penguins(), tmp_path / "penguins.csv")

    def run(output: Path, *more: str) -> Result:
        options = ["--on-error", "mark", "--instance-path", str(instance), *more]
        return runner.invoke(main, ["score", "penguins", str(given), str(output), *options])

    auto, one = run(tmp_path / "auto.csv"), run(tmp_path / "one.csv", "--workers", "1")
    assert first_line(auto).endswith(", 4 workers (auto: 4 chunks)"), auto.output
    assert first_line(one).endswith(", 1 worker"), one.output
    assert (tmp_path / "auto.csv").read_bytes() == (tmp_path / "one.csv").read_bytes()


def test_auto_takes_no_more_workers_than_parquet_row_groups(
    runner: CliRunner, instance: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batch, "AUTO_ROWS_PER_WORKER", 10)
    monkeypatch.setattr(batch, "available_cpus", lambda: 4)
    table = pa.Table.from_pandas(dataset("penguins"), preserve_index=False)
    expected = None
    for groups, row_group_size in ((1, 344), (2, 200)):
        given = tmp_path / f"groups-{groups}.parquet"
        pq.write_table(table, given, row_group_size=row_group_size)
        output = tmp_path / f"out-{groups}.parquet"
        arguments = ["score", "penguins", str(given), str(output)]
        result = runner.invoke(main, [*arguments, "--instance-path", str(instance)])
        # one row group is read by the command's own process: a worker would only wait
        plural = "s" if groups > 1 else ""
        assert first_line(result).endswith(
            f", {groups} worker{plural} (auto: {groups} row group{plural})"
        )
        scores = read(output)
        assert scores["row"].tolist() == list(range(344))
        expected = scores if expected is None else expected
        assert scores.equals(expected)


def test_an_explicit_worker_count_is_obeyed(
    score: Callable[..., Result], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batch, "available_cpus", lambda: 2)
    given = grouped_penguins(tmp_path / "grouped.parquet")
    outputs = {}
    for threshold, asked in ((10**9, "2"), (10, "1"), (10**9, "3")):
        monkeypatch.setattr(batch, "AUTO_ROWS_PER_WORKER", threshold)  # auto would say 1, 2, 1
        output = tmp_path / f"out-{asked}.parquet"
        line = first_line(
            score("penguins", given, output, "--workers", asked, "--on-error", "mark")
        )
        assert line.endswith(f", {asked} worker{'s' if asked != '1' else ''}"), line
        outputs[asked] = read(output)
    assert outputs["2"].equals(outputs["1"]) and outputs["3"].equals(outputs["1"])


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", ""])
def test_a_worker_count_that_is_neither_auto_nor_a_number_is_a_usage_error(
    score: Callable[..., Result], tmp_path: Path, value: str
) -> None:
    given = write(dataset("iris"), tmp_path / "iris.csv")

    result = score("iris", given, tmp_path / "out.csv", "--workers", value)

    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == (
        f"Error: Invalid value for '--workers': {value!r} is neither 'auto' nor a whole "
        "number of at least 1"
    )
    no_leftovers(tmp_path, given)


@pytest.mark.parametrize("source", ["csv", "jsonl"])
def test_auto_estimates_a_big_text_files_rows_from_its_size_or_counts_them_for_progress(
    runner: CliRunner,
    instance: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    source: str,
) -> None:
    frame = pd.concat([dataset("breast_cancer")] * 4, ignore_index=True)  # 2,276 rows
    given = write(frame, tmp_path / f"cancer{FORMATS[source]}")
    monkeypatch.setattr(batch, "SAMPLE_BYTES", 16384)  # stands for a file of gigabytes
    monkeypatch.setattr(batch, "AUTO_ROWS_PER_WORKER", 2000)
    features = load_bundle(instance / "models" / "breast_cancer" / "1").manifest.inputs
    reader = batch.READERS[source](given, features, 1000)
    assert isinstance(reader, batch.CsvReader | batch.JsonLinesReader)

    estimated, exact = reader.estimate_rows()

    assert not exact and abs(estimated - len(frame)) < 0.05 * len(frame)
    assert reader.count_rows() == len(frame)
    monkeypatch.setattr(batch, "available_cpus", lambda: 2)  # 2 workers, were there rows
    arguments = ["score", "breast_cancer", str(given), str(tmp_path / "out.csv")]
    quiet = runner.invoke(main, [*arguments, "--instance-path", str(instance)])
    shown = runner.invoke(main, [*arguments, "--progress", "--instance-path", str(instance)])

    # Without a progress bar the rows are estimated (three significant digits shown); the
    # bar's count is exact.
    found = re.search(r", 1 worker \(auto: about ([\d,]+) rows; 2 need 4,000\)$", first_line(quiet))
    assert found is not None, first_line(quiet)
    assert abs(int(found[1].replace(",", "")) - len(frame)) < 0.05 * len(frame)
    assert first_line(shown).endswith(", 1 worker (auto: 2,276 rows; 2 need 4,000)")


def test_an_estimate_just_short_of_two_workers_rows_is_shown_short_of_them() -> None:
    need = 2 * batch.AUTO_ROWS_PER_WORKER
    short = batch.auto_workers(need - 1, parts=100, cpus=2, exact=False)
    enough = batch.auto_workers(need, parts=100, cpus=2, exact=False)

    assert short.count == 1 and short.reason is not None
    found = re.fullmatch(rf"about ([\d,]+) rows; 2 need {need:,}", short.reason)
    assert found is not None, short.reason
    assert 0.99 * need <= int(found[1].replace(",", "")) < need  # not "about 1,000,000"
    assert enough == batch.Workers(2, "2 CPUs")
