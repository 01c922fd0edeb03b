"""Adaptive batching: merged calls give each request exactly its own unbatched results."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.tree import DecisionTreeClassifier

from inference_app import create_app
from inference_app.core.batching import Batcher
from inference_app.core.dataplane import DataPlane
from inference_app.core.registry import Registry
from inference_app.demo import load_demo_data


@pytest.fixture
def registry(demo_instance: Path) -> Registry:
    """The demo bundles, loaded."""
    loaded = Registry(demo_instance / "models")
    loaded.load()
    return loaded


@pytest.mark.parametrize(
    ("name", "method"),
    [
        ("iris", "predict"),
        ("iris", "predict_proba"),
        ("breast_cancer", "predict"),
        ("breast_cancer", "predict_proba"),
        ("diabetes", "predict"),
    ],
)
def test_batched_results_equal_unbatched_on_full_datasets(
    demo_instance: Path, registry: Registry, name: str, method: str
) -> None:
    app = create_app(
        {"BATCHING": True, "MAX_BATCH_SIZE": 64, "MAX_BATCH_LATENCY_MS": 20},
        instance_path=demo_instance,
    )
    batches: list[tuple[int, int]] = []
    app.extensions["inference_app"].dataplane.batcher._on_batch = lambda requests, rows: (
        batches.append((requests, rows))
    )
    rows, _, _ = load_demo_data(name)
    # Requests of 1 to 7 rows covering the dataset in order, from 16 threads at once.
    bounds = np.cumsum([1 + index % 7 for index in range(len(rows))])
    requests = np.split(rows, bounds[bounds < len(rows)])

    def post(chunk: np.ndarray) -> Any:
        body = {"instances": chunk.tolist(), "method": method}
        return app.test_client().post(f"/v1/models/{name}:predict", json=body).get_json()

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = [answer["predictions"] for answer in pool.map(post, requests)]
    expected = getattr(registry.get(name).estimator, method)(rows)
    got = np.concatenate([np.asarray(answer) for answer in answers])
    if got.dtype.kind == "f":
        # BLAS may sum in another order for another number of rows: equal to rounding.
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
    else:
        np.testing.assert_array_equal(got, expected)
    assert sum(count for count, _ in batches) == len(requests)
    assert sum(size for _, size in batches) == len(rows)
    if name == "breast_cancer":  # a 100-tree forest is slow enough for requests to overlap
        assert max(count for count, _ in batches) > 1, batches
    assert max(size for _, size in batches) <= 64


def test_one_request_failing_never_fails_another() -> None:
    rows, target, _ = load_demo_data("iris")

    def refuse_negative(matrix: np.ndarray) -> np.ndarray:
        if (matrix < 0).any():
            raise ValueError("negative measurements")
        return matrix

    model = make_pipeline(
        FunctionTransformer(refuse_negative), DecisionTreeClassifier(random_state=0)
    ).fit(rows, target)
    gate = threading.Barrier(8)

    def execute(bundle: Any, method: str, matrix: np.ndarray) -> np.ndarray:
        result: np.ndarray = getattr(model, method)(matrix)
        return result

    batcher = Batcher(execute, max_rows=1000, max_latency=0.5)

    def request(index: int) -> Any:
        chunk = rows[index * 10 : index * 10 + 10].copy()
        if index == 3:
            chunk[0, 0] = -1.0
        gate.wait()
        try:
            return batcher.run(None, "predict", chunk).tolist()
        except ValueError as error:
            return str(error)

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(request, range(8)))
    assert answers[3] == "negative measurements"
    for index, answer in enumerate(answers):
        if index != 3:
            assert answer == model.predict(rows[index * 10 : index * 10 + 10]).tolist()


def test_a_request_alone_does_not_wait(registry: Registry) -> None:
    calls: list[tuple[int, int]] = []
    dataplane = DataPlane(
        registry,
        batching=["iris"],
        max_batch_latency=5.0,  # a lone request must not sit out this wait
        on_batch=lambda requests, rows: calls.append((requests, rows)),
    )
    dataplane.warm_up()
    assert dataplane.predict("iris", [[5.1, 3.5, 1.4, 0.2]]).outputs[0].values == ["setosa"]
    assert dataplane.predict("diabetes", [[0.0] * 10]).rows == 1  # not batched
    assert calls == [(1, 1)]


def test_batching_settings_reach_the_dataplane(demo_instance: Path) -> None:
    app = create_app(
        {"BATCHING": "iris, diabetes", "MAX_BATCH_SIZE": 8, "MAX_BATCH_LATENCY_MS": 1},
        instance_path=demo_instance,
    )
    dataplane = app.extensions["inference_app"].dataplane
    assert dataplane.batching == ["iris", "diabetes"]
    assert dataplane.batcher.max_rows == 8 and dataplane.batcher.max_latency == 0.001
    response = app.test_client().post(
        "/v1/models/iris:predict", json={"instances": [[5.1, 3.5, 1.4, 0.2]] * 20}
    )
    assert response.get_json()["predictions"] == ["setosa"] * 20  # over the size: run alone
