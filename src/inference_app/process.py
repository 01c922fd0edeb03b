"""Per-worker setup under a pre-forking server: native thread caps and model warm-up."""

from __future__ import annotations

import os

from flask import Flask
from threadpoolctl import threadpool_limits

from inference_app.http.api import EXTENSION, Services

#: Environment variables read by native thread pools that start after the cap is set.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def cpu_share(workers: int) -> int:
    """Return the CPUs one of ``workers`` processes may use: its share of this process's CPU
    affinity, at least 1."""
    return max(1, len(os.sched_getaffinity(0)) // max(1, workers))


def cap_threads(threads: int) -> None:
    """Cap OpenMP and BLAS thread pools of this process to ``threads``.

    Applies to pools already loaded (threadpoolctl) and to those that start later
    (``OMP_NUM_THREADS`` and friends).
    """
    for name in THREAD_ENV_VARS:
        os.environ[name] = str(threads)
    threadpool_limits(limits=threads)


def warm_up(app: Flask) -> None:
    """Run each model once on its reference rows in this process, making it ready.

    :raises inference_app.core.errors.BundleError: a model fails on its reference rows.
    """
    services: Services = app.extensions[EXTENSION]
    services.runtime.warm_up()
