"""Rows checked and converted to one matrix: datatypes, missing values, order and limits."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from inference_app.core.bundle import Feature
from inference_app.core.errors import InvalidInputError
from inference_app.core.inputs import Limits, from_rows


def to_matrix(
    rows: Sequence[Any],
    features: Sequence[Feature],
    *,
    max_rows: int,
    unknown_features: str = "reject",
    allow_nan: bool = False,
) -> Any:
    """Return the float64 matrix a numeric model gets from JSON rows."""
    features = [dataclasses.replace(feature, nullable=allow_nan) for feature in features]
    return from_rows(rows, features, "matrix", Limits(max_rows, unknown_features)).data


MIXED = (
    Feature("length", "FP64"),
    Feature("count", "INT64"),
    Feature("flag", "BOOL"),
)


def test_lists_and_records_give_the_same_float64_matrix() -> None:
    lists = to_matrix([[1.5, 2, True], [0, 7, False]], MIXED, max_rows=10)
    records = to_matrix(
        [{"flag": True, "count": 2, "length": 1.5}, {"count": 7, "length": 0, "flag": False}],
        MIXED,
        max_rows=10,
    )
    assert lists.dtype == np.float64 and lists.shape == (2, 3)
    np.testing.assert_array_equal(lists, [[1.5, 2.0, 1.0], [0.0, 7.0, 0.0]])
    np.testing.assert_array_equal(lists, records)


@pytest.mark.parametrize(
    ("row", "feature", "expected"),
    [
        ([1.5, 2.0, True], "count", "expected an integer, got a number"),
        ([1.5, 2, 1], "flag", "expected true or false, got an integer"),
        ([True, 2, True], "length", "expected a number, got a boolean"),
        (
            ["1.5", 2, True],
            "length",
            "expected a number, got a string; numbers in strings are not converted",
        ),
        ([1.5, {"v": 2}, True], "count", "expected an integer, got an object"),
    ],
)
def test_only_lossless_casts(row: list[object], feature: str, expected: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        to_matrix([[0.0, 0, False], row], MIXED, max_rows=10)
    assert f"row 1, feature {feature!r}: {expected}" in caught.value.message
    assert list(caught.value.errors["instances"][1]) == [feature]


def test_missing_values_only_where_the_model_accepts_them() -> None:
    features = (Feature("a"), Feature("b"))
    matrix = to_matrix([[1.0, None], [float("nan"), 2]], features, max_rows=5, allow_nan=True)
    assert np.isnan(matrix[0, 1]) and np.isnan(matrix[1, 0])
    with pytest.raises(InvalidInputError, match="cannot be missing"):
        to_matrix([[1.0, None]], features, max_rows=5)
    with pytest.raises(InvalidInputError, match="infinity"):
        to_matrix([[1.0, float("inf")]], features, max_rows=5, allow_nan=True)


def test_unknown_keys_rejected_or_ignored() -> None:
    features = (Feature("a"), Feature("b"))
    record = {"b": 2, "a": 1, "c": 3}
    with pytest.raises(InvalidInputError, match="row 0 has unknown feature 'c'"):
        to_matrix([record], features, max_rows=5)
    ignored = to_matrix([record], features, max_rows=5, unknown_features="ignore")
    np.testing.assert_array_equal(ignored, [[1.0, 2.0]])


def test_row_limit_is_inclusive() -> None:
    features = (Feature("a"),)
    assert to_matrix([[1]] * 3, features, max_rows=3).shape == (3, 1)
    with pytest.raises(InvalidInputError, match="4 rows is more than the 3"):
        to_matrix([[1]] * 4, features, max_rows=3)


def test_long_feature_lists_are_cut_in_messages() -> None:
    features = tuple(Feature(f"f{i}") for i in range(30))
    with pytest.raises(InvalidInputError) as caught:
        to_matrix([{"f0": 1.0}], features, max_rows=5)
    assert "and 19 more" in caught.value.message and len(caught.value.message) < 400
