#!/usr/bin/env bash
# Container entry point: size Gunicorn to the container's CPU quota, then start it.
#
# With no arguments it runs `gunicorn -c gunicorn.conf.py wsgi:app`; with arguments it runs
# them instead (`docker run IMAGE inference-app models`), with the same environment.
#
# GUNICORN_WORKERS, when unset, becomes the CPUs the container may use: its CFS quota
# (cgroup v2 cpu.max, or cgroup v1 cpu.cfs_quota_us / cpu.cfs_period_us) rounded down, capped
# by the CPUs it may run on (nproc), and at least 1. A pod with `limits.cpu: 2` gets 2 workers
# whatever the size of the node.
#
#   CGROUP_ROOT         where the cgroup filesystem is mounted (default /sys/fs/cgroup)
#   ENTRYPOINT_DRY_RUN  if 1, print GUNICORN_WORKERS and the command instead of running it
set -euo pipefail

CGROUP_ROOT="${CGROUP_ROOT:-/sys/fs/cgroup}"

# Print the whole CPUs allowed by the CFS quota, or nothing when there is no quota.
quota_cpus() {
    local quota="" period=""
    if [[ -r "$CGROUP_ROOT/cpu.max" ]]; then
        read -r quota period <"$CGROUP_ROOT/cpu.max" || true
    else
        local dir
        for dir in "$CGROUP_ROOT/cpu" "$CGROUP_ROOT/cpu,cpuacct"; do
            if [[ -r "$dir/cpu.cfs_quota_us" && -r "$dir/cpu.cfs_period_us" ]]; then
                read -r quota <"$dir/cpu.cfs_quota_us" || true
                read -r period <"$dir/cpu.cfs_period_us" || true
                break
            fi
        done
    fi
    # "max" (v2) and -1 (v1) mean no quota; anything but two positive integers is ignored.
    if [[ "$quota" =~ ^[0-9]+$ && "$period" =~ ^[0-9]+$ ]] && ((quota > 0 && period > 0)); then
        echo $((quota / period))
    fi
}

# Print the CPUs this process may run on (its affinity); OMP_* would make nproc report those.
affinity_cpus() {
    env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc
}

worker_count() {
    local cpus quota
    cpus="$(affinity_cpus)"
    quota="$(quota_cpus)"
    if [[ -n "$quota" ]] && ((quota < cpus)); then
        cpus="$quota"
    fi
    echo $((cpus > 1 ? cpus : 1))
}

if [[ -z "${GUNICORN_WORKERS:-}" ]]; then
    GUNICORN_WORKERS="$(worker_count)"
fi
export GUNICORN_WORKERS

if (($# == 0)); then
    set -- gunicorn -c gunicorn.conf.py wsgi:app
fi

if [[ "${ENTRYPOINT_DRY_RUN:-0}" == 1 ]]; then
    echo "GUNICORN_WORKERS=$GUNICORN_WORKERS"
    echo "$*"
    exit 0
fi
exec "$@"
