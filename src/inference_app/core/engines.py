"""Engines: what computes a method's outputs for checked rows, scikit-learn or ONNX Runtime.

Each engine is one class with a ``name`` and ``run(method, data)``; :func:`engine_for` picks
one per bundle from the ``RUNTIME`` setting. The dataplane never asks which it holds.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import sklearn

from inference_app.core.bundle import Bundle
from inference_app.core.compiled import CompiledModel
from inference_app.core.compiled import available as onnx_available
from inference_app.core.errors import BundleError, InvalidInputError

#: The ``RUNTIME`` settings.
ENGINES = ("auto", "sklearn", "onnx")


class Engine(Protocol):
    """Computes a bundle's methods."""

    name: str

    def run(self, method: str, data: Any) -> np.ndarray:
        """Return ``method``'s outputs for checked rows, first dimension ``n_samples``.

        :param data: the model input in the bundle's layout (a float64 matrix, a DataFrame
            or a 1-D array), as :mod:`inference_app.core.inputs` builds it.
        :raises InvalidInputError: the model refuses the rows' values.
        """
        ...


class SklearnEngine:
    """The fitted estimator itself.

    Our checks have made the rows finite (unless a feature accepts missing values) and of the
    right width, so scikit-learn's own finiteness and parameter validation are skipped.
    """

    name = "sklearn"

    def __init__(self, bundle: Bundle) -> None:
        self.estimator = bundle.estimator
        self.assume_finite = not any(feature.nullable for feature in bundle.manifest.inputs)

    def run(self, method: str, data: Any) -> np.ndarray:
        """Call ``method`` of the estimator once; see :meth:`Engine.run`."""
        with np.errstate(all="ignore"):
            try:
                with sklearn.config_context(
                    assume_finite=self.assume_finite, skip_parameter_validation=True
                ):
                    result: np.ndarray = getattr(self.estimator, method)(data)
            except ValueError as error:
                raise refused(error) from None
        return result


class OnnxEngine:
    """The bundle's checked ONNX model, in this process's onnxruntime session; methods the
    conversion lacks (``decision_function``) go to scikit-learn."""

    name = "onnx"

    def __init__(self, bundle: Bundle) -> None:
        if bundle.onnx is None:
            raise BundleError(f"model {bundle.name!r} version {bundle.version!r} has no ONNX model")
        classes = bundle.manifest.classes
        shapes = {"predict": (), "predict_proba": (len(classes),) if classes else ()}
        self.compiled = CompiledModel(bundle.onnx, shapes)
        self.fallback = SklearnEngine(bundle)

    def run(self, method: str, data: Any) -> np.ndarray:
        """Run ``method`` in onnxruntime, or in scikit-learn if not converted."""
        if method not in self.compiled.outputs:
            return self.fallback.run(method, data)
        with np.errstate(all="ignore"):
            try:
                return self.compiled.run(method, data)
            except ValueError as error:
                raise refused(error) from None


def engine_for(bundle: Bundle, setting: str) -> Engine:
    """Return the engine for ``bundle`` under the ``RUNTIME`` setting, as :func:`engine_name`
    chooses it.

    :raises BundleError: ``onnx`` and the bundle has no ONNX model, or onnxruntime refuses it.
    """
    if engine_name(bundle, setting) == SklearnEngine.name:
        return SklearnEngine(bundle)
    return OnnxEngine(bundle)


def engine_name(bundle: Bundle, setting: str) -> str:
    """Return ``"onnx"`` or ``"sklearn"``: the engine :func:`engine_for` makes for ``bundle``
    under the ``RUNTIME`` setting, without making it (no onnxruntime session).

    ``auto``: the bundle's ONNX model when it has one and onnxruntime is installed, else
    scikit-learn; ``sklearn``; ``onnx``: every bundle must have an ONNX model.

    :raises BundleError: ``onnx`` and the bundle has no ONNX model.
    """
    if setting == "sklearn" or (
        setting == "auto" and (bundle.onnx is None or not onnx_available())
    ):
        return SklearnEngine.name
    if bundle.onnx is None:
        raise BundleError(
            f"model {bundle.name!r} version {bundle.version!r} has no ONNX model "
            "(RUNTIME is onnx): package it again without --no-onnx; if its conversion was not "
            "exact on the sample, `inference-app package` says why"
        )
    return OnnxEngine.name


def refused(error: ValueError) -> InvalidInputError:
    """Return the 4xx for an estimator's ``ValueError`` on the caller's rows (a value beyond
    float32 for a tree, a category it never saw)."""
    return InvalidInputError(
        f"the model cannot predict these rows: {error}", {"instances": [str(error)[:200]]}
    )
