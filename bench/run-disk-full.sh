#!/usr/bin/env bash
# A full disk on one node under load (issue 17's run), as root:
#
#   sudo DURATION_S=60 TMPFS_MB=40 bench/run-disk-full.sh
#
# 1. Builds release; starts a 3-node `cartd dev` cluster on 127.0.0.1:17821-17823 whose n3 keeps
#    its data on a TMPFS_MB tmpfs (mounted here, unmounted on exit), with min_free_disk_mb = 0 so
#    the engine itself meets ENOSPC (set a watermark to see the node stop before that).
# 2. Runs `cart-bench --profile add --carts 200000 --distribution uniform --concurrency 64` for
#    DURATION_S seconds; half way through, fills n3's tmpfs to the last byte (a filler file), so
#    n3's disk is full for the whole second half. Prints the bench's errors and how n1 and n3
#    show n3 in `cartctl status` while full.
# 3. Deletes the filler, grows the tmpfs to 400 MiB and prints how long n3 takes to take writes again (not degraded, as seen
#    by n1 and by itself), and then writes one cart through n3 alone.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source bench/cluster.sh
if [[ $(id -u) -ne 0 ]]; then echo "run as root (it mounts a tmpfs)" >&2; exit 1; fi
DURATION_S=${DURATION_S:-60}
TMPFS_MB=${TMPFS_MB:-40}
PORT=17821
OUT=bench/results/disk-full
mkdir -p "$OUT"
rm -f "$OUT"/*
DIR=$(mktemp -d)
DEV_PID=""
cleanup() {
    stop_child
    if [[ -n "$DEV_PID" ]]; then stop_pid "$DEV_PID" "dev cluster"; fi
    for n in 1 2 3; do cp "$DIR/n$n/cartd.log" "$OUT/n$n.log" 2>/dev/null || true; done
    umount -l "$DIR/n3/data" 2>/dev/null || true
    rm -rf "$DIR"
}
on_exit cleanup
ctl() { "$BIN_DIR/cartctl" --endpoint "$1" "${@:2}"; }
degraded() { # ENDPOINT: what it says of n3 (empty: healthy); "?" when it does not answer
    ctl "$1" --json status 2>/dev/null |
        python3 -c 'import json,sys; print([n for n in json.load(sys.stdin)["nodes"] if n["node_id"]=="n3"][0].get("degraded",""))' 2>/dev/null ||
        echo "?"
}

run_child cargo build --release -p cart-node -p cart-client -p cart-bench
mkdir -p "$DIR/n3/data"
mount -t tmpfs -o "size=${TMPFS_MB}m" tmpfs "$DIR/n3/data"
printf 'min_free_disk_mb = 0\n' >"$DIR/extra.toml"
"$BIN_DIR/cartd" dev --nodes 3 --base-port $PORT --data-dir "$DIR" --extra-toml "$DIR/extra.toml" >"$DIR/dev.log" 2>&1 &
DEV_PID=$!
until grep -q 'cartdb dev cluster up:' "$DIR/dev.log"; do
    kill -0 "$DEV_PID" 2>/dev/null || { cat "$DIR/dev.log" >&2; exit 1; }
    sleep 0.2
done
ENDPOINTS=$(sed -n 's/^cartdb dev cluster up: //p' "$DIR/dev.log")
echo "cluster up: $ENDPOINTS; n3's data on a ${TMPFS_MB} MiB tmpfs"

"$BIN_DIR/cart-bench" --target "cartdb=$ENDPOINTS" --json "$OUT/bench.json" --no-progress --seed 11 \
    --profile add --carts 200000 --distribution uniform --duration "$DURATION_S" --concurrency 64 >"$OUT/bench.log" 2>&1 &
BENCH=$!
sleep "$(echo "$DURATION_S / 2" | bc -l)"
echo "filling n3's disk at $(date +%T)"
dd if=/dev/zero of="$DIR/n3/data/filler" bs=1M 2>/dev/null || true
df -m "$DIR/n3/data" | tail -1
sleep 3
echo "n3 as n1 sees it: $(degraded 127.0.0.1:$PORT)"
echo "n3 as n3 sees it: $(degraded 127.0.0.1:$((PORT + 2)))"
wait "$BENCH" || true
grep '^target ' "$OUT/bench.log" || cat "$OUT/bench.log"
grep -o '"errors":[^,]*' "$OUT/bench.json" | head -3 || true
full_lines=$(grep -c 'No space left' "$DIR/n3/cartd.log" || true)
echo "n3 logged $full_lines 'No space left' lines"

# Space returns: the filler goes and the tmpfs grows to 400 MiB (as an operator would free or
# grow a volume).
rm -f "$DIR/n3/data/filler"
mount -o remount,size=400m "$DIR/n3/data"
freed=$(date +%s.%N)
df -m "$DIR/n3/data" | tail -1
until [[ "$(degraded 127.0.0.1:$((PORT + 2)))" == "" && "$(degraded 127.0.0.1:$PORT)" == "" ]]; do
    sleep 0.5
    if (($(echo "$(date +%s.%N) - $freed > 120" | bc))); then echo "n3 still degraded 120 s after space returned" >&2; exit 1; fi
done
printf 'n3 takes writes again %.1f s after space returned\n' "$(echo "$(date +%s.%N) - $freed" | bc -l)"
grep -h 'restarting in place\|storage recovered\|new incarnation' "$DIR/n3/cartd.log" | cut -c1-160 | tail -3
ctl 127.0.0.1:$((PORT + 2)) cart add user:after-full sku-1 --name Mug --price 100 --currency EUR >/dev/null
ctl 127.0.0.1:$((PORT + 2)) cart get user:after-full --local | head -3
