"""Drift monitoring in the server: counters per reference bin, reference gauges, PSI reports.

:class:`Monitor` is one of the dataplane's observers, so every protocol's answered rows are
counted (:mod:`inference_app.core.drift` bins them) under the model version that served them:
``inference_app_drift_rows_total{model,version,feature,bin}``, each non-empty bin of the batch
added in one batch of writes (:func:`inference_app.metric_values.add`). When a worker has
warmed its models, every bin's counter is made at 0 and
``inference_app_drift_reference_ratio`` set, so PromQL sees each bin from the start
(``deploy/prometheus/``). :func:`report` reads the counters merged over live and exited
workers (:mod:`inference_app.metrics`), so any worker answers the same.
"""

from __future__ import annotations

import os
import threading
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flask import Flask
from prometheus_client.metrics_core import Metric

from inference_app import metric_values, metrics
from inference_app.core import drift
from inference_app.core.bundle import Bundle
from inference_app.core.dataplane import InferenceResult
from inference_app.core.registry import Registry
from inference_app.metric_values import Value

#: Where an app keeps its :class:`Monitor`, in ``app.extensions``.
EXTENSION = "inference_app.drift"
#: The counter family whose samples :func:`served_counts` reads.
ROWS_FAMILY = "inference_app_drift_rows"


@dataclass(frozen=True)
class Tracked:
    """A bundle counted in this process: its plan and its counter's value in each bin."""

    bundle: Bundle
    plan: drift.Plan
    values: tuple[Value, ...]


@dataclass(frozen=True)
class Report:
    """What ``GET /v1/models/<name>/drift`` answers.

    :param rows: rows counted: the most any feature counted (a feature whose reference does
        not count missing values leaves served missing values out).
    :param passed: no feature's PSI exceeds ``threshold``.
    :param drifted: the features whose PSI exceeds it.
    """

    model_name: str
    model_version: str
    threshold: float
    epsilon: float
    rows: int
    passed: bool
    drifted: tuple[str, ...]
    features: tuple[drift.FeatureDrift, ...]
    unmonitored: tuple[drift.Unmonitored, ...]


class Monitor:
    """The dataplane observer counting each answered batch into its bundle's reference bins.

    Labels stay bounded: only bundles the dataplane served (or warmed) are counted, each
    with the features and bins of its own reference.
    """

    def __init__(self) -> None:
        self._tracked: dict[int, Tracked] = {}
        self._lock = threading.Lock()

    def track(self, bundle: Bundle) -> Tracked:
        """Return ``bundle``'s plan and counters, made (and its reference gauges set) once."""
        tracked = self._tracked.get(id(bundle))
        if tracked is not None and tracked.bundle is bundle:
            return tracked
        with self._lock:
            tracked = self._tracked.get(id(bundle))
            if tracked is None or tracked.bundle is not bundle:
                tracked = self._tracked[id(bundle)] = _track(bundle)
        return tracked

    def __call__(self, bundle: Bundle, result: InferenceResult) -> None:
        """Count ``result``'s checked rows under ``bundle``'s name and version."""
        if result.input is None or not result.rows:
            return
        tracked = self.track(bundle)
        values = tracked.values
        filled = tracked.plan.filled(result.input)
        metric_values.add([(values[index], count) for index, count in filled.items()])

    def record_reference(self, registry: Registry) -> None:
        """Make the counters (at 0) and reference gauges of every ready bundle of
        ``registry``; call it in each serving process once its models are warm."""
        for bundle in registry.bundles():
            if registry.is_ready(bundle):
                self.track(bundle)

    def plan(self, bundle: Bundle) -> drift.Plan:
        """Return ``bundle``'s plan, without making counters for a bundle not counted yet."""
        tracked = self._tracked.get(id(bundle))
        if tracked is not None and tracked.bundle is bundle:
            return tracked.plan
        return drift.plan(bundle.manifest)


def _track(bundle: Bundle) -> Tracked:
    plan = drift.plan(bundle.manifest)
    values = []
    for feature in plan.features:
        for label, ratio in zip(feature.labels, feature.reference_ratio.tolist(), strict=True):
            labels = (bundle.name, bundle.version, feature.name, label)
            values.append(metrics.value_of(metrics.DRIFT_ROWS.labels(*labels)))
            metrics.DRIFT_REFERENCE.labels(*labels).set(ratio)
    return Tracked(bundle, plan, tuple(values))


def init_app(app: Flask, registry: Registry, dataplane: Any) -> Monitor:
    """Count ``dataplane``'s answers for ``app``: add a :class:`Monitor` to its observers,
    keep it in ``app.extensions``, and record the references of the models already warm."""
    monitor = Monitor()
    dataplane.observers.append(monitor)
    app.extensions[EXTENSION] = monitor
    monitor.record_reference(registry)
    return monitor


def record_reference(app: Flask, registry: Registry) -> None:
    """Record the references of ``app``'s warm models in this process (after warm-up)."""
    monitor: Monitor | None = app.extensions.get(EXTENSION)
    if monitor is not None:
        monitor.record_reference(registry)


def served_counts(model: str, version: str) -> dict[tuple[str, str], float]:
    """Return the rows counted per ``(feature, bin)`` for one model version since the
    server started, merged over every worker, live or exited."""
    families: Iterable[Metric]
    if os.environ.get(metrics.MULTIPROC_ENV):
        families = metrics.merged_counters()
    else:
        families = metrics.DRIFT_ROWS.collect()
    counts: dict[tuple[str, str], float] = defaultdict(float)
    for family in families:
        if family.name != ROWS_FAMILY:
            continue
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == f"{ROWS_FAMILY}_total"
                and labels.get("model") == model
                and labels.get("version") == version
            ):
                counts[(labels["feature"], labels["bin"])] += sample.value
    return dict(counts)


def report(monitor: Monitor, bundle: Bundle, threshold: float) -> Report:
    """Return each feature's PSI against ``bundle``'s reference, from the merged counters.

    :param threshold: the PSI above which a feature fails (``DRIFT_PSI_THRESHOLD``).
    """
    plan = monitor.plan(bundle)
    features = plan.report(served_counts(bundle.name, bundle.version), threshold)
    drifted = tuple(f.name for f in features if f.passed is False)
    return Report(
        model_name=bundle.name,
        model_version=bundle.version,
        threshold=threshold,
        epsilon=drift.EPSILON,
        rows=max((f.rows for f in features), default=0),
        passed=not drifted,
        drifted=drifted,
        features=features,
        unmonitored=plan.unmonitored,
    )
