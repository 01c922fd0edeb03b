"""Metric values for prometheus-client: mmap'ed files read through a memoryview, batched writes.

prometheus-client keeps each sample of a metric in a value object of
``prometheus_client.values.ValueClass``; :func:`install` replaces that class with
:class:`Value`, so every series of :mod:`inference_app.metrics` lives here:

- in multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set, as under Gunicorn), in this process's
  files of that folder, in prometheus-client's own file format and names (``counter_<pid>.db``,
  ``histogram_<pid>.db``, ``gauge_<mode>_<pid>.db``; ``prometheus_client.mmap_dict``: a 4-byte
  used length, 4 bytes of padding, then per sample a 4-byte key length, the UTF-8 key padded
  to 8 bytes and two doubles, the value and a timestamp), so its ``MultiProcessCollector``
  merges them with every other process's, exactly as it merges its own;
- otherwise, in an array of doubles in memory.

What differs from prometheus-client's own value classes is the cost of a write: a value is a
slot of a ``memoryview`` of doubles over the file's mapping, so adding to it is one indexed
add, and :func:`add` writes many under one lock acquisition (a request's dozen or more).
Each process writes only its own files, under one lock; a reader sees every value whole (an
8-byte aligned store). After a ``fork`` the child's first access opens its own files (at 0),
as prometheus-client does; the parent's keep the parent's counts. (A fork is noticed through
``os.register_at_fork``, so at no cost per write: a process forked from C without Python's
fork hooks, then writing metrics without exec, would not be noticed.)
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
from array import array
from collections.abc import Iterable
from typing import Any

from prometheus_client import values as prometheus_values
from prometheus_client.mmap_dict import MmapedDict, mmap_key

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: The size a new file starts at (prometheus-client's own), doubled whenever it is full.
INITIAL_SIZE = 1 << 16
_HEADER = struct.Struct("i")
_ENTRY_HEAD = struct.Struct("i")

_lock = threading.Lock()
#: The pid the open files belong to (``None``: none opened yet).
_pid: list[int | None] = [None]
#: Whether this process may be a fork whose values are not moved yet (set at each fork).
_forked = [True]
#: Whether values go to files: decided by :func:`install`, as prometheus-client decides it
#: when it is imported; the folder is read when a file is opened.
_in_files = [False]
_files: dict[str, _File] = {}
_values: list[Value] = []


class _File:
    """One process's samples of one file type, in prometheus-client's file format.

    :param path: the file, created (at :data:`INITIAL_SIZE`) if absent; the samples an
        existing one holds (a pid used again) are kept, as prometheus-client keeps them.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.slots: dict[str, int] = {}
        self._handle = open(path, "a+b")  # noqa: SIM115 - closed by close()
        size = os.fstat(self._handle.fileno()).st_size
        if size == 0:
            size = INITIAL_SIZE
            self._handle.truncate(size)
        self._map = mmap.mmap(self._handle.fileno(), size, access=mmap.ACCESS_WRITE)
        #: The file as doubles: the value of the sample at byte ``p`` is ``values[p // 8]``.
        self.values: memoryview[float] = memoryview(self._map).cast("d")
        self._used: int = _HEADER.unpack_from(self._map, 0)[0]
        if self._used == 0:
            self._used = 8
            self._map[0:4] = _HEADER.pack(self._used)
        else:
            for key, _, _, position in MmapedDict.read_all_values_from_file(path):  # type: ignore[no-untyped-call]
                self.slots[key] = position // 8

    def slot(self, key: str) -> int:
        """Return the slot of ``key``'s value, adding the sample (at 0) if it is new."""
        slot = self.slots.get(key)
        if slot is not None:
            return slot
        encoded = key.encode("utf-8")
        padded = encoded + b" " * (8 - (len(encoded) + 4) % 8)  # as prometheus-client pads
        entry = _ENTRY_HEAD.pack(len(encoded)) + padded + bytes(16)
        while self._used + len(entry) > len(self._map):
            self._grow()
        start = self._used
        self._map[start : start + len(entry)] = entry
        self._used += len(entry)
        self._map[0:4] = _HEADER.pack(self._used)  # after the entry: readers see it whole
        slot = self.slots[key] = (self._used - 16) // 8
        return slot

    def _grow(self) -> None:
        size = len(self._map) * 2
        self.values.release()
        self._map.close()
        self._handle.truncate(size)
        self._map = mmap.mmap(self._handle.fileno(), size, access=mmap.ACCESS_WRITE)
        self.values = memoryview(self._map).cast("d")

    def close(self) -> None:
        """Unmap and close the file (it stays on disk)."""
        self.values.release()
        self._map.close()
        self._handle.close()


