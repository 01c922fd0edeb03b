"""Payload logging: each answered inference as a CloudEvents 1.0 request and response event,
written to a file or POSTed to an HTTP sink by a background thread, never on the request path.

Every transport calls :func:`record` once per answered inference (the HTTP layer in
``http/observe.py`` and ``http/fastpath.py``; a gRPC transport likewise). :func:`record` only
samples and puts the request on a bounded queue: when the queue is full the request's events
are dropped and counted (``inference_app_payload_events_dropped_total{reason="queue_full"}``),
so a sink that is slow or down costs requests nothing but drops. A thread per serving process,
started on the first :func:`record` in that process (threads do not survive ``fork``: a
preloading Gunicorn master, which never answers, never starts one), turns the queued requests
into events and delivers them.

The events follow the CloudEvents 1.0 core specification
(https://github.com/cloudevents/spec/blob/v1.0.2/cloudevents/spec.md) in its JSON format
(``json-format.md``): ``specversion``, ``id`` (the request id, shared by the request and its
response, which their ``type`` tells apart, as KServe's inference logger does), ``source``
(``/v1/models/<name>/versions/<version>``: the version that answered), ``type``
(:data:`REQUEST_TYPE`, :data:`RESPONSE_TYPE`), ``time`` (RFC 3339, UTC), ``datacontenttype``
and the extension attributes ``modelname``, ``modelversion`` and ``protocol``. The file sink
writes one event per line; the HTTP sink POSTs them in structured content mode, one event per
POST (``application/cloudevents+json``) or, with a batch size above 1, batched content mode
(``application/cloudevents-batch+json``), per the HTTP protocol binding (``http-protocol-
binding.md``, sections 3.2 and 3.3).

The events are formatted here with orjson rather than with the ``cloudevents`` package:
building and writing one event through its ``CloudEvent`` and ``JSONFormat`` took 14-15 µs
against 2-3 µs here (iris, one row; ``bench/payload.py --costs``, bench/RESULTS.md), and the
sender thread shares the CPU with the requests. The tests read every event back with that package.
"""

from __future__ import annotations

import atexit
import fcntl
import http.client
import logging
import os
import random
import ssl
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple, Protocol
from urllib.parse import urlsplit

import numpy as np
import orjson
import pandas as pd

from inference_app import metrics
from inference_app.config import ENV_PREFIX, ConfigError
from inference_app.core.bundle import Bundle
from inference_app.core.dataplane import InferenceResult

logger = logging.getLogger(__name__)

REQUEST_TYPE = "org.inference-app.request"
RESPONSE_TYPE = "org.inference-app.response"
#: Why events are dropped, the ``reason`` label of ``inference_app_payload_events_dropped_total``:
#: the queue was full when the request was answered; the sink failed (refused, timed out,
#: answered an error, or the file could not be written); the process exited before they
#: were delivered; an event could not be encoded.
DROP_REASONS = ("queue_full", "sink_error", "shutdown", "encode_error")
#: The most queued requests the sender takes at once (one file write, up to that many POSTs).
MAX_DRAIN = 256
#: Seconds between the sender's looks at the queue: one wake-up per interval, however many
#: requests (and an event's delay before it is written, at most about this).
FLUSH_INTERVAL = 0.05
#: Seconds the sender waits after a failed delivery before the next, doubled after each
#: failure up to :data:`MAX_BACKOFF`, so a sink that is down costs a few attempts a second.
MIN_BACKOFF = 0.1
MAX_BACKOFF = 5.0
#: orjson options of the events: numpy scalars as numbers, NaN and infinities as null.
JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class Queued(NamedTuple):
    """One answered request waiting to become its two events.

    :param received: when the request arrived, seconds since the epoch.
    :param answered: when its answer was ready, likewise.
    :param headers: the request headers named by ``PAYLOAD_LOG_HEADERS`` that it carried.
    """

    request_id: str
    bundle: Bundle
    result: InferenceResult
    protocol: str
    headers: dict[str, str] | None
    received: float
    answered: float


class Headers(Protocol):
    """Request headers, looked up by lower-case name: Werkzeug's case-insensitive
    ``EnvironHeaders``, or a mapping with lower-case keys (gRPC metadata)."""

    def get(self, key: str, /) -> str | None:
        """Return the header's value, ``None`` when the request has none."""


