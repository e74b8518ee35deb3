#!/usr/bin/env bash
# What a loaded but idle cluster costs (anti-entropy with digests kept on write), and how fast
# anti-entropy repairs a replica changed behind the cluster's back, in one run:
#
#   CARTS=1000000 PRELOAD_S=240 IDLE_S=60 REPAIR_CARTS=20 bench/run-idle.sh
#
# 1. Builds release; starts a 3-node `cartd dev` cluster on 127.0.0.1:17801-17803 with the
#    default settings (anti-entropy every 10 s) and preloads it: `cart-bench --profile add
#    --distribution sequential` (carts 0, 1, 2, … in turn: CARTS distinct carts once the preload
#    has issued CARTS adds) for PRELOAD_S seconds (closed loop, 64 clients).
# 2. Waits until every node's digests are built (`cartctl status --json`: digests_ready) and
#    prints how many carts each node's digests cover and how long the rebuild took.
# 3. Measures, with no client load at all, the CPU the three nodes use over IDLE_S seconds (user +
#    system from /proc) and prints it as a share of one core, with the last anti-entropy exchange
#    each node had, and how many "peer is down" lines the nodes logged during the window (a
#    starved runtime misses heartbeats). LOAD_RATE=R (default 0) runs the window under a
#    storefront open loop at R ops/s over the CARTS carts instead (the "loaded" run of issue 15:
#    the CPU then includes the load; the "peer is down" count is the figure).
# 4. Repair (REPAIR_CARTS > 0): kill -9 of n3, REPAIR_CARTS carts written to n1 and n2 only, the
#    hints for n3 discarded on both (`cartctl hints discard`), n3 restarted: only anti-entropy can
#    bring those carts to n3. Prints the time from n3's digests being built to every one of those
#    carts being in n3's own replica (`cartctl cart get --local`), in anti-entropy intervals.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source bench/cluster.sh
N3_PID=""
cleanup() {
    stop_child
    if [[ -n "$N3_PID" ]]; then stop_pid "$N3_PID" "restarted n3"; fi
    stop_cluster
}
on_exit cleanup

CARTS=${CARTS:-100000}
PRELOAD_S=${PRELOAD_S:-40}
IDLE_S=${IDLE_S:-60}
REPAIR_CARTS=${REPAIR_CARTS:-20}
LOAD_RATE=${LOAD_RATE:-0}
AE_INTERVAL_S=10
PORT=17801
OUT=bench/results/idle
mkdir -p "$OUT"
rm -f "$OUT"/*
ctl() { "$BIN_DIR/cartctl" --endpoint "$1" "${@:2}"; }

run_child cargo build --release -p cart-node -p cart-client -p cart-bench
start_cluster 3 $PORT
echo "preload: $CARTS carts in turn, ${PRELOAD_S}s (output: $OUT/preload.log)"
"$BIN_DIR/cart-bench" --target "cartdb=$CLUSTER_ENDPOINTS" --json "$OUT/preload.json" --no-progress --seed 7 \
    --profile add --distribution sequential --carts "$CARTS" --duration "$PRELOAD_S" --concurrency 64 >"$OUT/preload.log" 2>&1
grep '^target ' "$OUT/preload.log" || true

status_field() { # ENDPOINT FIELD
    ctl "$1" --json status | python3 -c "import json,sys; print(json.load(sys.stdin)['$2'])"
}
wait_ready() { # ENDPOINT…
    local waited=0 e
    for e in "$@"; do
        until [[ "$(status_field "$e" digests_ready 2>/dev/null)" == "True" ]]; do
            sleep 1
            waited=$((waited + 1))
            if ((waited > 900)); then echo "digests of $e not built after 900 s" >&2; exit 1; fi
        done
    done
}
wait_ready 127.0.0.1:$PORT 127.0.0.1:$((PORT + 1)) 127.0.0.1:$((PORT + 2))
for i in 0 1 2; do
    echo "n$((i + 1)): digests over $(status_field 127.0.0.1:$((PORT + i)) digest_carts) carts"
done
grep -h 'anti-entropy digests built' "$CLUSTER_DIR"/n*/cartd.log | sed 's/^/  /' | cut -c1-220 || true
sleep 2