class _Memory:
    """The samples of a process without a metrics folder: one slot per value object."""

    def __init__(self) -> None:
        self.values: array[float] = array("d")

    def slot(self, key: str) -> int:
        """Return a new slot at 0 (each value object has its own, as prometheus-client's)."""
        self.values.append(0.0)
        return len(self.values) - 1

    def close(self) -> None:
        """Nothing to close."""


class Value:
    """A sample's value, in the interface of ``prometheus_client.values.ValueClass``.

    Arguments as prometheus-client passes them: the metric type (``counter``, ``gauge``,
    ``histogram``, ``summary``), the metric's name, the sample's name, the label names and
    values, the help text and, for gauges, the multiprocess mode (``livesum``, ``max``, ...).

    :attr:`store` holds the value at :attr:`slot` of its ``values``: the value is
    ``value.store.values[value.slot]`` (and, in a file, its timestamp the next slot).
    """

    def __init__(
        self,
        typ: str,
        metric_name: str,
        name: str,
        labelnames: Iterable[str],
        labelvalues: Iterable[str],
        help_text: str,
        multiprocess_mode: str = "",
        **kwargs: Any,
    ) -> None:
        self._prefix = f"gauge_{multiprocess_mode}" if typ == "gauge" else typ
        self._key = mmap_key(metric_name, name, list(labelnames), list(labelvalues), help_text)
        self._exemplar: Any = None
        with _lock:
            if _forked[0]:
                _check_pid()
            self._place()
            _values.append(self)

    def _place(self) -> None:
        """Find (or add) this value's slot in this process's store. Lock held."""
        self.store = _store(self._prefix)
        self.slot = self.store.slot(self._key)

    def inc(self, amount: float) -> None:
        """Add ``amount`` (negative to subtract)."""
        with _lock:
            if _forked[0]:
                _check_pid()
            self.store.values[self.slot] += amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        """Set the value (and, in a file, its timestamp: seconds since the epoch, or 0)."""
        with _lock:
            if _forked[0]:
                _check_pid()
            store = self.store
            store.values[self.slot] = value
            if isinstance(store, _File):
                store.values[self.slot + 1] = timestamp or 0.0

    def get(self) -> float:
        """Return the value."""
        with _lock:
            if _forked[0]:
                _check_pid()
            return float(self.store.values[self.slot])

    def set_exemplar(self, exemplar: Any) -> None:
        """Keep an exemplar in memory; prometheus-client's files have no place for one."""
        if not isinstance(self.store, _File):
            self._exemplar = exemplar

    def get_exemplar(self) -> Any:
        """Return the exemplar kept, or ``None``."""
        return self._exemplar


def add(pairs: Iterable[tuple[Value, float]]) -> None:
    """Add each ``amount`` to its value, under one lock acquisition.

    :param pairs: ``(value, amount)`` pairs; a value may appear more than once.
    """
    with _lock:
        if _forked[0]:
            _check_pid()
        for value, amount in pairs:
            value.store.values[value.slot] += amount


def _store(prefix: str) -> _File | _Memory:
    """Return this process's store for ``prefix``, opened on first use. Lock held."""
    if not _in_files[0]:
        return _MEMORY
    store = _files.get(prefix)
    if store is None:
        folder = os.environ[MULTIPROC_ENV]
        store = _files[prefix] = _File(os.path.join(folder, f"{prefix}_{_pid[0]}.db"))
    return store


def _check_pid() -> None:
    """After a fork, move every value to this process's own files. Lock held."""
    pid = os.getpid()
    _forked[0] = False
    if _pid[0] == pid:
        return
    forked = _pid[0] is not None
    _pid[0] = pid
    if not forked or not _in_files[0]:
        return  # first use, or in memory: a forked child's copy is its own
    for store in _files.values():
        store.close()
    _files.clear()
    for value in _values:
        value._place()


def _after_fork_in_child() -> None:
    """Make :func:`add` move the values on its next call, and renew the lock (one that
    another thread held at the fork would never be released in the child)."""
    global _lock
    _lock = threading.Lock()
    _forked[0] = True


def install() -> None:
    """Make :class:`Value` prometheus-client's value class for the metrics made from now on:
    in files if ``PROMETHEUS_MULTIPROC_DIR`` is set now, else in memory."""
    _in_files[0] = bool(os.environ.get(MULTIPROC_ENV))
    prometheus_values.ValueClass = Value


_MEMORY = _Memory()
os.register_at_fork(after_in_child=_after_fork_in_child)
