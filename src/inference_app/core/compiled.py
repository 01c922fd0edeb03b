"""An optional compiled runtime: estimators converted to ONNX (skl2onnx), run by onnxruntime.

Both libraries are the ``onnx`` extra. A conversion is kept only when its outputs on the
training sample match scikit-learn's: labels exactly, probabilities within
:data:`TOLERANCE`. Input is tried as float64 first, then float32 (scikit-learn's trees
compare in float32). Sessions are created in each serving process, never before ``fork``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from inference_app.core.errors import BundleError

#: Largest difference allowed between ONNX and scikit-learn probabilities.
TOLERANCE = 1e-5
#: The ONNX output holding each method's result, by skl2onnx's naming.
OUTPUT_NAMES = {"predict": ("label", "variable"), "predict_proba": ("probabilities",)}


def available() -> bool:
    """Return whether onnxruntime can be imported here."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class Conversion:
    """A checked ONNX model: its bytes, input dtype and the output of each method."""

    model: bytes
    input_dtype: str
    outputs: dict[str, str]


def convert(estimator: Any, sample: np.ndarray, methods: tuple[str, ...]) -> Conversion:
    """Convert ``estimator`` to ONNX and check it on ``sample``, ``(n_samples, n_features)``.

    :raises BundleError: skl2onnx is missing or cannot convert the estimator, or no
        conversion matches scikit-learn within :data:`TOLERANCE` (the reason says which).
    """
    try:
        from skl2onnx import to_onnx
    except ImportError:
        raise BundleError("skl2onnx is not installed: pip install 'inference-app[onnx]'") from None
    options = {id(estimator): {"zipmap": False}} if "predict_proba" in methods else None
    reasons = []
    for dtype in ("float64", "float32"):
        rows = sample.astype(dtype)
        try:
            model = to_onnx(estimator, rows[:1], options=options).SerializeToString()
        except Exception as error:  # skl2onnx raises many kinds for unsupported estimators
            reasons.append(f"{dtype}: skl2onnx cannot convert it: {type(error).__name__}: {error}")
            continue
        session = session_for(model)
        names = [output.name for output in session.get_outputs()]
        outputs = {
            method: name
            for method in methods
            for name in OUTPUT_NAMES.get(method, ())
            if name in names
        }
        results = dict(
            zip(names, session.run(None, {session.get_inputs()[0].name: rows}), strict=True)
        )
        problem = _mismatch(estimator, sample, outputs, results)
        if problem is None:
            return Conversion(model=model, input_dtype=dtype, outputs=outputs)
        reasons.append(f"{dtype}: {problem}")
    raise BundleError("no ONNX conversion matches scikit-learn: " + "; ".join(reasons))


def _mismatch(
    estimator: Any, sample: np.ndarray, outputs: dict[str, str], results: dict[str, Any]
) -> str | None:
    for method, name in outputs.items():
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
            return f"{method} gives other labels"
    return None


def session_for(model: bytes) -> Any:
    """Return an onnxruntime session for ``model``, its thread pools capped like BLAS's.

    :raises BundleError: onnxruntime is missing or refuses the model.
    """
    try:
        import onnxruntime
    except ImportError:
        raise BundleError(
            "onnxruntime is not installed: pip install 'inference-app[onnx]'"
        ) from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", "1") or 1)
    options.inter_op_num_threads = 1
    try:
        return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's errors share no useful base class
        raise BundleError(f"onnxruntime refuses the model: {error}") from None


class CompiledModel:
    """A session ready to answer ``predict`` and ``predict_proba`` like the estimator.

    :param conversion: the checked model.
    :param shapes: each method's output shape after the first dimension, e.g. ``()`` for
        ``predict``, ``(n_classes,)`` for ``predict_proba``.
    """

    def __init__(self, conversion: Conversion, shapes: Mapping[str, tuple[int, ...]]) -> None:
        self.session = session_for(conversion.model)
        self.input = self.session.get_inputs()[0].name
        self.dtype = np.dtype(conversion.input_dtype)
        self.outputs = conversion.outputs
        self.shapes = shapes

    def run(self, method: str, matrix: np.ndarray) -> np.ndarray:
        """Return ``method``'s outputs for rows ``(n_samples, n_features)``."""
        (result,) = self.session.run(
            [self.outputs[method]], {self.input: matrix.astype(self.dtype)}
        )
        array = np.asarray(result)
        return array.reshape((len(matrix), *self.shapes.get(method, array.shape[1:])))
