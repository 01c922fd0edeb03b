"""The compiled runtime: estimators converted to ONNX (skl2onnx), run by onnxruntime.

Both libraries are dependencies: ``inference-app package`` and ``init-demo`` convert by
default (``--no-onnx`` skips it). A conversion is kept only when its outputs on the
training sample match scikit-learn's: labels exactly, probabilities within
:data:`TOLERANCE`. Sessions are created in each serving process after ``fork``, or in the
preloading master when each worker predicts on one thread (see ``process.share_engines``).

A model takes its rows in one of :data:`LAYOUTS`:

- ``"matrix"``: one float matrix input, tried as float64 first, then float32
  (scikit-learn's trees compare in float32).
- ``"frame"``: a pandas DataFrame, one ONNX input ``[None, 1]`` per column, named as the
  column and typed from its dtype (strings and categories as ONNX strings). float64 columns
  are tried as float64, then as float32 (onnxruntime's ``Imputer`` has no float64 kernel).
  A missing string is fed as :data:`MISSING_STRING`, the string skl2onnx writes for a NaN
  category (a SimpleImputer of strings is converted from a copy knowing it as missing); the
  check on the sample decides whether that is right for the model.
- ``"column"``: one column of texts, a 1-D object array of ``str``: one ONNX string input.

Datetime columns have no ONNX conversion.
"""

from __future__ import annotations

import copy
import functools
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped, unused-ignore]

from inference_app.core.errors import BundleError

#: Largest difference allowed between ONNX and scikit-learn probabilities.
TOLERANCE = 1e-5
#: The ONNX output holding each method's result, by skl2onnx's naming.
OUTPUT_NAMES = {"predict": ("label", "variable"), "predict_proba": ("probabilities",)}
#: How a model takes its rows: a float matrix, a typed DataFrame, or one column of texts.
LAYOUTS = ("matrix", "frame", "column")
#: What a missing string (NaN) is fed as: skl2onnx's name for a NaN category,
#: ``str(numpy.nan)``, so a one-hot encoder fitted on missing values finds its column.
MISSING_STRING = "nan"
#: The ONNX tensor type (skl2onnx's class name) of each numpy dtype a frame column may have.
TENSOR_TYPES = {
    "object": "StringTensorType",
    "float64": "DoubleTensorType",
    "float32": "FloatTensorType",
    "int64": "Int64TensorType",
    "bool": "BooleanTensorType",
}
#: The ONNX input name of a ``"column"`` model.
COLUMN_INPUT = "input"
#: The locale of the ONNX ``StringNormalizer`` lowercasing texts: skl2onnx leaves
#: onnxruntime's default, ``en_US.UTF-8``, which slim images (python:*-slim) lack, so
#: onnxruntime would refuse the model; glibc builds ``C.UTF-8`` in.
TEXT_LOCALE = "C.UTF-8"


