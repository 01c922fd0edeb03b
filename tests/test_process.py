"""Per-worker process setup: the CPUs a worker may use, from affinity and cgroup quotas."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from inference_app.process import available_cpus, cpu_share

AFFINITY = len(os.sched_getaffinity(0))


def write(root: Path, files: dict[str, str]) -> Path:
    """Write a fake cgroup folder."""
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({}, AFFINITY),
        ({"cpu.max": "max 100000\n"}, AFFINITY),
        ({"cpu.max": "100000 100000\n"}, 1),
        ({"cpu.max": "50000 100000"}, 1),  # half a CPU: at least one
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, AFFINITY),
        ({"cpu,cpuacct/cpu.cfs_quota_us": "100000", "cpu,cpuacct/cpu.cfs_period_us": "100000"}, 1),
        ({"cpu.max": "6400000 100000"}, AFFINITY),  # a quota above the affinity changes nothing
    ],
)
def test_available_cpus_follow_the_quota(
    tmp_path: Path, files: dict[str, str], expected: int
) -> None:
    assert available_cpus(str(write(tmp_path, files))) == expected


def test_each_worker_gets_its_share_and_at_least_one() -> None:
    assert cpu_share(1) == available_cpus()
    assert cpu_share(10_000) == 1
