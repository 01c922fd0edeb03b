"""Check JSON rows against a model's inputs and convert them to one numpy matrix."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from inference_app.core.bundle import Feature
from inference_app.core.errors import InvalidInputError

#: JSON-native Python types each datatype accepts: only casts that lose nothing.
#: Booleans are not numbers and numeric strings are not numbers (DESIGN section 4).
ACCEPTED_TYPES: dict[str, frozenset[type]] = {
    "FP64": frozenset({int, float}),
    "FP32": frozenset({int, float}),
    "INT64": frozenset({int}),
    "BOOL": frozenset({bool}),
}
EXPECTED = {"FP64": "a number", "FP32": "a number", "INT64": "an integer", "BOOL": "true or false"}
JSON_TYPE_NAMES = {
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    list: "an array",
    dict: "an object",
    type(None): "null",
}


def to_matrix(
    instances: Sequence[Any],
    inputs: Sequence[Feature],
    *,
    max_rows: int,
    unknown_features: str = "reject",
    allow_nan: bool = False,
) -> np.ndarray:
    """Convert rows to a float64 matrix of shape ``(n_samples, n_features)``.

    Each row is a list, in the model's feature order, or an object keyed by feature name,
    reordered to the model's order. The types are checked in one
    pass over all values; numpy then converts and checks finiteness in one pass.

    :param instances: the rows, as parsed from JSON.
    :param inputs: the model's features, in its column order.
    :param max_rows: the most rows one request may hold.
    :param unknown_features: ``"reject"`` or ``"ignore"`` object keys that are not features.
    :param allow_nan: accept ``null`` and ``NaN`` as missing values (the estimator
        handles them); infinity is never accepted.
    :raises InvalidInputError: naming the row and the feature at fault, and what to send.
    """
    check_row_count(len(instances), max_rows)
    shapes = set(map(type, instances))
    if shapes == {list}:
        rows: Sequence[Sequence[Any]] = _check_lengths(instances, inputs)
    elif shapes <= {list, dict}:
        rows = _check_lengths(_rows_from_records(instances, inputs, unknown_features), inputs)
    else:
        index = next(i for i, row in enumerate(instances) if type(row) not in (list, dict))
        got = JSON_TYPE_NAMES.get(type(instances[index]), "a value")
        raise InvalidInputError(
            f"row {index} is {got}: send each row as an array of {len(inputs)} values in the "
            "model's feature order, or as an object keyed by feature name",
            {"instances": {index: [f"Expected an array or an object, got {got}."]}},
        )
    _check_types(rows, inputs, allow_nan)
    try:
        matrix = np.array(rows, dtype=np.float64)
    except OverflowError:
        _raise_overflow(rows, inputs)
    check_finite(matrix, inputs, allow_nan)
    return matrix


def check_row_count(count: int, max_rows: int, field: str = "instances") -> None:
    """Check that a request holds from 1 to ``max_rows`` rows.

    :raises InvalidInputError: no rows, or too many.
    """
    if count == 0:
        raise InvalidInputError(
            f"`{field}` is empty: send at least one row", {field: ["Send at least one row."]}
        )
    if count > max_rows:
        raise InvalidInputError(
            f"{count} rows is more than the {max_rows} one request may hold: split the batch",
            {field: [f"At most {max_rows} rows per request."]},
        )


def _rows_from_records(
    rows: Sequence[Any], inputs: Sequence[Feature], unknown_features: str
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
                {
                    "instances": {
                        index: {name: ["Missing data for required field."] for name in missing}
                    }
                },
            )
        if unknown and unknown_features == "reject":
            raise InvalidInputError(
                f"row {index} has unknown feature{'s' if len(unknown) > 1 else ''} "
                f"{_quoted(unknown)}: the model takes {_quoted(names)}",
                {"instances": {index: {key[:100]: ["Unknown field."] for key in unknown[:10]}}},
            )
    return [[row[name] for name in names] if type(row) is dict else row for row in rows]


def _check_lengths(rows: Sequence[list[Any]], inputs: Sequence[Feature]) -> Sequence[list[Any]]:
    width = len(inputs)
    if set(map(len, rows)) != {width}:
        index, row = next((i, row) for i, row in enumerate(rows) if len(row) != width)
        names = _quoted([feature.name for feature in inputs])
        raise InvalidInputError(
            f"row {index} has {len(row)} values but the model takes {width}: send them in "
            f"this order: {names}",
            {"instances": {index: [f"Expected {width} values, got {len(row)}."]}},
        )
    return rows


def _check_types(rows: Sequence[Sequence[Any]], inputs: Sequence[Feature], allow_nan: bool) -> None:
    missing_ok = frozenset({type(None)}) if allow_nan else frozenset()
    accepted = [ACCEPTED_TYPES[feature.datatype] | missing_ok for feature in inputs]
    common = frozenset.intersection(*accepted)
    if set(map(type, itertools.chain.from_iterable(rows))) <= common:
        return
    for index, row in enumerate(rows):
        for value, feature, types in zip(row, inputs, accepted, strict=True):
            if type(value) not in types:
                got = JSON_TYPE_NAMES.get(type(value), type(value).__name__)
                hint = "; numbers in strings are not converted" if type(value) is str else ""
                expected = EXPECTED[feature.datatype]
                raise InvalidInputError(
                    f"row {index}, feature {feature.name!r}: expected {expected}, got {got}{hint}",
                    {"instances": {index: {feature.name: [f"Expected {expected}, got {got}."]}}},
                )


def _raise_overflow(rows: Sequence[Sequence[Any]], inputs: Sequence[Feature]) -> None:
    for index, row in enumerate(rows):
        for value, feature in zip(row, inputs, strict=True):
            if type(value) is int and not math.isfinite(_as_float(value)):
                message = "Expected a number within float64's range (about ±1.8e308)."
                raise InvalidInputError(
                    f"row {index}, feature {feature.name!r}: the integer is too large for float64",
                    {"instances": {index: {feature.name: [message]}}},
                )
    raise AssertionError("numpy reported an overflow that no value explains")


def _as_float(value: int) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.inf


def check_finite(matrix: np.ndarray, inputs: Sequence[Feature], allow_nan: bool) -> None:
    """Check a ``(n_samples, n_features)`` matrix holds no infinity, nor NaN unless allowed.

    :raises InvalidInputError: naming the first row and feature at fault.
    """
    bad = np.isinf(matrix) if allow_nan else ~np.isfinite(matrix)
    if not bad.any():
        return
    index, column = (int(i) for i in np.argwhere(bad)[0])
    feature = inputs[column].name
    value = matrix[index, column]
    if np.isnan(value):
        message = "Expected a finite number; this model does not accept missing values (NaN)."
    else:
        message = "Expected a finite number; infinity (or a literal beyond float64) is refused."
    raise InvalidInputError(
        f"row {index}, feature {feature!r}: {message}",
        {"instances": {index: {feature: [message]}}},
    )


def _quoted(names: Sequence[str], most: int = 10) -> str:
    shown = ", ".join(repr(name[:100]) for name in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")
