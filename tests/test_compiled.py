"""The optional ONNX runtime: conversions checked against scikit-learn, served, or refused."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sklearn.ensemble
import sklearn.linear_model
import sklearn.tree
from click.testing import CliRunner
from palmerpenguins import load_penguins
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler
from sklearn.tree import DecisionTreeClassifier

from inference_app import create_app
from inference_app.cli import main
from inference_app.core import compiled
from inference_app.core.bundle import ONNX_FILE, load_bundle, write_bundle
from inference_app.core.compiled import TOLERANCE, CompiledModel, Conversion, convert
from inference_app.core.dataplane import DataPlane
from inference_app.core.errors import BundleError
from inference_app.core.registry import Registry
from inference_app.demo import DEMOS, load_demo_data

METHODS = ("predict", "predict_proba")
NUMERIC = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]


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
    dataplane = DataPlane(registry, engine="onnx")
    dataplane.warm_up()
    bundle = registry.get(name)
    assert dataplane.engine_of(bundle) == "onnx"
    assert bundle.onnx is not None and bundle.onnx.layout == "matrix" and not bundle.onnx.inputs
    rows, _, _ = load_demo_data(name)
    estimator = bundle.estimator
    predicted = dataplane.predict(name, rows.tolist()).output("predict")
    if name == "diabetes":
        np.testing.assert_allclose(predicted.values, estimator.predict(rows), rtol=1e-9)
    else:
        assert predicted.values == estimator.predict(rows).tolist()  # labels exactly
        probabilities = dataplane.predict(name, rows.tolist(), method="predict_proba")
        np.testing.assert_allclose(
            probabilities.output("predict_proba").values,
            estimator.predict_proba(rows),
            atol=TOLERANCE,
            rtol=0,
        )
        assert probabilities.output("predict_proba").classes == estimator.classes_.tolist()


def test_forest_conversion_compares_in_float32_like_scikit_learn(onnx_models: Path) -> None:
    manifest = json.loads((onnx_models / "breast_cancer" / "1" / "model.json").read_text())
    assert manifest["onnx"]["input_dtype"] == "float32"
    assert manifest["onnx"]["outputs"] == {"predict": "label", "predict_proba": "probabilities"}
    linear = json.loads((onnx_models / "iris" / "1" / "model.json").read_text())
    assert linear["onnx"]["input_dtype"] == "float64"


def test_methods_onnx_lacks_fall_back_to_scikit_learn(onnx_models: Path) -> None:
    registry = Registry(onnx_models)
    registry.load()
    dataplane = DataPlane(registry)
    dataplane.warm_up()
    rows, _, _ = load_demo_data("iris")
    scores = dataplane.predict("iris", rows.tolist(), method="decision_function")
    np.testing.assert_allclose(
        scores.output("decision_function").values,
        registry.get("iris").estimator.decision_function(rows),
    )


def test_an_unconvertible_estimator_is_packaged_without_onnx_saying_why(tmp_path: Path) -> None:
    rows, target, names = load_demo_data("iris")
    model = make_pipeline(FunctionTransformer(np.sqrt), DecisionTreeClassifier(random_state=0))
    model.fit(rows, target)
    bundle = write_bundle(model, rows, tmp_path, "custom", "1", feature_names=names, onnx=True)
    assert bundle.onnx is None and not (bundle.path / ONNX_FILE).exists()
    assert "scikit-learn serves it" in bundle.warnings[0]
    assert "skl2onnx cannot convert" in bundle.warnings[0]


def test_a_float64_model_onnxruntime_refuses_is_tried_in_float32() -> None:
    rows, target, _ = load_demo_data("breast_cancer")
    # onnxruntime's Imputer has no float64 kernel, so it refuses the float64 conversion.
    estimator = make_pipeline(
        SimpleImputer(), StandardScaler(), LogisticRegression(max_iter=2000)
    ).fit(rows, target)
    conversion = convert(estimator, rows, METHODS)
    assert conversion.input_dtype == "float32"
    _assert_same_answers(_compiled(conversion, estimator), estimator, rows)


def test_the_reasons_of_attempts_failing_alike_are_said_once() -> None:
    rows, target, _ = load_demo_data("iris")
    model = make_pipeline(FunctionTransformer(np.sqrt), DecisionTreeClassifier(random_state=0))
    with pytest.raises(BundleError) as refused:
        convert(model.fit(rows, target), rows, METHODS)
    reason = str(refused.value)
    assert reason.startswith(
        "no ONNX conversion matches scikit-learn: float64, float32: skl2onnx cannot convert it: "
    )
    assert reason.count("skl2onnx cannot convert it") == 1


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


# Typed inputs: DataFrames ("frame") and one column of texts ("column").


@pytest.fixture(scope="module")
def penguins() -> tuple[pd.DataFrame, np.ndarray]:
    """Palmer penguins: two string columns (``sex`` has 11 missing) and four numeric ones
    (2 missing each), and the species."""
    frame = load_penguins()
    return frame[["island", "sex", *NUMERIC]], frame["species"].to_numpy()


@pytest.fixture(scope="module")
def sentences() -> tuple[np.ndarray, np.ndarray]:
    """Real English: the sentences of the summaries of a few estimators' docstrings,
    labelled by whether they describe a linear model or a tree model."""
    families = {
        "linear": [
            sklearn.linear_model.LogisticRegression,
            sklearn.linear_model.Ridge,
            sklearn.linear_model.Lasso,
            sklearn.linear_model.ElasticNet,
            sklearn.linear_model.LinearRegression,
        ],
        "tree": [
            sklearn.tree.DecisionTreeClassifier,
            sklearn.tree.DecisionTreeRegressor,
            sklearn.ensemble.RandomForestClassifier,
            sklearn.ensemble.ExtraTreesClassifier,
        ],
    }
    texts, labels = [], []
    for label, classes in families.items():
        for cls in classes:
            summary = " ".join(str(cls.__doc__).split("Parameters\n")[0].split())
            for sentence in re.split(r"(?<=[.!?])\s+", summary):
                if len(sentence.split()) >= 4:
                    texts.append(sentence)
                    labels.append(label)
    return np.array(texts, dtype=object), np.array(labels)


def _one_hot_logistic(strings: Any = None) -> Pipeline:
    """The typical frame model: one-hot strings, imputed and scaled numbers, a logistic."""
    encode = OneHotEncoder(handle_unknown="ignore")
    return Pipeline(
        [
            (
                "prep",
                ColumnTransformer(
                    [
                        (
                            "cat",
                            encode if strings is None else make_pipeline(strings, encode),
                            ["island", "sex"],
                        ),
                        ("num", make_pipeline(SimpleImputer(), StandardScaler()), NUMERIC),
                    ]
                ),
            ),
            ("clf", LogisticRegression()),
        ]
    )


def _compiled(conversion: Conversion, estimator: Any) -> CompiledModel:
    return CompiledModel(conversion, {"predict": (), "predict_proba": (len(estimator.classes_),)})


def _assert_same_answers(model: CompiledModel, estimator: Any, rows: Any) -> None:
    """run() gives scikit-learn's labels exactly and its probabilities within TOLERANCE."""
    labels = model.run("predict", rows)
    assert labels.shape == (len(rows),)
    assert labels.tolist() == estimator.predict(rows).tolist()
    probabilities = model.run("predict_proba", rows)
    assert probabilities.shape == (len(rows), len(estimator.classes_))
    np.testing.assert_allclose(probabilities, estimator.predict_proba(rows), atol=TOLERANCE, rtol=0)


