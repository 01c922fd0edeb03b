"""Run estimators: check rows, call the chosen method, return strict JSON-native outputs."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sklearn

from inference_app.core.batching import Batcher
from inference_app.core.bundle import Bundle
from inference_app.core.compiled import CompiledModel
from inference_app.core.compiled import available as compiled_available
from inference_app.core.errors import (
    BundleError,
    InvalidInputError,
    InvalidOutputError,
    MethodNotAvailableError,
    ModelNotReadyError,
)
from inference_app.core.inputs import to_matrix
from inference_app.core.registry import Registry

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """The outcome of one request.

    :param outputs: JSON-native values: shape ``(n_samples,)`` for ``predict`` and for a
        binary ``decision_function``, ``(n_samples, n_classes)`` for ``predict_proba`` and a
        multiclass ``decision_function``.
    :param shape: the shape of ``outputs``.
    :param classes: the class labels the columns of ``outputs`` stand for, for
        ``predict_proba`` and ``decision_function`` of classifiers; else ``None``.
    :param timings: seconds spent per stage: ``validate`` (checking and converting rows)
        and ``predict`` (the estimator call and output conversion).
    """

    model_name: str
    model_version: str
    method: str
    outputs: list[Any]
    shape: tuple[int, ...]
    classes: list[Any] | None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        """Return ``n_samples``, the number of rows predicted."""
        return self.shape[0] if self.shape else 0


class Runtime:
    """Turn rows into predictions with the registry's estimators.

    :meth:`execute` is the seam between checked rows and the estimator: it hands each call to
    the batcher or straight to :meth:`call` (scikit-learn or the bundle's ONNX session),
    leaving validation and output conversion as they are.

    :param registry: where the bundles are.
    :param max_rows: the most rows one request may hold.
    :param unknown_features: ``"reject"`` or ``"ignore"`` feature names the model lacks.
    :param batching: merge concurrent requests (see :mod:`inference_app.core.batching`) for
        every model (``True``) or for the models named.
    :param max_batch_size: the most rows one merged estimator call may hold.
    :param max_batch_latency: the longest a request waits for a running call, in seconds.
    :param on_batch: told the number of requests and rows of each merged call.
    :param engine: ``"auto"`` (a bundle's ONNX model when it has one and onnxruntime is
        installed, else scikit-learn), ``"sklearn"``, or ``"onnx"`` (every bundle must have
        one, and onnxruntime must be installed).
    """

    def __init__(
        self,
        registry: Registry,
        *,
        max_rows: int = 10_000,
        unknown_features: str = "reject",
        batching: bool | Collection[str] = False,
        max_batch_size: int = 256,
        max_batch_latency: float = 0.002,
        on_batch: Callable[[int, int], None] | None = None,
        engine: str = "auto",
    ) -> None:
        self.registry = registry
        self.engine = engine
        #: The ONNX sessions of this process, by bundle, made at warm-up.
        self.compiled: dict[int, CompiledModel] = {}
        self.max_rows = max_rows
        self.unknown_features = unknown_features
        self.batching = batching
        self.batcher = Batcher(
            self.call,
            max_rows=max_batch_size,
            max_latency=max_batch_latency,
            on_batch=on_batch,
        )
        # The rows given to estimators fitted on DataFrames are arrays in the order of
        # feature_names_in_, which to_matrix guarantees; scikit-learn's warning that the
        # array carries no names would be noise on every request.
        warnings.filterwarnings(
            "ignore",
            message="X does not have valid feature names",
            category=UserWarning,
            module=r"sklearn\.",
        )

    @classmethod
    def from_settings(
        cls,
        registry: Registry,
        settings: Mapping[str, Any],
        on_batch: Callable[[int, int], None] | None = None,
    ) -> Runtime:
        """Make a runtime from the app's settings (``MAX_ROWS``, ``UNKNOWN_FEATURES``,
        ``BATCHING``, ``MAX_BATCH_SIZE``, ``MAX_BATCH_LATENCY_MS``, ``RUNTIME``)."""
        return cls(
            registry,
            max_rows=settings["MAX_ROWS"],
            unknown_features=settings["UNKNOWN_FEATURES"],
            batching=settings["BATCHING"],
            max_batch_size=settings["MAX_BATCH_SIZE"],
            max_batch_latency=settings["MAX_BATCH_LATENCY_MS"] / 1000,
            on_batch=on_batch,
            engine=settings["RUNTIME"],
        )

    def serving(self, name: str, version: str | None = None, method: str = "predict") -> Bundle:
        """Return the bundle that answers for ``name`` and ``version`` with ``method``.

        :raises ModelNotFoundError: no such model or version.
        :raises ModelNotReadyError: the model is not warmed up in this process.
        :raises MethodNotAvailableError: the estimator lacks ``method``.
        """
        bundle = self.registry.get(name, version)
        if not self.registry.is_ready(bundle):
            raise ModelNotReadyError(f"model {name!r} version {bundle.version!r} is warming up")
        methods = bundle.manifest.methods
        if method not in methods:
            raise MethodNotAvailableError(
                f"model {name!r} has no method {method!r}; it has {', '.join(methods)}",
                {"method": [f"Must be one of: {', '.join(methods)}."]},
            )
        return bundle

    def predict(
        self,
        name: str,
        instances: Sequence[Any],
        *,
        version: str | None = None,
        method: str = "predict",
    ) -> Prediction:
        """Predict for rows given as lists (feature order) or objects (feature names).

        :param name: the model name.
        :param instances: rows, ``(n_samples, n_features)``, as parsed from JSON.
        :param version: the version; default the model's highest.
        :param method: ``predict``, ``predict_proba`` or ``decision_function``.
        :raises ModelNotFoundError: no such model or version.
        :raises ModelNotReadyError: the model is not warmed up in this process.
        :raises MethodNotAvailableError: the estimator lacks ``method``.
        :raises InvalidInputError: a row does not fit the model's inputs.
        :raises InvalidOutputError: the estimator returned NaN or infinity.
        """
        bundle = self.serving(name, version, method)
        started = time.perf_counter()
        matrix = to_matrix(
            instances,
            bundle.manifest.inputs,
            max_rows=self.max_rows,
            unknown_features=self.unknown_features,
            allow_nan=bundle.manifest.allow_nan,
        )
        prediction = self.predict_matrix(bundle, matrix, method)
        prediction.timings["validate"] = (
            time.perf_counter() - started - prediction.timings["predict"]
        )
        return prediction

    def predict_matrix(self, bundle: Bundle, matrix: np.ndarray, method: str) -> Prediction:
        """Predict for rows already checked against the bundle's inputs.

        :param matrix: float64 rows, ``(n_samples, n_features)``, as made by
            :func:`~inference_app.core.inputs.to_matrix` or a protocol's decoder.
        :raises InvalidOutputError: the estimator returned NaN or infinity.
        """
        started = time.perf_counter()
        outputs = self.execute(bundle, method, matrix)
        values = json_values(outputs)
        classes = bundle.manifest.classes
        return Prediction(
            model_name=bundle.name,
            model_version=bundle.version,
            method=method,
            outputs=values,
            shape=tuple(np.shape(outputs)),
            classes=None if method == "predict" or classes is None else list(classes),
            timings={"predict": time.perf_counter() - started},
        )

    def execute(self, bundle: Bundle, method: str, matrix: np.ndarray) -> np.ndarray:
        """Compute ``method``'s outputs for checked rows, batched with concurrent requests
        when batching is on for the bundle's model.

        :param matrix: float64 rows, ``(n_samples, n_features)``, finite unless the
            estimator accepts NaN.
        :returns: the estimator's output, first dimension ``n_samples``.
        """
        batching = self.batching
        if batching is True or (batching and bundle.name in batching):
            return self.batcher.run(bundle, method, matrix)
        return self.call(bundle, method, matrix)

    def call(self, bundle: Bundle, method: str, matrix: np.ndarray) -> np.ndarray:
        """Call ``method`` of the bundle's estimator on checked rows, once.

        :raises InvalidInputError: the estimator refuses the rows' values (a ``ValueError``:
            for example a value beyond float32 for a tree, or a category it never saw).
        """
        # Our checks have made the rows finite float64 of the right width: scikit-learn's
        # own finiteness and parameter validation would only repeat them. Overflow in the
        # estimator's arithmetic is caught by json_values, not warned about.
        compiled = self.compiled.get(id(bundle))
        with np.errstate(all="ignore"):
            try:
                if compiled is not None and method in compiled.outputs:
                    return compiled.run(method, matrix)
                with sklearn.config_context(
                    assume_finite=not bundle.manifest.allow_nan, skip_parameter_validation=True
                ):
                    result: np.ndarray = getattr(bundle.estimator, method)(matrix)
            except ValueError as error:
                raise InvalidInputError(
                    f"the model cannot predict these rows: {error}",
                    {"instances": [str(error)[:200]]},
                ) from None
        return result

    def warm_up(self) -> None:
        """Run one prediction per bundle on its reference rows and mark it ready.

        Call it in each serving process after fork, never in a preloading master: OpenMP
        thread pools do not survive ``fork``.

        :raises BundleError: an estimator fails on its own reference rows.
        """
        for bundle in self.registry.bundles():
            rows = bundle.manifest.reference_rows or [[0.0] * len(bundle.manifest.inputs)]
            matrix = np.array(rows, dtype=np.float64)
            started = time.perf_counter()
            self._compile(bundle)
            try:
                self.call(bundle, "predict", matrix)
            except Exception as error:  # any failure of a model's own rows makes it unservable
                raise BundleError(
                    f"model {bundle.name!r} version {bundle.version!r} failed to predict its "
                    f"reference rows: {type(error).__name__}: {error}"
                ) from error
            self.registry.mark_ready(bundle)
            logger.info(
                "warmed model %s version %s in %.1f ms",
                bundle.name,
                bundle.version,
                (time.perf_counter() - started) * 1000,
            )

    def engine_of(self, bundle: Bundle) -> str:
        """Return ``"onnx"`` or ``"sklearn"``: what answers ``bundle``'s predict here."""
        return "onnx" if id(bundle) in self.compiled else "sklearn"

    def _compile(self, bundle: Bundle) -> None:
        """Make this process's ONNX session for ``bundle`` when the engine setting asks."""
        if self.engine == "sklearn" or id(bundle) in self.compiled:
            return
        if bundle.onnx is None or (self.engine == "auto" and not compiled_available()):
            if self.engine == "onnx":
                raise BundleError(
                    f"model {bundle.name!r} version {bundle.version!r} has no ONNX model "
                    "(RUNTIME is onnx): package it with --onnx"
                )
            return
        classes = bundle.manifest.classes
        shapes = {"predict": (), "predict_proba": (len(classes),) if classes else ()}
        self.compiled[id(bundle)] = CompiledModel(bundle.onnx, shapes)


def json_values(outputs: np.ndarray) -> list[Any]:
    """Return ``outputs`` as JSON-native lists, refusing values strict JSON cannot carry.

    :raises InvalidOutputError: a value is NaN or infinite, naming its row.
    """
    array = np.asarray(outputs)
    if array.dtype.kind in "fc" and not np.isfinite(array).all():
        row = int(np.argwhere(~np.isfinite(array))[0][0])
        raise InvalidOutputError(
            f"the model's output for row {row} is not a finite number; check that row's values "
            "lie within the ranges listed in the model's metadata",
            {"instances": {row: ["The model's output for this row is not finite."]}},
        )
    values: list[Any] = array.tolist()
    return values
