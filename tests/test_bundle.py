"""Tests of writing, verifying and loading model bundles fitted on scikit-learn's datasets."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
import sklearn
from sklearn import datasets
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from inference_app.core.bundle import (
    HISTOGRAM_BINS,
    JOBLIB_FILE,
    MANIFEST_FILE,
    METHODS,
    REFERENCE_ROWS,
    load_bundle,
    write_bundle,
)
from inference_app.core.errors import BundleError

#: Each dataset: its loader, a factory of an unfitted estimator, and the task.
DATASETS: dict[str, tuple[Callable[..., Any], Callable[[], Any], str]] = {
    "iris": (datasets.load_iris, lambda: LogisticRegression(max_iter=1000), "classification"),
    "wine": (
        datasets.load_wine,
        lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
        "classification",
    ),
    "breast_cancer": (
        datasets.load_breast_cancer,
        lambda: RandomForestClassifier(n_estimators=10, random_state=0),
        "classification",
    ),
    "diabetes": (datasets.load_diabetes, Ridge, "regression"),
    "digits": (
        datasets.load_digits,
        lambda: DecisionTreeClassifier(random_state=0),
        "classification",
    ),
}


@dataclass(frozen=True)
class Fitted:
    """An estimator fitted on a whole bundled dataset, and that dataset."""

    name: str
    rows: Any
    target: Any
    feature_names: list[str]
    estimator: Any
    task: str


@functools.cache
def fitted(name: str, *, as_frame: bool = False) -> Fitted:
    """Return the estimator of ``DATASETS[name]`` fitted on its array or DataFrame, once."""
    loader, make_estimator, task = DATASETS[name]
    rows, target = loader(return_X_y=True, as_frame=as_frame)
    names = [str(column) for column in loader().feature_names]
    estimator = make_estimator().fit(rows, target)
    return Fitted(name, rows, target, names, estimator, task)


def read_manifest(folder: Path) -> dict[str, Any]:
    """Return ``model.json`` parsed as strict JSON (NaN and infinity are refused)."""

    def refuse(constant: str) -> None:
        raise ValueError(f"model.json holds {constant}")

    return json.loads((folder / MANIFEST_FILE).read_text("utf-8"), parse_constant=refuse)


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Replace ``model.json`` in ``folder``."""
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest), "utf-8")


@pytest.fixture
def iris_bundle(tmp_path: Path) -> Path:
    """A bundle folder ``<tmp>/models/iris/1`` of logistic regression on iris."""
    case = fitted("iris")
    return write_bundle(case.estimator, case.rows, tmp_path / "models", "iris", "1").path


@pytest.mark.parametrize("dataset", DATASETS)
def test_manifest_describes_the_estimator_and_its_sample(tmp_path: Path, dataset: str) -> None:
    case = fitted(dataset)
    rows = np.asarray(case.rows)
    started = dt.datetime.now(dt.UTC)
    bundle = write_bundle(
        case.estimator, rows, tmp_path, dataset, "3", feature_names=case.feature_names
    )
    folder = tmp_path / dataset / "3"
    assert bundle.path == folder
    manifest = read_manifest(folder)

    assert manifest["name"] == dataset
    assert manifest["version"] == "3"
    assert manifest["format"] == "joblib"
    assert manifest["file"] == JOBLIB_FILE
    assert manifest["sha256"] == hashlib.sha256((folder / JOBLIB_FILE).read_bytes()).hexdigest()
    assert manifest["task"] == case.task
    assert manifest["methods"] == [m for m in METHODS if hasattr(case.estimator, m)]
    assert manifest["sklearn_version"] == sklearn.__version__
    created = dt.datetime.fromisoformat(manifest["created"])
    assert created.tzinfo is not None
    assert started - dt.timedelta(seconds=1) <= created <= dt.datetime.now(dt.UTC)

    inputs = manifest["inputs"]
    assert [feature["name"] for feature in inputs] == case.feature_names
    assert {feature["datatype"] for feature in inputs} == {"FP64"}
    assert [feature["min"] for feature in inputs] == rows.min(axis=0).tolist()
    assert [feature["max"] for feature in inputs] == rows.max(axis=0).tolist()

    if case.task == "classification":
        assert manifest["classes"] == case.estimator.classes_.tolist()
        assert all(type(label) is int for label in bundle.manifest.classes or ())
    else:
        assert manifest["classes"] is None

    reference = manifest["reference"]
    assert reference["n_samples"] == rows.shape[0]
    assert reference["rows"] == rows[:REFERENCE_ROWS].tolist()
    assert list(reference["histograms"]) == case.feature_names
    for index, histogram in enumerate(reference["histograms"].values()):
        assert len(histogram["counts"]) == HISTOGRAM_BINS
        assert len(histogram["bin_edges"]) == HISTOGRAM_BINS + 1
        assert sum(histogram["counts"]) == rows.shape[0]
        assert histogram["bin_edges"][0] <= rows[:, index].min()
        assert histogram["bin_edges"][-1] >= rows[:, index].max()

    # What write_bundle returns is what load_bundle reads back.
    assert load_bundle(folder).manifest == bundle.manifest