def test_a_column_transformer_on_penguins_with_missing_strings_converts(
    penguins: tuple[pd.DataFrame, np.ndarray],
) -> None:
    frame, species = penguins
    assert frame["sex"].isna().sum() == 11  # missing strings are part of the check
    estimator = _one_hot_logistic().fit(frame, species)
    conversion = convert(estimator, frame, METHODS, layout="frame")
    assert conversion.layout == "frame" and conversion.input_dtype == "typed"
    assert conversion.outputs == {"predict": "label", "predict_proba": "probabilities"}
    # onnxruntime's Imputer has no float64 kernel: float64 columns go in as float32.
    assert conversion.inputs == {"island": "object", "sex": "object"} | dict.fromkeys(
        NUMERIC, "float32"
    )
    model = _compiled(conversion, estimator)
    _assert_same_answers(model, estimator, frame)
    # Columns are found by name: another order and an extra column change nothing.
    _assert_same_answers(model, estimator, frame[[*reversed(frame.columns)]].assign(x=1.0))
    # A category never seen is ignored by both; so is None, which scikit-learn tells from NaN.
    _assert_same_answers(model, estimator, frame.assign(island="Anvers").iloc[:20])
    _assert_same_answers(model, estimator, frame.assign(sex=None).iloc[:20])