def available() -> bool:
    """Return whether onnxruntime can be imported here."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class Conversion:
    """A checked ONNX model: its bytes, how its inputs are fed and each method's output.

    :param model: the serialised ONNX model.
    :param input_dtype: the matrix's dtype, ``"float64"`` or ``"float32"``, for the
        ``"matrix"`` layout; ``"typed"`` for the others (see ``inputs``).
    :param outputs: the ONNX output name of each method it answers.
    :param inputs: ONNX input name -> numpy dtype name (``"object"`` for strings), in the
        sample's column order; for ``"frame"`` each name is a column of the DataFrame.
        Empty for ``"matrix"``.
    :param layout: one of :data:`LAYOUTS`.
    """

    model: bytes
    input_dtype: str
    outputs: dict[str, str]
    inputs: dict[str, str] = field(default_factory=dict)
    layout: str = "matrix"


def convert(
    estimator: Any,
    sample: np.ndarray | pd.DataFrame,
    methods: tuple[str, ...],
    layout: str = "matrix",
) -> Conversion:
    """Convert ``estimator`` to ONNX and check it on every row of ``sample``.

    :param estimator: a fitted scikit-learn estimator or pipeline.
    :param sample: rows the estimator predicts, in ``layout``: a float array
        ``(n_samples, n_features)`` for ``"matrix"``; a DataFrame with the training columns
        and dtypes (float64, float32, int64, bool, strings as ``object`` or ``str`` holding
        ``str`` with NaN for missing, ``category``) for ``"frame"``; a 1-D object array of
        ``str``, ``(n_samples,)``, for ``"column"``.
    :param methods: the methods to convert, e.g. ``("predict", "predict_proba")``.
    :param layout: one of :data:`LAYOUTS`.
    :returns: the first conversion whose outputs match scikit-learn's.
    :raises BundleError: skl2onnx is missing or cannot convert the estimator, a frame column
        is a datetime or of a dtype with no ONNX input, or no conversion matches
        scikit-learn within :data:`TOLERANCE` (the reason says which method differs and by
        how much, and when only rows with a missing string differ, that missing strings are
        not supported by the conversion).
    :raises ValueError: ``layout`` is not one of :data:`LAYOUTS`, or ``sample`` is not in it.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    try:
        from skl2onnx import to_onnx
    except ImportError:
        raise BundleError(
            "skl2onnx is not installed (a dependency of inference-app): pip install skl2onnx"
        ) from None
    options = {id(estimator): {"zipmap": False}} if "predict_proba" in methods else None
    if layout != "matrix":
        return _convert_typed(estimator, sample, methods, layout, options)
    reasons: list[tuple[str, str]] = []
    for dtype in ("float64", "float32"):
        rows = sample.astype(dtype)
        convert_rows = functools.partial(to_onnx, estimator, rows[:1], options=options)
        attempt = _attempt(dtype, convert_rows, reasons)
        if attempt is None:
            continue
        model, session = attempt
        names = [output.name for output in session.get_outputs()]
        outputs = _outputs(methods, names)
        try:
            got = session.run(None, {session.get_inputs()[0].name: rows})
        except Exception as error:  # onnxruntime's errors share no useful base class
            reasons.append((dtype, f"onnxruntime fails on the sample: {error}"))
            continue
        problem = _mismatch(estimator, sample, outputs, dict(zip(names, got, strict=True)))
        if problem is None:
            return Conversion(model=model, input_dtype=dtype, outputs=outputs)
        reasons.append((dtype, problem))
    raise _no_match(reasons)


def _attempt(
    label: str, convert: Callable[[], Any], reasons: list[tuple[str, str]]
) -> tuple[bytes, Any] | None:
    """Run one conversion attempt and open a session on it; return the model's bytes and the
    session, or ``None`` after appending ``(label, why)`` to ``reasons``."""
    try:
        model: bytes = convert().SerializeToString()
    except Exception as error:  # skl2onnx raises many kinds for unsupported estimators
        reasons.append((label, f"skl2onnx cannot convert it: {type(error).__name__}: {error}"))
        return None
    try:
        return model, session_for(model, quiet=True)
    except BundleError as error:  # e.g. a float64 input meeting a float-only kernel
        reasons.append((label, str(error)))
        return None


def _no_match(reasons: list[tuple[str, str]]) -> BundleError:
    """Return the error saying why no attempt matched: each attempt's label and reason, the
    labels of attempts failing alike joined (``float64, float32: skl2onnx cannot ...``)."""
    labels: dict[str, list[str]] = {}
    for label, reason in reasons:
        labels.setdefault(reason, []).append(label)
    return BundleError(
        "no ONNX conversion matches scikit-learn: "
        + "; ".join(f"{', '.join(names)}: {reason}" for reason, names in labels.items())
    )


def _outputs(methods: tuple[str, ...], names: list[str]) -> dict[str, str]:
    return {
        method: name for method in methods for name in OUTPUT_NAMES.get(method, ()) if name in names
    }