@pytest.mark.parametrize("as_frame", [False, True], ids=["array", "frame"])
@pytest.mark.parametrize("dataset", DATASETS)
def test_load_round_trips_predictions(tmp_path: Path, dataset: str, as_frame: bool) -> None:
    case = fitted(dataset, as_frame=as_frame)
    names = case.feature_names
    write_bundle(case.estimator, case.rows, tmp_path, dataset, "1", feature_names=names)

    bundle = load_bundle(tmp_path / dataset / "1")

    assert bundle.name == dataset
    assert bundle.version == "1"
    assert bundle.warnings == ()
    assert bundle.estimator is not case.estimator
    assert type(bundle.estimator) is type(case.estimator)
    assert bundle.manifest.feature_names == case.feature_names
    np.testing.assert_array_equal(
        bundle.estimator.predict(case.rows), case.estimator.predict(case.rows)
    )
    if as_frame:
        assert list(case.rows.columns) == case.feature_names
        assert bundle.estimator.feature_names_in_.tolist() == case.feature_names
    else:
        assert not hasattr(bundle.estimator, "feature_names_in_")


def test_array_sample_without_names_gets_positional_names(tmp_path: Path) -> None:
    case = fitted("diabetes")
    bundle = write_bundle(case.estimator, case.rows, tmp_path, "diabetes", "1")
    assert bundle.manifest.feature_names == [f"x{index}" for index in range(10)]


@pytest.mark.parametrize(
    ("dtype", "datatype", "python_type"),
    [
        ("float64", "FP64", float),
        ("float32", "FP32", float),
        ("int64", "INT64", int),
        ("int32", "INT64", int),
        ("uint8", "INT64", int),
        ("bool", "BOOL", bool),
    ],
)
def test_frame_column_dtypes_become_datatypes(
    tmp_path: Path, dtype: str, datatype: str, python_type: type
) -> None:
    frame, target = datasets.load_iris(return_X_y=True, as_frame=True)
    petal = frame["petal length (cm)"]
    extra = petal > 4 if dtype == "bool" else (petal * 10).round().astype(dtype)
    frame = frame.assign(extra=extra.astype(dtype))
    estimator = DecisionTreeClassifier(random_state=0).fit(frame, target)

    bundle = write_bundle(estimator, frame, tmp_path, "iris", "1")

    features = {feature.name: feature for feature in bundle.manifest.inputs}
    assert list(features) == list(frame.columns)
    assert features["extra"].datatype == datatype
    assert {features[name].datatype for name in frame.columns[:4]} == {"FP64"}
    assert features["extra"].min == float(frame["extra"].min())
    assert features["extra"].max == float(frame["extra"].max())
    manifest = read_manifest(tmp_path / "iris" / "1")
    assert manifest["inputs"][4]["datatype"] == datatype
    first = manifest["reference"]["rows"][0]
    assert type(first[4]) is python_type
    assert first[4] == frame["extra"].iloc[0]
    loaded = load_bundle(tmp_path / "iris" / "1")
    np.testing.assert_array_equal(loaded.estimator.predict(frame), estimator.predict(frame))


