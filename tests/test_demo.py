"""The typed demo bundles (penguins, sentiment): manifests, docs, the seed shapes and ONNX."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient

from inference_app import create_app
from inference_app.cli import main
from inference_app.core.bundle import load_bundle, write_bundle
from inference_app.datasets import load_penguins, load_tweets
from inference_app.demo import (
    CACHE_DIR,
    DEMO_VERSION,
    DEMOS,
    TYPED_DEMOS,
    penguins_pipeline,
    write_demo_bundles,
)


@pytest.fixture(scope="session")
def tweets_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding the tweets data, fetched once per session."""
    cache = tmp_path_factory.mktemp("cache")
    load_tweets(cache)
    return cache


@pytest.fixture(scope="session")
def typed_instance(tmp_path_factory: pytest.TempPathFactory, tweets_cache: Path) -> Path:
    """An instance folder with every demo bundle, iris the default model."""
    instance = tmp_path_factory.mktemp("typed")
    written = write_demo_bundles(instance / "models", cache_dir=tweets_cache)
    assert [item.name for item in written] == [*DEMOS, *TYPED_DEMOS]
    assert all(item.bundle is not None for item in written)
    shutil.copy(Path(__file__).parents[1] / "instance" / "config.py", instance / "config.py")
    return instance


@pytest.fixture
def typed_app(typed_instance: Path) -> Flask:
    """The app over every demo bundle."""
    return create_app({"TESTING": True}, instance_path=typed_instance)


@pytest.fixture
def typed_client(typed_app: Flask) -> FlaskClient:
    """A test client of the app over every demo bundle."""
    return typed_app.test_client()


def test_penguins_manifest_describes_its_features(typed_instance: Path) -> None:
    manifest = load_bundle(typed_instance / "models" / "penguins" / DEMO_VERSION).manifest
    features = {feature.name: feature for feature in manifest.inputs}
    assert manifest.layout == "frame"
    assert features["island"].kind == "categorical"
    assert features["island"].categories == ("Biscoe", "Dream", "Torgersen")
    assert features["island"].unknown_categories == "error"
    assert features["island"].nullable is False
    assert features["sex"].unknown_categories == "ignore"
    assert features["sex"].nullable is True  # missing in the data, and imputed
    assert features["body_mass_g"].datatype == "FP64" and features["body_mass_g"].nullable
    histogram = manifest.reference["histograms"]["sex"]
    frame, _ = load_penguins()
    assert histogram["missing"] == frame["sex"].isna().sum()
    assert dict(zip(histogram["categories"], histogram["counts"], strict=True)) == (
        frame["sex"].value_counts().to_dict()
    )
    row = manifest.reference_rows[0]
    assert [type(value) for value in row] == [
        str if f.datatype == "BYTES" else float for f in manifest.inputs
    ]


def test_sentiment_manifest_is_one_text_column(typed_instance: Path, tweets_cache: Path) -> None:
    manifest = load_bundle(typed_instance / "models" / "sentiment" / DEMO_VERSION).manifest
    (feature,) = manifest.inputs
    assert (manifest.layout, feature.name, feature.kind) == ("column", "text", "text")
    texts, _ = load_tweets(tweets_cache)
    lengths = manifest.reference["histograms"]["text"]["lengths"]
    assert lengths["max"] == texts["text"].str.len().max()


def test_demo_pipelines_answer_as_in_process(
    typed_client: FlaskClient, typed_instance: Path, tweets_cache: Path
) -> None:
    frame, _ = load_penguins()
    records = json.loads(frame.to_json(orient="records"))
    answer = typed_client.post(
        "/v1/models/penguins:predict", json={"instances": records, "method": "predict_proba"}
    )
    assert answer.status_code == 200, answer.get_json()
    penguins = load_bundle(typed_instance / "models" / "penguins" / DEMO_VERSION).estimator
    np.testing.assert_allclose(
        answer.get_json()["predictions"], penguins.predict_proba(frame), rtol=1e-12
    )
    texts, _ = load_tweets(tweets_cache)
    rows = [[text] for text in texts["text"][:2000]]
    answer = typed_client.post("/v1/models/sentiment:predict", json={"instances": rows})
    sentiment = load_bundle(typed_instance / "models" / "sentiment" / DEMO_VERSION).estimator
    assert answer.get_json()["predictions"] == sentiment.predict(texts["text"][:2000]).tolist()