def _convert_typed(
    estimator: Any,
    sample: Any,
    methods: tuple[str, ...],
    layout: str,
    options: dict[int, dict[str, bool]] | None,
) -> Conversion:
    """Convert for the ``"frame"`` or ``"column"`` layout: each attempt's input dtypes."""
    from skl2onnx import to_onnx
    from skl2onnx.common import data_types

    attempts = _attempts(sample, layout)
    converted, text_options = _for_conversion(estimator)
    all_options: dict[int, dict[str, Any]] = dict(text_options)
    if options:
        all_options[id(converted)] = dict(options[id(estimator)])
    reasons: list[tuple[str, str]] = []
    for label, dtypes in attempts:
        initial_types = [
            (name, getattr(data_types, TENSOR_TYPES[dtype])([None, 1]))
            for name, dtype in dtypes.items()
        ]
        convert_typed = functools.partial(
            to_onnx, converted, initial_types=initial_types, options=all_options or None
        )
        attempt = _attempt(label, convert_typed, reasons)
        if attempt is None:
            continue
        model, session = attempt
        present = [item.name for item in session.get_inputs()]
        renamed = [name for name in present if name not in dtypes]
        if renamed:
            reasons.append((label, f"skl2onnx renamed the inputs {renamed}"))
            continue
        inputs = {name: dtype for name, dtype in dtypes.items() if name in present}
        outputs = _outputs(methods, [output.name for output in session.get_outputs()])
        check = functools.partial(_check, session, estimator, layout, inputs, outputs)
        try:
            problem = check(sample)
        except Exception as error:  # onnxruntime's errors share no useful base class
            reasons.append((label, f"onnxruntime fails on the sample: {error}"))
            continue
        if problem is None:
            return Conversion(
                model=model, input_dtype="typed", outputs=outputs, inputs=inputs, layout=layout
            )
        reasons.append((label, _missing_strings(sample, layout, inputs, problem, check)))
    raise _no_match(reasons)


def _check(
    session: Any,
    estimator: Any,
    layout: str,
    inputs: Mapping[str, str],
    outputs: dict[str, str],
    rows: Any,
) -> str | None:
    """Return how the session's outputs on ``rows`` differ from the estimator's, or None."""
    names = [output.name for output in session.get_outputs()]
    got = session.run(None, _feed(layout, inputs, rows))
    return _mismatch(estimator, rows, outputs, dict(zip(names, got, strict=True)))


def _parts(estimator: Any) -> Iterator[Any]:
    """Yield ``estimator`` and every estimator inside it, fitted ones included.

    Fitted parts (a ColumnTransformer's ``transformers_``) are clones of the parameters, so
    the attributes are walked, not ``get_params``.
    """
    seen: set[int] = set()
    stack = [estimator]
    while stack:
        item = stack.pop()
        if id(item) in seen or isinstance(item, str | bytes | type | np.ndarray):
            continue
        seen.add(id(item))
        if isinstance(item, list | tuple):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif hasattr(item, "get_params") and hasattr(item, "__dict__"):
            yield item
            stack.extend(vars(item).values())


def _imputes_missing_strings(part: Any) -> bool:
    """Return whether ``part`` is a SimpleImputer of strings whose missing value is NaN."""
    from sklearn.impute import SimpleImputer

    if not isinstance(part, SimpleImputer) or isinstance(part.missing_values, str):
        return False
    statistics = getattr(part, "statistics_", None)
    return (
        statistics is not None and statistics.dtype == object and bool(pd.isna(part.missing_values))
    )


def _for_conversion(estimator: Any) -> tuple[Any, dict[int, dict[str, Any]]]:
    """Return the estimator to give skl2onnx and the options of its text vectorizers.

    skl2onnx converts a SimpleImputer of strings only when its missing value is a string:
    for one whose missing value is NaN, a copy of the estimator is converted in which it is
    :data:`MISSING_STRING`, what missing strings are fed as. The check on the sample, made
    with the estimator itself, decides whether the copy's conversion is kept.
    """
    from sklearn.feature_extraction.text import CountVectorizer  # TfidfVectorizer's base

    if any(_imputes_missing_strings(part) for part in _parts(estimator)):
        estimator = copy.deepcopy(estimator)
        for part in _parts(estimator):
            if _imputes_missing_strings(part):
                part.missing_values = MISSING_STRING
    options: dict[int, dict[str, Any]] = {
        id(part): {"locale": TEXT_LOCALE}
        for part in _parts(estimator)
        if isinstance(part, CountVectorizer)
    }
    return estimator, options