PIDS=$(cluster_pids)
down_before=$(cat "$CLUSTER_DIR"/n*/cartd.log | grep -c 'peer is down' || true)
t0=$(cpu_ticks $PIDS)
if ((LOAD_RATE > 0)); then
    "$BIN_DIR/cart-bench" --target "cartdb=$CLUSTER_ENDPOINTS" --json "$OUT/load.json" --no-progress --seed 9 \
        --profile storefront --distribution uniform --carts "$CARTS" --rate "$LOAD_RATE" --concurrency 256 \
        --duration "$IDLE_S" >"$OUT/load.log" 2>&1
    grep '^target ' "$OUT/load.log" || true
    python3 bench/summarize.py compare loaded="$OUT/load.json" | sed -n '1,4p' || true
else
    sleep "$IDLE_S"
fi
t1=$(cpu_ticks $PIDS)
down_after=$(cat "$CLUSTER_DIR"/n*/cartd.log | grep -c 'peer is down' || true)

echo
what="idle"
((LOAD_RATE > 0)) && what="loaded at $LOAD_RATE ops/s"
printf '%s for %s s with %s carts on each node: the 3 nodes used %.2f%% of one core (%s ticks of 1/100 s)\n' \
    "$what" "$IDLE_S" "$(status_field 127.0.0.1:$PORT digest_carts)" "$(echo "($t1 - $t0) / $IDLE_S" | bc -l)" "$((t1 - t0))"
echo "\"peer is down\" lines logged during the window: $((down_after - down_before))"
ctl 127.0.0.1:$PORT status

if ((REPAIR_CARTS > 0)); then
    echo
    N3=127.0.0.1:$((PORT + 2))
    CONFIG=$(sed -n 's/^cluster file //p' "$CLUSTER_DIR/dev.log")
    SECRET=$(sed -n 's/^secret = "\(.*\)"$/\1/p' "$CONFIG" | head -1)
    victim=$(pgrep -P "$CLUSTER_PID" -f -- '--node n3 ' || true)
    [[ -n "$victim" ]] || { echo "n3's process not found" >&2; exit 1; }
    kill -KILL "$victim"
    sleep 2
    for ((i = 0; i < REPAIR_CARTS; i++)); do
        ctl 127.0.0.1:$PORT cart add "user:repair-$i" sku-1 --name Mug --price 100 --currency EUR >/dev/null
    done
    for e in 127.0.0.1:$PORT 127.0.0.1:$((PORT + 1)); do
        ctl "$e" hints discard --secret "$SECRET"
    done
    started=$(date +%s.%N)
    "$BIN_DIR/cartd" run --node n3 --config "$CONFIG" >>"$CLUSTER_DIR/n3/cartd.log" 2>&1 &
    N3_PID=$!
    until port_answers $((PORT + 2)); do sleep 0.2; done
    wait_ready "$N3"
    ready=$(date +%s.%N)
    missing=$REPAIR_CARTS
    while ((missing > 0)); do
        missing=0
        for ((i = 0; i < REPAIR_CARTS; i++)); do
            if ! ctl "$N3" cart get "user:repair-$i" --local | grep -q 'Mug'; then
                missing=$((missing + 1))
            fi
        done
        now=$(date +%s.%N)
        if (($(echo "$now - $ready > 300" | bc))); then echo "n3 still misses $missing carts after 300 s" >&2; exit 1; fi
        ((missing == 0)) || sleep 1
    done
    done_at=$(date +%s.%N)
    printf 'repair: n3 restarted without %s carts (hints discarded); digests rebuilt after %.1f s; every cart in its replica %.1f s later (%.2f anti-entropy intervals of %s s)\n' \
        "$REPAIR_CARTS" "$(echo "$ready - $started" | bc -l)" "$(echo "$done_at - $ready" | bc -l)" \
        "$(echo "($done_at - $ready) / $AE_INTERVAL_S" | bc -l)" "$AE_INTERVAL_S"
fi
