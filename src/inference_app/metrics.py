"""Prometheus metrics, exact across Gunicorn workers (prometheus-client's multiprocess mode).

Under Gunicorn, ``gunicorn.conf.py`` points ``PROMETHEUS_MULTIPROC_DIR`` at an empty folder
before the app is imported; every process writes its samples there and ``GET /metrics``
merges them. When a worker exits, :func:`archive_dead_process` folds its counters and
histograms into one archive file per type, so scrapes read a bounded number of files however
often workers are recycled. A scrape and a fold never overlap: the fold holds an exclusive
``flock`` on ``archive.lock`` in that folder and a scrape a shared one, so a scrape never reads a
file being removed nor counts a dead worker's samples twice. Names follow Prometheus's naming
rules (base units, ``_total``).
"""

from __future__ import annotations

import bisect
import fcntl
import glob
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict

from inference_app import metric_values
from inference_app.core.registry import Registry
from inference_app.core.traffic import ShadowOutcome
from inference_app.metric_values import Value

# Before any metric is made: their samples are metric_values.Value objects (cheap writes).
metric_values.install()

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: The file in the metrics folder whose ``flock`` orders scrapes and folds of dead workers.
LOCK_FILE = "archive.lock"
#: Bucket bounds in seconds, from a cached single-row call to a large batch.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