@pytest.mark.parametrize(
    "body",
    [
        {"instance": [5.1, 3.5, 1.4, 0.2]},
        {"input": [5.1, 3.5, 1.4, 0.2]},
        {
            "sepal length (cm)": 5.1,
            "sepal width (cm)": 3.5,
            "petal length (cm)": 1.4,
            "petal width (cm)": 0.2,
        },
        {
            "instance": {
                "petal width (cm)": 0.2,
                "petal length (cm)": 1.4,
                "sepal width (cm)": 3.5,
                "sepal length (cm)": 5.1,
            }
        },
    ],
    ids=["instance", "input", "features as the body", "instance object"],
)
def test_predict_takes_the_seed_shapes_and_answers_confidence(
    typed_client: FlaskClient, typed_instance: Path, body: dict[str, Any]
) -> None:
    iris = load_bundle(typed_instance / "models" / "iris" / DEMO_VERSION).estimator
    answer = typed_client.post("/predict", json=body)
    assert answer.status_code == 200, answer.get_json()
    row = np.array([[5.1, 3.5, 1.4, 0.2]])
    assert answer.get_json()["prediction"] == iris.predict(row)[0]
    assert answer.get_json()["confidence"] == pytest.approx(iris.predict_proba(row).max())


def test_predict_takes_text_for_a_text_model(
    typed_client: FlaskClient, typed_instance: Path
) -> None:
    sentiment = load_bundle(typed_instance / "models" / "sentiment" / DEMO_VERSION).estimator
    text = "What a lovely surprise, thank you!"
    answer = typed_client.post(
        "/predict", json={"text": text}, headers={"X-Model-Name": "sentiment"}
    )
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["prediction"] == sentiment.predict([text])[0]
    assert answer.get_json()["confidence"] == pytest.approx(sentiment.predict_proba([text]).max())


def test_predict_refuses_instance_with_other_fields(typed_client: FlaskClient) -> None:
    answer = typed_client.post("/predict", json={"instance": [5.1, 3.5, 1.4, 0.2], "x": 1})
    assert answer.status_code == 422
    assert "send `instance` alone" in answer.get_json()["message"]


def test_openapi_states_each_typed_feature(typed_client: FlaskClient) -> None:
    spec = typed_client.get("/openapi.json").get_json()
    record = spec["components"]["schemas"]["penguins.Record"]["properties"]
    assert record["island"] == {
        "type": "string",
        "enum": ["Biscoe", "Dream", "Torgersen"],
        "description": "One of the categories seen in training.",
        "maxLength": 10_000,
    }
    assert record["sex"]["nullable"] is True and "enum" not in record["sex"]
    assert record["bill_length_mm"]["type"] == "number" and record["bill_length_mm"]["nullable"]
    text = spec["components"]["schemas"]["sentiment.Record"]["properties"]["text"]
    assert text["type"] == "string" and text["maxLength"] == 10_000
    operation = spec["paths"]["/v1/models/penguins:predict"]["post"]
    example = operation["requestBody"]["content"]["application/json"]["example"]
    assert set(example["instances"][0]) == set(record)


def test_model_metadata_lists_typed_inputs(typed_client: FlaskClient) -> None:
    native = typed_client.get("/v1/models/penguins").get_json()
    assert native["layout"] == "frame"
    island = next(item for item in native["inputs"] if item["name"] == "island")
    assert island["kind"] == "categorical" and island["categories"] == [
        "Biscoe",
        "Dream",
        "Torgersen",
    ]
    v2 = typed_client.get("/v2/models/penguins").get_json()
    assert {item["name"]: item["datatype"] for item in v2["inputs"]} == {
        "island": "BYTES",
        "sex": "BYTES",
        "bill_length_mm": "FP64",
        "bill_depth_mm": "FP64",
        "flipper_length_mm": "FP64",
        "body_mass_g": "FP64",
    }


def test_onnx_conversion_of_a_typed_pipeline_serves_the_same_answers(tmp_path: Path) -> None:
    frame, species = load_penguins()
    model = penguins_pipeline().fit(frame, species)
    bundle = write_bundle(model, frame, tmp_path / "models", "penguins", "1", onnx=True)
    assert bundle.onnx is not None, bundle.warnings
    app = create_app({"TESTING": True, "RUNTIME": "onnx"}, instance_path=tmp_path)
    client = app.test_client()
    assert client.get("/v1/models/penguins").get_json()["runtime"] == "onnx"
    records = json.loads(frame.to_json(orient="records"))
    answer = client.post(
        "/v1/models/penguins:predict", json={"instances": records, "method": "predict_proba"}
    )
    assert answer.status_code == 200, answer.get_json()
    np.testing.assert_allclose(
        answer.get_json()["predictions"], model.predict_proba(frame), atol=1e-5
    )