@pytest.mark.parametrize("dtype", ["object", "str", "category"])
def test_a_sample_the_estimator_cannot_take_is_refused(tmp_path: Path, dtype: str) -> None:
    frame, target = datasets.load_iris(return_X_y=True, as_frame=True)
    colour = np.where(frame["sepal width (cm)"] > 3, "blue", "red")
    numeric = frame.assign(colour=(colour == "blue").astype(float))
    estimator = DecisionTreeClassifier(random_state=0).fit(numeric.to_numpy(), target)
    sample = frame.assign(colour=pd.Series(colour, index=frame.index, dtype=dtype))

    with pytest.raises(BundleError, match="cannot predict the sample's first rows.*'blue'"):
        write_bundle(estimator, sample, tmp_path, "iris", "1")
    assert not (tmp_path / "iris").exists()


@pytest.mark.parametrize(
    "make_sample",
    [
        pytest.param(lambda rows: rows[:, :3], id="fewer-columns"),
        pytest.param(lambda rows: np.hstack([rows, rows[:, :1]]), id="more-columns"),
        pytest.param(lambda rows: rows[:, 0], id="one-dimensional"),
        pytest.param(lambda rows: rows[:0], id="no-rows"),
    ],
)
def test_sample_that_does_not_fit_the_estimator_is_refused(
    tmp_path: Path, make_sample: Callable[[np.ndarray], np.ndarray]
) -> None:
    case = fitted("iris")
    with pytest.raises(BundleError, match="sample|features"):
        write_bundle(case.estimator, make_sample(case.rows), tmp_path, "iris", "1")
    assert not (tmp_path / "iris").exists()


def test_frame_with_columns_other_than_fitted_names_is_refused(tmp_path: Path) -> None:
    case = fitted("iris", as_frame=True)
    reordered = case.rows[case.rows.columns[::-1]]
    with pytest.raises(BundleError, match="feature_names_in_"):
        write_bundle(case.estimator, reordered, tmp_path, "iris", "1")


def test_existing_bundle_is_kept_unless_overwrite(tmp_path: Path, iris_bundle: Path) -> None:
    models = iris_bundle.parent.parent
    before = {path.name: path.read_bytes() for path in iris_bundle.iterdir()}
    tree = DecisionTreeClassifier(random_state=0).fit(*datasets.load_iris(return_X_y=True))

    with pytest.raises(BundleError, match="overwrite"):
        write_bundle(tree, fitted("iris").rows, models, "iris", "1")
    assert {path.name: path.read_bytes() for path in iris_bundle.iterdir()} == before

    write_bundle(tree, fitted("iris").rows, models, "iris", "1", overwrite=True)
    assert read_manifest(iris_bundle)["estimator"].endswith("DecisionTreeClassifier")
    assert isinstance(load_bundle(iris_bundle).estimator, DecisionTreeClassifier)


@pytest.mark.parametrize("field", ["name", "version"])
@pytest.mark.parametrize(
    "value",
    [
        "../x",
        "..",
        ".",
        "a/b",
        "/abs",
        "a\\b",
        ".hidden",
        "",
        "-flag",
        "x" * 129,
        "x\n",
    ],
)
def test_unsafe_name_or_version_is_refused(tmp_path: Path, field: str, value: str) -> None:
    case = fitted("iris")
    names = {"name": "iris", "version": "1", field: value}
    models = tmp_path / "models"
    with pytest.raises(BundleError, match="not allowed"):
        write_bundle(case.estimator, case.rows, models, names["name"], names["version"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda data, other: data + b"\0", id="appended-byte"),
        pytest.param(lambda data, other: data[:-1], id="truncated"),
        pytest.param(lambda data, other: other, id="other-estimator"),
        pytest.param(lambda data, other: b"", id="emptied"),
    ],
)
def test_tampered_estimator_file_is_refused(
    iris_bundle: Path, tamper: Callable[[bytes, bytes], bytes]
) -> None:
    other = iris_bundle.parent / "other.joblib"
    joblib.dump(DecisionTreeClassifier().fit(*datasets.load_iris(return_X_y=True)), other)
    file = iris_bundle / JOBLIB_FILE
    file.write_bytes(tamper(file.read_bytes(), other.read_bytes()))

    with pytest.raises(BundleError) as caught:
        load_bundle(iris_bundle)
    message = str(caught.value)
    assert JOBLIB_FILE in message
    assert "sha256 mismatch" in message