def test_missing_strings_fed_as_another_string_are_refused_saying_so(
    penguins: tuple[pd.DataFrame, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    frame, species = penguins
    estimator = _one_hot_logistic().fit(frame, species)
    # The encoder learnt NaN as a category of sex, which skl2onnx writes as "nan": a
    # missing sex fed as "" is a category it never saw, and only those rows differ.
    monkeypatch.setattr(compiled, "MISSING_STRING", "")
    with pytest.raises(BundleError) as refused:
        convert(estimator, frame, METHODS, layout="frame")
    reason = str(refused.value)
    assert "float64 columns as float32: missing strings are not supported by the conversion" in (
        reason
    )
    assert re.search(
        r"predict_proba differs by up to 0\.\d+ on the 11 rows with a missing sex", reason
    )
    # Without missing values the same pipeline converts, whatever missing strings are fed as.
    complete = frame.dropna()
    estimator = _one_hot_logistic().fit(complete, species[frame.notna().all(axis=1)])
    _assert_same_answers(
        _compiled(convert(estimator, complete, METHODS, layout="frame"), estimator),
        estimator,
        complete,
    )


def test_a_most_frequent_imputer_of_strings_converts(
    penguins: tuple[pd.DataFrame, np.ndarray],
) -> None:
    frame, species = penguins
    estimator = _one_hot_logistic(SimpleImputer(strategy="most_frequent")).fit(frame, species)
    conversion = convert(estimator, frame, METHODS, layout="frame")
    _assert_same_answers(_compiled(conversion, estimator), estimator, frame)
    # The imputer converted was a copy knowing MISSING_STRING; the estimator is untouched.
    imputer = estimator.named_steps["prep"].named_transformers_["cat"][0]
    assert np.isnan(imputer.missing_values)


def test_categories_convert_as_strings(penguins: tuple[pd.DataFrame, np.ndarray]) -> None:
    frame, species = penguins
    categories = frame.astype({"island": "category", "sex": "category"})
    estimator = _one_hot_logistic().fit(categories, species)
    conversion = convert(estimator, categories, METHODS, layout="frame")
    assert conversion.inputs["island"] == conversion.inputs["sex"] == "object"
    _assert_same_answers(_compiled(conversion, estimator), estimator, categories)


def test_gradient_boosting_on_categories_falls_back_to_scikit_learn(
    penguins: tuple[pd.DataFrame, np.ndarray],
) -> None:
    frame, species = penguins
    categories = frame.astype({"island": "category", "sex": "category"})
    estimator = HistGradientBoostingClassifier(categorical_features="from_dtype", random_state=0)
    estimator.fit(categories, species)
    with pytest.raises(BundleError) as refused:
        convert(estimator, categories, METHODS, layout="frame")
    # skl2onnx's converter takes one matrix input, and has no categorical splits.
    assert "skl2onnx cannot convert it: InvalidInputLengthException" in str(refused.value)
    assert "at most 1 input(s) is(are) supported but we got 6" in str(refused.value)


def test_tfidf_on_a_column_of_texts_converts(sentences: tuple[np.ndarray, np.ndarray]) -> None:
    texts, labels = sentences
    estimator = Pipeline([("tfidf", TfidfVectorizer()), ("clf", LogisticRegression())])
    estimator.fit(texts, labels)
    conversion = convert(estimator, texts, METHODS, layout="column")
    assert conversion.layout == "column" and conversion.inputs == {"input": "object"}
    model = _compiled(conversion, estimator)
    _assert_same_answers(model, estimator, texts)
    unseen = np.array(["A sentence with no word of the vocabulary: zyxw.", ""], dtype=object)
    _assert_same_answers(model, estimator, unseen)


def test_tfidf_bigrams_fall_back_naming_the_difference(
    sentences: tuple[np.ndarray, np.ndarray],
) -> None:
    texts, labels = sentences
    estimator = Pipeline(
        [("tfidf", TfidfVectorizer(ngram_range=(1, 2))), ("clf", LogisticRegression())]
    )
    estimator.fit(texts, labels)
    # skl2onnx tokenises with [a-zA-Z0-9_]+, keeping the one-letter words scikit-learn's
    # \b\w\w+\b drops: they break scikit-learn's bigrams.
    with pytest.raises(BundleError, match=r"string input: predict_proba differs by up to 0\.0"):
        convert(estimator, texts, METHODS, layout="column")


def test_tfidf_beside_numbers_in_a_frame_converts(
    sentences: tuple[np.ndarray, np.ndarray],
) -> None:
    texts, labels = sentences
    frame = pd.DataFrame(
        {
            "sentence": texts,
            "words": [float(len(text.split())) for text in texts],
            "commas": np.array([text.count(",") for text in texts], dtype=np.int64),
        }
    )
    estimator = Pipeline(
        [
            (
                "prep",
                ColumnTransformer(
                    [
                        ("text", TfidfVectorizer(), "sentence"),
                        ("num", StandardScaler(), ["words", "commas"]),
                    ]
                ),
            ),
            ("clf", LogisticRegression()),
        ]
    ).fit(frame, labels)
    conversion = convert(estimator, frame, METHODS, layout="frame")
    assert conversion.inputs == {"sentence": "object", "words": "float32", "commas": "int64"}
    _assert_same_answers(_compiled(conversion, estimator), estimator, frame)


def test_a_datetime_column_has_no_conversion(penguins: tuple[pd.DataFrame, np.ndarray]) -> None:
    frame, species = penguins
    dated = pd.DataFrame(
        {
            "when": pd.date_range("2007-11-01", periods=len(frame), freq="D"),
            "bill_length_mm": frame["bill_length_mm"].fillna(frame["bill_length_mm"].mean()),
        }
    )

    def expand(rows: pd.DataFrame) -> np.ndarray:
        when = rows["when"].dt
        return np.column_stack([when.month, when.day_of_week, rows["bill_length_mm"]])

    estimator = make_pipeline(
        FunctionTransformer(expand), StandardScaler(), LogisticRegression()
    ).fit(dated, species)
    with pytest.raises(
        BundleError,
        match=r"column 'when' is a datetime \(datetime64\[.+\]\): "
        "datetime columns have no ONNX conversion",
    ):
        convert(estimator, dated, METHODS, layout="frame")


def test_typed_runs_refuse_malformed_rows(penguins: tuple[pd.DataFrame, np.ndarray]) -> None:
    frame, species = penguins
    estimator = _one_hot_logistic().fit(frame, species)
    model = _compiled(convert(estimator, frame, METHODS, layout="frame"), estimator)
    with pytest.raises(ValueError, match="the rows lack the column 'sex'"):
        model.run("predict", frame.drop(columns="sex"))
    # A typed conversion read back without its layout and inputs cannot be fed.
    conversion = convert(estimator, frame, METHODS, layout="frame")
    unfed = Conversion(
        model=conversion.model, input_dtype=conversion.input_dtype, outputs=conversion.outputs
    )
    with pytest.raises(BundleError, match="input_dtype 'typed' and inputs {} do not say how"):
        _compiled(unfed, estimator)
    with pytest.raises(ValueError, match="layout 'table' is not one of matrix, frame, column"):
        convert(estimator, frame, METHODS, layout="table")


def test_a_conversion_is_a_matrix_one_by_default() -> None:
    conversion = Conversion(model=b"", input_dtype="float64", outputs={"predict": "label"})
    assert conversion.inputs == {} and conversion.layout == "matrix"
