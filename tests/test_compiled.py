"""The optional ONNX runtime: conversions checked against scikit-learn, served, or refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.tree import DecisionTreeClassifier

from inference_app import create_app
from inference_app.cli import main
from inference_app.core.bundle import ONNX_FILE, load_bundle, write_bundle
from inference_app.core.compiled import TOLERANCE
from inference_app.core.errors import BundleError
from inference_app.core.registry import Registry
from inference_app.core.runtime import Runtime
from inference_app.demo import DEMOS, load_demo_data


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo models, each packaged with its ONNX conversion."""
    models = tmp_path_factory.mktemp("onnx") / "models"
    for name, (_, make) in DEMOS.items():
        rows, target, names = load_demo_data(name)
        write_bundle(
            make().fit(rows, target), rows, models, name, "1", feature_names=names, onnx=True
        )
    return models


@pytest.mark.parametrize("name", list(DEMOS))
def test_onnx_answers_match_scikit_learn_on_full_datasets(onnx_models: Path, name: str) -> None:
    registry = Registry(onnx_models)
    registry.load()
    runtime = Runtime(registry, engine="onnx")
    runtime.warm_up()
    bundle = registry.get(name)
    assert runtime.engine_of(bundle) == "onnx"
    rows, _, _ = load_demo_data(name)
    estimator = bundle.estimator
    predicted = runtime.predict(name, rows.tolist())
    if name == "diabetes":
        np.testing.assert_allclose(predicted.outputs, estimator.predict(rows), rtol=1e-9)
    else:
        assert predicted.outputs == estimator.predict(rows).tolist()  # labels exactly
        probabilities = runtime.predict(name, rows.tolist(), method="predict_proba")
        np.testing.assert_allclose(
            probabilities.outputs, estimator.predict_proba(rows), atol=TOLERANCE, rtol=0
        )
        assert probabilities.classes == estimator.classes_.tolist()


def test_forest_conversion_compares_in_float32_like_scikit_learn(onnx_models: Path) -> None:
    manifest = json.loads((onnx_models / "breast_cancer" / "1" / "model.json").read_text())
    assert manifest["onnx"]["input_dtype"] == "float32"
    assert manifest["onnx"]["outputs"] == {"predict": "label", "predict_proba": "probabilities"}
    linear = json.loads((onnx_models / "iris" / "1" / "model.json").read_text())
    assert linear["onnx"]["input_dtype"] == "float64"


def test_methods_onnx_lacks_fall_back_to_scikit_learn(onnx_models: Path) -> None:
    registry = Registry(onnx_models)
    registry.load()
    runtime = Runtime(registry)
    runtime.warm_up()
    rows, _, _ = load_demo_data("iris")
    scores = runtime.predict("iris", rows.tolist(), method="decision_function")
    np.testing.assert_allclose(
        scores.outputs, registry.get("iris").estimator.decision_function(rows)
    )


def test_an_unconvertible_estimator_is_packaged_without_onnx_saying_why(tmp_path: Path) -> None:
    rows, target, names = load_demo_data("iris")
    model = make_pipeline(FunctionTransformer(np.sqrt), DecisionTreeClassifier(random_state=0))
    model.fit(rows, target)
    bundle = write_bundle(model, rows, tmp_path, "custom", "1", feature_names=names, onnx=True)
    assert bundle.onnx is None and not (bundle.path / ONNX_FILE).exists()
    assert "scikit-learn serves it" in bundle.warnings[0]
    assert "skl2onnx cannot convert" in bundle.warnings[0]


def test_a_tampered_onnx_file_is_refused(onnx_models: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "models"
    shutil.copytree(onnx_models, copy)
    with (copy / "iris" / "1" / ONNX_FILE).open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BundleError, match="model.onnx: sha256 mismatch"):
        load_bundle(copy / "iris" / "1")


def test_runtime_settings(onnx_models: Path, demo_instance: Path) -> None:
    instance = onnx_models.parent
    auto = create_app(instance_path=instance)
    assert auto.test_client().get("/v1/models/iris").get_json()["runtime"] == "onnx"
    forced = create_app({"RUNTIME": "sklearn"}, instance_path=instance)
    assert forced.test_client().get("/v1/models/iris").get_json()["runtime"] == "sklearn"
    # The demo bundles have no ONNX model: RUNTIME onnx refuses to serve them.
    with pytest.raises(BundleError, match="has no ONNX model"):
        create_app({"RUNTIME": "onnx"}, instance_path=demo_instance)


def test_package_with_onnx(tmp_path: Path) -> None:
    import joblib
    import pandas as pd

    rows, target, names = load_demo_data("breast_cancer")
    estimator = DEMOS["breast_cancer"][1]().fit(rows, target)
    joblib.dump(estimator, tmp_path / "forest.joblib")
    pd.DataFrame(rows, columns=names).to_csv(tmp_path / "sample.csv", index=False)
    result = CliRunner().invoke(
        main,
        [
            "package",
            str(tmp_path / "forest.joblib"),
            "--name",
            "bc",
            "--version",
            "1",
            "--sample",
            str(tmp_path / "sample.csv"),
            "--onnx",
            "--instance-path",
            str(tmp_path / "instance"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "with an ONNX model (float32 input)" in result.output
    assert (tmp_path / "instance" / "models" / "bc" / "1" / ONNX_FILE).is_file()
