"""Process-level hooks under Gunicorn: thread caps and warm-up in workers, reload in the master."""

from __future__ import annotations

import atexit
import gc
import logging
import os
import sys
import threading
import time
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NoReturn

from threadpoolctl import threadpool_limits

if TYPE_CHECKING:
    from flask import Flask

# The serving modules (Flask app, metrics, monitoring) are imported by the hooks that use
# them: `inference-app score` imports this module for its CPU count and thread cap only.

#: Environment variables read by native thread pools that start after the cap is set.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def available_cpus(cgroup_root: str = "/sys/fs/cgroup") -> int:
    """Return the CPUs this process may use: its affinity, capped by a cgroup CPU quota
    (v2 ``cpu.max``, or v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), at least 1."""
    cpus = len(os.sched_getaffinity(0))
    root = Path(cgroup_root)
    candidates = [(root / "cpu.max", None)] + [
        (root / folder / "cpu.cfs_quota_us", root / folder / "cpu.cfs_period_us")
        for folder in ("cpu", "cpu,cpuacct")
    ]
    for quota_file, period_file in candidates:
        try:
            if period_file is None:
                quota, period = quota_file.read_text().split()[:2]
            else:
                quota, period = quota_file.read_text().strip(), period_file.read_text().strip()
        except (OSError, ValueError):
            continue
        if quota not in ("max", "-1") and int(period) > 0:
            cpus = min(cpus, int(quota) // int(period))
        break
    return max(1, cpus)


def cpu_share(workers: int) -> int:
    """Return the CPUs one of ``workers`` processes may use: its share of
    :func:`available_cpus`, at least 1."""
    return max(1, available_cpus() // max(1, workers))


def cap_threads(threads: int) -> None:
    """Cap OpenMP and BLAS thread pools of this process to ``threads``.

    Applies to pools already loaded (threadpoolctl) and to those that start later
    (``OMP_NUM_THREADS`` and friends).
    """
    for name in THREAD_ENV_VARS:
        os.environ[name] = str(threads)
    threadpool_limits(limits=threads)


def share_engines(app: Flask, workers: int) -> bool:
    """Make the app's engines in this (master) process before it forks ``workers`` workers,
    so that their onnxruntime sessions are shared copy-on-write instead of made once per
    worker; only when each worker's share of the CPUs is one thread (:func:`cpu_share`),
    since a session with more threads starts a thread pool, which ``fork`` does not copy.

    :returns: whether the engines were made here.
    :raises inference_app.core.errors.BundleError: an engine cannot be made.
    """
    from inference_app.http.api import EXTENSION, Services

    if cpu_share(workers) != 1:
        return False
    cap_threads(1)
    services: Services = app.extensions[EXTENSION]
    services.dataplane.prepare_engines()
    return True


#: Seconds a threaded worker waits after accepting a connection, per connection it holds
#: beyond half its threads, and at most: time for a sibling worker to accept the next ones.
SPREAD_PAUSE_S = 0.0005
SPREAD_MAX_PAUSE_S = 0.005


def spread_connections(worker: Any) -> None:
    """Make a Gunicorn gthread ``worker`` leave new connections to its siblings when it
    already holds more connections than half its threads.

    The workers share one listening socket and a gthread worker accepts every connection it
    is woken for, so a burst of new connections (a client pool opening, a load generator
    starting) can land on a single worker while the others idle; kept alive, they stay
    there. After each accept, a worker holding ``n`` connections more than half its threads
    pauses ``n`` x :data:`SPREAD_PAUSE_S` (at most :data:`SPREAD_MAX_PAUSE_S`) before it
    accepts again; its threads go on serving meanwhile. Unlike ``SO_REUSEPORT`` (one socket
    per worker), no connection waits in a stopping worker's queue, so none is reset on HUP.
    Sync workers accept one connection at a time and need none of this.
    """
    accept = worker.accept
    free = max(1, worker.cfg.threads // 2)

    def spreading_accept(listener: Any) -> None:
        accept(listener)
        excess = worker.nr_conns - free
        if excess > 0:
            time.sleep(min(SPREAD_MAX_PAUSE_S, excess * SPREAD_PAUSE_S))

    worker.accept = spreading_accept


def leave(status: object = 0) -> NoReturn:
    """End this process the way :mod:`multiprocessing` ends the children it forks: join the
    threads and run the exit functions (``atexit``: the payload log's last delivery,
    ``logging``'s flush), then ``os._exit``, skipping the interpreter's teardown and the C and
    C++ destructors that run at ``exit()``.

    A process forked after ``import onnxruntime`` must end this way: onnxruntime starts a
    thread when it is imported and joins it at ``exit()``, and in the child, which has no such
    thread, the join never returns (a Gunicorn worker hung until the master killed it at
    ``graceful_timeout``, 30 s, on every stop and reload). The teardown also frees every
    module's objects one by one, 0.2 s of an ``inference-app score`` job.

    :param status: what ``sys.exit`` takes: ``None`` or an int, or anything else, written to
        stderr, for status 1.
    """
    threading._shutdown()  # type: ignore[attr-defined]  # what multiprocessing calls
    atexit._run_exitfuncs()
    logging.shutdown()
    if status is None:
        status = 0
    elif not isinstance(status, int):
        print(status, file=sys.stderr)
        status = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more to say
            pass
    os._exit(status)


def warm_up(app: Flask) -> None:
    """Run each model once on its reference rows in this process, making it ready.

    :raises inference_app.core.errors.BundleError: a model fails on its reference rows.
    """
    from inference_app import metrics, monitoring
    from inference_app.http.api import EXTENSION, Services

    services: Services = app.extensions[EXTENSION]
    services.dataplane.warm_up()
    metrics.record_served(services.registry)
    monitoring.record_reference(app, services.registry)


def reload(holder: Any) -> tuple[bool, str]:
    """Rebuild the app in the Gunicorn master on SIGHUP, keeping the old one on failure.

    A new app is created from the instance folder: every bundle is read and verified
    (sha256, manifest against estimator), nothing is predicted. On success it replaces the
    app that Gunicorn forks new workers from; on failure the old app stays, with the reason
    in its registry's ``load_errors`` (shown by ``GET /v1/models/<name>``).

    :param holder: Gunicorn's application object (``server.app``), whose ``callable`` is
        the preloaded Flask app.
    :returns: whether the new models are in place, and a sentence saying what happened.
    """
    from inference_app import create_app, metrics
    from inference_app.config import ConfigError
    from inference_app.core.errors import BundleError, RefusedBundlesError
    from inference_app.http.api import EXTENSION

    old: Flask = holder.wsgi()
    try:
        new = create_app(instance_path=old.instance_path)
    except (BundleError, ConfigError) as error:
        metrics.RELOADS.labels("failure").inc()
        if isinstance(error, RefusedBundlesError):  # shown with the models that keep serving
            old.extensions[EXTENSION].registry.load_errors = MappingProxyType(error.by_model)
        return False, f"reload failed, the previous models keep serving: {error}"
    holder.callable = new
    metrics.RELOADS.labels("success").inc()
    # The old app's objects were frozen before the last fork; let the collector have them.
    gc.unfreeze()
    gc.collect()
    models = ", ".join(
        f"{m.name} {m.default_version}" for m in new.extensions[EXTENSION].registry.models.values()
    )
    return True, f"reloaded models: {models or 'none'}"
