#!/usr/bin/env bash
# Compare in-worker prediction with a dirty-arbiter model pool (see dirty_pool.py).
# Needs `make bench` to have run once (bench/work/instance*/models and wrk). Loopback only.
set -euo pipefail
cd "$(dirname "$0")"
BIN=../../.venv/bin
MODELS=${BENCH_MODELS_DIR:-$(cd ../work/instance/models && pwd)}
SECONDS_EACH=${BENCH_SECONDS:-5}
body_iris='{"instances": [[5.1, 3.5, 1.4, 0.2]]}'
body_bc=$(../../.venv/bin/python -c "
from inference_app.demo import load_demo_data; import json
print(json.dumps({'instances': load_demo_data('breast_cancer')[0][:1].tolist()}))")
measure() {  # name port model body connections
    printf 'wrk.method = "POST"\nwrk.body = [==[%s]==]\nwrk.headers["Content-Type"] = "application/json"\n' "$4" > /tmp/dirty_body.lua
    wrk -t2 -c"$5" -d"${SECONDS_EACH}s" --latency -s /tmp/dirty_body.lua "http://127.0.0.1:$2/$3" \
        | awk -v n="$1 $3 c=$5" '/Requests\/sec/ {rps=$2} /^ +50%/ {p50=$2} /^ +99%/ {p99=$2}
            END {printf "%-24s %-14s req/s %8s  p50 %8s  p99 %8s\n", n, "", rps, p50, p99}'
}
run() {  # name app port extra-args...
    local name=$1 app=$2 port=$3; shift 3
    BENCH_MODELS_DIR=$MODELS timeout 300 "$BIN/gunicorn" --bind "127.0.0.1:$port" --workers 2 \
        --worker-class gthread --threads 4 --no-control-socket "$@" "dirty_pool:$app" \
        > "/tmp/dirty_$name.log" 2>&1 &
    local pid=$!
    for _ in $(seq 1 100); do
        curl -sf -X POST -H 'Content-Type: application/json' -d "$body_iris" \
            "http://127.0.0.1:$port/iris" > /dev/null 2>&1 && break
        sleep 0.2
    done
    for c in 8 64; do
        measure "$name" "$port" iris "$body_iris" "$c"
        measure "$name" "$port" breast_cancer "$body_bc" "$c"
    done
    kill "$pid"; wait "$pid" 2>/dev/null || true
}
run in-worker direct 18081
run dirty-pool pooled 18082 --dirty-app dirty_pool:ModelPool --dirty-workers 1 --dirty-threads 8