REQUESTS = Counter(
    "inference_app_requests_total",
    "Requests answered, HTTP and gRPC.",
    ["protocol", "route", "model", "version", "status_class"],
)
REQUEST_DURATION = Histogram(
    "inference_app_request_duration_seconds",
    "Time from the request's arrival in the app to its answer, in seconds.",
    ["protocol", "route", "model", "version"],
    buckets=LATENCY_BUCKETS,
)
ROWS = Counter(
    "inference_app_rows_predicted_total",
    "Rows predicted (n_samples summed over requests).",
    ["protocol", "model", "version"],
)
UNSEEN_CATEGORIES = Counter(
    "inference_app_unseen_categories_total",
    "Values of categorical features that the model never saw in training and served anyway "
    "(its encoder ignores unknown categories).",
    ["model", "feature"],
)
DRIFT_ROWS = Counter(
    "inference_app_drift_rows_total",
    "Served rows counted into the bins of their model version's training reference, per "
    "feature: histogram bins by index, underflow, overflow, categories, unseen, missing "
    "(GET /v1/models/<name>/drift says what each bin holds).",
    ["model", "version", "feature", "bin"],
)
DRIFT_REFERENCE = Gauge(
    "inference_app_drift_reference_ratio",
    "The proportion of the training sample in each drift bin of a served model version "
    "(they sum to 1 per feature), for PSI in PromQL.",
    ["model", "version", "feature", "bin"],
    multiprocess_mode="livemax",
)
IN_FLIGHT = Gauge(
    "inference_app_requests_in_flight",
    "Requests being answered now, summed over live workers.",
    multiprocess_mode="livesum",
)
ERRORS = Counter(
    "inference_app_errors_total",
    "Error answers, by protocol and kind (the domain error, or the HTTP status).",
    ["protocol", "kind"],
)
STAGE_DURATION = Histogram(
    "inference_app_stage_duration_seconds",
    "Time spent per request stage (parse, validate, predict, serialise), in seconds.",
    ["protocol", "stage"],
    buckets=LATENCY_BUCKETS,
)
MODEL_LOAD_DURATION = Histogram(
    "inference_app_model_load_duration_seconds",
    "Time to read, verify and unpickle a model bundle, in seconds.",
    ["model", "version"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
MODEL_INFO = Gauge(
    "inference_app_model_info",
    "A model version served by live workers (always 1), with its scikit-learn version and "
    "bundle format.",
    ["model", "version", "sklearn_version", "format"],
    multiprocess_mode="livemax",
)
BATCH_REQUESTS = Histogram(
    "inference_app_batch_requests",
    "Requests merged into one estimator call, when batching is on.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
BATCH_ROWS = Histogram(
    "inference_app_batch_rows",
    "Rows of one merged estimator call, when batching is on.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
SHADOW_REQUESTS = Counter(
    "inference_app_shadow_requests_total",
    "Requests that a shadow version (traffic.json) also answered, by outcome: agree (every "
    "row's decision equal to the served version's), disagree (some row's differs) or error "
    "(the shadow failed; the answer was served all the same).",
    ["model", "version", "served_version", "outcome"],
)
SHADOW_ROWS = Counter(
    "inference_app_shadow_rows_total",
    "Rows that a shadow version (traffic.json) also predicted, by outcome: agree or disagree "
    "with the served version's decision.",
    ["model", "version", "served_version", "outcome"],
)
RELOADS = Counter(
    "inference_app_model_reloads_total",
    "Model reloads on SIGHUP, by result (success or failure).",
    ["result"],
)
PAYLOAD_SENT = Counter(
    "inference_app_payload_events_sent_total",
    "Payload log events (CloudEvents, two per logged request) written to the file or "
    "accepted by the HTTP sink.",
)
PAYLOAD_DROPPED = Counter(
    "inference_app_payload_events_dropped_total",
    "Payload log events dropped, by reason: queue_full (the sender was behind), sink_error "
    "(the sink refused, timed out or failed), shutdown (the worker exited first), "
    "encode_error.",
    ["reason"],
)


@dataclass(frozen=True)
class Timing:
    """The values of one histogram series: its sum, its bucket bounds (seconds, the last
    ``+Inf``) and its buckets' own counts (not cumulative: as prometheus-client stores them)."""

    sum: Value
    bounds: tuple[float, ...]
    buckets: tuple[Value, ...]

    @classmethod
    def of(cls, child: Any) -> Timing:
        """Return the values of a ``Histogram`` series (``metric.labels(...)``)."""
        return cls(child._sum, tuple(child._upper_bounds), tuple(child._buckets))

    def bucket(self, seconds: float) -> Value:
        """Return the bucket ``seconds`` falls in: the first whose bound is at least it,
        as ``Histogram.observe`` picks it."""
        return self.buckets[bisect.bisect_left(self.bounds, seconds)]


def value_of(child: Any) -> Value:
    """Return the value of a ``Counter`` or ``Gauge`` series (``metric.labels(...)``)."""
    value: Value = child._value
    return value


#: The values of the request metrics, by their labels (bounded: routes, served models,
#: statuses, stages), made on first use.
_REQUEST_SERIES: dict[tuple[str, str, str, str, int], tuple[Value, Timing]] = {}
_ROWS_SERIES: dict[tuple[str, str, str], Value] = {}
_STAGE_SERIES: dict[tuple[str, str], Timing] = {}
_ERROR_SERIES: dict[tuple[str, str], Value] = {}
_IN_FLIGHT = value_of(IN_FLIGHT)


def record_request(
    kind: str,
    route: str,
    model: str,
    version: str,
    status: int,
    duration: float,
    rows: int,
    stages: Mapping[str, float],
    error_kind: str | None = None,
) -> None:
    """Count one answered request in every request metric, in one batch of writes
    (:func:`inference_app.metric_values.add`): ``inference_app_requests_total``,
    ``inference_app_request_duration_seconds``, ``inference_app_rows_predicted_total``,
    ``inference_app_stage_duration_seconds`` (each stage) and, for a status of 400 or more,
    ``inference_app_errors_total``. The same samples as ``inc`` and ``observe`` of each.

    :param kind: the protocol label; ``route``, ``model``, ``version`` the other labels.
    :param status: the HTTP status (its class, ``2xx``, is the label).
    :param duration: seconds from the request's arrival to its answer.
    :param rows: rows predicted (not counted when 0).
    :param stages: seconds per stage (``parse``, ``validate``, ``predict``, ``serialise``).
    :param error_kind: the ``kind`` label of an error answer; default its status.
    """
    series = _REQUEST_SERIES.get((kind, route, model, version, status))
    if series is None:
        series = _REQUEST_SERIES[kind, route, model, version, status] = (
            value_of(REQUESTS.labels(kind, route, model, version, f"{status // 100}xx")),
            Timing.of(REQUEST_DURATION.labels(kind, route, model, version)),
        )
    requests, durations = series
    pairs: list[tuple[Value, float]] = [
        (requests, 1.0),
        (durations.sum, duration),
        (durations.bucket(duration), 1.0),
    ]
    if rows:
        counted = _ROWS_SERIES.get((kind, model, version))
        if counted is None:
            counted = _ROWS_SERIES[kind, model, version] = value_of(
                ROWS.labels(kind, model, version)
            )
        pairs.append((counted, rows))
    for stage, seconds in stages.items():
        timing = _STAGE_SERIES.get((kind, stage))
        if timing is None:
            timing = _STAGE_SERIES[kind, stage] = Timing.of(STAGE_DURATION.labels(kind, stage))
        pairs.append((timing.sum, seconds))
        pairs.append((timing.bucket(seconds), 1.0))
    if status >= 400:
        labels = (kind, error_kind or str(status))
        error = _ERROR_SERIES.get(labels)
        if error is None:
            error = _ERROR_SERIES[labels] = value_of(ERRORS.labels(*labels))
        pairs.append((error, 1.0))
    metric_values.add(pairs)


def in_flight(change: int) -> None:
    """Add ``change`` (1 on a request's arrival, -1 once answered) to
    ``inference_app_requests_in_flight``."""
    metric_values.add(((_IN_FLIGHT, change),))


@contextmanager
def _locked(folder: str | os.PathLike[str], operation: int) -> Iterator[None]:
    """Hold ``flock(operation)`` on the lock file of ``folder``; closing the file releases it."""
    with open(os.path.join(folder, LOCK_FILE), "ab") as handle:
        fcntl.flock(handle, operation)
        yield


class Collector(multiprocess.MultiProcessCollector):
    """prometheus-client's multiprocess collector, reading only while no dead worker is folded."""

    def collect(self) -> Iterable[Metric]:
        with _locked(self._path, fcntl.LOCK_SH):
            return list(super().collect())


def multiprocess_registry(path: str | None = None) -> CollectorRegistry:
    """Return a registry that merges the samples every process wrote under ``path``.

    :param path: the metrics folder; default ``$PROMETHEUS_MULTIPROC_DIR``.
    :raises ValueError: ``path`` is not a directory.
    """
    registry = CollectorRegistry()
    Collector(registry, path=path)
    return registry


def collect() -> tuple[bytes, str]:
    """Return the exposition text of every process's metrics and its content type."""
    if os.environ.get(MULTIPROC_ENV):
        return generate_latest(multiprocess_registry()), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def merged_counters(path: str | os.PathLike[str] | None = None) -> list[Metric]:
    """Return the counters of every process, live or exited, merged as a scrape merges them
    (reading only the counter files, while no dead worker is folded).

    :param path: the metrics folder; default ``$PROMETHEUS_MULTIPROC_DIR``.
    :raises KeyError: no folder is given and ``PROMETHEUS_MULTIPROC_DIR`` is unset.
    """
    folder = os.fspath(path or os.environ[MULTIPROC_ENV])
    with _locked(folder, fcntl.LOCK_SH):
        files = glob.glob(os.path.join(folder, "counter_*.db"))
        return list(multiprocess.MultiProcessCollector.merge(files, accumulate=True))


def record_batch(requests: int, rows: int) -> None:
    """Observe one merged estimator call of ``requests`` requests and ``rows`` rows."""
    BATCH_REQUESTS.observe(requests)
    BATCH_ROWS.observe(rows)


def record_shadow(outcome: ShadowOutcome) -> None:
    """Count one shadow comparison: the request by its outcome, its rows by theirs."""
    labels = (outcome.model, outcome.version, outcome.served_version)
    SHADOW_REQUESTS.labels(*labels, outcome.outcome).inc()
    if outcome.outcome != "error":
        SHADOW_ROWS.labels(*labels, "agree").inc(outcome.rows - outcome.disagreeing)
        SHADOW_ROWS.labels(*labels, "disagree").inc(outcome.disagreeing)


def record_loads(registry: Registry) -> None:
    """Observe how long each bundle of ``registry`` took to load."""
    for (name, version), seconds in registry.load_seconds.items():
        MODEL_LOAD_DURATION.labels(name, version).observe(seconds)


def record_served(registry: Registry) -> None:
    """Mark the ready bundles of ``registry`` as served by this process."""
    for bundle in registry.bundles():
        if registry.is_ready(bundle):
            manifest = bundle.manifest
            labels = (bundle.name, bundle.version, manifest.sklearn_version or "", manifest.format)
            MODEL_INFO.labels(*labels).set(1)


def archive_dead_process(pid: int, path: str | os.PathLike[str] | None = None) -> None:
    """Fold a dead process's samples into the archive files; forget its live gauges.

    Counters and histograms of ``pid`` are added to ``counter_archive.db`` and
    ``histogram_archive.db`` (prometheus-client's file format, read by its collector), then
    removed, so the number of files stays bounded as workers are recycled. Run it in the
    Gunicorn master's ``child_exit``, when ``pid`` can no longer write. Scrapes wait while it
    runs (see :class:`Collector`).
    """
    folder = path or os.environ.get(MULTIPROC_ENV)
    if not folder:
        return
    with _locked(folder, fcntl.LOCK_EX):
        multiprocess.mark_process_dead(pid, folder)
        for kind in ("counter", "histogram"):
            for dead in glob.glob(os.path.join(folder, f"{kind}_{pid}.db")):
                archive = MmapedDict(os.path.join(folder, f"{kind}_archive.db"))
                try:
                    for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(dead):
                        total, _ = archive.read_value(key)
                        archive.write_value(key, total + value, timestamp)
                finally:
                    archive.close()
                os.remove(dead)
