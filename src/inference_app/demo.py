"""Demo bundles fitted on scikit-learn's bundled datasets: iris, breast_cancer, diabetes."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sklearn import datasets
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Ridge

from inference_app.core.bundle import MANIFEST_FILE, Bundle, write_bundle

DEMO_VERSION = "1"
#: Each demo: the dataset loader, and a factory of the unfitted estimator.
DEMOS: dict[str, tuple[Callable[..., Any], Callable[[], Any]]] = {
    "iris": (datasets.load_iris, lambda: LogisticRegression(max_iter=1000)),
    "breast_cancer": (
        datasets.load_breast_cancer,
        lambda: RandomForestClassifier(n_estimators=100, random_state=0),
    ),
    "diabetes": (datasets.load_diabetes, Ridge),
}


def load_demo_data(name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Return a demo dataset: rows ``(n_samples, n_features)``, targets and feature names.

    Classification targets are the dataset's class names (``"setosa"``, ``"malignant"``),
    so the models answer with readable labels.
    """
    loader, _ = DEMOS[name]
    data = loader()
    target = data.target
    if "target_names" in data:
        target = np.asarray(data.target_names)[target]
    return np.asarray(data.data, dtype=np.float64), target, [str(n) for n in data.feature_names]


def write_demo_bundles(
    models_dir: str | os.PathLike[str], *, overwrite: bool = False, onnx: bool = False
) -> list[tuple[str, Bundle | None]]:
    """Fit each demo model on its full dataset and write its bundle, version ``1``.

    :param onnx: also store each model's checked ONNX conversion (the ``onnx`` extra).
    :returns: each demo's name with its new bundle, or ``None`` where one existed already
        and ``overwrite`` is false.
    """
    written: list[tuple[str, Bundle | None]] = []
    for name, (_, make_estimator) in DEMOS.items():
        if (Path(models_dir) / name / DEMO_VERSION / MANIFEST_FILE).exists() and not overwrite:
            written.append((name, None))
            continue
        rows, target, names = load_demo_data(name)
        estimator = make_estimator().fit(rows, target)
        bundle = write_bundle(
            estimator,
            rows,
            models_dir,
            name,
            DEMO_VERSION,
            feature_names=names,
            overwrite=overwrite,
            onnx=onnx,
        )
        written.append((name, bundle))
    return written