def _attempts(sample: Any, layout: str) -> list[tuple[str, dict[str, str]]]:
    """Return each set of input dtypes to try, with a label for the reasons."""
    if layout == "column":
        values = np.asarray(sample, dtype=object)
        if values.ndim != 1:
            raise ValueError(f"a column sample must be 1-D, not of shape {values.shape}")
        return [("string input", {COLUMN_INPUT: "object"})]
    if not isinstance(sample, pd.DataFrame):
        raise ValueError(f"a frame sample must be a pandas DataFrame, not {type(sample).__name__}")
    dtypes: dict[str, str] = {}
    for name, dtype in sample.dtypes.items():
        if not isinstance(name, str):
            raise BundleError(f"column {name!r}: ONNX inputs are named by strings")
        if dtype.kind == "M":
            raise BundleError(
                f"column {name!r} is a datetime ({dtype}): datetime columns have no ONNX conversion"
            )
        if isinstance(dtype, pd.CategoricalDtype | pd.StringDtype) or (
            isinstance(dtype, np.dtype) and dtype.kind == "O"
        ):
            dtypes[name] = "object"
        elif isinstance(dtype, np.dtype) and dtype.name in TENSOR_TYPES:
            dtypes[name] = dtype.name
        else:
            raise BundleError(
                f"column {name!r} has dtype {dtype}, which has no ONNX input here (use "
                f"{', '.join(TENSOR_TYPES)}, str or category)"
            )
    attempts = [("typed inputs", dtypes)]
    if "float64" in dtypes.values():
        attempts = [
            ("float64 columns as float64", dtypes),
            (
                "float64 columns as float32",
                {name: "float32" if d == "float64" else d for name, d in dtypes.items()},
            ),
        ]
    return attempts


def _missing_strings(
    sample: Any,
    layout: str,
    inputs: Mapping[str, str],
    problem: str,
    check: Callable[[Any], str | None],
) -> str:
    """Return ``problem``, saying so when only the rows with a missing string differ."""
    strings = [name for name, dtype in inputs.items() if dtype == "object"]
    if layout != "frame" or not strings:
        return problem
    missing = sample[strings].isna()
    rows = missing.any(axis=1).to_numpy()
    if not rows.any() or rows.all() or check(sample[~rows]) is not None:
        return problem
    columns = [name for name in strings if missing[name].any()]
    return (
        f"missing strings are not supported by the conversion: fed as {MISSING_STRING!r}, "
        f"{problem} on the {int(rows.sum())} rows with a missing {', '.join(columns)}; the "
        "other rows match"
    )


def _feed(layout: str, inputs: Mapping[str, str], rows: Any) -> dict[str, np.ndarray]:
    """Return the session's inputs for ``rows`` in ``layout`` (not ``"matrix"``)."""
    if layout == "column":
        values = np.asarray(rows, dtype=object)
        if values.ndim != 1:
            raise ValueError(f"a column of texts must be 1-D, not of shape {values.shape}")
        (name,) = inputs
        return {name: values.reshape(-1, 1)}
    feed = {}
    for name, dtype in inputs.items():
        try:
            column = rows[name]
        except KeyError:
            raise ValueError(f"the rows lack the column {name!r}") from None
        if dtype == "object":
            values = column.to_numpy(dtype=object)
            missing = pd.isna(values)
            if missing.any():
                values = values.copy()  # it may be the caller's column
                values[missing] = [_missing_string(value) for value in values[missing]]
            if isinstance(column.dtype, pd.CategoricalDtype) and not _strings(column):
                values = values.astype(str).astype(object)  # str() of each category
        else:
            values = column.to_numpy(dtype=dtype)
        feed[name] = values.reshape(-1, 1)
    return feed


def _missing_string(value: Any) -> str:
    """Return what a missing string is fed as: NaN as :data:`MISSING_STRING`; other markers
    (``None``, ``pd.NA``), which scikit-learn's encoders tell from NaN, as skl2onnx names
    such a category, ``str(value)``."""
    return MISSING_STRING if isinstance(value, float) else str(value)


def _strings(column: pd.Series) -> bool:
    """Return whether a categorical column's categories are strings."""
    categories = column.cat.categories
    return bool(isinstance(categories.dtype, pd.StringDtype) or categories.dtype.kind == "O")


