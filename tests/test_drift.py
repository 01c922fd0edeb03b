"""Drift from the training reference: bins, PSI, the endpoint, Prometheus rules and dashboard."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pandas as pd
import pytest
import requests
import yaml
from flask.testing import FlaskClient
from prometheus_client import Counter, Gauge, Histogram
from sklearn.datasets import load_breast_cancer, load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from tritonclient.grpc import service_pb2 as tpb

from inference_app import create_app, metrics
from inference_app.config import ConfigError
from inference_app.core import drift
from inference_app.core.bundle import MANIFEST_FILE, Manifest, load_bundle, write_bundle
from inference_app.core.features import describe
from inference_app.core.inputs import Limits, ModelInput, from_rows
from inference_app.datasets import load_penguins
from inference_app.demo import penguins_pipeline, write_demo_bundles
from inference_app.grpc import service as grpc_service
from servers import (
    REQUEST_TIMEOUT,
    START_TIMEOUT,
    Server,
    log_lines,
    wait_ready,
    wait_until,
)
from typed_models import Fitted, json_rows, penguins_hgb, tweets_cache, tweets_mixed, wine_datetime
from typed_models import sentiment as sentiment_model

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "deploy" / "prometheus" / "inference-app-rules.yml"
RULES_TEST = REPO / "deploy" / "prometheus" / "inference-app-rules.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "inference-app.json"
PROMTOOL = shutil.which("promtool") or "promtool"  # .ci/run installs Debian's prometheus
#: PSI below which a sample drawn like the training data must stay (the issue's bar).
STABLE = 0.05
LIMITS = Limits(max_rows=100_000, unknown_features="reject", max_text_length=1_000_000)


def promtool(*args: str, cwd: Path | None = None, stdin: str | None = None) -> str:
    """Run promtool and return its output; fail the test with it on a non-zero exit."""
    done = subprocess.run(
        [PROMTOOL, *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def manifest_of(fitted: Fitted) -> Manifest:
    """The manifest write_bundle would write for a typed pipeline, without writing it."""
    described = describe(fitted.estimator, fitted.rows)
    return Manifest(
        name=fitted.name,
        version="1",
        task="classification",
        inputs=described.inputs,
        methods=("predict",),
        estimator=type(fitted.estimator).__name__,
        reference=described.reference,
        layout=described.layout,
    )


def decoded(manifest: Manifest, frame: pd.DataFrame) -> ModelInput:
    """The rows of ``frame`` as the dataplane checks them from JSON."""
    return from_rows(json_rows(frame), manifest.inputs, manifest.layout, LIMITS)


def bins_of(plan: drift.Plan, counts: np.ndarray, name: str) -> dict[str, int]:
    """The counts of one feature by bin label."""
    feature = next(f for f in plan.features if f.name == name)
    return dict(
        zip(
            feature.labels,
            counts[feature.offset : feature.offset + len(feature.bins)].tolist(),
            strict=True,
        )
    )


def feature_psi(plan: drift.Plan, counts: np.ndarray) -> dict[str, float]:
    """Each feature's PSI of ``counts`` against the plan's reference."""
    return {
        f.name: drift.psi(counts[f.offset : f.offset + len(f.bins)], f.reference)
        for f in plan.features
    }


@pytest.fixture(scope="module")
def demo_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The iris, breast_cancer and penguins demo bundles."""
    models = tmp_path_factory.mktemp("drift-demo") / "models"
    write_demo_bundles(models, names=["iris", "breast_cancer", "penguins"])
    return models


@pytest.fixture(scope="module")
def typed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Fitted]:
    """Typed pipelines with a category, a datetime and texts (in a frame, and alone)."""
    cache = tweets_cache(tmp_path_factory.getbasetemp())
    fitted = [penguins_hgb(), wine_datetime(), tweets_mixed(cache), sentiment_model(cache)]
    return {model.name: model for model in fitted}


# Bins and counts, in process, on the real training samples.


@pytest.mark.parametrize("name", ["iris", "breast_cancer"])
def test_a_numeric_sample_fills_numpy_histogram_bins_in_any_batch_size(
    demo_models: Path, name: str
) -> None:
    bundle = load_bundle(demo_models / name / "1")
    plan = drift.plan(bundle.manifest)
    rows = (load_iris() if name == "iris" else load_breast_cancer()).data
    shifted = rows + rows.std(axis=0) * np.linspace(-3, 3, rows.shape[1])
    for data in (rows, shifted):
        whole = plan.count(ModelInput(data, len(data)))
        one_by_one = sum(plan.count(ModelInput(data[i : i + 1], 1)) for i in range(len(data)))
        assert np.array_equal(whole, one_by_one)  # both of the counting passes agree
        for index, feature in enumerate(plan.features):
            assert feature.edges is not None
            column = data[:, index]
            inside, _ = np.histogram(column, bins=feature.edges)
            assert bins_of(plan, whole, feature.name) == {
                "underflow": int((column < feature.edges[0]).sum()),
                **{str(i): int(count) for i, count in enumerate(inside)},
                "overflow": int((column > feature.edges[-1]).sum()),
                "missing": 0,
            }
    assert set(feature_psi(plan, plan.count(ModelInput(rows, len(rows)))).values()) == {0.0}


