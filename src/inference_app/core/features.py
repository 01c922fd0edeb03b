"""A model's inputs: each feature's datatype, kind, categories and missing values, from its sample.

:func:`describe` reads a training sample (a pandas DataFrame, a 2-D array, or one column of
texts) and the fitted estimator, and says what each feature is and in which layout the
estimator takes its rows: a float64 ``matrix``, a pandas ``frame`` with the training dtypes,
or one ``column`` (a 1-D array, for a text pipeline fitted on a list of texts).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from inference_app.core.datatypes import DATATYPES, FEATURE_DATATYPES, KINDS, of_dtype
from inference_app.core.errors import BundleError

#: How a model takes its rows.
LAYOUTS = ("matrix", "frame", "column")
#: The feature name of a model fitted on one column of texts with no name.
TEXT_FEATURE = "text"
#: ``handle_unknown`` values under which an encoder accepts a category it never saw.
TOLERANT = frozenset({"ignore", "infrequent_if_exist", "warn", "use_encoded_value"})
REFERENCE_ROWS = 5
HISTOGRAM_BINS = 10


@dataclass(frozen=True)
class Feature:
    """One input column of a model.

    :param name: the column name, as in the estimator's ``feature_names_in_``.
    :param datatype: a feature datatype of :data:`~inference_app.core.datatypes.DATATYPES`.
    :param kind: one of :data:`~inference_app.core.datatypes.KINDS`.
    :param nullable: whether a value may be missing (``null``): the sample holds missing
        values, or the estimator predicts with one (an imputer, native missing-value support).
    :param min: the smallest finite value of a numeric feature in the sample (an ISO 8601
        string for a datetime), or ``None``.
    :param max: the largest, likewise.
    :param categories: the known categories of a categorical feature: those of the sample
        and of the fitted encoders' ``categories_``, sorted.
    :param unknown_categories: ``"error"`` when the model's encoder refuses a category it
        never saw (``handle_unknown="error"``), else ``"ignore"`` (served, and counted).
    :param dtype: the training column's numpy or pandas dtype (``float64``, ``object``,
        ``category``, ``datetime64[ns]``), ``None`` for rows fitted as an array.
    """

    name: str
    datatype: str = "FP64"
    min: float | str | None = None
    max: float | str | None = None
    kind: str = "numeric"
    nullable: bool = False
    categories: tuple[Any, ...] | None = None
    unknown_categories: str = "error"
    dtype: str | None = None

    def __post_init__(self) -> None:
        if self.datatype not in FEATURE_DATATYPES:
            raise BundleError(
                f"feature {self.name!r} has datatype {self.datatype!r}; expected one of "
                f"{', '.join(FEATURE_DATATYPES)}"
            )
        if self.kind not in KINDS:
            raise BundleError(f"feature {self.name!r} has kind {self.kind!r}; expected {KINDS}")


@dataclass(frozen=True)
class Description:
    """What :func:`describe` finds: the features, the layout, the sample as the model takes
    it (``data``), its rows as JSON-native values, and reference statistics."""

    inputs: tuple[Feature, ...]
    layout: str
    data: Any
    reference: dict[str, Any]


def describe(
    estimator: Any, sample: Any, feature_names: Sequence[str] | None = None
) -> Description:
    """Describe a model's inputs from a sample of its training data.

    :param sample: shape ``(n_samples, n_features)``: a pandas DataFrame (names and dtypes
        are kept) or a numeric array; or one column of texts (a Series, a 1-D array or a list
        of ``str``) for a model fitted on texts alone.
    :param feature_names: the column names of an array sample; default the estimator's
        ``feature_names_in_``, else ``x0``, ``x1``, ...
    :raises BundleError: the sample does not fit the estimator, or a column's dtype is not
        served (naming it).
    """
    if isinstance(sample, pd.Series) or (
        not isinstance(sample, pd.DataFrame) and np.ndim(sample) == 1
    ):
        return _describe_column(estimator, sample)
    if (
        isinstance(sample, pd.DataFrame)
        and sample.shape[1] == 1
        and not hasattr(estimator, "n_features_in_")
    ):  # a text pipeline fitted on one column of texts, packaged from a one-column file
        return _describe_column(estimator, sample.iloc[:, 0])
    if isinstance(sample, pd.DataFrame):
        frame = sample
    else:
        matrix = np.asarray(sample)
        if matrix.ndim != 2:
            raise BundleError(
                f"the sample must have shape (n_samples, n_features); got {matrix.shape}"
            )
        fitted = getattr(estimator, "feature_names_in_", None)
        if feature_names is not None:
            names = [str(name) for name in feature_names]
        elif fitted is not None:
            names = [str(name) for name in fitted]
        else:
            names = [f"x{index}" for index in range(matrix.shape[1])]
        if len(names) != matrix.shape[1]:
            raise BundleError(f"{len(names)} feature names for {matrix.shape[1]} columns")
        if matrix.dtype.kind not in "biuf":
            raise BundleError(
                f"an array sample of dtype {matrix.dtype} cannot say which columns are text or "
                "categories: pass a pandas DataFrame with the training columns"
            )
        frame = pd.DataFrame(matrix, columns=names)
    return _describe_frame(estimator, frame, from_array=not isinstance(sample, pd.DataFrame))


def _describe_column(estimator: Any, sample: Any) -> Description:
    values = np.asarray(list(sample), dtype=object)
    name = str(sample.name) if isinstance(sample, pd.Series) and sample.name else TEXT_FEATURE
    if not len(values) or not all(type(v) is str for v in values if not _missing(v)):
        raise BundleError("a one-column sample must hold texts (str), at least one")
    frame = pd.DataFrame({name: values})
    feature = _string_feature(frame[name], name, "text", None)
    feature = _with_nullable(feature, frame[name].isna().any())
    description = Description(
        inputs=(feature,), layout="column", data=values, reference=_reference(frame, (feature,))
    )
    _check_predicts(estimator, values)
    return description


def _describe_frame(estimator: Any, frame: pd.DataFrame, *, from_array: bool) -> Description:
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise BundleError(f"the sample must have shape (n_samples, n_features); got {frame.shape}")
    names = [str(column) for column in frame.columns]
    if len(set(names)) != len(names):
        raise BundleError("the sample has two columns with one name")
    frame.columns = pd.Index(names)
    n_features = getattr(estimator, "n_features_in_", len(names))
    if n_features != len(names):
        raise BundleError(
            f"the estimator takes {n_features} features but the sample has {len(names)}"
        )
    fitted = getattr(estimator, "feature_names_in_", None)
    if fitted is not None and [str(name) for name in fitted] != names:
        raise BundleError("the sample's columns differ from the estimator's feature_names_in_")
    datatypes = {}
    for name in names:
        datatype = of_dtype(frame[name].dtype)
        if datatype is None:
            raise BundleError(
                f"feature {name!r} has dtype {frame[name].dtype}, which is not served: use "
                "numbers, booleans, strings, categories or datetimes"
            )
        datatypes[name] = datatype
    numeric = all(
        DATATYPES[datatype].wire != "BYTES" and str(frame[name].dtype) != "category"
        for name, datatype in datatypes.items()
    )
    matrix = frame.to_numpy(dtype=np.float64) if numeric else None
    layout = (
        "matrix"
        if matrix is not None and (from_array or _takes_matrix(estimator, matrix))
        else "frame"
    )
    consumers = dict(_consumers(estimator, names))
    allow_nan = allows_nan(estimator)
    inputs = []
    for name in names:
        column, datatype = frame[name], datatypes[name]
        used = consumers.get(name, [])
        if datatype == "DATETIME":
            feature = Feature(
                name,
                "DATETIME",
                kind="datetime",
                min=_iso(column.min()),
                max=_iso(column.max()),
                dtype=str(column.dtype),
            )
        elif datatype == "BYTES" or str(column.dtype) == "category":
            kind = "text" if any(_is_text(step) for step, _ in used) else "categorical"
            feature = _string_feature(column, name, kind, used, datatype)
        else:
            finite = column.to_numpy(dtype=np.float64, na_value=np.nan)
            finite = finite[np.isfinite(finite)]
            low, high = (float(finite.min()), float(finite.max())) if finite.size else (None, None)
            feature = Feature(
                name, datatype, min=low, max=high, dtype=None if from_array else str(column.dtype)
            )
        imputed = any(_imputes(step) for step, _ in used)
        nullable = bool(column.isna().any()) or imputed or (layout == "matrix" and allow_nan)
        inputs.append(_with_nullable(feature, nullable))
    data = matrix if layout == "matrix" else frame
    _check_predicts(estimator, data)
    if layout == "frame":
        inputs = [_probe_nullable(estimator, frame, feature) for feature in inputs]
    return Description(
        inputs=tuple(inputs), layout=layout, data=data, reference=_reference(frame, inputs)
    )


def _string_feature(
    column: pd.Series,
    name: str,
    kind: str,
    used: list[tuple[Any, int]] | None,
    datatype: str = "BYTES",
) -> Feature:
    values = column.dropna()
    if str(column.dtype) == "category":
        seen = list(column.cat.categories)
    else:
        wrong = next((v for v in values if type(v) is not str), None)
        if wrong is not None:
            raise BundleError(
                f"feature {name!r} mixes strings with {type(wrong).__name__} values: make the "
                "column all strings (missing values as NaN)"
            )
        seen = list(values.unique())
    if kind == "text":
        return Feature(name, "BYTES", kind="text", dtype=str(column.dtype))
    known = set(seen)
    tolerant = True
    for step, index in used or []:
        encoder = _encoder(step)
        if encoder is None:
            continue
        categories = getattr(encoder, "categories_", None)
        if categories is not None and index < len(categories):
            known |= {_native(c) for c in categories[index] if not _missing(c)}
        tolerant = tolerant and str(getattr(encoder, "handle_unknown", "error")) in TOLERANT
    if str(column.dtype) == "category" and not any(_encoder(s) for s, _ in used or []):
        tolerant = True  # native categorical support: an unseen category counts as missing
    return Feature(
        name,
        datatype,
        kind="categorical",
        categories=tuple(sorted(map(_native, known), key=str)),
        unknown_categories="ignore" if tolerant else "error",
        dtype=str(column.dtype),
    )


def _with_nullable(feature: Feature, nullable: bool) -> Feature:
    return Feature(**{**feature.__dict__, "nullable": bool(nullable)})


def _probe_nullable(estimator: Any, frame: pd.DataFrame, feature: Feature) -> Feature:
    """Mark ``feature`` nullable when the estimator predicts finite values without it."""
    if feature.nullable:
        return feature
    rows = frame.head(REFERENCE_ROWS).copy()
    missing = pd.Series([None] * len(rows), index=rows.index, dtype=object)
    try:
        rows[feature.name] = missing.astype(frame[feature.name].dtype)
    except (TypeError, ValueError):  # an integer column holds missing values as float NaN
        rows[feature.name] = missing.astype(np.float64)

    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            outputs = np.asarray(estimator.predict(rows))
    except Exception:  # noqa: BLE001 - any refusal means the model cannot take a missing value
        return feature
    if outputs.dtype.kind in "fc" and not np.isfinite(outputs).all():
        return feature
    return _with_nullable(feature, True)


def _takes_matrix(estimator: Any, matrix: np.ndarray) -> bool:
    """Whether an estimator fitted on a numeric DataFrame also predicts its float64 array
    (column selection by name, for one, needs the DataFrame)."""
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            estimator.predict(matrix[:REFERENCE_ROWS])
    except Exception:  # noqa: BLE001 - any refusal means it needs the frame
        return False
    return True


def _check_predicts(estimator: Any, data: Any) -> None:
    rows = (
        data[:REFERENCE_ROWS] if not isinstance(data, pd.DataFrame) else data.head(REFERENCE_ROWS)
    )
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            estimator.predict(rows)
    except Exception as error:  # noqa: BLE001 - the sample must be what the model takes
        raise BundleError(
            f"the estimator cannot predict the sample's first rows: {type(error).__name__}: {error}"
        ) from None


def _consumers(estimator: Any, names: list[str]) -> Iterator[tuple[str, list[tuple[Any, int]]]]:
    """Yield each input column with the transformers that read it first, and its position
    among their inputs (walking a Pipeline's first step and ColumnTransformers)."""
    found: dict[str, list[tuple[Any, int]]] = {}
    for step, columns in _first_readers(estimator, names):
        for position, column in enumerate(columns):
            found.setdefault(column, []).append((step, position))
    yield from found.items()


def _first_readers(estimator: Any, names: list[str]) -> Iterator[tuple[Any, list[str]]]:
    steps = getattr(estimator, "steps", None)
    if steps:
        yield from _first_readers(steps[0][1], names)
        if _imputes(steps[0][1]) or _is_passthrough(steps[0][1]):
            # the next step reads the same columns (imputers keep names and order)
            for step, columns in _first_readers(_pipeline_rest(estimator), names):
                yield step, columns
        return
    transformers = getattr(estimator, "transformers_", None)
    if transformers is not None:
        indices = getattr(estimator, "_transformer_to_input_indices", {})
        for name, transformer, _ in transformers:
            if isinstance(transformer, str) or name not in indices:
                continue
            columns = [names[i] for i in indices[name] if i < len(names)]
            yield transformer, columns
            inner = getattr(transformer, "steps", None)
            if inner:
                for _, step in inner:
                    yield step, columns
                    if not (_imputes(step) or _is_passthrough(step)):
                        break
        return
    yield estimator, list(names)


def _pipeline_rest(pipeline: Any) -> Any:
    return pipeline[1:] if len(pipeline.steps) > 1 else pipeline.steps[0][1]


def _is_passthrough(step: Any) -> bool:
    return step is None or step == "passthrough"


def _imputes(step: Any) -> bool:
    return type(step).__name__ in (
        "SimpleImputer",
        "KNNImputer",
        "IterativeImputer",
        "MissingIndicator",
    )


def _is_text(step: Any) -> bool:
    return hasattr(step, "build_analyzer") or type(step).__name__ == "HashingVectorizer"


def _encoder(step: Any) -> Any:
    return step if hasattr(step, "categories_") and hasattr(step, "handle_unknown") else None


def allows_nan(estimator: Any) -> bool:
    """Return scikit-learn's ``allow_nan`` tag of ``estimator``: it predicts with NaN in."""
    from sklearn.utils import get_tags

    try:
        return bool(get_tags(estimator).input_tags.allow_nan)
    except (AttributeError, TypeError, ValueError):
        return False


def _missing(value: Any) -> bool:
    return (
        value is None
        or value is pd.NA
        or value is pd.NaT
        or (isinstance(value, float) and math.isnan(value))
    )


def _native(value: Any) -> Any:
    """Return a category as a JSON-native value."""
    return value.item() if isinstance(value, np.generic) else value


def _iso(value: Any) -> str | None:
    return None if _missing(value) else pd.Timestamp(value).isoformat()


def json_value(value: Any, feature: Feature) -> Any:
    """Return one sample value as JSON: ``None`` when missing, ISO 8601 for datetimes."""
    if _missing(value) or (isinstance(value, float | np.floating) and not math.isfinite(value)):
        return None
    if feature.datatype == "DATETIME":
        return pd.Timestamp(value).isoformat()
    if feature.datatype == "BOOL":
        return bool(value)
    if feature.datatype == "INT64":
        return int(value)
    if feature.datatype in ("FP32", "FP64"):
        return float(value)
    return _native(value)


def _reference(frame: pd.DataFrame, inputs: Sequence[Feature]) -> dict[str, Any]:
    """Return a few complete training rows and per-feature statistics of the sample."""
    incomplete = frame.isna().any(axis=1).to_numpy()
    chosen = pd.concat([frame[~incomplete], frame[incomplete]]).head(REFERENCE_ROWS)
    rows = [
        [json_value(value, feature) for value, feature in zip(row, inputs, strict=True)]
        for row in chosen.itertuples(index=False)
    ]
    histograms: dict[str, Any] = {}
    for feature in inputs:
        histogram = _histogram(frame[feature.name], feature)
        if histogram is not None:
            histograms[feature.name] = histogram
    return {"n_samples": int(frame.shape[0]), "rows": rows, "histograms": histograms}


def _histogram(column: pd.Series, feature: Feature) -> dict[str, Any] | None:
    """Return a feature's distribution in the sample, for drift monitoring.

    Numeric: ``numpy.histogram`` with :data:`HISTOGRAM_BINS` bins; datetimes likewise over
    seconds since the Unix epoch; categories: counts per category; texts: the histogram of
    their lengths in characters, with their minimum, maximum and mean. Each says how many
    values were ``missing``.
    """
    missing = int(column.isna().sum())
    present = column.dropna()
    if feature.kind == "categorical":
        counts = present.astype(object).map(_native).value_counts()
        categories = [c for c in feature.categories or () if c in counts.index]
        return {
            "categories": categories,
            "counts": [int(counts[c]) for c in categories],
            "missing": missing,
        }
    if feature.kind == "text":
        lengths = present.map(len).to_numpy(dtype=np.float64)
        if not lengths.size:
            return None
        counts_, edges = np.histogram(lengths, bins=HISTOGRAM_BINS)
        return {
            "length_bin_edges": edges.tolist(),
            "counts": counts_.tolist(),
            "lengths": {
                "min": int(lengths.min()),
                "max": int(lengths.max()),
                "mean": float(lengths.mean()),
            },
            "missing": missing,
        }
    if feature.kind == "datetime":
        # microseconds whatever the column's unit (s, ms, us, ns), UTC for a zoned column
        values = pd.to_datetime(present).to_numpy(dtype="datetime64[us]").astype(np.int64) / 1e6
        unit = {"unit": "seconds since 1970-01-01"}
    else:
        values = present.to_numpy(dtype=np.float64)
        unit = {}
    values = values[np.isfinite(values)]
    if not values.size:
        return None
    counts_, edges = np.histogram(values, bins=HISTOGRAM_BINS)
    return {"bin_edges": edges.tolist(), "counts": counts_.tolist(), "missing": missing, **unit}