def _set_input(manifest: dict[str, Any], key: str, value: Any) -> None:
    manifest["inputs"][0][key] = value


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        pytest.param(lambda m: m.update(name="wine"), "names model", id="other-name"),
        pytest.param(lambda m: m.update(version="2"), "names model", id="other-version"),
        pytest.param(lambda m: _set_input(m, "datatype", "FP16"), "datatype", id="datatype"),
        pytest.param(lambda m: _set_input(m, "unit", "cm"), "field", id="unknown-input-key"),
        pytest.param(lambda m: m.update(file="../x.joblib"), "file", id="file-escapes"),
        pytest.param(lambda m: m.update(file=".model.joblib"), "file", id="hidden-file"),
        pytest.param(lambda m: m.update(classes=[2, 1, 0]), "classes", id="classes-order"),
        pytest.param(lambda m: m.update(classes=["a", "b", "c"]), "classes", id="classes"),
        pytest.param(lambda m: m["inputs"].pop(), "features", id="fewer-inputs"),
        pytest.param(lambda m: m["inputs"].append(m["inputs"][0]), "features", id="more-inputs"),
        pytest.param(lambda m: m.update(format="onnx"), "format", id="format"),
        pytest.param(lambda m: m.update(methods=["transform"]), "methods", id="methods"),
        pytest.param(lambda m: m.pop("inputs"), "inputs", id="no-inputs"),
        pytest.param(lambda m: m.pop("sha256"), "sha256 mismatch", id="no-sha256"),
        pytest.param(lambda m: m.update(sha256="0" * 64), "sha256 mismatch", id="wrong-sha256"),
    ],
)
def test_manifest_contradicting_its_bundle_is_refused(
    iris_bundle: Path, edit: Callable[[dict[str, Any]], Any], message: str
) -> None:
    # A copy where "../x.joblib" points, so only the path itself can make it refused.
    shutil.copy(iris_bundle / JOBLIB_FILE, iris_bundle.parent / "x.joblib")
    shutil.copy(iris_bundle / JOBLIB_FILE, iris_bundle / ".model.joblib")
    manifest = read_manifest(iris_bundle)
    edit(manifest)
    write_manifest(iris_bundle, manifest)

    with pytest.raises(BundleError, match=message):
        load_bundle(iris_bundle)


@pytest.mark.parametrize("text", [b"{", b"[]", b"null", b"\xff\xfe", b""])
def test_unreadable_manifest_is_refused(iris_bundle: Path, text: bytes) -> None:
    (iris_bundle / MANIFEST_FILE).write_bytes(text)
    with pytest.raises(BundleError, match=MANIFEST_FILE):
        load_bundle(iris_bundle)


@pytest.mark.parametrize(
    ("dataset", "as_frame"),
    [("iris", False), ("iris", True), ("diabetes", False), ("wine", True)],
)
def test_bare_estimator_file_loads_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, dataset: str, as_frame: bool
) -> None:
    case = fitted(dataset, as_frame=as_frame)
    folder = tmp_path / dataset / "1"
    folder.mkdir(parents=True)
    joblib.dump(case.estimator, folder / JOBLIB_FILE)

    with caplog.at_level(logging.WARNING, logger="inference_app"):
        bundle = load_bundle(folder)

    assert len(bundle.warnings) == 1
    assert MANIFEST_FILE in bundle.warnings[0]
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, bundle.warnings[0])
    ]
    width = len(case.feature_names)
    expected = case.feature_names if as_frame else [f"x{index}" for index in range(width)]
    manifest = bundle.manifest
    assert manifest.feature_names == expected
    assert (manifest.name, manifest.version, manifest.task) == (dataset, "1", case.task)
    assert manifest.sha256 is None
    if case.task == "classification":
        assert list(manifest.classes or ()) == case.estimator.classes_.tolist()
    else:
        assert manifest.classes is None
    assert np.shape(manifest.reference_rows) == (1, width)
    np.testing.assert_array_equal(
        bundle.estimator.predict(case.rows), case.estimator.predict(case.rows)
    )


