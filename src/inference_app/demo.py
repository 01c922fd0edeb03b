"""Demo bundles on real data: iris, breast_cancer, diabetes, penguins and sentiment.

The first three are fitted on scikit-learn's bundled datasets; ``penguins`` is a
``ColumnTransformer`` pipeline over strings and missing values on the Palmer penguins data (the
``palmerpenguins`` package, CC0); ``sentiment`` is TF-IDF and logistic regression on the
human-rated tweets of the VADER ground truth (MIT), fetched from PyPI as a source distribution
the first time (:func:`inference_app.datasets.load_tweets`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn import datasets
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from inference_app.core.bundle import MANIFEST_FILE, Bundle, write_bundle
from inference_app.datasets import DemoDataError, load_penguins, load_tweets

logger = logging.getLogger(__name__)

DEMO_VERSION = "1"
#: Each numeric demo: the dataset loader, and a factory of the unfitted estimator.
DEMOS: dict[str, tuple[Callable[..., Any], Callable[[], Any]]] = {
    "iris": (datasets.load_iris, lambda: LogisticRegression(max_iter=1000)),
    "breast_cancer": (
        datasets.load_breast_cancer,
        lambda: RandomForestClassifier(n_estimators=100, random_state=0),
    ),
    "diabetes": (datasets.load_diabetes, Ridge),
}
#: The folder, under the instance folder, where downloaded demo data is kept.
CACHE_DIR = ".cache"


def penguins_pipeline() -> Pipeline:
    """Return the unfitted ``penguins`` pipeline: one-hot ``island`` (an unknown island is
    refused) and ``sex`` (missing values imputed; an unknown value is ignored), imputed and
    scaled measurements, then logistic regression."""
    numeric = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
    return Pipeline(
        [
            (
                "prepare",
                ColumnTransformer(
                    [
                        ("island", OneHotEncoder(handle_unknown="error"), ["island"]),
                        (
                            "sex",
                            make_pipeline(
                                SimpleImputer(strategy="most_frequent"),
                                OneHotEncoder(handle_unknown="ignore"),
                            ),
                            ["sex"],
                        ),
                        ("measurements", make_pipeline(SimpleImputer(), StandardScaler()), numeric),
                    ]
                ),
            ),
            ("classify", LogisticRegression(max_iter=1000)),
        ]
    )


def sentiment_pipeline() -> Pipeline:
    """Return the unfitted ``sentiment`` pipeline: TF-IDF of words and word pairs, then
    logistic regression."""
    return Pipeline(
        [
            ("tfidf", TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)),
            ("classify", LogisticRegression(max_iter=1000, C=10)),
        ]
    )


@dataclass(frozen=True)
class TypedDemo:
    """A demo on a table: its loader (given the cache folder) and its pipeline."""

    load: Callable[[Path], tuple[Any, Any]]
    make: Callable[[], Any]


def _tweets(cache: Path) -> tuple[Any, Any]:
    """Return the tweets as one column of texts, named ``text``, and their labels."""
    texts, labels = load_tweets(cache)
    return texts["text"], labels


#: The demos with string, missing and text features.
TYPED_DEMOS: dict[str, TypedDemo] = {
    "penguins": TypedDemo(lambda cache: load_penguins(), penguins_pipeline),
    "sentiment": TypedDemo(lambda cache: _tweets(cache), sentiment_pipeline),
}


def load_demo_data(name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Return a numeric demo dataset: rows ``(n_samples, n_features)``, targets and names.

    Classification targets are the dataset's class names (``"setosa"``, ``"malignant"``),
    so the models answer with readable labels.
    """
    loader, _ = DEMOS[name]
    data = loader()
    target = data.target
    if "target_names" in data:
        target = np.asarray(data.target_names)[target]
    return np.asarray(data.data, dtype=np.float64), target, [str(n) for n in data.feature_names]


@dataclass(frozen=True)
class Written:
    """What :func:`write_demo_bundles` did for one demo: its new bundle, or why it wrote
    none (``None``: one existed already)."""

    name: str
    bundle: Bundle | None
    skipped: str | None = None


def write_demo_bundles(
    models_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    onnx: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    names: Iterable[str] | None = None,
) -> list[Written]:
    """Fit each demo model on its full dataset and write its bundle, version ``1``.

    :param onnx: also store each model's checked ONNX conversion where it is exact
        (``inference-app init-demo`` does, unless ``--no-onnx``): iris, breast_cancer,
        diabetes and penguins convert; sentiment's word pairs are tokenised otherwise by
        skl2onnx, so it stays scikit-learn's, its warnings saying why.
    :param cache_dir: where downloaded demo data is kept; default ``.cache`` beside
        ``models_dir``.
    :param names: the demos to write; default all of :data:`DEMOS` and :data:`TYPED_DEMOS`.
    :returns: one entry per demo. A demo whose data cannot be had (the sentiment data needs
        the package index once) is skipped with the reason and what to do; the others are
        still written.
    """
    models = Path(models_dir)
    cache = Path(cache_dir) if cache_dir is not None else models.parent / CACHE_DIR
    written: list[Written] = []
    for name in (*DEMOS, *TYPED_DEMOS) if names is None else names:
        if (models / name / DEMO_VERSION / MANIFEST_FILE).exists() and not overwrite:
            written.append(Written(name, None))
            continue
        if name in DEMOS:
            rows, target, names = load_demo_data(name)
            estimator = DEMOS[name][1]().fit(rows, target)
            bundle = write_bundle(
                estimator,
                rows,
                models,
                name,
                DEMO_VERSION,
                feature_names=names,
                overwrite=overwrite,
                onnx=onnx,
            )
        else:
            demo = TYPED_DEMOS[name]
            try:
                sample, target = demo.load(cache)
            except DemoDataError as error:
                logger.warning("demo %s skipped: %s", name, error)
                written.append(Written(name, None, str(error)))
                continue
            estimator = demo.make().fit(sample, target)
            bundle = write_bundle(
                estimator, sample, models, name, DEMO_VERSION, overwrite=overwrite, onnx=onnx
            )
        written.append(Written(name, bundle))
    return written
