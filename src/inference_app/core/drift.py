"""Drift of served rows from a model's training reference: bins, vectorised counts and the PSI.

A bundle's ``reference["histograms"]`` (:func:`inference_app.core.features._histogram`) says
how its training sample spread over bins. :func:`plan` turns it into the bins served rows are
counted into, per feature:

- numeric: the reference histogram's bins (``numpy.histogram``: ``[e_i, e_i+1)``, the last one
  closed), labelled ``"0"`` .. ``"K-1"``, plus ``underflow`` (below the first edge),
  ``overflow`` (above the last) and ``missing``;
- datetime: the same over seconds since 1970-01-01 UTC;
- text: the same over the text's length in characters;
- categorical: one bin per training category, labelled by the category (by its index
  ``"0"``, ``"1"``, ... when a category's text is empty, longer than :data:`MAX_LABEL_LENGTH`,
  or clashes with another label), ``other`` for the training categories beyond the
  :data:`MAX_CATEGORY_BINS` most frequent, ``unseen`` for any other value, and ``missing``.

A ``missing`` bin exists when the reference says how many values were missing (bundles written
before it did leave served missing values uncounted); a feature whose reference lacks its
histogram, or holds one this module cannot read, is listed in :attr:`Plan.unmonitored` and
not counted. :meth:`Plan.count` counts a checked batch with numpy and pandas in a few
vectorised passes (:meth:`Plan.filled` bins a small matrix batch in plain Python instead,
cheaper below :data:`_PYTHON_CELLS` values), and :func:`psi` compares the counts with the
reference.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from inference_app.core.bundle import Manifest
from inference_app.core.features import Feature
from inference_app.core.inputs import ModelInput

#: What an empty bin's proportion counts as in the PSI (and any proportion below it).
EPSILON = 1e-4
#: The most categories of one feature with a bin of their own; the rest share ``other``.
MAX_CATEGORY_BINS = 100
#: The longest category text used as a bin label as it is.
MAX_LABEL_LENGTH = 64
UNDERFLOW, OVERFLOW, MISSING, UNSEEN, OTHER = "underflow", "overflow", "missing", "unseen", "other"
#: The unit of each kind's bin bounds.
UNITS = {"numeric": None, "datetime": "seconds since 1970-01-01", "text": "characters"}
#: Batches of at most this many values (rows x features) compare all edges in one
#: broadcast; larger ones take one pass per edge (faster there, and memory O(values)).
_BROADCAST_CELLS = 512
#: Float64 matrix batches of at most this many values are binned in plain Python by
#: :meth:`Plan.filled` (a bisection per value, about 0.2 us each, against some 8 us of numpy
#: calls per batch; bench/experiments/lean_request.py).
_PYTHON_CELLS = 32
#: Scales a datetime reference may be off by: bundles written before the fix took the
#: column's integer ticks (s, ms, us or ns) as nanoseconds.
_DATETIME_SCALES = (1.0, 1e3, 1e6, 1e9)


@dataclass(frozen=True)
class Bin:
    """One bin of a feature.

    :param label: the ``bin`` label of its metrics: stable for a given bundle.
    :param lower: the inclusive lower bound (in the feature's unit), ``None`` if unbounded or
        not an interval.
    :param upper: the exclusive upper bound (inclusive for the last histogram bin), likewise.
    :param category: the category of a categorical feature's own bin, else ``None``.
    """

    label: str
    lower: float | None = None
    upper: float | None = None
    category: Any = None


@dataclass(frozen=True)
class FeatureBins:
    """How one feature's served values are binned.

    :param reference: the training sample's count in each bin, shape ``(len(bins),)``.
    :param unit: the unit of the bounds: ``None`` (the feature's own), seconds, characters.
    :param offset: the position of its first bin among all the plan's bins.
    :param edges: numeric, datetime and text features: the histogram edges, in ``unit``.
    :param categories: categorical features: every training category, in reference order.
    :param category_bins: the bin of each of ``categories``.
    """

    name: str
    kind: str
    bins: tuple[Bin, ...]
    reference: np.ndarray
    unit: str | None
    offset: int
    edges: np.ndarray | None = None
    categories: pd.Index | None = None
    category_bins: np.ndarray | None = None

    @property
    def labels(self) -> tuple[str, ...]:
        """Return the bin labels, in order."""
        return tuple(b.label for b in self.bins)

    @property
    def reference_ratio(self) -> np.ndarray:
        """Return the reference proportion of each bin (they sum to 1)."""
        ratio: np.ndarray = self.reference / self.reference.sum()
        return ratio

    def index(self, label: str) -> int:
        """Return the position of the bin labelled ``label``.

        :raises ValueError: no such bin.
        """
        return self.labels.index(label)

    @property
    def missing(self) -> int | None:
        """Return the position of the ``missing`` bin, ``None`` if there is none."""
        return len(self.bins) - 1 if self.bins[-1].label == MISSING else None


@dataclass(frozen=True)
class Unmonitored:
    """A feature whose served values are not counted, and why."""

    name: str
    reason: str


@dataclass(frozen=True)
class BinDrift:
    """One bin in a :class:`FeatureDrift`: its served count and both proportions."""

    label: str
    lower: float | None
    upper: float | None
    category: Any
    rows: int
    observed: float | None
    reference: float


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's drift: rows counted, PSI (``None`` before any row) and its verdict."""

    name: str
    kind: str
    unit: str | None
    rows: int
    psi: float | None
    passed: bool | None
    bins: tuple[BinDrift, ...]


class Plan:
    """How one bundle's served rows are counted into its training reference bins.

    :param features: the monitored features, in the model's feature order.
    :param unmonitored: the features that are not counted, with the reason.
    :param positions: the column of each monitored feature in the model's inputs.
    :param names: the model's feature names, in order.
    :param layout: the bundle's layout (``matrix``, ``frame``, ``column``).
    """

    def __init__(
        self,
        features: Sequence[FeatureBins],
        unmonitored: Sequence[Unmonitored],
        positions: Sequence[int],
        names: Sequence[str],
        layout: str,
    ) -> None:
        self.features = tuple(features)
        self.unmonitored = tuple(unmonitored)
        self.names = tuple(names)
        self.layout = layout
        #: The number of bins over all monitored features.
        self.size = sum(len(f.bins) for f in self.features)
        ranged = [i for i, f in enumerate(self.features) if f.edges is not None]
        self._ranged = tuple(self.features[i] for i in ranged)
        self._ranged_positions = np.array([positions[i] for i in ranged], dtype=np.intp)
        self._categorical = tuple(
            (positions[i], f) for i, f in enumerate(self.features) if f.edges is None
        )
        # The ranged features' edges side by side, one row per edge (edges[k, f]), padded
        # with NaN (x >= NaN is false). The last edge of each feature is moved up to the next
        # float: numpy.histogram's last bin is closed, so x >= nextafter(last) means x > last.
        width = max((len(f.edges) for f in self._ranged if f.edges is not None), default=0)
        self._edges = np.full((width, len(self._ranged)), np.nan)
        for column, feature in enumerate(self._ranged):
            assert feature.edges is not None
            self._edges[: len(feature.edges), column] = feature.edges
            self._edges[len(feature.edges) - 1, column] = np.nextafter(feature.edges[-1], np.inf)
        self._cube = np.ascontiguousarray(self._edges.T)  # (features, edges), for small batches
        self._offsets = np.array([f.offset for f in self._ranged], dtype=np.intp)
        #: The plan-wide position of each ranged feature's missing bin, -1 if it has none.
        self._missing = np.array(
            [-1 if f.missing is None else f.offset + f.missing for f in self._ranged],
            dtype=np.intp,
        )
        self._all_columns = len(self._ranged) == len(names) and np.array_equal(
            self._ranged_positions, np.arange(len(names))
        )
        #: For :meth:`filled`, per ranged feature of a matrix plan without categorical
        #: features: its column, edges (as in ``_edges``: the last moved up), first bin and
        #: missing bin (-1: none); ``None`` for other plans.
        self._scalar = (
            tuple(
                (int(position), self._cube[column, : len(f.edges)].tolist(), f.offset, missing)
                for column, (position, f, missing) in enumerate(
                    zip(self._ranged_positions, self._ranged, self._missing.tolist(), strict=True)
                )
                if f.edges is not None
            )
            if layout == "matrix" and not self._categorical
            else None
        )

    def filled(self, model_input: ModelInput) -> dict[int, int]:
        """Return the non-empty bins of a checked batch with their counts: the non-zero
        entries of :meth:`count`, by position.

        A float64 matrix of at most :data:`_PYTHON_CELLS` values (a plan without
        categorical features) is binned in plain Python, each value by bisection over its
        feature's edges, as :meth:`_ranged_bins` bins it; any other batch by :meth:`count`.
        """
        data = model_input.data
        scalar = self._scalar
        if (
            scalar is not None
            and isinstance(data, np.ndarray)
            and data.dtype == np.float64
            and data.ndim == 2
            and data.size <= _PYTHON_CELLS
        ):
            found: dict[int, int] = {}
            for row in data.tolist():
                for position, edges, offset, missing in scalar:
                    value = row[position]
                    if value != value:  # NaN: missing
                        if missing < 0:
                            continue
                        index = missing
                    else:
                        index = offset + bisect_right(edges, value)
                    found[index] = found.get(index, 0) + 1
            return found
        counts = self.count(model_input)
        nonzero = np.flatnonzero(counts)
        return dict(zip(nonzero.tolist(), counts[nonzero].tolist(), strict=True))

    def count(self, model_input: ModelInput) -> np.ndarray:
        """Count a checked batch into the bins.

        :param model_input: the rows as the dataplane checked them: a float64 matrix
            ``(n_samples, n_features)``, a DataFrame with the training dtypes, or a 1-D array
            of texts (``column`` layout).
        :returns: int64 counts, shape ``(size,)``: the bins of :attr:`features`, one after
            the other (``FeatureBins.offset``).
        """
        data = model_input.data
        if self._ranged:
            if self.layout == "matrix":
                matrix = np.asarray(data, dtype=np.float64)
                values = matrix if self._all_columns else matrix[:, self._ranged_positions]
            else:
                values = np.column_stack(
                    [
                        _as_float(_column(data, self.names, position, self.layout), feature)
                        for position, feature in zip(
                            self._ranged_positions, self._ranged, strict=True
                        )
                    ]
                )
            counts = np.bincount(self._ranged_bins(values), minlength=self.size)
        else:
            counts = np.zeros(self.size, dtype=np.intp)
        for position, feature in self._categorical:
            column = _column(data, self.names, position, self.layout)
            unseen_as_missing = model_input.unseen.get(feature.name, 0)
            _count_categories(column, feature, unseen_as_missing, counts)
        return counts

    def _ranged_bins(self, values: np.ndarray) -> np.ndarray:
        """Return the plan-wide bin of each value of the ranged features, ``(n_values,)``.

        Per feature, ``searchsorted(edges, x, side="right")`` (0: underflow, then the
        histogram bins, then overflow), computed for all features at once as the number of
        edges at most ``x``: one comparison with every edge for small batches, one pass per
        edge for large ones. NaN goes to the missing bin, or is left out without one.

        :param values: float64 ``(n_samples, n_ranged_features)``.
        """
        if values.size <= _BROADCAST_CELLS:
            codes = np.add.reduce(values[:, :, None] >= self._cube, axis=2, dtype=np.intp)
            codes += self._offsets
        else:
            codes = self._offsets + (values >= self._edges[0])
            for edge in self._edges[1:]:
                codes += values >= edge
        missing = np.isnan(values)
        if missing.any():
            codes = np.where(missing, self._missing, codes)
            codes = codes[codes >= 0]
        flat: np.ndarray = codes.ravel()
        return flat

    def report(
        self, observed: Mapping[tuple[str, str], float], threshold: float
    ) -> tuple[FeatureDrift, ...]:
        """Compare served counts with the reference, feature by feature.

        :param observed: the served count of each ``(feature, bin label)``; missing keys
            count 0, keys of unknown bins are ignored.
        :param threshold: the PSI above which a feature fails.
        """
        reports = []
        for feature in self.features:
            served = np.array(
                [float(observed.get((feature.name, b.label), 0.0)) for b in feature.bins]
            )
            total = float(served.sum())
            value = psi(served, feature.reference) if total > 0 else None
            ratios = served / total if total > 0 else None
            reference = feature.reference_ratio
            reports.append(
                FeatureDrift(
                    name=feature.name,
                    kind=feature.kind,
                    unit=feature.unit,
                    rows=int(round(total)),
                    psi=value,
                    passed=None if value is None else value <= threshold,
                    bins=tuple(
                        BinDrift(
                            label=b.label,
                            lower=b.lower,
                            upper=b.upper,
                            category=b.category,
                            rows=int(round(served[i])),
                            observed=None if ratios is None else float(ratios[i]),
                            reference=float(reference[i]),
                        )
                        for i, b in enumerate(feature.bins)
                    ),
                )
            )
        return tuple(reports)


def psi(observed: Any, reference: Any, epsilon: float = EPSILON) -> float:
    """Return the population stability index of served counts against reference counts.

    PSI = sum over bins of ``(p_i - q_i) * ln(p_i / q_i)``, with ``p`` the served and ``q``
    the reference proportions, each floored at ``epsilon`` so that empty bins stay finite
    (Siddiqi, *Credit Risk Scorecards*, Wiley 2006, the system stability report; Yurdakul,
    *Statistical Properties of Population Stability Index*, Western Michigan University
    dissertation, 2018). Rules of thumb there: below 0.1 no significant shift, 0.1 to 0.25 a
    moderate one, above 0.25 a significant one.

    :param observed: served counts per bin, shape ``(n_bins,)``.
    :param reference: reference counts per bin, same shape.
    :raises ValueError: the shapes differ, a count is negative, or a total is not positive.
    """
    p = np.asarray(observed, dtype=np.float64)
    q = np.asarray(reference, dtype=np.float64)
    if p.shape != q.shape or p.ndim != 1:
        raise ValueError(f"observed has shape {p.shape}, reference {q.shape}: they must match")
    if (p < 0).any() or (q < 0).any() or p.sum() <= 0 or q.sum() <= 0:
        raise ValueError("counts must be non-negative with a positive total")
    p = np.maximum(p / p.sum(), epsilon)
    q = np.maximum(q / q.sum(), epsilon)
    return float(np.sum((p - q) * np.log(p / q)))


def plan(manifest: Manifest) -> Plan:
    """Return the bins of each feature of a bundle, from its training reference.

    Never raises for a reference it cannot read: the feature is listed as unmonitored.
    """
    histograms = manifest.reference.get("histograms")
    if not isinstance(histograms, Mapping):
        histograms = {}
    features: list[FeatureBins] = []
    unmonitored: list[Unmonitored] = []
    positions: list[int] = []
    offset = 0
    for position, feature in enumerate(manifest.inputs):
        histogram = histograms.get(feature.name)
        if not isinstance(histogram, Mapping):
            unmonitored.append(Unmonitored(feature.name, "the reference has no histogram"))
            continue
        try:
            binned = _feature_bins(feature, histogram, offset)
        except (KeyError, TypeError, ValueError) as error:
            unmonitored.append(Unmonitored(feature.name, f"unreadable reference: {error}"))
            continue
        features.append(binned)
        positions.append(position)
        offset += len(binned.bins)
    return Plan(features, unmonitored, positions, manifest.feature_names, manifest.layout)


def _feature_bins(feature: Feature, histogram: Mapping[str, Any], offset: int) -> FeatureBins:
    missing = histogram.get("missing")
    if missing is not None and (type(missing) is not int or missing < 0):
        raise ValueError(f"missing must be a non-negative integer, got {missing!r}")
    if feature.kind == "categorical":
        return _categorical_bins(feature, histogram, missing, offset)
    key = "length_bin_edges" if feature.kind == "text" else "bin_edges"
    edges = np.asarray(histogram[key], dtype=np.float64)
    counts = _counts(histogram["counts"], len(edges) - 1)
    if edges.ndim != 1 or len(edges) < 2 or not np.isfinite(edges).all():
        raise ValueError(f"{key} must be at least two finite numbers")
    if (np.diff(edges) <= 0).any():
        raise ValueError(f"{key} must increase")
    if feature.kind == "datetime":
        edges = edges * _datetime_scale(feature, edges)
    bounds = [float(e) for e in edges]
    bins = [
        Bin(UNDERFLOW, None, bounds[0]),
        *(Bin(str(i), bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)),
        Bin(OVERFLOW, bounds[-1], None),
    ]
    reference = [0, *counts, 0]
    if missing is not None:
        bins.append(Bin(MISSING))
        reference.append(missing)
    return _checked(feature, bins, reference, offset, edges=edges)


def _categorical_bins(
    feature: Feature, histogram: Mapping[str, Any], missing: int | None, offset: int
) -> FeatureBins:
    categories = list(histogram["categories"])
    counts = _counts(histogram["counts"], len(categories))
    if len({_key(c) for c in categories}) != len(categories):
        raise ValueError("categories repeat")
    # The most frequent categories get bins of their own (ties: reference order).
    order = sorted(range(len(categories)), key=lambda i: -counts[i])
    own = sorted(order[:MAX_CATEGORY_BINS])
    specials = [UNSEEN] + ([MISSING] if missing is not None else [])
    if len(categories) > MAX_CATEGORY_BINS:
        specials.insert(0, OTHER)
    texts = [str(categories[i]) for i in own]
    readable = all(0 < len(text) <= MAX_LABEL_LENGTH for text in texts) and len(
        set(texts) | set(specials)
    ) == len(texts) + len(specials)
    labels = texts if readable else [str(i) for i in range(len(own))]
    bins = [Bin(label, category=categories[i]) for label, i in zip(labels, own, strict=True)]
    bins += [Bin(special) for special in specials]
    bin_of = {index: position for position, index in enumerate(own)}
    other = len(own)  # the ``other`` bin, when there is one
    category_bins = np.array([bin_of.get(i, other) for i in range(len(categories))], dtype=np.intp)
    reference = np.zeros(len(bins))
    np.add.at(reference, category_bins, counts)
    if missing is not None:
        reference[-1] = missing
    return _checked(
        feature,
        bins,
        list(reference),
        offset,
        categories=pd.Index(categories, dtype=object),
        category_bins=category_bins,
    )


def _checked(
    feature: Feature,
    bins: list[Bin],
    reference: Sequence[float],
    offset: int,
    **kinds: Any,
) -> FeatureBins:
    counts = np.asarray(reference, dtype=np.float64)
    if counts.sum() <= 0:
        raise ValueError("the reference counts no value")
    return FeatureBins(
        name=feature.name,
        kind=feature.kind,
        bins=tuple(bins),
        reference=counts,
        unit=UNITS.get(feature.kind),
        offset=offset,
        **kinds,
    )


def _counts(values: Any, expected: int) -> list[int]:
    counts = list(values)
    if len(counts) != expected or any(type(c) is not int or c < 0 for c in counts):
        raise ValueError(f"counts must be {expected} non-negative integers")
    return counts


def _key(category: Any) -> tuple[str, Any]:
    return (type(category).__name__, category)


def _datetime_scale(feature: Feature, edges: np.ndarray) -> float:
    """Return the factor that turns a datetime reference's edges into seconds: 1, except for
    bundles whose edges were written in another unit, found from the feature's ISO 8601
    ``min`` and ``max`` (the histogram spans them)."""
    try:
        low = pd.Timestamp(str(feature.min)).timestamp()
        high = pd.Timestamp(str(feature.max)).timestamp()
    except (TypeError, ValueError):
        return 1.0
    middle, expected = (edges[0] + edges[-1]) / 2, (low + high) / 2
    return min(_DATETIME_SCALES, key=lambda scale: abs(middle * scale - expected))


def _column(data: Any, names: Sequence[str], position: int, layout: str) -> Any:
    """Return one feature's served values: a frame's column, or the column layout's array."""
    if layout == "column":
        return data
    if isinstance(data, pd.DataFrame):
        return data[names[position]]
    return np.asarray(data)[:, position]


def _as_float(column: Any, feature: FeatureBins) -> np.ndarray:
    """Return a ranged feature's values as float64 in its unit, NaN where missing."""
    if feature.kind == "text":
        lengths = pd.Series(column, copy=False).str.len()
        values: np.ndarray = lengths.to_numpy(dtype=np.float64, na_value=np.nan)
        return values
    if feature.kind == "datetime":
        moments = pd.Series(column, copy=False).to_numpy(dtype="datetime64[us]")
        seconds: np.ndarray = moments.astype(np.int64) / 1e6
        seconds[np.isnat(moments)] = np.nan
        return seconds
    if isinstance(column, pd.Series):
        numbers: np.ndarray = column.to_numpy(dtype=np.float64, na_value=np.nan)
        return numbers
    return np.asarray(column, dtype=np.float64)


def _count_categories(
    column: Any, feature: FeatureBins, unseen_as_missing: int, counts: np.ndarray
) -> None:
    """Add each value's bin: a hash lookup of the training categories over the column.

    :param unseen_as_missing: how many of the column's missing values were unseen
        categories the dataplane turned into missing ones (a ``category`` column).
    """
    assert feature.categories is not None and feature.category_bins is not None
    series = pd.Series(column, copy=False)
    unseen = feature.index(UNSEEN)
    if isinstance(series.dtype, pd.CategoricalDtype):
        lookup = feature.categories.get_indexer(series.cat.categories)
        table = np.where(lookup < 0, unseen, feature.category_bins[lookup])
        codes = series.cat.codes.to_numpy()
        absent = codes < 0
        local = table[np.where(absent, 0, codes)] if len(table) else np.full(len(codes), unseen)
    else:
        found = feature.categories.get_indexer(series.astype(object))
        absent = series.isna().to_numpy()
        local = np.where(found < 0, unseen, feature.category_bins[np.maximum(found, 0)])
    tally = np.bincount(local[~absent], minlength=len(feature.bins))
    missing = int(absent.sum())
    moved = min(unseen_as_missing, missing) if isinstance(series.dtype, pd.CategoricalDtype) else 0
    tally[unseen] += moved
    if feature.missing is not None:
        tally[feature.missing] += missing - moved
    counts[feature.offset : feature.offset + len(feature.bins)] += tally
