"""Check rows or columns against a model's features and build what its estimator takes.

Every protocol's codec hands its values here: rows (JSON arrays or objects), or one column per
feature (decoded tensors, ``dataframe_split``, CSV cells). A numeric model gets one float64
matrix, built in one numpy pass (the hot path); a model fitted on a DataFrame with other
columns gets a ``pandas.DataFrame`` with the training dtypes and column order; a text model
fitted on a list of texts gets a 1-D array. Only casts that lose nothing are made: integers
become floats, nothing becomes a string, and strings become numbers only in CSV cells.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from inference_app.core.datatypes import (
    DATATYPES,
    JSON_TYPE_NAMES,
    accepted_tensors,
    tensor_datatype,
)
from inference_app.core.errors import InvalidInputError
from inference_app.core.features import Feature

#: A CSV cell pandas reads as a number: ASCII decimal, optional exponent, or nan / inf.
CSV_NUMBER = re.compile(
    r"\s*[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|nan|inf|infinity)\s*",
    re.ASCII | re.IGNORECASE,
)
CSV_BOOLEANS = {"true": True, "false": False}
FLOAT32_MAX = float(np.finfo(np.float32).max)
#: How many known categories a refusal lists.
SHOWN_CATEGORIES = 10


@dataclass(frozen=True)
class Limits:
    """What one request may hold.

    :param max_rows: the most rows.
    :param unknown_features: ``"reject"`` or ``"ignore"`` object keys that are not features.
    :param max_text_length: the longest string value, in characters.
    """

    max_rows: int = 10_000
    unknown_features: str = "reject"
    max_text_length: int = 10_000


@dataclass(frozen=True)
class ModelInput:
    """Checked rows in the layout the estimator takes.

    :param data: a float64 array ``(n_samples, n_features)``, a DataFrame with the training
        columns and dtypes, or a 1-D object array ``(n_samples,)`` of one text feature.
    :param rows: ``n_samples``.
    :param unseen: per categorical feature, how many values were categories the model never
        saw and tolerates (served, and counted in the metrics).
    """

    data: Any
    rows: int
    unseen: Mapping[str, int] = field(default_factory=dict)


def decode(
    inputs: Sequence[Feature],
    layout: str,
    limits: Limits,
    *,
    instances: Sequence[Any] | None = None,
    columns: Mapping[str, Any] | None = None,
    matrix: np.ndarray | None = None,
    cells: bool = False,
    where: str = "instances",
) -> ModelInput:
    """Check the rows a codec decoded, in whichever form it gives them, and build the model's
    input: ``matrix`` (:func:`from_matrix`), ``columns`` (:func:`from_columns`), else
    ``instances`` (:func:`from_rows`).

    :raises InvalidInputError: naming the row and feature at fault.
    """
    if matrix is not None:
        return from_matrix(matrix, inputs, layout, limits, where)
    if columns is not None:
        return from_columns(columns, inputs, layout, limits, where=where, cells=cells)
    return from_rows(instances or [], inputs, layout, limits, where=where)


def from_rows(
    instances: Sequence[Any],
    inputs: Sequence[Feature],
    layout: str,
    limits: Limits,
    *,
    where: str = "instances",
) -> ModelInput:
    """Check rows and build the model's input.

    Each row is a list, in the model's feature order, or an object keyed by feature name,
    reordered to the model's order. For a numeric model the types are checked in one pass
    over all values and numpy converts and checks finiteness in one pass.

    :param instances: rows, ``(n_samples, n_features)``, as parsed from JSON.
    :param inputs: the model's features, in its column order.
    :param layout: ``matrix``, ``frame`` or ``column`` (the manifest's).
    :param where: the request field holding the rows, for error locations.
    :raises InvalidInputError: naming the row and the feature at fault, and what to send.
    """
    check_row_count(len(instances), limits.max_rows, where)
    shapes = set(map(type, instances))
    if shapes == {list}:
        rows: Sequence[Sequence[Any]] = _check_lengths(instances, inputs, where)
    elif shapes <= {list, dict}:
        records = _rows_from_records(instances, inputs, limits.unknown_features, where)
        rows = _check_lengths(records, inputs, where)
    else:
        index = next(i for i, row in enumerate(instances) if type(row) not in (list, dict))
        got = JSON_TYPE_NAMES.get(type(instances[index]), "a value")
        raise InvalidInputError(
            f"row {index} is {got}: send each row as an array of {len(inputs)} values in the "
            "model's feature order, or as an object keyed by feature name",
            {where: {index: [f"Expected an array or an object, got {got}."]}},
        )
    if layout == "matrix":
        return ModelInput(_matrix(rows, inputs, where), len(rows))
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in inputs]
    return _assemble([list(column) for column in columns], inputs, layout, limits, where)


def from_columns(
    columns: Mapping[str, Any],
    inputs: Sequence[Feature],
    layout: str,
    limits: Limits,
    *,
    where: str = "inputs",
    cells: bool = False,
) -> ModelInput:
    """Check one column per feature and build the model's input.

    :param columns: each feature's values by name, ``(n_samples,)`` each: lists of
        JSON-native values, numpy arrays (decoded binary tensors), or pandas string Series
        (a table's columns, :func:`inference_app.core.scoring.frame_columns`).
    :param cells: the values are CSV text cells, converted by each feature's datatype
        (an empty cell is missing; numbers must read as pandas reads them).
    :raises InvalidInputError: an unknown or missing column, columns of unequal length, or a
        value that does not fit its feature, naming the row and feature.
    """
    names = [feature.name for feature in inputs]
    expected = set(names)
    unknown = [str(name) for name in columns if name not in expected]
    if unknown and limits.unknown_features == "reject":
        raise InvalidInputError(
            f"unknown {_noun(where)} {_quoted(unknown)}: the model takes {_quoted(names)}",
            {where: {name[:100]: ["Unknown field."] for name in unknown[:10]}},
        )
    lengths = {len(columns[name]) for name in names if name in columns}
    if len(lengths) > 1:
        raise InvalidInputError(
            f"the {_noun(where)}s have different lengths: {sorted(lengths)}; send one value "
            "per row in each"
        )
    missing = [name for name in names if name not in columns]
    if missing:
        raise InvalidInputError(
            f"missing {_noun(where)} {_quoted(missing)}: send every one of {_quoted(names)}",
            {where: {name: ["Missing data for required field."] for name in missing[:10]}},
        )
    count = lengths.pop() if lengths else 0
    check_row_count(count, limits.max_rows, where)
    values = [columns[name] for name in names]
    if cells:
        values = [
            [_from_cell(cell, feature, row) for row, cell in enumerate(column)]
            for column, feature in zip(values, inputs, strict=True)
        ]
    if layout == "matrix" and all(
        isinstance(v, np.ndarray) and v.dtype.kind in "biuf" for v in values
    ):
        for column, feature in zip(values, inputs, strict=True):
            _check_tensor(column, feature, where)
        # one copy into the matrix: a copy of each column first took 4x as long
        matrix = np.stack(values, axis=1, dtype=np.float64, casting="unsafe")
        check_finite(matrix, inputs, where)
        return ModelInput(matrix, count)
    if layout == "matrix":
        rows = list(zip(*(list(v) for v in values), strict=True))
        return ModelInput(_matrix(rows, inputs, where), count)
    return _assemble(
        [v if isinstance(v, np.ndarray | pd.Series) else list(v) for v in values],
        inputs,
        layout,
        limits,
        where,
    )


def from_matrix(
    array: np.ndarray, inputs: Sequence[Feature], layout: str, limits: Limits, where: str
) -> ModelInput:
    """Check a numeric array ``(n_samples, n_features)`` in the model's feature order.

    :raises InvalidInputError: the width differs from the model's, or a value is not finite.
    """
    if array.ndim != 2 or array.shape[1] != len(inputs):
        names = _quoted([feature.name for feature in inputs])
        raise InvalidInputError(
            f"{where}: shape {list(array.shape)} does not fit the model's {len(inputs)} "
            f"features: send [N, {len(inputs)}] in this order: {names}"
        )
    check_row_count(array.shape[0], limits.max_rows, where)
    for feature in inputs:
        _check_tensor(array, feature, where)
    if array.dtype == object:
        columns = {f.name: array[:, i].tolist() for i, f in enumerate(inputs)}
        return from_columns(columns, inputs, layout, limits, where=where)
    if layout != "matrix":
        return from_columns(
            {f.name: array[:, i] for i, f in enumerate(inputs)}, inputs, layout, limits, where=where
        )
    matrix = array.astype(np.float64)
    check_finite(matrix, inputs, where)
    return ModelInput(matrix, array.shape[0])


def check_row_count(count: int, max_rows: int, where: str = "instances") -> None:
    """Check that a request holds from 1 to ``max_rows`` rows.

    :raises InvalidInputError: no rows, or too many.
    """
    if count == 0:
        raise InvalidInputError(
            f"`{where}` is empty: send at least one row", {where: ["Send at least one row."]}
        )
    if count > max_rows:
        raise InvalidInputError(
            f"{count} rows is more than the {max_rows} one request may hold: split the batch",
            {where: [f"At most {max_rows} rows per request."]},
        )


def concat(parts: Sequence[Any]) -> Any:
    """Join the ``data`` of several inputs of one model, rows after rows."""
    if isinstance(parts[0], pd.DataFrame):
        return pd.concat(parts, ignore_index=True)
    return np.concatenate(parts)


def _rows_from_records(
    rows: Sequence[Any], inputs: Sequence[Feature], unknown_features: str, where: str
) -> list[list[Any]]:
    """Return the rows with each object row turned into its values in the model's order."""
    names = [feature.name for feature in inputs]
    expected = set(names)
    for index, record in enumerate(rows):
        if type(record) is not dict or record.keys() == expected:
            continue
        missing = [name for name in names if name not in record]
        unknown = [key for key in record if key not in expected]
        if missing:
            raise InvalidInputError(
                f"row {index} lacks feature{'s' if len(missing) > 1 else ''} "
                f"{_quoted(missing)}: send every one of {_quoted(names)}",
                {where: {index: {name: ["Missing data for required field."] for name in missing}}},
            )
        if unknown and unknown_features == "reject":
            raise InvalidInputError(
                f"row {index} has unknown feature{'s' if len(unknown) > 1 else ''} "
                f"{_quoted(unknown)}: the model takes {_quoted(names)}",
                {where: {index: {key[:100]: ["Unknown field."] for key in unknown[:10]}}},
            )
    return [[row[name] for name in names] if type(row) is dict else row for row in rows]


def _check_lengths(
    rows: Sequence[Sequence[Any]], inputs: Sequence[Feature], where: str
) -> Sequence[Sequence[Any]]:
    width = len(inputs)
    if set(map(len, rows)) != {width}:
        index, row = next((i, row) for i, row in enumerate(rows) if len(row) != width)
        names = _quoted([feature.name for feature in inputs])
        raise InvalidInputError(
            f"row {index} has {len(row)} values but the model takes {width}: send them in "
            f"this order: {names}",
            {where: {index: [f"Expected {width} values, got {len(row)}."]}},
        )
    return rows


def _accepted(feature: Feature) -> frozenset[type]:
    types = DATATYPES[feature.datatype].json_types
    return types | {type(None)} if feature.nullable else types


def _matrix(rows: Sequence[Sequence[Any]], inputs: Sequence[Feature], where: str) -> np.ndarray:
    """Build the float64 matrix of numeric rows: one type pass, one numpy pass."""
    plan = _plan(inputs)
    accepted = plan.accepted
    if not set(map(type, itertools.chain.from_iterable(rows))) <= plan.common:
        for index, row in enumerate(rows):
            for value, feature, types in zip(row, inputs, accepted, strict=True):
                if type(value) not in types:
                    raise _type_error(index, feature, value, where)
    try:
        matrix = np.array(rows, dtype=np.float64)
    except OverflowError:
        _raise_overflow(rows, inputs, where)
    check_finite(matrix, inputs, where)
    return matrix


def _check_tensor(array: np.ndarray, feature: Feature, where: str) -> None:
    """Refuse a decoded tensor whose datatype does not fit ``feature`` (lossless casts only)."""
    try:
        datatype = tensor_datatype(array.dtype)
    except StopIteration:
        datatype = str(array.dtype)
    accepted = accepted_tensors(feature.datatype)
    if datatype not in accepted:
        raise InvalidInputError(
            f"feature {feature.name!r} ({feature.datatype}) takes tensors of datatype "
            f"{', '.join(sorted(accepted))}; got {datatype}",
            {where: {feature.name: [f"Expected {DATATYPES[feature.datatype].expected}."]}},
        )


def _type_error(index: int, feature: Feature, value: Any, where: str) -> InvalidInputError:
    got = JSON_TYPE_NAMES.get(type(value), type(value).__name__)
    expected = DATATYPES[feature.datatype].expected
    if value is None:
        message = f"this feature cannot be missing; send {expected}"
        detail = f"Missing values are not accepted: send {expected}."
    else:
        hint = ""
        if type(value) is str and DATATYPES[feature.datatype].numeric:
            hint = "; numbers in strings are not converted"
        elif feature.datatype in ("BYTES", "DATETIME") and type(value) in (int, float, bool):
            hint = "; numbers are not converted to strings"
        message = f"expected {expected}, got {got}{hint}"
        detail = f"Expected {expected}, got {got}."
    return InvalidInputError(
        f"row {index}, feature {feature.name!r}: {message}",
        {where: {index: {feature.name: [detail]}}},
    )


def _raise_overflow(rows: Sequence[Sequence[Any]], inputs: Sequence[Feature], where: str) -> None:
    for index, row in enumerate(rows):
        for value, feature in zip(row, inputs, strict=True):
            if type(value) is int and not math.isfinite(_as_float(value)):
                message = "Expected a number within float64's range (about ±1.8e308)."
                raise InvalidInputError(
                    f"row {index}, feature {feature.name!r}: the integer is too large for float64",
                    {where: {index: {feature.name: [message]}}},
                )
    raise AssertionError("numpy reported an overflow that no value explains")


def _as_float(value: int) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.inf


def check_finite(matrix: np.ndarray, inputs: Sequence[Feature], where: str = "instances") -> None:
    """Check a ``(n_samples, n_features)`` matrix holds no infinity, no NaN in a feature that
    cannot be missing, and no value beyond float32 in an ``FP32`` feature.

    :raises InvalidInputError: naming the first row and feature at fault.
    """
    masks = _plan(inputs).masks
    if masks is None:  # the common case: one numpy pass
        bad = ~np.isfinite(matrix)
    else:
        nullable, float32 = masks
        with np.errstate(invalid="ignore"):
            bad = np.isinf(matrix) | (np.isnan(matrix) & ~nullable)
            if float32 is not None:
                bad |= (np.abs(matrix) > FLOAT32_MAX) & float32
    if not bad.any():
        return
    index, column = (int(i) for i in np.argwhere(bad)[0])
    feature = inputs[column]
    value = matrix[index, column]
    if np.isnan(value):
        message = "Expected a finite number; this feature does not accept missing values (NaN)."
    elif feature.datatype == "FP32" and np.isfinite(value):
        message = "Expected a number within float32's range (about ±3.4e38)."
    else:
        limit = "float32" if feature.datatype == "FP32" else "float64"
        message = f"Expected a finite number; infinity (or a literal beyond {limit}) is refused."
    raise InvalidInputError(
        f"row {index}, feature {feature.name!r}: {message}",
        {where: {index: {feature.name: [message]}}},
    )


@dataclass(frozen=True)
class _Plan:
    """What checking a numeric model's rows needs of its features, computed once per model.

    :param accepted: the JSON types each feature takes.
    :param common: the JSON types every feature takes.
    :param masks: which features may be missing and which are ``FP32``, boolean masks of
        shape ``(n_features,)`` (``None`` for no ``FP32``); ``None`` when neither occurs.
    """

    accepted: list[frozenset[type]]
    common: frozenset[type]
    masks: tuple[np.ndarray, np.ndarray | None] | None


#: Plans by the ``id`` of the feature tuple they are for, with the tuple (a manifest's inputs).
_PLANS: dict[int, tuple[Sequence[Feature], _Plan]] = {}


def _plan(inputs: Sequence[Feature]) -> _Plan:
    """Return the plan of ``inputs``, from the cache when it is a manifest's tuple."""
    cached = _PLANS.get(id(inputs))
    if cached is not None and cached[0] is inputs:
        return cached[1]
    accepted = [_accepted(feature) for feature in inputs]
    nullable = np.array([feature.nullable for feature in inputs])
    float32 = np.array([feature.datatype == "FP32" for feature in inputs])
    masks = None
    if nullable.any() or float32.any():
        masks = (nullable, float32 if float32.any() else None)
    plan = _Plan(accepted, frozenset.intersection(*accepted), masks)
    if isinstance(inputs, tuple):
        if len(_PLANS) >= 1024:
            _PLANS.clear()
        _PLANS[id(inputs)] = (inputs, plan)
    return plan


def _from_cell(cell: Any, feature: Feature, row: int) -> Any:
    """Return a CSV cell as the feature's JSON-native value; empty cells are missing."""
    if type(cell) is not str:
        return cell
    if not cell.strip() and feature.datatype != "BYTES" or cell == "":
        return None
    datatype = DATATYPES[feature.datatype]
    if datatype.numeric:
        if not CSV_NUMBER.fullmatch(cell):
            raise InvalidInputError(
                f"CSV line {row + 2}, column {feature.name!r}: {cell[:50]!r} is not a number",
                {"csv": {row: {feature.name: ["Expected a number."]}}},
            )
        number = float(cell)
        if feature.datatype == "INT64" and number.is_integer():
            return int(number)
        return number
    if feature.datatype == "BOOL":
        if cell.strip().lower() not in CSV_BOOLEANS:
            raise InvalidInputError(
                f"CSV line {row + 2}, column {feature.name!r}: {cell[:50]!r} is not true or false",
                {"csv": {row: {feature.name: ["Expected true or false."]}}},
            )
        return CSV_BOOLEANS[cell.strip().lower()]
    return cell


def _assemble(
    columns: list[Any], inputs: Sequence[Feature], layout: str, limits: Limits, where: str
) -> ModelInput:
    """Check each column against its feature and build a DataFrame (or the one column)."""
    built, unseen = {}, {}
    for values, feature in zip(columns, inputs, strict=True):
        built[feature.name], count = _column(values, feature, limits, where)
        if count:
            unseen[feature.name] = count
    rows = len(columns[0]) if columns else 0
    if layout == "column":
        return ModelInput(built[inputs[0].name], rows, unseen)
    for name, values in built.items():  # pandas would infer its own string dtype for these
        if isinstance(values, np.ndarray) and values.dtype == object:
            built[name] = pd.Series(values, dtype=object, copy=False)
    return ModelInput(pd.DataFrame(built, columns=[f.name for f in inputs]), rows, unseen)


def _column(values: Any, feature: Feature, limits: Limits, where: str) -> tuple[Any, int]:
    """Check one feature's values; return them in the training dtype, and the count of
    tolerated unseen categories."""
    datatype = DATATYPES[feature.datatype]
    if isinstance(values, pd.Series):  # a string column of a table (batch scoring)
        if feature.datatype == "BYTES" and pd.api.types.is_string_dtype(values.dtype):
            if type(None) not in _accepted(feature):
                missing = np.flatnonzero(values.isna().to_numpy())
                if len(missing):
                    raise _type_error(int(missing[0]), feature, None, where)
            return _strings(values, feature, limits, where)
        values = values.astype(object).where(values.notna(), None).tolist()
    if isinstance(values, np.ndarray) and values.dtype == object:
        values = values.tolist()
    if isinstance(values, np.ndarray):
        _check_tensor(values, feature, where)
        array = values
    else:
        accepted = _accepted(feature)
        if not set(map(type, values)) <= accepted:
            index = next(i for i, value in enumerate(values) if type(value) not in accepted)
            raise _type_error(index, feature, values[index], where)
        if datatype.numeric:
            try:
                array = np.array(
                    [math.nan if value is None else value for value in values], dtype=np.float64
                )
            except OverflowError:
                _raise_overflow([[value] for value in values], [feature], where)
        elif feature.datatype == "BOOL":
            return _typed(pd.array(values, dtype="boolean"), feature), 0
        elif feature.datatype == "DATETIME":
            return _datetimes(values, feature, where), 0
        else:
            return _strings(values, feature, limits, where)
    if datatype.numeric:
        check_finite(array.reshape(-1, 1).astype(np.float64), [feature], where)
    if feature.kind == "categorical":
        return _categories(np.asarray(array, dtype=object), feature, where)
    return _typed(array, feature), 0


def _typed(array: Any, feature: Feature) -> Any:
    """Cast a checked column to the training dtype where that loses nothing."""
    dtype = feature.dtype
    if dtype is None:
        return array
    if dtype in ("int64", "int32", "int16", "int8", "uint8", "uint16", "uint32", "uint64"):
        floats = np.asarray(array, dtype=np.float64)
        if np.isnan(floats).any() or not np.equal(np.mod(floats, 1), 0).all():
            return floats  # a missing value or a fraction: float64, as pandas would hold it
        return floats.astype(dtype)
    try:
        return (
            pd.array(array, dtype=dtype)
            if dtype[:1].isupper() or dtype == "boolean"
            else (np.asarray(array).astype(dtype))
        )
    except (TypeError, ValueError):
        return array


def _strings(
    values: Sequence[Any] | pd.Series, feature: Feature, limits: Limits, where: str
) -> tuple[Any, int]:
    """Check a text or categorical column: strings or ``None`` (a list, its types checked),
    or a pandas string ``Series`` (checked with vectorised string operations)."""
    known = None
    if isinstance(values, pd.Series):
        lengths = values.str.len().fillna(0).to_numpy(dtype=np.int64)
        coded = _coded(values, feature) if feature.kind == "categorical" else None
        if coded is not None:
            array, known = coded
        else:
            if feature.kind == "categorical":  # Arrow's hash lookup, before leaving Arrow
                known = (values.isin(list(feature.categories or ())) | values.isna()).to_numpy()
            array = values.to_numpy(dtype=object, na_value=math.nan)
        values = array  # indexable by position, for the message below
    else:
        lengths = np.fromiter(
            (0 if value is None else len(value) for value in values),
            dtype=np.int64,
            count=len(values),
        )
        array = np.array([math.nan if value is None else value for value in values], dtype=object)
    if len(values) and lengths.max() > limits.max_text_length:
        index = int(np.argmax(lengths > limits.max_text_length))
        message = f"Longer than {limits.max_text_length} characters (MAX_TEXT_LENGTH)."
        raise InvalidInputError(
            f"row {index}, feature {feature.name!r}: the text has {len(values[index])} "
            f"characters; at most {limits.max_text_length} are accepted (MAX_TEXT_LENGTH)",
            {where: {index: {feature.name: [message]}}},
        )
    if feature.kind == "categorical":
        return _categories(array, feature, where, known)
    if feature.dtype in ("str", "string"):
        return pd.array(array, dtype=feature.dtype), 0
    return array, 0


def _coded(values: pd.Series, feature: Feature) -> tuple[np.ndarray, np.ndarray] | None:
    """Return an Arrow-backed string column of a categorical feature as an object array
    ``(n_samples,)`` and where its values are known categories or missing, by Arrow's hash
    lookup (``pyarrow.compute.index_in``): each known value is the category's own ``str``
    object, not a new one per row (4x faster than converting the column, and the model's
    encoder hashes each category once); missing values are NaN, other values themselves.
    ``None`` for a column not held by Arrow, or categories that are not all strings."""
    categories = list(feature.categories or ())
    if getattr(values.dtype, "storage", None) != "pyarrow" or not all(
        type(category) is str for category in categories
    ):
        return None
    import pyarrow as pa  # type: ignore[import-untyped, unused-ignore]
    import pyarrow.compute as pc  # type: ignore[import-untyped, unused-ignore]

    arrow = pa.array(values)
    positions = pc.index_in(arrow, value_set=pa.array(categories, arrow.type))
    codes = positions.fill_null(-1).to_numpy().astype(np.intp, copy=False)
    array = np.array([*categories, math.nan], dtype=object)[codes]  # -1: the NaN at the end
    strange = (codes < 0) & values.notna().to_numpy()
    if strange.any():  # values the model never saw: kept as they are
        array[strange] = values[strange].to_numpy(dtype=object)
    return array, ~strange


def _categories(
    array: np.ndarray, feature: Feature, where: str, known: np.ndarray | None = None
) -> tuple[Any, int]:
    """Check a categorical feature's values against its known categories.

    :param known: where the values are known categories or missing, if already found.
    :returns: the values (a ``pandas.Categorical`` with the training categories for a
        ``category`` column), and how many were unknown and tolerated.
    :raises InvalidInputError: an unknown category where the model's encoder refuses them.
    """
    categories = feature.categories or ()
    if known is None:
        values = pd.Series(array, dtype=object)  # hash lookups in pandas, not per value here
        known = (values.isin(list(categories)) | values.isna()).to_numpy()
    strange = np.flatnonzero(~known)
    if len(strange) and feature.unknown_categories == "error":
        index = int(strange[0])
        shown = ", ".join(repr(c) for c in categories[:SHOWN_CATEGORIES])
        more = len(categories) - SHOWN_CATEGORIES
        listing = shown + (f" and {more} more" if more > 0 else "")
        raise InvalidInputError(
            f"row {index}, feature {feature.name!r}: {str(array[index])[:100]!r} is not a "
            f"category the model knows; send one of {listing}",
            {where: {index: {feature.name: [f"Must be one of: {listing}."]}}},
        )
    if feature.dtype == "category":  # a category the model never saw is missing to it
        array[strange] = math.nan
        return pd.Categorical(array, categories=list(categories)), len(strange)
    if feature.dtype in ("str", "string"):
        return pd.array(array, dtype=feature.dtype), len(strange)
    return array, len(strange)


def _datetimes(values: Sequence[Any], feature: Feature, where: str) -> Any:
    tz = getattr(pd.api.types.pandas_dtype(feature.dtype or "datetime64[ns]"), "tz", None)
    parsed: list[Any] = []
    for index, value in enumerate(values):
        if value is None:
            parsed.append(pd.NaT)
            continue
        try:
            moment = dt.datetime.fromisoformat(value)
        except ValueError:
            message = "Expected an ISO 8601 date-time, such as 2024-05-01T13:45:00Z."
            raise InvalidInputError(
                f"row {index}, feature {feature.name!r}: {value[:50]!r} is not an ISO 8601 "
                "date-time; send one such as 2024-05-01T13:45:00Z",
                {where: {index: {feature.name: [message]}}},
            ) from None
        stamp = pd.Timestamp(moment)
        if tz is None and stamp.tzinfo is not None:
            stamp = stamp.tz_convert("UTC").tz_localize(None)
        elif tz is not None:
            stamp = stamp.tz_localize(tz) if stamp.tzinfo is None else stamp.tz_convert(tz)
        parsed.append(stamp)
    series = pd.Series(parsed, dtype=feature.dtype or "datetime64[ns]")
    return series.to_numpy() if tz is None else series.array


def _noun(where: str) -> str:
    return "input" if where == "inputs" else "column" if where != "instances" else "feature"


def _quoted(names: Sequence[str], most: int = 10) -> str:
    shown = ", ".join(repr(str(name)[:100]) for name in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")