@pytest.mark.parametrize(
    "make_payload",
    [
        pytest.param(lambda: {"coef": [1.0, 2.0]}, id="dict"),
        pytest.param(lambda: np.arange(4.0), id="array"),
        pytest.param(
            lambda: StandardScaler().fit(datasets.load_iris().data),
            id="transformer-without-predict",
        ),
    ],
)
@pytest.mark.parametrize("with_manifest", [False, True], ids=["bare", "with-manifest"])
def test_pickle_that_is_not_an_estimator_is_refused(
    iris_bundle: Path, make_payload: Callable[[], Any], with_manifest: bool
) -> None:
    file = iris_bundle / JOBLIB_FILE
    joblib.dump(make_payload(), file)
    if with_manifest:
        manifest = read_manifest(iris_bundle)
        manifest["sha256"] = hashlib.sha256(file.read_bytes()).hexdigest()
        write_manifest(iris_bundle, manifest)
    else:
        (iris_bundle / MANIFEST_FILE).unlink()

    with pytest.raises(BundleError, match="no predict"):
        load_bundle(iris_bundle)


@pytest.mark.parametrize("content", [b"", b"not a pickle", b"\x80\x05K"])
def test_bare_file_that_does_not_unpickle_is_refused(tmp_path: Path, content: bytes) -> None:
    folder = tmp_path / "iris" / "1"
    folder.mkdir(parents=True)
    (folder / JOBLIB_FILE).write_bytes(content)
    with pytest.raises(BundleError, match="cannot load"):
        load_bundle(folder)


def test_folder_without_estimator_file_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "iris" / "1"
    folder.mkdir(parents=True)
    with pytest.raises(BundleError, match="no model.json, no model.joblib and no model.skops"):
        load_bundle(folder)


@pytest.mark.parametrize(
    ("make_estimator", "allow_nan"),
    [
        (lambda: HistGradientBoostingClassifier(max_iter=10, random_state=0), True),
        (lambda: LogisticRegression(max_iter=10_000), False),
    ],
    ids=["HistGradientBoostingClassifier", "LogisticRegression"],
)
def test_allow_nan_is_recorded(
    tmp_path: Path, make_estimator: Callable[[], Any], allow_nan: bool
) -> None:
    rows, target = datasets.load_breast_cancer(return_X_y=True)
    estimator = make_estimator().fit(rows, target)
    write_bundle(estimator, rows, tmp_path, "breast_cancer", "1")

    assert read_manifest(tmp_path / "breast_cancer" / "1")["allow_nan"] is allow_nan
    assert load_bundle(tmp_path / "breast_cancer" / "1").manifest.allow_nan is allow_nan


def test_missing_values_in_the_sample_are_left_out_of_statistics(tmp_path: Path) -> None:
    rows, target = datasets.load_breast_cancer(return_X_y=True)
    rows = rows.copy()
    rows[::7, 0] = np.nan
    rows[0, 1] = np.nan
    estimator = HistGradientBoostingClassifier(max_iter=10, random_state=0).fit(rows, target)

    bundle = write_bundle(estimator, rows, tmp_path, "breast_cancer", "1")

    manifest = read_manifest(tmp_path / "breast_cancer" / "1")
    histograms = list(manifest["reference"]["histograms"].values())
    assert sum(histograms[0]["counts"]) == np.isfinite(rows[:, 0]).sum()
    assert sum(histograms[2]["counts"]) == rows.shape[0]
    assert manifest["inputs"][0]["min"] == np.nanmin(rows[:, 0])
    assert manifest["inputs"][0]["max"] == np.nanmax(rows[:, 0])
    assert histograms[0]["missing"] == np.isnan(rows[:, 0]).sum()
    # Reference rows (examples, warm-up) are complete rows while the sample has some.
    assert all(None not in row for row in manifest["reference"]["rows"])
    assert bundle.manifest.allow_nan is True
