"""The dataplane: warm-up and readiness, methods, missing values, and strict JSON outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_wine
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from inference_app.core.bundle import MANIFEST_FILE, write_bundle
from inference_app.core.dataplane import DataPlane, json_values
from inference_app.core.errors import (
    BundleError,
    InvalidOutputError,
    MethodNotAvailableError,
    ModelNotReadyError,
)
from inference_app.core.registry import Registry


def test_dataframe_fitted_pipeline_is_served_in_its_column_order(tmp_path: Path) -> None:
    wine = load_wine(as_frame=True)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(wine.data, wine.target)
    write_bundle(model, wine.data, tmp_path, "wine", "1")
    registry = Registry(tmp_path)
    registry.load()
    dataplane = DataPlane(registry)
    dataplane.warm_up()
    records = wine.data.iloc[:, ::-1].to_dict(orient="records")
    # filterwarnings=error: scikit-learn's "X does not have valid feature names" would fail here.
    prediction = dataplane.predict("wine", records, method="predict_proba")
    np.testing.assert_allclose(
        prediction.outputs[0].values, model.predict_proba(wine.data), rtol=1e-12
    )
    assert prediction.outputs[0].classes == [0, 1, 2]


def test_missing_values_reach_an_estimator_that_accepts_them(tmp_path: Path) -> None:
    wine = load_wine()
    rows = wine.data.copy()
    rows[::7, 3] = np.nan
    model = HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(rows, wine.target)
    write_bundle(model, rows, tmp_path, "wine", "1", feature_names=wine.feature_names)
    registry = Registry(tmp_path)
    registry.load()
    dataplane = DataPlane(registry)
    dataplane.warm_up()
    instances = [[None if np.isnan(value) else value for value in row] for row in rows.tolist()]
    prediction = dataplane.predict("wine", instances)
    assert prediction.outputs[0].values == model.predict(rows).tolist()


@pytest.fixture
def iris_registry(demo_instance: Path) -> Registry:
    """A registry over the demo bundles, loaded but not warmed up."""
    registry = Registry(demo_instance / "models")
    registry.load()
    return registry


def test_models_are_not_ready_until_warmed(iris_registry: Registry) -> None:
    dataplane = DataPlane(iris_registry)
    with pytest.raises(ModelNotReadyError, match="warming up"):
        dataplane.predict("iris", [[5.1, 3.5, 1.4, 0.2]])
    dataplane.warm_up()
    assert dataplane.predict("iris", [[5.1, 3.5, 1.4, 0.2]]).outputs[0].values == ["setosa"]


def test_unavailable_method(iris_registry: Registry) -> None:
    dataplane = DataPlane(iris_registry)
    dataplane.warm_up()
    with pytest.raises(MethodNotAvailableError, match="it has predict$"):
        dataplane.predict("diabetes", [[0.0] * 10], method="decision_function")


def test_a_model_failing_on_its_reference_rows_fails_warm_up(tmp_path: Path) -> None:
    wine = load_wine()
    model = LogisticRegression(max_iter=5000).fit(wine.data, wine.target)
    bundle = write_bundle(model, wine.data, tmp_path, "wine", "1")
    manifest_path = bundle.path / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest["reference"]["rows"] = [[1.0, 2.0]]  # 2 values for 13 features
    manifest_path.write_text(json.dumps(manifest))
    registry = Registry(tmp_path)
    registry.load()
    with pytest.raises(BundleError, match="model 'wine' version '1' failed to predict"):
        DataPlane(registry).warm_up()
    assert registry.readiness()[0] is False


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_json_values_refuse_non_finite_outputs(bad: float) -> None:
    outputs = np.array([[0.5, 0.5], [bad, 1.0]])
    with pytest.raises(InvalidOutputError, match="output for row 1 is not a finite number"):
        json_values(outputs)


def test_json_values_are_native() -> None:
    values = json_values(np.array(["setosa", "virginica"], dtype=object))
    assert values == ["setosa", "virginica"]
    numbers = json_values(np.array([1, 2], dtype=np.int64))
    assert numbers == [1, 2] and type(numbers[0]) is int
