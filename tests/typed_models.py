"""Typed pipelines on real data for the typed-feature tests: strings, categories, texts, dates."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_wine
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from inference_app.core.bundle import write_bundle
from inference_app.datasets import load_penguins, load_tweets

#: The penguins' string and numeric columns.
PENGUIN_STRINGS = ["island", "sex"]
PENGUIN_NUMBERS = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
#: How many tweets the text models are fitted on (every n-th of the 4196), to stay fast.
TWEET_STEP = 4
#: The wine columns the datetime model reads next to its datetime; ``alcohol`` is float32.
WINE_COLUMNS = ["alcohol", "malic_acid", "color_intensity", "proline"]
#: The start of the datetime model's synthetic but deterministic timestamps.
EPOCH = pd.Timestamp("2024-01-01")
#: The order the models are written in (names sort the same way).
NAMES = (
    "penguins_onehot",
    "penguins_strict",
    "penguins_hgb",
    "tweets_mixed",
    "wine_datetime",
    "sentiment",
)


@dataclass(frozen=True)
class Fitted:
    """A fitted pipeline, the rows it was fitted on (its sample) and their targets."""

    name: str
    estimator: Any
    rows: Any
    target: pd.Series

    @property
    def frame(self) -> pd.DataFrame:
        """The rows as a DataFrame (a text model's Series as its one column)."""
        return self.rows if isinstance(self.rows, pd.DataFrame) else self.rows.to_frame()

    def predict(self, frame: pd.DataFrame, method: str = "predict") -> np.ndarray:
        """In-process ``method`` of the estimator on ``frame``, in the layout it was fitted on."""
        rows = frame if isinstance(self.rows, pd.DataFrame) else frame[self.rows.name]
        result: np.ndarray = getattr(self.estimator, method)(rows)
        return result


def datetime_parts(frame: pd.DataFrame) -> np.ndarray:
    """Expand each datetime column into its hour and day of the week, as floats."""
    parts = []
    for name in frame.columns:
        moments = pd.to_datetime(frame[name])
        parts += [moments.dt.hour.to_numpy(), moments.dt.day_of_week.to_numpy()]
    return np.column_stack(parts).astype(np.float64)


def penguins_onehot() -> Fitted:
    """Pipeline 1: one-hot strings (unknown categories ignored), imputed and scaled numbers."""
    rows, species = load_penguins()
    model = Pipeline(
        [
            (
                "prepare",
                ColumnTransformer(
                    [
                        ("strings", OneHotEncoder(handle_unknown="ignore"), PENGUIN_STRINGS),
                        (
                            "numbers",
                            make_pipeline(SimpleImputer(), StandardScaler()),
                            PENGUIN_NUMBERS,
                        ),
                    ]
                ),
            ),
            ("classify", LogisticRegression(max_iter=1000)),
        ]
    )
    return Fitted("penguins_onehot", model.fit(rows, species), rows, species)


def penguins_strict() -> Fitted:
    """Pipeline 2: imputed strings one-hot encoded (unknown categories refused), imputed numbers."""
    rows, species = load_penguins()
    model = Pipeline(
        [
            (
                "prepare",
                ColumnTransformer(
                    [
                        (
                            "strings",
                            make_pipeline(
                                SimpleImputer(strategy="most_frequent"),
                                OneHotEncoder(handle_unknown="error"),
                            ),
                            PENGUIN_STRINGS,
                        ),
                        ("numbers", SimpleImputer(), PENGUIN_NUMBERS),
                    ]
                ),
            ),
            ("classify", RandomForestClassifier(n_estimators=25, random_state=0)),
        ]
    )
    return Fitted("penguins_strict", model.fit(rows, species), rows, species)


def penguins_hgb() -> Fitted:
    """Pipeline 3: gradient boosting on pandas categories, missing values handled natively."""
    rows, species = load_penguins()
    rows = rows.astype({name: "category" for name in PENGUIN_STRINGS})
    model = HistGradientBoostingClassifier(
        categorical_features="from_dtype", max_iter=30, random_state=0
    )
    return Fitted("penguins_hgb", model.fit(rows, species), rows, species)


def tweets(cache_dir: Path) -> tuple[pd.Series, pd.Series]:
    """Every :data:`TWEET_STEP`-th tweet, index 0..n-1, and its sentiment."""
    texts, sentiment = load_tweets(cache_dir)
    chosen = texts["text"].iloc[::TWEET_STEP].reset_index(drop=True)
    return chosen.rename("text"), sentiment.iloc[::TWEET_STEP].reset_index(drop=True)


def tweets_mixed(cache_dir: Path) -> Fitted:
    """Pipeline 4: TF-IDF of a tweet next to its length in characters (an integer column)."""
    texts, sentiment = tweets(cache_dir)
    rows = pd.DataFrame({"text": texts, "length": texts.str.len().astype(np.float64)})
    model = Pipeline(
        [
            (
                "prepare",
                ColumnTransformer(
                    [
                        ("words", TfidfVectorizer(), "text"),
                        ("length", StandardScaler(), ["length"]),
                    ]
                ),
            ),
            ("classify", LogisticRegression(max_iter=1000)),
        ]
    )
    return Fitted("tweets_mixed", model.fit(rows, sentiment), rows, sentiment)


def wine_datetime() -> Fitted:
    """Pipeline 5: wine measurements (one float32) and a datetime expanded to hour and weekday."""
    wine = load_wine(as_frame=True)
    rows = wine.data[WINE_COLUMNS].copy()
    rows["alcohol"] = rows["alcohol"].astype(np.float32)
    rows["when"] = EPOCH + pd.to_timedelta(np.arange(len(rows)) * 3600, unit="s")
    target = wine.target.map(dict(enumerate(wine.target_names))).astype(object)
    model = Pipeline(
        [
            (
                "prepare",
                ColumnTransformer(
                    [
                        ("measures", StandardScaler(), WINE_COLUMNS),
                        ("when", FunctionTransformer(datetime_parts), ["when"]),
                    ]
                ),
            ),
            ("classify", LogisticRegression(max_iter=2000)),
        ]
    )
    return Fitted("wine_datetime", model.fit(rows, target), rows, target)


def sentiment(cache_dir: Path) -> Fitted:
    """Pipeline 6: TF-IDF then logistic regression, fitted on a Series of texts named text."""
    texts, labels = tweets(cache_dir)
    model = Pipeline([("tfidf", TfidfVectorizer()), ("classify", LogisticRegression())])
    return Fitted("sentiment", model.fit(texts, labels), texts, labels)


def tweets_cache(base: Path) -> Path:
    """The folder the tweets are downloaded to once, shared by every test module of a run."""
    return base / "typed-tweets-cache"


def fit_all(cache_dir: Path) -> dict[str, Fitted]:
    """Fit every typed pipeline, by name."""
    fitted = [
        penguins_onehot(),
        penguins_strict(),
        penguins_hgb(),
        tweets_mixed(cache_dir),
        wine_datetime(),
        sentiment(cache_dir),
    ]
    return {model.name: model for model in fitted}


def write_all(models: dict[str, Fitted], models_dir: Path) -> None:
    """Write each fitted pipeline's bundle, version 1, with its rows as the sample."""
    for model in models.values():
        write_bundle(model.estimator, model.rows, models_dir, model.name, "1")


def json_rows(frame: pd.DataFrame) -> list[list[Any]]:
    """The rows as JSON-native lists in column order: None where missing, ISO 8601 datetimes."""
    return [
        [_json_value(value) for value in row]
        for row in frame.astype(object).itertuples(index=False)
    ]


def _json_value(value: Any) -> Any:
    if value is None or value is pd.NaT or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    return value