def test_the_penguins_sample_fills_its_categories_and_missing_values(demo_models: Path) -> None:
    manifest = load_bundle(demo_models / "penguins" / "1").manifest
    plan = drift.plan(manifest)
    frame, _ = load_penguins()
    counts = plan.count(decoded(manifest, frame))
    island = frame["island"].value_counts()
    assert bins_of(plan, counts, "island") == {
        **{category: int(island[category]) for category in ("Biscoe", "Dream", "Torgersen")},
        "unseen": 0,
        "missing": 0,
    }
    sex = frame["sex"].value_counts()
    assert bins_of(plan, counts, "sex") == {
        "female": int(sex["female"]),
        "male": int(sex["male"]),
        "unseen": 0,
        "missing": int(frame["sex"].isna().sum()),
    }
    assert bins_of(plan, counts, "body_mass_g")["missing"] == frame["body_mass_g"].isna().sum()
    assert max(feature_psi(plan, counts).values()) == 0.0


@pytest.mark.parametrize("name", ["penguins_hgb", "wine_datetime", "tweets_mixed", "sentiment"])
def test_typed_samples_fill_their_reference_exactly(typed: dict[str, Fitted], name: str) -> None:
    fitted = typed[name]
    manifest = manifest_of(fitted)
    plan = drift.plan(manifest)
    assert [f.name for f in plan.features] == manifest.feature_names
    assert plan.unmonitored == ()
    counts = plan.count(decoded(manifest, fitted.frame))
    for feature in plan.features:
        assert np.array_equal(
            counts[feature.offset : feature.offset + len(feature.bins)], feature.reference
        )
    assert max(feature_psi(plan, counts).values()) == 0.0


def test_texts_are_binned_by_their_length_in_characters(typed: dict[str, Fitted]) -> None:
    fitted = typed["sentiment"]
    manifest = manifest_of(fitted)
    plan = drift.plan(manifest)
    (feature,) = plan.features
    assert feature.kind == "text" and feature.unit == "characters"
    texts = fitted.rows
    doubled = texts + " " + texts  # every text twice as long
    counts = plan.count(decoded(manifest, doubled.to_frame()))
    assert feature.edges is not None
    lengths = doubled.str.len().to_numpy()
    assert bins_of(plan, counts, "text")["overflow"] == int((lengths > feature.edges[-1]).sum())
    assert feature_psi(plan, counts)["text"] > 1


def test_a_category_column_counts_an_unseen_category_as_unseen(typed: dict[str, Fitted]) -> None:
    fitted = typed["penguins_hgb"]  # native categories: the dataplane makes unseen ones missing
    manifest = manifest_of(fitted)
    plan = drift.plan(manifest)
    frame = fitted.frame.astype({"island": object, "sex": object})
    frame.loc[::4, "island"] = "Atlantis"
    model_input = decoded(manifest, frame)
    assert model_input.unseen["island"] == len(frame[::4])
    counts = bins_of(plan, plan.count(model_input), "island")
    assert counts["unseen"] == len(frame[::4])
    assert counts["missing"] == 0
    assert sum(counts.values()) == len(frame)


def test_datetimes_are_binned_in_seconds_and_old_references_in_other_units_rescaled(
    typed: dict[str, Fitted],
) -> None:
    fitted = typed["wine_datetime"]
    manifest = manifest_of(fitted)
    histogram = manifest.reference["histograms"]["when"]
    moments = fitted.rows["when"]
    seconds = (moments - pd.Timestamp("1970-01-01")) / pd.Timedelta(seconds=1)
    assert histogram["bin_edges"][0] == seconds.min()
    assert histogram["bin_edges"][-1] == seconds.max()
    # Bundles written before the unit fix hold microseconds / 1e9 for this us column.
    old_histogram = {**histogram, "bin_edges": [edge / 1e3 for edge in histogram["bin_edges"]]}
    old_reference = {
        **manifest.reference,
        "histograms": {**manifest.reference["histograms"], "when": old_histogram},
    }
    old = Manifest(**{**manifest.__dict__, "reference": old_reference})
    new_plan, old_plan = drift.plan(manifest), drift.plan(old)
    new_edges = next(f.edges for f in new_plan.features if f.name == "when")
    old_edges = next(f.edges for f in old_plan.features if f.name == "when")
    np.testing.assert_allclose(old_edges, new_edges, rtol=1e-12)
    later = fitted.frame.assign(when=moments + pd.Timedelta(days=30))
    for plan in (new_plan, old_plan):
        assert feature_psi(plan, plan.count(decoded(manifest, fitted.frame)))["when"] == 0.0
        assert bins_of(plan, plan.count(decoded(manifest, later)), "when")["overflow"] == len(later)