class Sink(Protocol):
    """Where events go: a file or an HTTP endpoint."""

    def open(self) -> None:
        """Prepare to deliver from this process (after fork)."""

    def chunks(self, events: list[bytes]) -> Iterator[list[bytes]]:
        """Split events into the groups :meth:`send` delivers at once."""

    def send(self, chunk: list[bytes]) -> None:
        """Deliver a group of encoded events.

        :raises OSError: the sink failed; the group is lost.
        :raises http.client.HTTPException: likewise, for an HTTP sink.
        """

    def describe(self) -> str:
        """Name the sink for log lines."""


class FileSink:
    """Append events as JSON lines to one file that several processes share, rotated by size.

    Every process opens the file with ``O_APPEND`` and writes whole lines with one
    ``write()`` per group, holding an exclusive ``flock`` on ``<path>.lock``: lines of several
    Gunicorn workers never interleave. Under the same lock a writer reopens the file if
    another process rotated it, fills it with whole lines up to ``max_bytes`` and rotates it
    when the next line would not fit: ``<path>`` becomes ``<path>.1``, ``<path>.1`` becomes
    ``<path>.2``, ..., up to ``backups`` files (the oldest is removed), like
    ``logging.handlers.RotatingFileHandler``, which is not safe across processes.

    :param max_bytes: the size past which the file is rotated, in bytes; 0: never.
    :param backups: how many rotated files to keep; 0: the full file is removed.
    """

    def __init__(self, path: str, max_bytes: int, backups: int) -> None:
        self.path = os.path.abspath(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self._fd = -1
        self._lock = -1

    def check(self) -> None:
        """Open the file and its lock file once, so a bad path stops the server at start.

        :raises ConfigError: the file cannot be opened for appending.
        """
        try:
            self.open()
        except OSError as error:
            raise ConfigError(
                f"setting PAYLOAD_LOG (environment variable {ENV_PREFIX}_PAYLOAD_LOG) names "
                f"a file that cannot be appended to: {error}"
            ) from None
        finally:
            self.close()

    def open(self) -> None:
        """Open the file and the lock file in this process."""
        self.close()
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        self._fd = os.open(self.path, flags, 0o640)
        self._lock = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def close(self) -> None:
        """Close the file and the lock file."""
        for fd in (self._fd, self._lock):
            if fd >= 0:
                os.close(fd)
        self._fd = self._lock = -1

    def chunks(self, events: list[bytes]) -> Iterator[list[bytes]]:
        """Group lines so each group fits in ``max_bytes`` (a longer line goes alone)."""
        if not self.max_bytes:
            yield events
            return
        group: list[bytes] = []
        size = 0
        for event in events:
            if group and size + len(event) + 1 > self.max_bytes:
                yield group
                group, size = [], 0
            group.append(event)
            size += len(event) + 1
        if group:
            yield group

    def send(self, chunk: list[bytes]) -> None:
        """Append ``chunk`` as lines: those that fit in the file in one write, then, if some
        do not, rotate and write them in another (a group fits in ``max_bytes``, see
        :meth:`chunks`; a single longer line goes alone into a new file).

        :raises OSError: the file cannot be written (the disk is full, it was made
            read-only).
        """
        if self._fd < 0:
            self.open()
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        try:
            self._follow()
            lines = chunk
            if self.max_bytes:
                room = self.max_bytes - os.fstat(self._fd).st_size
                fitting = 0
                for line in chunk:
                    room -= len(line) + 1
                    if room < 0:
                        break
                    fitting += 1
                if fitting < len(chunk):
                    if fitting:
                        self._write(chunk[:fitting])
                    if fitting or os.fstat(self._fd).st_size:
                        self._rotate()
                    lines = chunk[fitting:]
            self._write(lines)
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_UN)

    def _write(self, lines: list[bytes]) -> None:
        """Append whole lines in one ``write()`` (more only on a full disk or a signal)."""
        data = b"\n".join(lines) + b"\n"
        written = os.write(self._fd, data)
        while written < len(data):
            written += os.write(self._fd, data[written:])

    def describe(self) -> str:
        """Name the sink for log lines."""
        return f"file {self.path}"

    def _follow(self) -> None:
        """Reopen the file if another process rotated it (or it was removed)."""
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            self._reopen()
            return
        mine = os.fstat(self._fd)
        if (on_disk.st_ino, on_disk.st_dev) != (mine.st_ino, mine.st_dev):
            self._reopen()

    def _reopen(self) -> None:
        os.close(self._fd)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        self._fd = os.open(self.path, flags, 0o640)

    def _rotate(self) -> None:
        if self.backups:
            for index in range(self.backups - 1, 0, -1):
                older = f"{self.path}.{index}"
                if os.path.exists(older):
                    os.replace(older, f"{self.path}.{index + 1}")
            os.replace(self.path, f"{self.path}.1")
        else:
            os.unlink(self.path)
        self._reopen()


