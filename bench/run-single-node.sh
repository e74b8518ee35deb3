#!/usr/bin/env bash
# Single-node cartdb benchmark on loopback: build, start a 1-node dev cluster on 127.0.0.1:17401
# with a throw-away data dir, run the `add` profile, stop the cluster.
#
#   DURATION=20 CONCURRENCY=64 bench/run-single-node.sh [extra cart-bench flags…]
#
# The report goes to bench/results/single-node-add.json (ignored by git). The cluster is stopped
# with SIGTERM and the data dir removed on every exit path, failures included.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PORT=17401
DURATION="${DURATION:-20}"
CONCURRENCY="${CONCURRENCY:-64}"
JSON=bench/results/single-node-add.json
READY_TIMEOUT_S=60
STOP_TIMEOUT_S=30

CLUSTER_PID=""
DATA_DIR=""

port_answers() {
    # bash's /dev/tcp: succeeds when something accepts a TCP connection on the port.
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null
}

cleanup() {
    local status=$?
    if [[ -n "$CLUSTER_PID" ]] && kill -0 "$CLUSTER_PID" 2>/dev/null; then
        echo "stopping the dev cluster (pid $CLUSTER_PID) with SIGTERM"
        kill -TERM "$CLUSTER_PID" 2>/dev/null || true
        local waited=0
        while kill -0 "$CLUSTER_PID" 2>/dev/null && (( waited < STOP_TIMEOUT_S * 10 )); do
            sleep 0.1
            waited=$((waited + 1))
        done
        if kill -0 "$CLUSTER_PID" 2>/dev/null; then
            echo "dev cluster did not stop within ${STOP_TIMEOUT_S}s; sending SIGKILL" >&2
            kill -KILL "$CLUSTER_PID" 2>/dev/null || true
        fi
        wait "$CLUSTER_PID" 2>/dev/null || true
    fi
    if [[ -n "$DATA_DIR" && -d "$DATA_DIR" ]]; then
        rm -rf -- "$DATA_DIR"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

cargo build --release -p cart-node -p cart-bench

if port_answers; then
    echo "something already listens on 127.0.0.1:$PORT; refusing to benchmark it" >&2
    exit 1
fi

DATA_DIR="$(mktemp -d)"
LOG="$DATA_DIR/dev.log"
target/release/cartd dev --nodes 1 --base-port "$PORT" --data-dir "$DATA_DIR" >"$LOG" 2>&1 &
CLUSTER_PID=$!

waited=0
until grep -q 'cartdb dev cluster up:' "$LOG" && port_answers; do
    if ! kill -0 "$CLUSTER_PID" 2>/dev/null; then
        echo "the dev cluster exited before it was up; its output:" >&2
        cat "$LOG" >&2
        exit 1
    fi
    if (( waited >= READY_TIMEOUT_S * 10 )); then
        echo "the dev cluster was not up after ${READY_TIMEOUT_S}s; its output:" >&2
        cat "$LOG" >&2
        exit 1
    fi
    sleep 0.1
    waited=$((waited + 1))
done
grep 'cartdb dev cluster up:' "$LOG"

mkdir -p bench/results
target/release/cart-bench \
    --profile add \
    --duration "$DURATION" \
    --concurrency "$CONCURRENCY" \
    --target "cartdb=127.0.0.1:$PORT" \
    --json "$JSON" \
    "$@"