def test_old_references_are_counted_where_they_can_be(demo_models: Path) -> None:
    manifest = load_bundle(demo_models / "iris" / "1").manifest
    histograms = dict(manifest.reference["histograms"])
    names = manifest.feature_names
    del histograms[names[0]]
    histograms[names[1]] = {k: v for k, v in histograms[names[1]].items() if k != "missing"}
    histograms[names[2]] = {**histograms[names[2]], "counts": [1, 2]}
    edges = histograms[names[3]]["bin_edges"]
    histograms[names[3]] = {**histograms[names[3]], "bin_edges": [edges[0], *edges[:-1]]}
    old = Manifest(
        **{**manifest.__dict__, "reference": {**manifest.reference, "histograms": histograms}}
    )
    plan = drift.plan(old)
    assert [f.name for f in plan.features] == [names[1]]
    assert plan.features[0].labels[-1] == "overflow"  # no missing bin: the reference had none
    reasons = {u.name: u.reason for u in plan.unmonitored}
    assert reasons[names[0]] == "the reference has no histogram"
    assert "counts must be 10 non-negative integers" in reasons[names[2]]
    assert "bin_edges" in reasons[names[3]] and "increase" in reasons[names[3]]
    rows = load_iris().data
    counts = plan.count(ModelInput(rows, len(rows)))
    assert counts.sum() == len(rows)
    bare = Manifest(**{**manifest.__dict__, "reference": {"rows": manifest.reference["rows"]}})
    assert drift.plan(bare).size == 0 and len(drift.plan(bare).unmonitored) == 4


def test_categories_beyond_the_cap_share_one_bin_and_clashing_labels_use_indexes() -> None:
    frame, species = load_penguins()
    bill = frame["bill_length_mm"].fillna(frame["bill_length_mm"].median())
    many = frame.assign(mass_class=bill.astype(str))  # 165 categories
    estimator = RandomForestClassifier(n_estimators=5, random_state=0)
    described = describe(
        penguins_like(estimator, many, species), many[["mass_class", "island", "sex"]]
    )
    manifest = Manifest(
        name="cap",
        version="1",
        task="classification",
        inputs=described.inputs,
        methods=("predict",),
        estimator="x",
        reference=described.reference,
        layout=described.layout,
    )
    plan = drift.plan(manifest)
    feature = plan.features[0]
    categories = manifest.reference["histograms"]["mass_class"]["categories"]
    assert len(categories) > drift.MAX_CATEGORY_BINS
    assert len(feature.bins) == drift.MAX_CATEGORY_BINS + 3  # + other, unseen, missing
    assert feature.labels[-3:] == ("other", "unseen", "missing")
    counts = plan.count(decoded(manifest, many[["mass_class", "island", "sex"]]))
    assert bins_of(plan, counts, "mass_class")["unseen"] == 0
    assert feature_psi(plan, counts)["mass_class"] == 0.0
    clash = {
        "categories": ["missing", "present"],
        "counts": [3, 4],
        "missing": 1,
    }
    reference = {"histograms": {"sex": clash}}
    clashing = Manifest(**{**manifest.__dict__, "reference": reference})
    (sex,) = drift.plan(clashing).features
    assert sex.labels == ("0", "1", "unseen", "missing")
    assert [b.category for b in sex.bins[:2]] == ["missing", "present"]


def penguins_like(estimator: Any, frame: pd.DataFrame, target: pd.Series) -> Any:
    """A pipeline one-hot encoding three string columns (unknowns ignored)."""
    from sklearn.compose import make_column_transformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    columns = ["mass_class", "island", "sex"]
    encode = make_pipeline(
        SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")
    )
    model = make_pipeline(make_column_transformer((encode, columns)), estimator)
    return model.fit(frame[columns], target)