class SinkError(OSError):
    """The HTTP sink answered something other than 2xx."""


class HTTPSink:
    """POST events to an HTTP endpoint in CloudEvents structured or batched content mode.

    One keep-alive connection per process (the standard library's ``http.client``:
    ``urllib.request`` would connect anew for every POST), reopened after any failure.

    :param url: an ``http://`` or ``https://`` URL.
    :param timeout: the most seconds to connect, and then to wait for each read.
    :param batch_size: 1: one event per POST (``application/cloudevents+json``, which every
        CloudEvents receiver takes); above: up to that many per POST as a JSON array
        (``application/cloudevents-batch+json``).
    """

    def __init__(self, url: str, timeout: float, batch_size: int) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"setting PAYLOAD_LOG (environment variable {ENV_PREFIX}_PAYLOAD_LOG) must be "
                f"a file path or an http:// or https:// URL with a host; got {url!r}"
            )
        self.url = url
        self.scheme = parts.scheme
        self.host = parts.hostname
        try:
            self.port = parts.port
        except ValueError as error:
            raise ConfigError(
                f"setting PAYLOAD_LOG (environment variable {ENV_PREFIX}_PAYLOAD_LOG) has a "
                f"bad port: {error}"
            ) from None
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.timeout = timeout
        self.batch_size = batch_size
        self._connection: http.client.HTTPConnection | None = None

    def open(self) -> None:
        """Forget any connection inherited from another process."""
        self._connection = None

    def close(self) -> None:
        """Close the connection."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def chunks(self, events: list[bytes]) -> Iterator[list[bytes]]:
        """Group events by ``batch_size``."""
        for start in range(0, len(events), self.batch_size):
            yield events[start : start + self.batch_size]

    def send(self, chunk: list[bytes]) -> None:
        """POST one event, or a batch of them.

        :raises OSError: the sink refused the connection, timed out, or answered non-2xx.
        :raises http.client.HTTPException: the sink broke the HTTP exchange.
        """
        if self.batch_size == 1:
            body, content_type = chunk[0], "application/cloudevents+json; charset=utf-8"
        else:
            body = b"[" + b",".join(chunk) + b"]"
            content_type = "application/cloudevents-batch+json; charset=utf-8"
        connection = self._connection or self._connect()
        try:
            connection.request(
                "POST",
                self.target,
                body=body,
                headers={"Content-Type": content_type, "Content-Length": str(len(body))},
            )
            response = connection.getresponse()
            response.read()
        except BaseException:
            self.close()
            raise
        if not 200 <= response.status < 300:
            self.close()
            raise SinkError(f"the sink answered HTTP {response.status} {response.reason}")
        if response.will_close:
            self.close()

    def describe(self) -> str:
        """Name the sink for log lines."""
        return f"HTTP sink {self.url}"

    def _connect(self) -> http.client.HTTPConnection:
        if self.scheme == "https":
            self._connection = http.client.HTTPSConnection(
                self.host, self.port, timeout=self.timeout, context=ssl.create_default_context()
            )
        else:
            self._connection = http.client.HTTPConnection(
                self.host, self.port, timeout=self.timeout
            )
        return self._connection


class PayloadLog:
    """Sample answered requests, queue them, and deliver their events from a thread.

    The queue is a ``collections.deque`` that the sender empties every
    :data:`FLUSH_INTERVAL` seconds: a request costs an append, never a lock or a thread
    switch (waking the sender for each request, as ``queue.Queue`` does, cost more than
    the encoding). With ``gthread`` workers the bound may be passed by the number of
    threads at most.

    :param sink: where the events go.
    :param sample: the fraction of requests logged, 0 to 1 (both events of each).
    :param queue_size: the most requests waiting for the sender; beyond, dropped.
    :param headers: the request headers to log (case-insensitive); none by default, so no
        API key, ``Authorization`` or client address is logged unless named here.
    :param close_timeout: the most seconds the process's exit waits for queued events.
    """

    def __init__(
        self,
        sink: Sink,
        *,
        sample: float = 1.0,
        queue_size: int = 1000,
        headers: Sequence[str] = (),
        close_timeout: float = 2.0,
    ) -> None:
        self.sink = sink
        self.sample = sample
        self.queue_size = queue_size
        self.headers = tuple(dict.fromkeys(name.lower() for name in headers))
        self.close_timeout = close_timeout
        self._pid = -1  # the process whose thread runs: none yet
        self._start_lock = threading.Lock()
        self._pending: deque[Queued] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        self._backoff = 0.0
        self._retry_at = 0.0
        self._dropped = {reason: metrics.PAYLOAD_DROPPED.labels(reason) for reason in DROP_REASONS}

    def record(
        self,
        request_id: str,
        bundle: Bundle,
        result: InferenceResult,
        *,
        protocol: str,
        headers: Headers | None = None,
        elapsed: float = 0.0,
    ) -> None:
        """Queue one answered request for logging, if sampled; see :func:`record`."""
        try:
            # Sampling, not a secret: the standard generator is the right one.
            if self.sample < 1.0 and random.random() >= self.sample:  # nosec B311
                return
            if self._pid != os.getpid():
                self._start()
            pending = self._pending
            if len(pending) >= self.queue_size:
                self._dropped["queue_full"].inc(2)
                return
            kept = None
            if self.headers and headers is not None:
                kept = {}
                for name in self.headers:
                    value = headers.get(name)
                    if value is not None:
                        kept[name] = value
            answered = time.time()
            pending.append(
                Queued(request_id, bundle, result, protocol, kept, answered - elapsed, answered)
            )
        except Exception:  # logging never fails a request
            logger.exception("payload log: could not queue request %s", request_id)

    def close(self, timeout: float | None = None) -> None:
        """Deliver what is queued within ``timeout`` seconds (default ``close_timeout``),
        stop the thread, and count what is left as dropped (``shutdown``)."""
        thread = self._thread
        if thread is None or self._pid != os.getpid():
            return
        self._stop.set()
        thread.join(self.close_timeout if timeout is None else timeout)
        left = 0
        while True:  # the thread, if still sending, and this take each request once
            try:
                self._pending.popleft()
            except IndexError:
                break
            left += 1
        if left:
            self._dropped["shutdown"].inc(2 * left)
        self._thread = None

    def _start(self) -> None:
        """Start this process's sender thread (once per process, after fork)."""
        with self._start_lock:
            if self._pid == os.getpid():
                return
            self._pending = deque()
            self._stop = threading.Event()
            self._failing, self._backoff, self._retry_at = False, 0.0, 0.0
            self.sink.open()
            for counter in self._dropped.values():
                counter.inc(0)  # every reason is exposed, at 0, once this process logs
            metrics.PAYLOAD_SENT.inc(0)
            self._thread = threading.Thread(target=self._run, name="payload-log", daemon=True)
            self._thread.start()
            if self._pid == -1:
                atexit.register(self.close)
            self._pid = os.getpid()

    def _run(self) -> None:
        """Every :data:`FLUSH_INTERVAL` seconds (or once a failed sink's backoff is over),
        deliver what is queued; once more when stopped, then return."""
        while True:
            wait = max(FLUSH_INTERVAL, self._retry_at - time.monotonic())
            stopping = self._stop.wait(wait)
            self._flush()
            if stopping:
                return

    def _flush(self) -> None:
        """Deliver the queued requests in groups of up to :data:`MAX_DRAIN`.

        While the sink is failing, only one request is tried (encoded and sent) after each
        backoff and the others stay queued: a sink that is down or stalled costs one
        request's encoding per try, the requests beyond the full queue cost nothing.
        """
        pending = self._pending
        while pending:
            batch: list[Queued] = []
            size = 1 if self._failing else MAX_DRAIN
            while len(batch) < size:
                try:
                    batch.append(pending.popleft())
                except IndexError:
                    break
            self._deliver(self._encode(batch))
            if self._failing:
                return

    def _encode(self, batch: list[Queued]) -> list[bytes]:
        events: list[bytes] = []
        for queued in batch:
            try:
                events.extend(encode(queued))
            except Exception:  # a bug here loses this request's events, not the thread
                logger.exception("payload log: could not encode request %s", queued.request_id)
                self._dropped["encode_error"].inc(2)
        return events

    def _deliver(self, events: list[bytes]) -> None:
        """Send the events group by group; on the first failure, drop the rest of them
        (``sink_error``) and back off: :data:`MIN_BACKOFF` seconds, doubled after each
        failure in a row up to :data:`MAX_BACKOFF`."""
        delivered = 0
        for chunk in self.sink.chunks(events):
            try:
                self.sink.send(chunk)
            except (OSError, http.client.HTTPException) as error:
                self._dropped["sink_error"].inc(len(events) - delivered)
                self._backoff = min(max(2 * self._backoff, MIN_BACKOFF), MAX_BACKOFF)
                self._retry_at = time.monotonic() + self._backoff
                if not self._failing:
                    self._failing = True
                    logger.warning(
                        "payload log: the %s failed (%s: %s); events are dropped until it "
                        "answers again",
                        self.sink.describe(),
                        type(error).__name__,
                        error,
                    )
                return
            delivered += len(chunk)
            metrics.PAYLOAD_SENT.inc(len(chunk))
            if self._failing:
                self._failing = False
                logger.info("payload log: the %s answers again", self.sink.describe())
            self._backoff = 0.0


