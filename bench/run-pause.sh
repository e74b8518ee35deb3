#!/usr/bin/env bash
# A paused node (or one with a slow disk) under storefront load (issue 16's runs), in one cluster:
#
#   RATE=1000 DURATION_S=30 PAUSE_AT_S=10 PAUSE_S=10 bench/run-pause.sh
#
# 1. Builds release; starts a 3-node `cartd dev` cluster on 127.0.0.1:17901-17903 (N = 3,
#    R = W = 2) and warms it (5 s of storefront load, not reported).
# 2. quiet: `cart-bench --profile storefront --rate RATE --concurrency 512` for DURATION_S
#    seconds, reported with --window PAUSE_AT_S,PAUSE_AT_S+PAUSE_S (nothing happens in it: the
#    baseline of the window's figures).
# 3. paused: the same run while n2 is stopped (SIGSTOP) from PAUSE_AT_S to PAUSE_AT_S + PAUSE_S
#    (then SIGCONT): the window's percentiles are those of the pause, and the run's overall
#    figures include it. cart-bench also prints how many extra requests its client's hedging
#    sent.
#
# FAULT=slow-disk slows n2's disk instead of stopping it: every flush of its storage engine
# waits SLOW_MS (default 200) first during the window (the nodes run with the cartd drill
# CARTD_FAULT_SLOW_FLUSH_MS armed; SIGUSR1 switches it on and off).
# Set HEDGE=0 to run the client without hedging (cart-bench --no-hedge) for a comparison, or
# HEDGE=writes to hedge writes too (cart-bench --hedge-writes).
# JSON reports, the client's and the nodes' logs: bench/results/pause/ or bench/results/slow-disk/ (ignored by git).
# Every process started here is stopped on every exit path (a paused node is continued first);
# the data dir is removed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source bench/cluster.sh
PAUSED=""
cleanup() {
    if [[ -n "$PAUSED" ]]; then kill -CONT "$PAUSED" 2>/dev/null || true; fi
    stop_child
    # The nodes' logs outlive the throw-away data dir.
    local log
    for log in "${CLUSTER_DIR:-/nonexistent}"/n*/cartd.log; do
        if [[ -f "$log" ]]; then cp -- "$log" "$OUT/$(basename "$(dirname "$log")").log"; fi
    done
    stop_cluster
}
on_exit cleanup

RATE=${RATE:-1000}
DURATION_S=${DURATION_S:-30}
PAUSE_AT_S=${PAUSE_AT_S:-10}
PAUSE_S=${PAUSE_S:-10}
HEDGE=${HEDGE:-1}
FAULT=${FAULT:-stop}
PORT=17901
case "$FAULT" in
stop) OUT=bench/results/pause ;;
slow-disk)
    OUT=bench/results/slow-disk
    export CARTD_FAULT_SLOW_FLUSH_MS=${SLOW_MS:-200}
    ;;
*)
    echo "FAULT must be stop or slow-disk, got $FAULT" >&2
    exit 2
    ;;
esac
mkdir -p "$OUT"
rm -f "$OUT"/*

run_child cargo build --release -p cart-node -p cart-client -p cart-bench
start_cluster 3 $PORT
N2=$(pgrep -P "$CLUSTER_PID" -f -- "--node n2" | head -1)
if [[ -z "$N2" ]]; then
    echo "cannot find n2's process" >&2
    exit 1
fi
WINDOW=${WINDOW:-"$PAUSE_AT_S,$((PAUSE_AT_S + PAUSE_S))"}
HEDGE_ARGS=()
if [[ "$HEDGE" == 0 ]]; then HEDGE_ARGS=(--no-hedge); fi
if [[ "$HEDGE" == writes ]]; then HEDGE_ARGS=(--hedge-writes); fi

bench() {
    local name=$1
    shift
    echo "cart-bench $name (output: $OUT/$name.log, client diagnostics: $OUT/$name.err)"
    if ! "$BIN_DIR/cart-bench" --target "cartdb=$CLUSTER_ENDPOINTS" --json "$OUT/$name.json" \
        --no-progress --seed 7 --profile storefront --concurrency 512 "${HEDGE_ARGS[@]}" "$@" \
        >"$OUT/$name.log" 2>"$OUT/$name.err"; then
        echo "cart-bench $name failed:" >&2
        cat "$OUT/$name.log" "$OUT/$name.err" >&2
        exit 1
    fi
    grep -E '^(target|inside|outside|hedged)' "$OUT/$name.log" || true
    grep -E '^errors' "$OUT/$name.err" || true
}

bench warmup --duration 5 --rate "$RATE"
bench quiet --duration "$DURATION_S" --rate "$RATE" --window "$WINDOW"

# The fault runs beside the bench: from PAUSE_AT_S for PAUSE_S seconds.
if [[ "$FAULT" == stop ]]; then
    BEGIN=(kill -STOP "$N2") END=(kill -CONT "$N2") NAME=paused
else
    BEGIN=(kill -USR1 "$N2") END=(kill -USR1 "$N2") NAME=slowed
fi
(
    sleep "$PAUSE_AT_S"
    "${BEGIN[@]}"
    echo "n2 (pid $N2): $FAULT from ${PAUSE_AT_S} s"
    sleep "$PAUSE_S"
    "${END[@]}"
    echo "n2: $FAULT ended at $((PAUSE_AT_S + PAUSE_S)) s"
) &
PAUSER=$!
if [[ "$FAULT" == stop ]]; then PAUSED=$N2; fi
bench "$NAME" --duration "$DURATION_S" --rate "$RATE" --window "$WINDOW"
wait "$PAUSER" || true
PAUSED=""

python3 bench/summarize.py compare quiet="$OUT/quiet.json" "$NAME=$OUT/$NAME.json" || true