def test_psi_is_the_sum_of_its_terms_with_empty_bins_at_epsilon(demo_models: Path) -> None:
    plan = drift.plan(load_bundle(demo_models / "iris" / "1").manifest)
    rows = load_iris().data
    shifted = rows.copy()
    shifted[:, 2] += 2 * rows[:, 2].std()
    counts = plan.count(ModelInput(shifted, len(shifted)))
    feature = plan.features[2]
    served = counts[feature.offset : feature.offset + len(feature.bins)].tolist()
    reference = feature.reference.tolist()
    expected = 0.0
    for p_count, q_count in zip(served, reference, strict=True):
        p = max(p_count / sum(served), drift.EPSILON)
        q = max(q_count / sum(reference), drift.EPSILON)
        expected += (p - q) * math.log(p / q)
    assert drift.psi(served, reference) == pytest.approx(expected, rel=1e-12)
    assert expected > 1
    assert drift.psi(reference, served) > 0  # both ways, the same bins disagree
    assert drift.psi(reference, [2 * c for c in reference]) == 0.0  # proportions, not counts
    for bad in ([1, 2], [0] * len(reference), [-1] + reference[1:]):
        with pytest.raises(ValueError):
            drift.psi(bad, reference)


# The endpoint, in process. Counters are process-wide, so each test serves its own model names.


def unique(name: str) -> str:
    """A model name no other test of this process counts rows under."""
    return f"{name}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def drift_app(tmp_path: Path) -> Callable[..., tuple[FlaskClient, dict[str, str]]]:
    """Make an app over freshly written iris, breast cancer and penguins bundles."""

    def make(**settings: Any) -> tuple[FlaskClient, dict[str, str]]:
        models = tmp_path / "instance" / "models"
        names = {key: unique(key) for key in ("iris", "breast_cancer", "penguins")}
        iris = load_iris(as_frame=True).data
        write_bundle(
            LogisticRegression(max_iter=1000).fit(iris, load_iris().target),
            iris,
            models,
            names["iris"],
            "1",
        )
        write_bundle(
            LogisticRegression(C=0.5, max_iter=1000).fit(iris, load_iris().target),
            iris,
            models,
            names["iris"],
            "2",
        )
        cancer = load_breast_cancer(as_frame=True)
        forest = RandomForestClassifier(n_estimators=10, random_state=0).fit(
            cancer.data, cancer.target
        )
        write_bundle(forest, cancer.data, models, names["breast_cancer"], "1")
        frame, species = load_penguins()
        write_bundle(penguins_pipeline().fit(frame, species), frame, models, names["penguins"], "1")
        app = create_app({"TESTING": True, **settings}, instance_path=tmp_path / "instance")
        return app.test_client(), names

    return make


def report(client: FlaskClient, name: str, version: str | None = None) -> dict[str, Any]:
    """GET the drift report of a model (version)."""
    path = f"/v1/models/{name}" + (f"/versions/{version}" if version else "") + "/drift"
    response = client.get(path)
    assert response.status_code == 200, response.get_data(as_text=True)
    answer: dict[str, Any] = response.get_json()
    return answer


def by_feature(answer: dict[str, Any], key: str = "psi") -> dict[str, Any]:
    """One value of each feature of a drift report."""
    return {feature["name"]: feature[key] for feature in answer["features"]}


def test_the_training_sample_passes_and_a_shifted_feature_fails_alone(
    drift_app: Callable[..., tuple[FlaskClient, dict[str, str]]],
) -> None:
    client, names = drift_app()
    iris = load_iris().data
    before = report(client, names["iris"])
    assert before["rows"] == 0 and before["passed"] is True
    assert set(by_feature(before).values()) == {None}
    for start in range(0, len(iris), 50):  # the training sample, in three requests
        rows = iris[start : start + 50].tolist()
        assert (
            client.post(f"/v1/models/{names['iris']}:predict", json={"instances": rows}).status_code
            == 200
        )
    answer = report(client, names["iris"])
    assert answer["model_version"] == "2" and answer["rows"] == len(iris)
    assert max(by_feature(answer).values()) < STABLE
    assert answer["passed"] is True and answer["drifted"] == []
    assert set(by_feature(answer, "rows").values()) == {len(iris)}
    assert report(client, names["iris"], "1")["rows"] == 0  # counted under the version served

    cancer = load_breast_cancer()
    shifted = cancer.data.copy()
    shifted[:, 3] += 2 * cancer.data[:, 3].std()  # mean area, two standard deviations up
    response = client.post(
        f"/v1/models/{names['breast_cancer']}:predict", json={"instances": shifted.tolist()}
    )
    assert response.status_code == 200
    answer = report(client, names["breast_cancer"])
    assert answer["drifted"] == ["mean area"] and answer["passed"] is False
    psi = by_feature(answer)
    assert psi["mean area"] > answer["threshold"] == 0.2
    assert max(value for name, value in psi.items() if name != "mean area") < STABLE
    area = next(f for f in answer["features"] if f["name"] == "mean area")
    overflow = next(b for b in area["bins"] if b["bin"] == "overflow")
    assert overflow["rows"] == int((shifted[:, 3] > cancer.data[:, 3].max()).sum())
    assert overflow["lower"] == cancer.data[:, 3].max() and overflow["reference"] == 0.0
    assert sum(b["observed"] for b in area["bins"]) == pytest.approx(1.0)