def encode(queued: Queued) -> tuple[bytes, bytes]:
    """Return the request and response events of one answered request, as JSON bytes.

    The request's ``data`` holds ``inputs``, one list per feature name of the checked rows
    (``n_samples`` values each; missing values as ``null``, datetimes as ISO 8601 strings),
    ``rows`` and, when asked, ``headers``. The response's holds ``outputs``: per method its
    ``values`` (``(n_samples,)`` or ``(n_samples, n_classes)``) and, for scores of a
    classifier, the ``classes`` of their columns; and ``rows``.
    """
    result = queued.result
    request_data: dict[str, Any] = {
        "inputs": columns(
            [feature.name for feature in queued.bundle.manifest.inputs],
            result.input.data if result.input is not None else None,
        ),
        "rows": result.rows,
    }
    if queued.headers is not None:
        request_data["headers"] = queued.headers
    outputs: dict[str, Any] = {}
    for output in result.outputs:
        described: dict[str, Any] = {"values": output.values}
        if output.classes is not None:
            described["classes"] = output.classes
        outputs[output.method] = described
    request = _event(queued, REQUEST_TYPE, queued.received, request_data)
    response = _event(
        queued, RESPONSE_TYPE, queued.answered, {"outputs": outputs, "rows": result.rows}
    )
    return (
        orjson.dumps(request, option=JSON_OPTIONS, default=_json_default),
        orjson.dumps(response, option=JSON_OPTIONS, default=_json_default),
    )


