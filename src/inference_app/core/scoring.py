"""Batch scoring: predict a table (a pandas DataFrame or an Arrow record batch) with a bundle.

The rows go through the same checks as the API's (:mod:`inference_app.core.inputs`: feature
names, datatypes, categories, missing values) and the same engine choice (ONNX or
scikit-learn, :mod:`inference_app.core.engines`); the outputs come back as columns. This is
what ``inference-app score``, the Spark UDFs of :mod:`inference_app.spark` and Dask's
``map_partitions`` call, once per chunk or partition.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from inference_app.core import inputs
from inference_app.core.bundle import Bundle
from inference_app.core.dataplane import json_values
from inference_app.core.engines import Engine, engine_for
from inference_app.core.errors import InvalidInputError
from inference_app.core.features import Feature
from inference_app.core.inputs import Limits, ModelInput

#: What to do with a row the checks or the model refuse.
ON_ERROR = ("fail", "skip", "mark")
#: The output column of ``predict``, and of the reason a row was refused (``mark``).
PREDICTION, ERROR = "prediction", "error"


class ScoringError(InvalidInputError):
    """A row of the table cannot be scored (``on_error="fail"``); the message names its row
    (counted from 0 over the whole input) and feature."""


@dataclass(frozen=True)
class Scored:
    """The outputs of one chunk.

    :param outputs: one row per scored input row (all of them, but for ``skip``), its index
        the rows' positions in the whole input: ``prediction`` for ``predict``; one column
        per class, named by the class, for ``predict_proba`` and a multiclass
        ``decision_function``; with ``mark``, an ``error`` column (``None`` where scored).
    :param refused: how many rows were refused, by reason (``"island: Must be one of: ..."``).
    :param unseen: per categorical feature, the unseen categories the model tolerated.
    """

    outputs: pd.DataFrame
    refused: Mapping[str, int] = field(default_factory=dict)
    unseen: Mapping[str, int] = field(default_factory=dict)


class Scorer:
    """Score tables with one bundle, in this process.

    :param bundle: the loaded, verified bundle.
    :param method: ``predict``, ``predict_proba`` or ``decision_function``.
    :param on_error: ``fail`` (raise :class:`ScoringError` at the first refused row),
        ``skip`` (leave refused rows out) or ``mark`` (keep them, outputs missing, with the
        reason in an ``error`` column).
    :param engine: the ``RUNTIME`` setting: ``auto``, ``sklearn`` or ``onnx``.
    :param max_text_length: the longest string value, in characters.
    :raises ValueError: an unknown method or ``on_error``.
    :raises BundleError: the engine cannot be made (``onnx`` without an ONNX model).
    """

    def __init__(
        self,
        bundle: Bundle,
        *,
        method: str = "predict",
        on_error: str = "fail",
        engine: str = "auto",
        max_text_length: int = 10_000,
    ) -> None:
        if method not in bundle.manifest.methods:
            raise ValueError(
                f"model {bundle.name!r} has no method {method!r}; it has "
                f"{', '.join(bundle.manifest.methods)}"
            )
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {', '.join(ON_ERROR)}; got {on_error!r}")
        self.bundle = bundle
        self.method = method
        self.on_error = on_error
        self.engine: Engine = engine_for(bundle, engine)
        #: Extra columns (ids, targets) are left alone, as a table usually has some.
        self.limits = Limits(
            max_rows=2**62, unknown_features="ignore", max_text_length=max_text_length
        )
        self.columns = output_columns(bundle, method)

    def score(self, table: Any, *, offset: int = 0, cells: bool = False) -> Scored:
        """Score one chunk.

        :param table: a ``pandas.DataFrame`` or a ``pyarrow.RecordBatch`` / ``Table`` holding
            a column per feature (more columns are ignored), ``(n_rows, n_columns)``.
        :param offset: the position of the chunk's first row in the whole input, for the
            index of the outputs and the rows named in errors.
        :param cells: the table holds CSV text cells (read with ``dtype=str`` and
            ``keep_default_na=False``), typed by the features as the API types CSV: an empty
            cell is missing, numbers must read as pandas reads them.
        :raises ScoringError: ``on_error="fail"`` and a row is refused.
        """
        frame = table if isinstance(table, pd.DataFrame) else table.to_pandas()
        index = pd.RangeIndex(offset, offset + len(frame))
        if not len(frame):
            return Scored(self._frame([], index))
        features = self.bundle.manifest.inputs
        if cells:
            wanted = {feature.name for feature in features}
            columns: dict[str, Any] = {
                str(name): frame[name].tolist() for name in frame.columns if str(name) in wanted
            }
        else:
            columns = frame_columns(frame, features)
        if self.on_error == "fail":
            try:
                return self._all(columns, index, cells)
            except InvalidInputError as error:
                raise self._first_refused(columns, index, cells, error) from None
        return self._halves(columns, index, cells)

    def _all(self, columns: Mapping[str, Any], index: pd.Index, cells: bool) -> Scored:
        """Score every row at once; any refused row fails the whole call."""
        model_input = self._decode(columns, cells)
        return Scored(self._predict(model_input, index), unseen=dict(model_input.unseen))

    def _halves(self, columns: Mapping[str, Any], index: pd.Index, cells: bool) -> Scored:
        """Score the rows at once; if any is refused, score each half likewise, down to the
        refused rows alone: a few refused rows cost a few more calls, not one per row."""
        try:
            return self._all(columns, index, cells)
        except InvalidInputError as error:
            if len(index) == 1:
                outputs = self._frame([], index[:0])
                if self.on_error == "mark":
                    outputs = self._frame([[None] * len(self.columns)], index)
                    outputs[ERROR] = [reason(error)]
                return Scored(outputs, {reason(error): 1})
        half = len(index) // 2
        parts = [
            self._halves(_rows(columns, 0, half), index[:half], cells),
            self._halves(_rows(columns, half, len(index)), index[half:], cells),
        ]
        refused: Counter[str] = Counter()
        unseen: Counter[str] = Counter()
        for part in parts:
            refused.update(part.refused)
            unseen.update(part.unseen)
        return Scored(pd.concat([part.outputs for part in parts]), dict(refused), dict(unseen))

    def _first_refused(
        self, columns: Mapping[str, Any], index: pd.Index, cells: bool, error: InvalidInputError
    ) -> ScoringError:
        """Return the error of the lowest refused row (the checks go feature by feature, so
        ``error`` may name a later one), found by halving, its row counted over the input."""
        while len(index) > 1:
            half = len(index) // 2
            for start, stop in ((0, half), (half, len(index))):
                try:
                    self._all(_rows(columns, start, stop), index[start:stop], cells)
                except InvalidInputError as refused:
                    columns, index, error = _rows(columns, start, stop), index[start:stop], refused
                    break
            else:
                break  # neither half alone is refused: the error is the whole chunk's
        return self._named(error, int(index[0]))

    def _decode(self, columns: Mapping[str, Any], cells: bool) -> ModelInput:
        manifest = self.bundle.manifest
        return inputs.from_columns(
            columns, manifest.inputs, manifest.layout, self.limits, where="rows", cells=cells
        )

    def _predict(self, model_input: ModelInput, index: pd.Index) -> pd.DataFrame:
        with np.errstate(all="ignore"):
            outputs = np.asarray(self.engine.run(self.method, model_input.data))
        if outputs.dtype.kind in "fc" and not np.isfinite(outputs).all():
            json_values(outputs)  # raises, naming the row
        return self._frame(outputs, index)

    def _frame(self, values: Any, index: pd.Index) -> pd.DataFrame:
        if len(self.columns) == 1:
            column = values if isinstance(values, np.ndarray) else np.array(values, dtype=object)
            frame = pd.DataFrame({self.columns[0]: column.reshape(len(index))}, index=index)
        else:
            frame = pd.DataFrame(
                np.asarray(values, dtype=np.float64).reshape(len(index), len(self.columns)),
                columns=self.columns,
                index=index,
            )
        if self.on_error == "mark":
            frame[ERROR] = pd.Series([None] * len(index), index=index, dtype=object)
        return frame

    def _named(self, error: InvalidInputError, offset: int) -> ScoringError:
        """Return ``error`` with its row (and a CSV cell's line) counted over the input."""
        message = ROW.sub(
            lambda m: f"{m.group(1)} {int(m.group(2)) + offset}", error.message, count=1
        )
        located = next(iter(error.errors.values()), None) if error.errors else None
        if not message.startswith("row ") and isinstance(located, Mapping) and located:
            row = next(iter(located))  # a CSV cell's error names its line: say its row too
            if isinstance(row, int):
                message = f"row {row + offset}, {message}"
        return ScoringError(message, error.errors)


#: "row 3" (or a CSV cell's "CSV line 5") in an input error's message.
ROW = re.compile(r"\b(row|CSV line) (\d+)")


def _rows(columns: Mapping[str, Any], start: int, stop: int) -> dict[str, Any]:
    """Return rows ``start:stop`` of each column."""
    return {
        name: values.iloc[start:stop] if isinstance(values, pd.Series) else values[start:stop]
        for name, values in columns.items()
    }


def reason(error: InvalidInputError) -> str:
    """Return what was wrong with a row, without the row: ``"island: Must be one of: ..."``."""
    located = next(iter(error.errors.values()), None) if error.errors else None
    if isinstance(located, Mapping):
        detail = next(iter(located.values()), None)
        if isinstance(detail, Mapping) and detail:
            feature, messages = next(iter(detail.items()))
            return f"{feature}: {messages[0] if messages else ''}"
    return ROW.sub(r"\1", error.message).removeprefix("row, ")


def output_columns(bundle: Bundle, method: str) -> list[str]:
    """Return the names of ``method``'s output columns: ``prediction``, or one per class."""
    classes = bundle.manifest.classes
    if method == "predict" or classes is None:
        return [PREDICTION]
    if method == "decision_function" and len(classes) == 2:
        return [method]
    return [str(label) for label in classes]


def frame_columns(frame: pd.DataFrame, features: Sequence[Feature]) -> dict[str, Any]:
    """Return a table's columns as the checks take them: numbers as numpy arrays, pandas
    string columns as they are, other values as lists with ``None`` where missing, datetimes
    as ISO 8601 strings.

    :param frame: ``(n_rows, n_columns)``; columns that are not features are left out.
    """
    wanted = {feature.name for feature in features}
    columns: dict[str, Any] = {}
    for name in frame.columns:
        key = str(name)
        if key not in wanted:
            continue
        column = frame[name]
        dtype = column.dtype
        if isinstance(dtype, np.dtype) and dtype.kind in "biuf":
            columns[key] = column.to_numpy()
        elif (
            isinstance(dtype, np.dtype) and dtype.kind == "M" or str(dtype).startswith("datetime64")
        ):
            columns[key] = [None if pd.isna(v) else pd.Timestamp(v).isoformat() for v in column]
        elif pd.api.types.is_string_dtype(dtype) and not isinstance(dtype, np.dtype):
            columns[key] = column.reset_index(drop=True)  # checked whole, not value by value
        else:
            objects = column.astype(object)
            values = objects.where(column.notna(), None).tolist()
            if any(isinstance(value, np.generic | pd.Timestamp) for value in values[:1]):
                values = [_native(value) for value in values]  # numbers or times as objects
            columns[key] = values
    return columns


def _native(value: Any) -> Any:
    """Return a table cell as a JSON-native value, ``None`` when missing."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value