def test_a_new_category_fails_that_feature_alone(
    drift_app: Callable[..., tuple[FlaskClient, dict[str, str]]],
) -> None:
    client, names = drift_app()
    frame, _ = load_penguins()
    changed = frame.copy()
    changed.loc[::3, "sex"] = "unknown"  # the demo's sex encoder ignores unknown categories
    response = client.post(
        f"/v1/models/{names['penguins']}:predict", json={"instances": json_rows(changed)}
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    answer = report(client, names["penguins"])
    assert answer["drifted"] == ["sex"]
    sex = next(f for f in answer["features"] if f["name"] == "sex")
    unseen = next(b for b in sex["bins"] if b["bin"] == "unseen")
    assert unseen["rows"] == len(changed[::3]) and unseen["reference"] == 0.0
    assert max(v for k, v in by_feature(answer).items() if k != "sex") < STABLE
    assert {f["name"]: f["kind"] for f in answer["features"]}["island"] == "categorical"


def test_every_protocol_counts_rows_grpc_too(
    drift_app: Callable[..., tuple[FlaskClient, dict[str, str]]],
) -> None:
    client, names = drift_app()
    name = names["iris"]
    rows = load_iris().data[:7].tolist()
    assert client.post(f"/v1/models/{name}:predict", json={"instances": rows}).status_code == 200
    v2 = {"inputs": [{"name": "input-0", "shape": [7, 4], "datatype": "FP64", "data": rows}]}
    assert client.post(f"/v2/models/{name}/infer", json=v2).status_code == 200
    mlflow = {"dataframe_split": {"columns": load_iris().feature_names, "data": rows}}
    response = client.post("/invocations", json=mlflow, headers={"X-Model-Name": name})
    assert response.status_code == 200, response.get_data(as_text=True)
    one = dict(zip(load_iris().feature_names, rows[0], strict=True))
    assert client.post("/predict", json=one, headers={"X-Model-Name": name}).status_code == 200
    running = grpc_service.serve(client.application, 0)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            tensor = tpb.ModelInferRequest.InferInputTensor(
                name="input-0", datatype="FP64", shape=[7, 4]
            )
            tensor.contents.fp64_contents.extend(np.ravel(rows).tolist())
            request = tpb.ModelInferRequest(model_name=name, inputs=[tensor])
            stub = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            stub(request.SerializeToString(), timeout=30)
    finally:
        running.stop(None)
    assert report(client, name)["rows"] == 4 * 7 + 1


def test_threshold_setting_and_errors(
    drift_app: Callable[..., tuple[FlaskClient, dict[str, str]]],
) -> None:
    client, names = drift_app(DRIFT_PSI_THRESHOLD=1e-9)
    rows = load_iris().data[::2].tolist()  # every other training row: close, not identical
    assert (
        client.post(f"/v1/models/{names['iris']}:predict", json={"instances": rows}).status_code
        == 200
    )
    answer = report(client, names["iris"])
    assert answer["threshold"] == 1e-9 and answer["passed"] is False
    assert answer["drifted"] == [f for f, psi in by_feature(answer).items() if psi > 1e-9]
    assert answer["drifted"] and max(by_feature(answer).values()) < 0.2  # passes by default
    for path in ("/v1/models/nope/drift", f"/v1/models/{names['iris']}/versions/9/drift"):
        response = client.get(path)
        assert response.status_code == 404
        assert set(response.get_json()) == {"code", "status", "message"}
    for bad in (0, -1, "high", float("inf")):
        with pytest.raises(ConfigError, match="DRIFT_PSI_THRESHOLD"):
            create_app(
                {"TESTING": True, "DRIFT_PSI_THRESHOLD": bad}, instance_path=Path("/nonexistent")
            )


def test_the_report_asks_for_an_api_key_like_the_api(
    drift_app: Callable[..., tuple[FlaskClient, dict[str, str]]],
) -> None:
    client, names = drift_app(API_KEYS=["drift-key"])
    assert client.get(f"/v1/models/{names['iris']}/drift").status_code == 401
    answer = client.get(f"/v1/models/{names['iris']}/drift", headers={"X-API-Key": "drift-key"})
    assert answer.status_code == 200 and answer.get_json()["rows"] == 0


def test_the_endpoints_are_in_the_openapi_document(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").get_json()
    for path in ("/v1/models/{name}/drift", "/v1/models/{name}/versions/{version}/drift"):
        responses = spec["paths"][path]["get"]["responses"]
        assert responses["200"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/DriftResponse"
        }
        assert "404" in responses
    schemas = spec["components"]["schemas"]
    assert {"threshold", "epsilon", "rows", "passed", "drifted", "features"} <= set(
        schemas["DriftResponse"]["properties"]
    )
    assert {"bin", "lower", "upper", "rows", "observed", "reference"} <= set(
        schemas["DriftBin"]["properties"]
    )


def test_a_bundle_without_histograms_serves_and_reports_its_features_unmonitored(
    demo_models: Path, tmp_path: Path
) -> None:
    name = unique("iris_old")
    models = tmp_path / "instance" / "models"
    shutil.copytree(demo_models / "iris", models / name)
    manifest_path = models / name / "1" / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest["name"] = name
    manifest["reference"] = {"rows": manifest["reference"]["rows"]}
    manifest_path.write_text(json.dumps(manifest))
    client = create_app({"TESTING": True}, instance_path=tmp_path / "instance").test_client()
    rows = load_iris().data[:3].tolist()
    assert client.post(f"/v1/models/{name}:predict", json={"instances": rows}).status_code == 200
    answer = report(client, name)
    assert answer["features"] == [] and answer["rows"] == 0 and answer["passed"] is True
    assert {u["reason"] for u in answer["unmonitored"]} == {"the reference has no histogram"}


# Prometheus: the exposition, the rules and the dashboard's queries.


def exposition(client: FlaskClient) -> str:
    """The app's /metrics text."""
    response = client.get("/metrics")
    assert response.status_code == 200
    return response.get_data(as_text=True)


def test_reference_gauges_and_zero_counters_exist_for_every_bin_from_the_start(
    drift_app: Callable[..., tuple[FlaskClient, dict[str, str]]],
) -> None:
    client, names = drift_app()
    text = exposition(client)
    name = names["iris"]
    ratios = re.findall(
        rf'inference_app_drift_reference_ratio{{bin="([^"]+)",feature="petal length \(cm\)",'
        rf'model="{name}",version="2"}} (\S+)',
        text,
    )
    assert len(ratios) == 13  # underflow, 10 bins, overflow, missing
    assert sum(float(value) for _, value in ratios) == pytest.approx(1.0)
    zeros = re.findall(
        rf'inference_app_drift_rows_total{{bin="[^"]+",feature="[^"]+",model="{name}",'
        rf'version="2"}} 0.0',
        text,
    )
    assert len(zeros) == 4 * 13
    promtool("check", "metrics", stdin=text)


def test_the_rules_pass_promtool_and_their_unit_tests() -> None:
    assert "SUCCESS" in promtool("check", "rules", str(RULES))
    assert "SUCCESS" in promtool("test", "rules", RULES_TEST.name, cwd=RULES_TEST.parent)


def test_the_recorded_psi_equals_the_servers_on_real_counts(
    demo_models: Path, tmp_path: Path
) -> None:
    # Counters over an hour of iris rows with petal length shifted, scraped every minute.
    plan = drift.plan(load_bundle(demo_models / "iris" / "1").manifest)
    rows = load_iris().data.copy()
    rows[:, 2] += 2 * rows[:, 2].std()
    counts = plan.count(ModelInput(rows, len(rows)))
    series, checks = [], []
    for feature in plan.features:
        labels = f'model="iris",version="1",feature="{feature.name}"'
        for i, (label, ratio) in enumerate(
            zip(feature.labels, feature.reference_ratio.tolist(), strict=True)
        ):
            per_minute = int(counts[feature.offset + i])
            bin_labels = f'{labels},bin="{label}"'
            series.append(
                {
                    "series": f"inference_app_drift_rows_total{{{bin_labels}}}",
                    "values": f"0+{per_minute}x60",
                }
            )
            series.append(
                {
                    "series": f"inference_app_drift_reference_ratio{{{bin_labels}}}",
                    "values": f"{ratio!r}x60",
                }
            )
        expected = drift.psi(
            counts[feature.offset : feature.offset + len(feature.bins)], feature.reference
        )
        checks.append(
            {
                "expr": f"abs(model_version_feature:inference_app_drift_rows:psi1h{{{labels}}}"
                f" - {expected!r}) < bool 1e-9",
                "eval_time": "60m",
                "exp_samples": [{"labels": f"{{{labels}}}", "value": 1}],
            }
        )
    test = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": checks}],
    }
    (tmp_path / "real.test.yml").write_text(yaml.safe_dump(test, sort_keys=False))
    promtool("test", "rules", "real.test.yml", cwd=tmp_path)
    psi = feature_psi(plan, counts)
    assert (
        psi["petal length (cm)"] > 1
        and max(v for k, v in psi.items() if "petal length" not in k) == 0.0
    )


def metric_names() -> set[str]:
    """Every series name the server exposes, from the metric objects in inference_app.metrics."""
    names = set()
    for value in vars(metrics).values():
        if isinstance(value, Counter):
            names |= {value._name + "_total"}
        elif isinstance(value, Histogram):
            names |= {value._name + suffix for suffix in ("_bucket", "_count", "_sum")}
        elif isinstance(value, Gauge):
            names.add(value._name)
    return names


def test_the_dashboard_loads_and_every_query_parses(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert {"title", "uid", "schemaVersion", "panels", "templating", "time"} <= set(dashboard)
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    recorded = {
        rule["record"]
        for g in yaml.safe_load(RULES.read_text())["groups"]
        for rule in g["rules"]
        if "record" in rule
    }
    known = metric_names() | recorded
    rules, ids = [], set()
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 8
    for panel in panels:
        assert panel["id"] not in ids
        ids.add(panel["id"])
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]) and panel["title"]
        assert panel["type"] in {"timeseries", "stat", "bargauge", "barchart", "table", "gauge"}
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"]
        for target in panel["targets"]:
            expr = target["expr"]
            used = set(re.findall(r"[a-z_]*:?inference_app_[a-z_]+(?::[a-z0-9_]+)?", expr))
            assert used and used <= known, (panel["title"], used - known)
            concrete = re.sub(r"\$__rate_interval|\$__interval|\$__range", "5m", expr)
            concrete = re.sub(r"\$\{?(\w+)\}?", "x", concrete)
            rules.append(
                {
                    "record": f"dashboard:panel_{panel['id']}:{target['refId'].lower()}",
                    "expr": concrete,
                }
            )
    for variable in variables.values():
        if variable["type"] == "query":
            query = variable["query"]["query"]
            inner = re.fullmatch(r"label_values\((.+), (\w+)\)", query)
            assert inner, query
            rules.append(
                {
                    "record": f"dashboard:variable:{variable['name']}",
                    "expr": re.sub(r"\$\{?(\w+)\}?", "x", inner.group(1)),
                }
            )
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert "SUCCESS" in promtool("check", "rules", str(path))