def _event(queued: Queued, kind: str, seconds: float, data: dict[str, Any]) -> dict[str, Any]:
    """Return one event: the context attributes in the specification's order, then data."""
    result = queued.result
    return {
        "specversion": "1.0",
        "id": queued.request_id,
        "source": source(result.model_name, result.model_version),
        "type": kind,
        "time": rfc3339(seconds),
        "datacontenttype": "application/json",
        "modelname": result.model_name,
        "modelversion": result.model_version,
        "protocol": queued.protocol,
        "data": data,
    }


def source(name: str, version: str) -> str:
    """Return the CloudEvents ``source`` of a model version: ``/v1/models/<name>/versions/<v>``."""
    return f"/v1/models/{name}/versions/{version}"


#: The last whole second :func:`rfc3339` formatted, and its text (one sender per process).
_second: tuple[int, str] = (-1, "")


def rfc3339(seconds: float) -> str:
    """Return a time, in seconds since the epoch, as RFC 3339 in UTC with microseconds
    (``2026-12-02T00:52:35.593840Z``; RFC 3339, section 5.6).

    The date and time of day are formatted once per second: this is half the cost of an
    event otherwise.
    """
    global _second
    whole = int(seconds)
    if _second[0] != whole:
        _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{_second[1]}.{int((seconds - whole) * 1_000_000):06d}Z"


