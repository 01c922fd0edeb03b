"""Adaptive request batching: concurrent calls for one model, version and method become one.

With threaded workers, each request's thread brings its checked rows here. While an
estimator call for a key runs, the requests that arrive for that key gather into the next
batch; when the call ends (or after ``max_latency`` at most), the first of them calls the
estimator once on all their rows and splits the output back by rows. A request that finds no
call running goes at once, so batching adds no latency at low load and merges more as load
grows. No background thread is involved, so nothing needs care across ``fork``. When a
merged call fails, each request's rows are run alone, so one request's failure never fails
another.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inference_app.core.inputs import concat

#: The call batching wraps: ``execute(bundle, method, rows) -> outputs``, where rows are a
#: model input (a float64 matrix, a DataFrame or a 1-D array) of ``n_samples`` rows.
Execute = Callable[[Any, str, Any], np.ndarray]


@dataclass
class _Entry:
    """One request's rows and, once the batch ran, its outputs or its error."""

    matrix: Any
    done: threading.Event = field(default_factory=threading.Event)
    result: np.ndarray | None = None
    error: BaseException | None = None


@dataclass
class _Batch:
    """Requests gathered for one key, still open to more while ``open``."""

    entries: list[_Entry] = field(default_factory=list)
    rows: int = 0
    open: bool = True


class Batcher:
    """Merge concurrent estimator calls.

    :param execute: the estimator call, ``(bundle, method, matrix) -> outputs`` with outputs'
        first dimension ``n_samples``.
    :param max_rows: the most rows one merged call may hold.
    :param max_latency: the longest a request waits for a running call, in seconds.
    :param on_batch: called with the number of requests and rows of each merged call.
    """

    def __init__(
        self,
        execute: Execute,
        *,
        max_rows: int,
        max_latency: float,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> None:
        self._execute = execute
        self.max_rows = max_rows
        self.max_latency = max_latency
        self._on_batch = on_batch
        self._changed = threading.Condition()
        self._open: dict[tuple[int, str], _Batch] = {}
        self._running: dict[tuple[int, str], int] = {}

    def run(self, bundle: Any, method: str, matrix: Any) -> np.ndarray:
        """Return ``method``'s outputs for ``matrix``, computed alone or with other requests.

        :param matrix: checked rows, ``n_samples`` of them, in the bundle's layout.
        :raises Exception: whatever the estimator raises on these rows.
        """
        if len(matrix) >= self.max_rows:
            return self._execute(bundle, method, matrix)
        key = (id(bundle), method)
        entry = _Entry(matrix)
        with self._changed:
            batch = self._open.get(key)
            leader = batch is None or batch.rows + len(matrix) > self.max_rows
            if batch is None or leader:
                batch = self._open[key] = _Batch()
            batch.entries.append(entry)
            batch.rows += len(matrix)
            self._changed.notify_all()
            if leader:
                self._gather(key, batch)
        if leader:
            self._compute(key, batch, bundle, method)
        else:
            entry.done.wait()
        if entry.error is not None:
            raise entry.error
        if entry.result is None:  # every path above sets one or the other
            raise RuntimeError("a batched request ended without a result")
        return entry.result

    def _gather(self, key: tuple[int, str], batch: _Batch) -> None:
        """While a call for ``key`` runs, let requests join ``batch``; then close it."""
        deadline = time.monotonic() + self.max_latency
        while self._running.get(key) and batch.rows < self.max_rows:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._changed.wait(remaining)
        batch.open = False
        if self._open.get(key) is batch:
            del self._open[key]
        self._running[key] = self._running.get(key, 0) + 1

    def _compute(self, key: tuple[int, str], batch: _Batch, bundle: Any, method: str) -> None:
        entries = batch.entries
        try:
            if self._on_batch is not None:
                self._on_batch(len(entries), batch.rows)
            if len(entries) == 1:
                entries[0].result = self._execute(bundle, method, entries[0].matrix)
            else:
                outputs = self._execute(bundle, method, concat([entry.matrix for entry in entries]))
                bounds = np.cumsum([len(entry.matrix) for entry in entries])[:-1]
                for entry, part in zip(entries, np.split(outputs, bounds), strict=True):
                    entry.result = part
        except Exception:  # one request's rows may be at fault: run each alone
            for entry in entries:
                try:
                    entry.result = self._execute(bundle, method, entry.matrix)
                except Exception as error:  # this request's own error, raised in its thread
                    entry.error = error
        finally:
            with self._changed:
                self._running[key] -= 1
                if not self._running[key]:
                    del self._running[key]
                self._changed.notify_all()
            for entry in entries:
                entry.done.set()
