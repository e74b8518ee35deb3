#!/usr/bin/env bash
# The cost of an AddItem to a cart that already holds 1, 10, 100 and 1,000 lines, on a fresh
# 3-node cartdb cluster (N = 3, R = W = 2) on this machine:
#
#   DURATION=10 CONCURRENCY="1 16" LINE_COUNTS="1 10 100 1000" bench/run-cart-size.sh
#
# A 1,000-line cart passes cartdb's default `max_lines_per_cart` (200), so the 3-node dev cluster
# (127.0.0.1:17701-17703, throw-away data dir) starts with `cartd dev --extra-toml` raising
# `max_lines_per_cart` to 2000 and `max_quantity` to 1000000 (both ceilings: a 1-line cart takes
# every +1 of a run on one line). It is stopped on every exit path.
#
# For each size N, `cart-bench --profile add-to-size --cart-lines N` first fills the cart
# `user:size-N` with N distinct lines (sku-000 …, quantity 1), then, for DURATION seconds per
# concurrency C (closed loop), adds quantity 1 to a line drawn at random among those N. The cart
# keeps exactly N lines while it is measured. All sizes share one cluster (one cart each).
#
# Reports: bench/results/cart-size/lines-<N>-c<C>.json (+ .log); a table at the end.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source bench/cluster.sh

DURATION=${DURATION:-10}
CONCURRENCY=${CONCURRENCY:-"1 16"}
LINE_COUNTS=${LINE_COUNTS:-"1 10 100 1000"}
SEED=${SEED:-7}
OUT=bench/results/cart-size
LIMITS=""

cleanup() {
    stop_child
    stop_cluster
    [[ -n "$LIMITS" ]] && rm -f -- "$LIMITS"
}
on_exit cleanup

LIMITS="$(mktemp)"
printf '[limits]\nmax_lines_per_cart = 2000\nmax_quantity = 1000000\n' >"$LIMITS"
run_child cargo build --release -p cart-node -p cart-bench
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.log
start_cluster 3 17701 "$LIMITS"
summary=()
for lines in $LINE_COUNTS; do
    for c in $CONCURRENCY; do
        name="lines-$lines-c$c"
        echo "cart-bench add-to-size: $lines lines, concurrency $c, ${DURATION}s (output: $OUT/$name.log)"
        if ! run_child "$BIN_DIR/cart-bench" --profile add-to-size --cart-lines "$lines" \
            --duration "$DURATION" --concurrency "$c" --target "cartdb=$CLUSTER_ENDPOINTS" \
            --json "$OUT/$name.json" --no-progress --seed "$SEED" >"$OUT/$name.log" 2>&1; then
            echo "cart-bench failed for $lines lines, concurrency $c; its output:" >&2
            cat "$OUT/$name.log" >&2
            exit 1
        fi
        grep -E '^(target |.*pre-filled)' "$OUT/$name.log" || true
        summary+=("$lines:$c=$OUT/$name.json")
    done
done
stop_cluster

echo
echo "$(nproc) cores shared by the client and the three nodes"
python3 bench/summarize.py cart-size "${summary[@]}"