def _mismatch(
    estimator: Any, sample: Any, outputs: dict[str, str], results: dict[str, Any]
) -> str | None:
    for method, name in outputs.items():
        with warnings.catch_warnings():
            # A model fitted on a DataFrame and given its matrix, as the server gives it
            # (core.dataplane ignores this warning too).
            warnings.filterwarnings(
                "ignore", message="X does not have valid feature names", category=UserWarning
            )
            expected = np.asarray(getattr(estimator, method)(sample))
        got = np.asarray(results[name]).reshape(expected.shape)
        if expected.dtype.kind in "fc" and method != "predict" or expected.dtype.kind == "f":
            difference = float(np.max(np.abs(got - expected))) if expected.size else 0.0
            limit = (
                TOLERANCE
                if method == "predict_proba"
                else TOLERANCE * max(1.0, float(np.max(np.abs(expected))))
            )
            if difference > limit:
                return f"{method} differs by up to {difference:.3g}"
        elif got.tolist() != expected.tolist():
            wrong = sum(a != b for a, b in zip(got.tolist(), expected.tolist(), strict=True))
            return f"{method} gives other labels on {wrong} of {len(expected)} rows"
    return None


def session_for(model: bytes, *, quiet: bool = False) -> Any:
    """Return an onnxruntime session for ``model``, its thread pools capped like BLAS's.

    :param quiet: log only onnxruntime's fatal errors (a refusal is raised anyway), for
        conversion attempts that may fail.
    :raises BundleError: onnxruntime is missing or refuses the model.
    """
    try:
        import onnxruntime
    except ImportError:
        raise BundleError(
            "onnxruntime is not installed (a dependency of inference-app): pip install onnxruntime"
        ) from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", "1") or 1)
    options.inter_op_num_threads = 1
    if quiet:
        options.log_severity_level = 4
    try:
        return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's errors share no useful base class
        raise BundleError(f"onnxruntime refuses the model: {error}") from None


class CompiledModel:
    """A session ready to answer ``predict`` and ``predict_proba`` like the estimator.

    :param conversion: the checked model.
    :param shapes: each method's output shape after the first dimension, e.g. ``()`` for
        ``predict``, ``(n_classes,)`` for ``predict_proba``.
    :raises BundleError: onnxruntime is missing or refuses the model, or the conversion does
        not say how to feed it (a typed one read without its ``layout`` and ``inputs``).
    """

    def __init__(self, conversion: Conversion, shapes: Mapping[str, tuple[int, ...]]) -> None:
        matrix = conversion.layout == "matrix"
        if conversion.layout not in LAYOUTS or (
            conversion.input_dtype not in ("float64", "float32")
            if matrix
            else not conversion.inputs
        ):
            raise BundleError(
                f"the ONNX model's layout {conversion.layout!r}, input_dtype "
                f"{conversion.input_dtype!r} and inputs {conversion.inputs} do not say how to "
                "feed it"
            )
        self.session = session_for(conversion.model)
        self.input = self.session.get_inputs()[0].name
        self.layout = conversion.layout
        self.matrix = matrix
        self.dtype = np.dtype(conversion.input_dtype) if matrix else None
        self.inputs = dict(conversion.inputs)
        self.outputs = conversion.outputs
        self.shapes = shapes

    def run(self, method: str, rows: Any) -> np.ndarray:
        """Return ``method``'s outputs, first dimension ``n_samples``, shaped like sklearn's.

        :param method: a method of :attr:`outputs`.
        :param rows: the rows in the conversion's layout: a float array
            ``(n_samples, n_features)`` (``"matrix"``), a DataFrame holding at least the
            training columns (``"frame"``; strings as ``str``, NaN or None for missing), or a
            1-D array of ``str``, ``(n_samples,)`` (``"column"``).
        :raises ValueError: a frame lacks a column, or a column of texts is not 1-D.
        """
        if self.matrix:
            feed = {self.input: rows.astype(self.dtype)}
        else:
            feed = _feed(self.layout, self.inputs, rows)
        (result,) = self.session.run([self.outputs[method]], feed)
        array = np.asarray(result)
        return array.reshape((len(rows), *self.shapes.get(method, array.shape[1:])))
