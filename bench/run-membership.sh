#!/usr/bin/env bash
# What a node joining a loaded cluster costs, in one run:
#
#   CARTS=100000 PRELOAD_S=40 RATE=1000 STEADY_S=20 JOIN_S=90 bench/run-membership.sh
#
# 1. Builds release; starts a 3-node `cartd dev` cluster on 127.0.0.1:17701-17703 (N = 3,
#    R = W = 2) and preloads it: `cart-bench --profile add --distribution uniform` over CARTS carts
#    for PRELOAD_S seconds (closed loop, 64 clients).
# 2. Steady state: open loop at RATE ops/s (storefront profile) for STEADY_S seconds.
# 3. The join: starts n4 with `cartd run --join` (it waits as a non-member), then, with the same
#    open-loop load running for JOIN_S seconds, `cartctl cluster join n4 … && cartctl cluster
#    commit`, and polls `cartctl cluster show` until every node has handed over (the previous
#    layout version is gone). Prints how long that took, what each node sent (carts, bytes), the
#    cluster's carts per node afterwards, and the two runs' percentiles side by side
#    (bench/summarize.py compare: steady is the baseline of the ratios), and the nodes' log lines
#    on the anti-entropy digests (built at start, moved to the new layout) and the hand-over.
#
# JSON reports and logs: bench/results/membership/ (ignored by git). Every process started here is
# stopped on every exit path; the data dir is removed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source bench/cluster.sh
N4_PID=""
cleanup() {
    stop_child
    if [[ -n "$N4_PID" ]]; then stop_pid "$N4_PID" "n4"; fi
    stop_cluster
}
on_exit cleanup

CARTS=${CARTS:-100000}
PRELOAD_S=${PRELOAD_S:-40}
RATE=${RATE:-1000}
STEADY_S=${STEADY_S:-20}
JOIN_S=${JOIN_S:-90}
PORT=17701
OUT=bench/results/membership
mkdir -p "$OUT"
rm -f "$OUT"/*

run_child cargo build --release -p cart-node -p cart-client -p cart-bench
start_cluster 3 $PORT
SECRET=$(sed -n 's/^secret = "\(.*\)"$/\1/p' "$CLUSTER_DIR/cluster.toml")
CARTCTL=("$BIN_DIR/cartctl" --endpoint 127.0.0.1:$PORT)

bench() {
    local name=$1
    shift
    echo "cart-bench $name (output: $OUT/$name.log)"
    if ! "$BIN_DIR/cart-bench" --target "cartdb=$CLUSTER_ENDPOINTS" --json "$OUT/$name.json" \
        --no-progress --seed 7 "$@" >"$OUT/$name.log" 2>&1; then
        echo "cart-bench $name failed:" >&2
        cat "$OUT/$name.log" >&2
        exit 1
    fi
    grep '^target ' "$OUT/$name.log" || true
}

bench preload --profile add --distribution uniform --carts "$CARTS" --duration "$PRELOAD_S" --concurrency 64
sleep 5
bench steady --profile storefront --carts "$CARTS" --rate "$RATE" --concurrency 256 --duration "$STEADY_S"

# n4: a node file of its own; it learns the layout from n1 and waits.
cat >"$CLUSTER_DIR/n4.toml" <<EOF
node_id = "n4"
listen_addr = "127.0.0.1:$((PORT + 3))"
data_dir = "$CLUSTER_DIR/n4/data"

[cluster]
secret = "$SECRET"
EOF
mkdir -p "$CLUSTER_DIR/n4"
"$BIN_DIR/cartd" run --config "$CLUSTER_DIR/n4.toml" --join 127.0.0.1:$PORT >"$OUT/n4.log" 2>&1 &
N4_PID=$!
until grep -q 'listening on' "$OUT/n4.log"; do
    kill -0 "$N4_PID" 2>/dev/null || { cat "$OUT/n4.log" >&2; exit 1; }
    sleep 0.2
done

"$BIN_DIR/cart-bench" --target "cartdb=$CLUSTER_ENDPOINTS,127.0.0.1:$((PORT + 3))" --json "$OUT/join.json" \
    --no-progress --seed 8 --profile storefront --carts "$CARTS" --rate "$RATE" --concurrency 256 \
    --duration "$JOIN_S" >"$OUT/join.log" 2>&1 &
LOAD_PID=$!
sleep 5
CARTDB_SECRET="$SECRET" "${CARTCTL[@]}" cluster join n4 127.0.0.1:$((PORT + 3)) >/dev/null
CARTDB_SECRET="$SECRET" "${CARTCTL[@]}" cluster plan | tee "$OUT/plan.txt"
start=$(date +%s.%N)
CARTDB_SECRET="$SECRET" "${CARTCTL[@]}" cluster commit >/dev/null
until "${CARTCTL[@]}" --json cluster show | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["moving_from"] is None else 1)'; do
    sleep 0.5
    if (($(date +%s) - ${start%.*} > JOIN_S + 600)); then
        echo "the transfer did not finish; n1 says:" >&2
        "${CARTCTL[@]}" cluster show >&2
        exit 1
    fi
done
done_at=$(date +%s.%N)
wait "$LOAD_PID"
grep '^target ' "$OUT/join.log" || true

echo
printf 'join of n4: commit to every node handed over: %.1f s (load kept running, %s s in all)\n' \
    "$(echo "$done_at - $start" | bc)" "$JOIN_S"
for i in 0 1 2 3; do
    "$BIN_DIR/cartctl" --endpoint 127.0.0.1:$((PORT + i)) --json cluster show >"$OUT/show-n$((i + 1)).json"
    python3 - "$OUT/show-n$((i + 1)).json" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))
t = v["transfer"] or {}
print(f"  {v['asked_node']}: handed over {t.get('carts_sent', 0)} carts, {t.get('bytes_sent', 0)} bytes "
      f"(scanned {t.get('carts_scanned', 0)}); deleted after: {t.get('carts_dropped', 0)}; phase {t.get('phase', '-')}")
PY
done
echo
echo "anti-entropy digests and the hand-over, from the nodes' logs:"
for log in "$CLUSTER_DIR"/n*/cartd.log "$OUT/n4.log"; do
    node=$(basename "$(dirname "$log")")
    [[ "$log" == "$OUT/n4.log" ]] && node=n4
    grep -h -E 'anti-entropy digests (built|moved)|hand-over walked' "$log" \
        | sed -e 's/\x1b\[[0-9;]*m//g' -e 's/^[^ ]* *INFO [^ ]* /  '"$node"': /' || true
done
echo
python3 bench/summarize.py compare steady="$OUT/steady.json" join="$OUT/join.json"