def test_the_documented_queries_parse_and_name_real_series(tmp_path: Path) -> None:
    text = (REPO / "docs" / "operations.md").read_text()
    section = text.split("\n## Drift\n", 1)[1].split("\n## ", 1)[0]
    [block] = re.findall(r"```promql\n(.*?)```", section, re.S)
    queries = [line for line in block.splitlines() if line.strip()]
    assert len(queries) >= 4
    recorded = {
        rule["record"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }
    used = set(re.findall(r"[a-z_]*:?inference_app_[a-z_]+(?::[a-z0-9_]+)?", block))
    assert used and used <= metric_names() | recorded, used - metric_names() - recorded
    rules = [{"record": f"docs:drift_{i}", "expr": query} for i, query in enumerate(queries)]
    path = tmp_path / "docs-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "docs", "rules": rules}]}))
    assert "SUCCESS" in promtool("check", "rules", str(path))


# Real Gunicorn: exact counts across workers, recycling and a TERMinated worker.


@pytest.fixture
def gunicorn(tmp_path: Path, demo_models: Path, launch: Any) -> Callable[..., Server]:
    """Start Gunicorn servers (2 workers) over the demo bundles; stopped afterwards."""
    instance = tmp_path / "instance"
    shutil.copytree(demo_models, instance / "models")

    def start(**settings: str) -> Server:
        server: Server = launch(instance, **settings)
        return server

    return start


def served_report(server: Server, name: str, request_id: str | None = None) -> dict[str, Any]:
    """GET a model's drift report from a server."""
    headers = {"X-Request-ID": request_id} if request_id else {}
    response = requests.get(
        f"{server.url}/v1/models/{name}/drift", headers=headers, timeout=REQUEST_TIMEOUT
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def booted(server: Server) -> list[int]:
    """The pids of every worker the server booted, in order."""
    prefix = "Booting worker with pid: "
    return [
        int(line["message"].removeprefix(prefix))
        for line in log_lines(server.log())
        if str(line.get("message", "")).startswith(prefix)
    ]


def post_rows(server: Server, name: str, rows: list[Any]) -> None:
    """Predict ``rows`` with a model, asserting success."""
    response = requests.post(
        f"{server.url}/v1/models/{name}:predict", json={"instances": rows}, timeout=REQUEST_TIMEOUT
    )
    assert response.status_code == 200, response.text


def iris_reference(demo_models: Path) -> dict[str, dict[str, float]]:
    """The iris demo's reference counts, by feature and bin label."""
    plan = drift.plan(load_bundle(demo_models / "iris" / "1").manifest)
    return {f.name: dict(zip(f.labels, f.reference.tolist(), strict=True)) for f in plan.features}


def check_iris(server: Server, demo_models: Path, times: int) -> None:
    """The iris report holds ``times`` the training sample, bin by bin: PSI 0."""
    answer = served_report(server, "iris")
    assert answer["rows"] == times * len(load_iris().data)
    reference = iris_reference(demo_models)
    for feature in answer["features"]:
        assert {b["bin"]: b["rows"] for b in feature["bins"]} == {
            label: times * count for label, count in reference[feature["name"]].items()
        }
        assert feature["psi"] < STABLE and feature["passed"] is True


@pytest.mark.e2e
def test_counts_are_exact_across_workers_and_survive_recycling(
    gunicorn: Callable[..., Server], demo_models: Path
) -> None:
    # Workers restart every 10 requests; the iris sample goes in 15 requests of 10 rows.
    server = gunicorn(GUNICORN_MAX_REQUESTS="10", GUNICORN_MAX_REQUESTS_JITTER="0")
    iris = load_iris().data.tolist()
    for _ in range(3):
        for start in range(0, len(iris), 10):
            post_rows(server, "iris", iris[start : start + 10])
    check_iris(server, demo_models, 3)
    assert len(booted(server)) >= 2 + 45 // 10 - 1, server.log()  # recycled several times

    # Any worker answers the same, from every worker's counts.
    answers, pids = [], set()
    for attempt in range(40):
        request_id = f"drift-{attempt}"
        answers.append(served_report(server, "iris", request_id))
        access = [line for line in log_lines(server.log()) if line.get("request_id") == request_id]
        pids |= {line["pid"] for line in access}
        if len(pids) > 1 and attempt >= 3:
            break
    assert len(pids) > 1
    assert all(answer == answers[0] for answer in answers)

    text = requests.get(f"{server.url}/metrics", timeout=REQUEST_TIMEOUT).text
    per_feature: dict[str, float] = {}
    for line in text.splitlines():
        found = re.match(
            r'inference_app_drift_rows_total\{bin="[^"]+",feature="([^"]+)",'
            r'model="iris",version="1"\} (\S+)',
            line,
        )
        if found:
            per_feature[found.group(1)] = per_feature.get(found.group(1), 0.0) + float(
                found.group(2)
            )
    assert per_feature == {name: 3.0 * len(iris) for name in load_iris().feature_names}
    promtool("check", "metrics", stdin=text)


@pytest.mark.e2e
def test_term_keeps_counts_and_a_shifted_feature_or_new_category_fails_alone(
    gunicorn: Callable[..., Server], demo_models: Path
) -> None:
    server = gunicorn()
    iris = load_iris().data
    post_rows(server, "iris", iris.tolist())
    check_iris(server, demo_models, 1)

    # A worker stopped with TERM finishes its request; its counts are kept. The victim has
    # answered a request, so it is past its boot (where Gunicorn has no TERM handler yet).
    live = booted(server)
    served_report(server, "iris", "before-term")
    victim = next(
        line["pid"] for line in log_lines(server.log()) if line.get("request_id") == "before-term"
    )
    os.kill(victim, signal.SIGTERM)
    exited = f"Worker exiting (pid: {victim})"
    assert wait_until(
        lambda: exited in server.log() and len(booted(server)) > len(live), START_TIMEOUT
    ), server.log()
    wait_ready(server)
    check_iris(server, demo_models, 1)
    post_rows(server, "iris", iris.tolist())
    check_iris(server, demo_models, 2)

    cancer = load_breast_cancer()
    shifted = cancer.data.copy()
    shifted[:, 0] -= 2 * cancer.data[:, 0].std()  # mean radius, two standard deviations down
    post_rows(server, "breast_cancer", shifted.tolist())
    assert served_report(server, "breast_cancer")["drifted"] == ["mean radius"]

    frame, _ = load_penguins()
    changed = frame.copy()
    changed.loc[::4, "sex"] = "unknown"
    post_rows(server, "penguins", json_rows(changed))
    answer = served_report(server, "penguins")
    assert answer["drifted"] == ["sex"]
    assert max(v for k, v in by_feature(answer).items() if k != "sex") < STABLE