def test_init_demo_ships_onnx_where_the_conversion_is_exact(
    tmp_path: Path, tweets_cache: Path
) -> None:
    instance = tmp_path / "instance"
    shutil.copytree(tweets_cache, instance / CACHE_DIR)  # no download
    shutil.copy(Path(__file__).parents[1] / "instance" / "config.py", instance / "config.py")

    result = CliRunner().invoke(main, ["init-demo", "--instance-path", str(instance)])

    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    notes = {
        line.split()[1]: lines[index + 1].strip()
        for index, line in enumerate(lines)
        if line.startswith("wrote")
    }
    assert list(notes) == [*DEMOS, *TYPED_DEMOS]
    assert len(lines) == 2 * len(notes)  # one line each about ONNX, nothing else
    for name in ("iris", "diabetes"):
        assert notes[name].startswith("with an ONNX model (float64 input), checked on the training")
    assert notes["breast_cancer"].startswith("with an ONNX model (float32 input)")
    assert notes["penguins"].startswith("with an ONNX model (one input per column)")
    # skl2onnx tokenises the word pairs otherwise: the check on the tweets refuses it.
    assert notes["sentiment"].startswith(
        "no ONNX model for sentiment 1, scikit-learn serves it: no ONNX conversion matches "
        "scikit-learn: string input: predict gives other labels on "
    )
    client = create_app({"TESTING": True}, instance_path=instance).test_client()
    runtimes = {name: client.get(f"/v1/models/{name}").get_json()["runtime"] for name in notes}
    assert runtimes == {**dict.fromkeys([*DEMOS, "penguins"], "onnx"), "sentiment": "sklearn"}
    frame, _ = load_penguins()
    records = json.loads(frame.to_json(orient="records"))
    answer = client.post("/v1/models/penguins:predict", json={"instances": records})
    penguins = load_bundle(instance / "models" / "penguins" / DEMO_VERSION).estimator
    assert answer.get_json()["predictions"] == penguins.predict(frame).tolist()


def test_onnx_fallback_says_why(tmp_path: Path, tweets_cache: Path) -> None:
    texts, labels = load_tweets(tweets_cache)
    model = TYPED_DEMOS["sentiment"].make().fit(texts["text"], labels)
    bundle = write_bundle(model, texts["text"], tmp_path, "sentiment", "1", onnx=True)
    assert bundle.onnx is None
    (note,) = bundle.warnings
    assert "scikit-learn serves it" in note and "gives other labels" in note


def test_an_unknown_island_is_refused_and_an_unknown_sex_counted(
    typed_client: FlaskClient,
) -> None:
    row = {
        "island": "Biscoe",
        "sex": "female",
        "bill_length_mm": 46.5,
        "bill_depth_mm": 14.8,
        "flipper_length_mm": 217.0,
        "body_mass_g": 5200.0,
    }
    refused = typed_client.post(
        "/v1/models/penguins:predict", json={"instances": [{**row, "island": "Atlantis"}]}
    )
    assert refused.status_code == 422
    assert "'Atlantis' is not a category the model knows" in refused.get_json()["message"]
    assert "'Biscoe', 'Dream', 'Torgersen'" in refused.get_json()["message"]
    served = typed_client.post(
        "/v1/models/penguins:predict", json={"instances": [{**row, "sex": "unknown"}] * 3}
    )
    assert served.status_code == 200
    metrics = typed_client.get("/metrics").get_data(as_text=True)
    line = next(
        line
        for line in metrics.splitlines()
        if line.startswith("inference_app_unseen_categories_total{")
        and 'model="penguins"' in line
        and 'feature="sex"' in line
    )
    assert float(line.rsplit(" ", 1)[1]) >= 3


def test_a_frame_sample_of_one_text_column_is_a_text_model(
    tmp_path: Path, tweets_cache: Path
) -> None:
    texts, labels = load_tweets(tweets_cache)
    model = TYPED_DEMOS["sentiment"].make().fit(texts["text"], labels)
    bundle = write_bundle(model, pd.DataFrame({"review": texts["text"]}), tmp_path, "s", "1")
    assert bundle.manifest.layout == "column"
    assert bundle.manifest.inputs[0].name == "review"