def columns(names: Sequence[str], data: Any) -> dict[str, list[Any]]:
    """Return checked model input as one list of ``n_samples`` values per feature name.

    Values are Python's (floats, strings, ``None``) and, from a DataFrame, pandas' own
    missing values and timestamps: :func:`encode` writes NaN, ``NaT`` and ``NA`` as ``null``
    and timestamps as ISO 8601 strings (:func:`_json_default`). One ``tolist`` for the whole
    input: per-column pandas calls cost 15 times more on a one-row request.

    :param names: the model's feature names, in its order.
    :param data: a float64 array ``(n_samples, n_features)``, a 1-D object array of texts
        ``(n_samples,)``, or a DataFrame with the training columns (the three layouts of
        :class:`~inference_app.core.inputs.ModelInput`); ``None``: no input known.
    """
    if data is None:
        return {}
    if isinstance(data, np.ndarray):
        if data.ndim == 1:
            return {names[0]: data.tolist()}
        return dict(zip(names, data.T.tolist(), strict=True))
    return dict(zip(map(str, data.columns), data.to_numpy(dtype=object).T.tolist(), strict=True))


def _json_default(value: Any) -> Any:
    """Encode what orjson does not: pandas' missing values as null, timestamps as ISO 8601,
    anything else as its text."""
    if value is pd.NaT or value is pd.NA:
        return None
    isoformat = getattr(value, "isoformat", None)
    if callable(isoformat):
        return isoformat()
    return str(value)


#: The payload log of this process, set by :func:`install` (``create_app`` does).
_current: PayloadLog | None = None


def install(log: PayloadLog | None) -> None:
    """Make ``log`` the payload log :func:`record` writes to in this process; ``None``: off.

    A log replaced keeps its thread, if it started one, until the process exits (it delivers
    what it queued then, see :meth:`PayloadLog.close`).
    """
    global _current
    _current = log


def current() -> PayloadLog | None:
    """Return this process's payload log, ``None`` when payload logging is off."""
    return _current


def record(
    request_id: str,
    bundle: Bundle,
    result: InferenceResult,
    *,
    protocol: str,
    headers: Headers | None = None,
    elapsed: float = 0.0,
) -> None:
    """Log one answered inference as its request and response events, if logging is on and
    the request is sampled. Never raises and never blocks: a full queue drops the pair.

    Call it from any transport once the answer is ready.

    :param request_id: the request's id (``X-Request-ID``): the events' ``id``.
    :param bundle: the bundle that answered (its features name the inputs).
    :param result: the dataplane's answer, with its checked input.
    :param protocol: ``native``, ``v2``, ``mlflow``, ``grpc``: the ``protocol`` attribute.
    :param headers: the request's headers, looked up by lower-case name (a case-insensitive
        mapping, or one with lower-case keys such as gRPC metadata); only those named by
        ``PAYLOAD_LOG_HEADERS`` are logged.
    :param elapsed: seconds from the request's arrival to now: the request event's ``time``
        is that long before the response's.
    """
    log = _current
    if log is not None:
        log.record(request_id, bundle, result, protocol=protocol, headers=headers, elapsed=elapsed)


def from_settings(settings: Mapping[str, Any]) -> PayloadLog | None:
    """Return the payload log the settings ask for, ``None`` when ``PAYLOAD_LOG`` is unset.

    :raises ConfigError: ``PAYLOAD_LOG`` is a URL of another scheme, or a file that cannot
        be appended to.
    """
    target = settings["PAYLOAD_LOG"]
    if not target:
        return None
    timeout = settings["PAYLOAD_LOG_TIMEOUT_MS"] / 1000
    sink: Sink
    if "://" in target:
        sink = HTTPSink(target, timeout, settings["PAYLOAD_LOG_BATCH_SIZE"])
    else:
        file_sink = FileSink(
            target, settings["PAYLOAD_LOG_MAX_BYTES"], settings["PAYLOAD_LOG_BACKUPS"]
        )
        file_sink.check()
        sink = file_sink
    return PayloadLog(
        sink,
        sample=float(settings["PAYLOAD_LOG_SAMPLE"]),
        queue_size=settings["PAYLOAD_LOG_QUEUE_SIZE"],
        headers=settings["PAYLOAD_LOG_HEADERS"],
        close_timeout=timeout + 1.0,
    )
