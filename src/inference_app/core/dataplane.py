"""The dataplane: one protocol-neutral inference request in, outputs with their labels out.

Every protocol (native, KServe V1, Open Inference Protocol, MLflow) decodes its body into an
:class:`InferenceRequest` and encodes the :class:`InferenceResult`; what lies between, the
checks of :mod:`inference_app.core.inputs`, batching and the engines, is here once.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inference_app.core import inputs
from inference_app.core.batching import Batcher
from inference_app.core.bundle import Bundle
from inference_app.core.engines import Engine, engine_for
from inference_app.core.errors import (
    BundleError,
    InvalidOutputError,
    MethodNotAvailableError,
    ModelNotReadyError,
)
from inference_app.core.inputs import Limits, ModelInput
from inference_app.core.registry import Registry
from inference_app.core.traffic import ShadowOutcome, Traffic, agrees, decisions

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferenceRequest:
    """What a caller asks, whatever its protocol.

    Exactly one of ``instances``, ``columns`` and ``matrix`` holds the rows.

    :param model: the model name.
    :param version: the version; ``None``: the model's default.
    :param methods: the methods whose outputs to return, in order.
    :param instances: rows, ``(n_samples, n_features)``: arrays in the model's feature order
        or objects keyed by feature name, JSON-native values.
    :param columns: one column per feature name, ``(n_samples,)`` each: lists of JSON-native
        values or numpy arrays.
    :param matrix: a numeric array ``(n_samples, n_features)`` in the model's feature order.
    :param cells: ``columns`` hold CSV text cells, typed by the model's features.
    :param where: the request field holding the rows, for error locations.
    :param routing_key: with no ``version``, the value of the model's sticky header
        (``traffic.json``'s ``sticky``; an HTTP header or gRPC metadata), which picks the
        version by a stable hash; ``None``: by weight at random.
    """

    model: str
    version: str | None = None
    methods: tuple[str, ...] = ("predict",)
    instances: Sequence[Any] | None = None
    columns: Mapping[str, Any] | None = None
    matrix: np.ndarray | None = None
    cells: bool = False
    where: str = "instances"
    routing_key: str | None = None


@dataclass(frozen=True)
class Output:
    """One method's outputs.

    :param values: JSON-native values: shape ``(n_samples,)`` for ``predict`` and a binary
        ``decision_function``, ``(n_samples, n_classes)`` for ``predict_proba`` and a
        multiclass ``decision_function``.
    :param classes: the class labels of the columns, for ``predict_proba`` and
        ``decision_function`` of classifiers; else ``None``.
    """

    method: str
    values: list[Any]
    shape: tuple[int, ...]
    classes: list[Any] | None


@dataclass(frozen=True)
class InferenceResult:
    """The answer to an :class:`InferenceRequest`.

    :param unseen: per categorical feature, the values that were categories the model never
        saw and tolerates.
    :param timings: seconds per stage: ``validate`` (checking and building the rows),
        ``predict`` (the engine calls and output conversion) and, when a shadow version
        answered too, ``shadow``.
    :param input: the checked rows the engine was given, for observers (drift, payload logs).
    """

    model_name: str
    model_version: str
    outputs: tuple[Output, ...]
    rows: int
    unseen: Mapping[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    input: ModelInput | None = field(default=None, compare=False, repr=False)

    def output(self, method: str) -> Output:
        """Return the output of ``method``."""
        return next(output for output in self.outputs if output.method == method)


class DataPlane:
    """Answer inference requests with the registry's bundles.

    :param registry: where the bundles are.
    :param limits: what one request may hold.
    :param batching: merge concurrent requests (see :mod:`inference_app.core.batching`) for
        every model (``True``) or for the models named.
    :param max_batch_size: the most rows one merged engine call may hold.
    :param max_batch_latency: the longest a request waits for a running call, in seconds.
    :param on_batch: told the number of requests and rows of each merged call.
    :param engine: the ``RUNTIME`` setting (:func:`inference_app.core.engines.engine_for`).
    :param on_shadow: told what each shadow comparison found (``traffic.json``'s
        ``shadow``); a failure in it is logged, never fails the request.

    :attr:`observers` are called with the bundle and the result of every answered
    :meth:`infer`, whatever the protocol; an observer that raises is logged, never fails the
    request.
    """

    def __init__(
        self,
        registry: Registry,
        *,
        limits: Limits | None = None,
        batching: bool | Collection[str] = False,
        max_batch_size: int = 256,
        max_batch_latency: float = 0.002,
        on_batch: Callable[[int, int], None] | None = None,
        engine: str = "auto",
        on_shadow: Callable[[ShadowOutcome], None] | None = None,
    ) -> None:
        self.registry = registry
        self.limits = limits or Limits()
        self.engine = engine
        self.on_shadow = on_shadow
        #: Whether two bundles take the same inputs, by ``(id(served), id(shadow))``.
        self._same_inputs: dict[tuple[int, int], bool] = {}
        #: The shadow versions whose failure was logged as a warning in this process.
        self._shadow_failed: set[tuple[str, str]] = set()
        #: This process's engine of each bundle, by ``id(bundle)``, made at warm-up.
        self.engines: dict[int, Engine] = {}
        self.observers: list[Callable[[Bundle, InferenceResult], None]] = []
        self.batching = batching
        self.batcher = Batcher(
            self.call,
            max_rows=max_batch_size,
            max_latency=max_batch_latency,
            on_batch=on_batch,
        )
        # The rows given to estimators fitted on DataFrames are arrays in the order of
        # feature_names_in_, which the checks guarantee; scikit-learn's warning that the
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
        on_shadow: Callable[[ShadowOutcome], None] | None = None,
    ) -> DataPlane:
        """Make a dataplane from the app's settings (``MAX_ROWS``, ``UNKNOWN_FEATURES``,
        ``MAX_TEXT_LENGTH``, ``BATCHING``, ``MAX_BATCH_SIZE``, ``MAX_BATCH_LATENCY_MS``,
        ``RUNTIME``)."""
        return cls(
            registry,
            limits=Limits(
                max_rows=settings["MAX_ROWS"],
                unknown_features=settings["UNKNOWN_FEATURES"],
                max_text_length=settings["MAX_TEXT_LENGTH"],
            ),
            batching=settings["BATCHING"],
            max_batch_size=settings["MAX_BATCH_SIZE"],
            max_batch_latency=settings["MAX_BATCH_LATENCY_MS"] / 1000,
            on_batch=on_batch,
            engine=settings["RUNTIME"],
            on_shadow=on_shadow,
        )

    @property
    def max_rows(self) -> int:
        """Return the most rows one request may hold."""
        return self.limits.max_rows

    def serving(
        self,
        name: str,
        version: str | None = None,
        methods: Sequence[str] = ("predict",),
        routing_key: str | None = None,
    ) -> Bundle:
        """Return the bundle that answers for ``name`` and ``version`` with ``methods``;
        with no ``version``, the one the model's traffic routes to
        (:meth:`inference_app.core.registry.Registry.route`).

        :param routing_key: see :attr:`InferenceRequest.routing_key`.
        :raises ModelNotFoundError: no such model or version.
        :raises ModelNotReadyError: the model is not warmed up in this process.
        :raises MethodNotAvailableError: the estimator lacks a method.
        """
        if version is None:
            bundle = self.registry.route(name, routing_key)
        else:
            bundle = self.registry.get(name, version)
        if not self.registry.is_ready(bundle):
            raise ModelNotReadyError(f"model {name!r} version {bundle.version!r} is warming up")
        available = bundle.manifest.methods
        for method in methods:
            if method not in available:
                raise MethodNotAvailableError(
                    f"model {name!r} has no method {method!r}; it has {', '.join(available)}",
                    {"method": [f"Must be one of: {', '.join(available)}."]},
                )
        return bundle

    def infer(self, request: InferenceRequest) -> InferenceResult:
        """Check the request's rows, compute each method's outputs, and label them.

        A request naming no version is answered by the version its model's traffic routes
        it to; if that traffic has a shadow version and the request is sampled, the shadow
        then computes the first method's outputs for the same rows, in this call, and
        :meth:`shadow` compares them. The shadow never changes nor fails the answer.

        :raises ModelNotFoundError: no such model or version.
        :raises ModelNotReadyError: the model is not warmed up in this process.
        :raises MethodNotAvailableError: the estimator lacks a method.
        :raises InvalidInputError: the rows do not fit the model's inputs (naming the row and
            feature), or the model refuses their values.
        :raises InvalidOutputError: the model returned NaN or infinity.
        """
        bundle = self.serving(request.model, request.version, request.methods, request.routing_key)
        started = time.perf_counter()
        model_input = self.decode(bundle, request)
        checked = time.perf_counter()
        outputs = tuple(
            self._output(bundle, method, self.execute(bundle, method, model_input))
            for method in request.methods
        )
        finished = time.perf_counter()
        timings = {"validate": checked - started, "predict": finished - checked}
        if request.version is None:
            traffic = self.registry.traffic(bundle.name)
            if traffic is not None and traffic.shadow_due():
                timings["shadow"] = self.shadow(traffic, bundle, request, model_input, outputs)
        result = InferenceResult(
            model_name=bundle.name,
            model_version=bundle.version,
            outputs=outputs,
            rows=model_input.rows,
            unseen=model_input.unseen,
            timings=timings,
            input=model_input,
        )
        for observer in self.observers:
            try:
                observer(bundle, result)
            except Exception:  # an observer's fault never fails the answer
                logger.exception("observer %r failed on model %s", observer, bundle.name)
        return result

    def shadow(
        self,
        traffic: Traffic,
        served: Bundle,
        request: InferenceRequest,
        model_input: ModelInput,
        outputs: Sequence[Output],
    ) -> float:
        """Run ``traffic``'s shadow version on a served request's rows and compare its
        decisions with the served ones, row by row
        (:func:`inference_app.core.traffic.decisions` and
        :func:`~inference_app.core.traffic.agrees`), on the first requested method (or
        ``predict``, if the shadow lacks it). Any failure of the shadow is an ``error``
        outcome, logged; nothing is raised. :attr:`on_shadow` is told the outcome.

        :param model_input: the served version's checked rows, reused when the shadow takes
            the same inputs; else the request is checked again against the shadow's.
        :returns: the seconds it took.
        """
        started = time.perf_counter()
        version = traffic.shadow or ""
        outcome, disagreeing = "error", 0
        try:
            shadow = self.serving(request.model, version, ())
            pair = (id(served), id(shadow))
            same = self._same_inputs.get(pair)
            if same is None:
                same = self._same_inputs[pair] = (
                    served.manifest.inputs == shadow.manifest.inputs
                    and served.manifest.layout == shadow.manifest.layout
                )
            rows = model_input if same else self.decode(shadow, request)
            first = outputs[0]
            method = first.method if first.method in shadow.manifest.methods else "predict"
            output = self._output(shadow, method, self.execute(shadow, method, rows))
            given = decisions(first.method, first.values, first.classes)
            found = decisions(method, output.values, output.classes)
            if len(found) != len(given):
                raise InvalidOutputError(f"{len(found)} outputs for {len(given)} rows")
            tolerance = traffic.shadow_tolerance
            disagreeing = sum(
                not agrees(a, b, tolerance) for a, b in zip(given, found, strict=True)
            )
            outcome = "disagree" if disagreeing else "agree"
        except Exception as error:  # the shadow's fault never reaches the answer
            seen = (served.name, version) in self._shadow_failed
            self._shadow_failed.add((served.name, version))
            level = logging.DEBUG if seen else logging.WARNING
            logger.log(
                level,
                "shadow version %s of model %s failed (counted, the answer is served): %s: %s",
                version,
                served.name,
                type(error).__name__,
                error,
            )
        seconds = time.perf_counter() - started
        if self.on_shadow is not None:
            try:
                self.on_shadow(
                    ShadowOutcome(
                        model=served.name,
                        version=version,
                        served_version=served.version,
                        outcome=outcome,
                        rows=model_input.rows,
                        disagreeing=disagreeing,
                        seconds=seconds,
                    )
                )
            except Exception:  # a counting fault never fails the answer
                logger.exception("on_shadow failed on model %s", served.name)
        return seconds

    def decode(self, bundle: Bundle, request: InferenceRequest) -> ModelInput:
        """Check the request's rows against ``bundle``'s features and build its input.

        :raises InvalidInputError: naming the row and feature at fault.
        """
        manifest = bundle.manifest
        return inputs.decode(
            manifest.inputs,
            manifest.layout,
            self.limits,
            instances=request.instances,
            columns=request.columns,
            matrix=request.matrix,
            cells=request.cells,
            where=request.where,
        )

    def predict(
        self,
        name: str,
        instances: Sequence[Any],
        *,
        version: str | None = None,
        method: str = "predict",
    ) -> InferenceResult:
        """Predict for rows given as lists (feature order) or objects (feature names).

        :param instances: rows, ``(n_samples, n_features)``, as parsed from JSON.
        :raises: as :meth:`infer`.
        """
        return self.infer(
            InferenceRequest(model=name, version=version, methods=(method,), instances=instances)
        )

    def execute(self, bundle: Bundle, method: str, model_input: ModelInput) -> np.ndarray:
        """Compute ``method``'s outputs for checked rows, batched with concurrent requests
        when batching is on for the bundle's model.

        :returns: the engine's output, first dimension ``n_samples``.
        """
        batching = self.batching
        if batching is True or (batching and bundle.name in batching):
            return self.batcher.run(bundle, method, model_input.data)
        return self.call(bundle, method, model_input.data)

    def call(self, bundle: Bundle, method: str, data: Any) -> np.ndarray:
        """Run ``method`` on checked rows in the bundle's engine, once.

        :param data: the model input in the bundle's layout.
        :raises InvalidInputError: the model refuses the rows' values (its ``ValueError``).
        """
        engine = self.engines.get(id(bundle))
        if engine is None:
            engine = self.engines[id(bundle)] = engine_for(bundle, "sklearn")
        return engine.run(method, data)

    def prepare_engines(self) -> None:
        """Make each bundle's engine, predicting nothing, so that forked workers share it.

        Only for engines whose native code starts no thread: call it in a preloading master
        only when each worker predicts on one thread (onnxruntime sessions made with one
        intra-op and one inter-op thread run on the caller's thread). :meth:`warm_up` keeps
        the engines it finds.

        :raises BundleError: an engine cannot be made.
        """
        for bundle in self.registry.bundles():
            if id(bundle) not in self.engines:
                self.engines[id(bundle)] = engine_for(bundle, self.engine)

    def warm_up(self) -> None:
        """Make each bundle's engine (unless :meth:`prepare_engines` did), run one prediction
        on its reference rows, mark it ready.

        Call it in each serving process after fork, never in a preloading master: OpenMP
        thread pools do not survive ``fork``, nor do onnxruntime's.

        :raises BundleError: an engine cannot be made, or a model fails on its own
            reference rows.
        """
        for bundle in self.registry.bundles():
            manifest = bundle.manifest
            rows = manifest.reference_rows or [[0.0] * len(manifest.inputs)]
            started = time.perf_counter()
            if id(bundle) not in self.engines:
                self.engines[id(bundle)] = engine_for(bundle, self.engine)
            try:
                model_input = inputs.from_rows(
                    rows,
                    manifest.inputs,
                    manifest.layout,
                    Limits(
                        max_rows=len(rows) or 1, unknown_features="reject", max_text_length=2**31
                    ),
                )
                self.call(bundle, "predict", model_input.data)
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
        engine = self.engines.get(id(bundle))
        return "sklearn" if engine is None else engine.name

    def _output(self, bundle: Bundle, method: str, outputs: np.ndarray) -> Output:
        classes = bundle.manifest.classes
        return Output(
            method=method,
            values=json_values(outputs),
            shape=tuple(np.shape(outputs)),
            classes=None if method == "predict" or classes is None else list(classes),
        )


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
