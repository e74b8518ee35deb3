#!/usr/bin/env bash
# cartdb next to Redis used as a storefront team would use it for carts, on this machine, in one run:
#
#   DURATION=30 CONCURRENCY=64 PROFILE=storefront RATE=10000 bench/run-compare.sh
#
# 1. Builds release; installs redis-server with apt-get if it is missing (see bench/redis.sh).
# 2. Closed loop, CONCURRENCY workers, DURATION seconds, the same PROFILE and seed against
#    - cartdb: a fresh 3-node `cartd dev` cluster on 127.0.0.1:17601-17603 (N = 3, R = W = 2, an
#      ack means flushed on W nodes) on its default storage engine, fjall (flushes end in
#      fdatasync); cartdb-sled: the same on sled (`[storage] engine = "sled"`: sync_file_range);
#    - redis-everysec: one redis-server on 127.0.0.1:17611, `appendonly yes`, `appendfsync everysec`
#      (an ack can lose up to ~1 s of writes on a crash);
#    - redis-always: the same with `appendfsync always` (fsync before the reply);
#    - redis-replicated, closer to cartdb's three copies: a primary on 127.0.0.1:17621 and two
#      replicas on 17622-17623 (`--replicaof`), `appendonly yes` + `appendfsync everysec` on each,
#      and every write followed in its round trip by `WAIT 1 1000` (target `redis=…?wait=1`): an
#      ack means the write is in the memory of the primary and of one replica (each fsyncs within
#      ~1 s; cartdb's ack is a flush on two nodes). A WAIT that finds no replica within 1 s is the
#      error WAIT_TIMEOUT. Its servers' CPU is the three processes'.
#    Each system runs alone, from empty data, and is stopped before the next starts.
# 3. Open loop at RATE ops/s (at most OPEN_INFLIGHT in flight; more is counted as dropped) against
#    cartdb, redis-everysec and redis-replicated, latency from each request's intended send time.
# 4. Tables: per target ops/s, p50/p99/p99.9 and the ratio to cartdb, CPU per operation of the
#    servers and of cart-bench (user + system time from /proc), and p50/p99 per operation.
# 5. bench/run-scaling.sh: cartdb on 1, 3 and 5 nodes with the same settings (SKIP_SCALING=1: not).
# CLOSED_TARGETS / OPEN_TARGETS (space-separated names as above) pick the targets of each pass.
#
# JSON reports and cart-bench's own output: bench/results/compare/ (ignored by git), and
# bench/results/compare/summary.json: one entry per mode and target ("closed/cartdb", …) with
# ops_per_s, p50_us, p99_us, p999_us, errors, server_cpu_us_per_op and client_cpu_us_per_op (null
# when the CPU was not measured).
# Every process started here (cluster, the redis-servers, cart-bench, the scaling run) is stopped
# on every exit path, Ctrl-C and failures included; the temp dirs are removed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source bench/cluster.sh
source bench/redis.sh
cleanup() {
    stop_child
    stop_redis
    stop_cluster
    remove_policy_rc
}
on_exit cleanup

DURATION=${DURATION:-30}
CONCURRENCY=${CONCURRENCY:-64}
PROFILE=${PROFILE:-storefront}
RATE=${RATE:-10000}
OPEN_INFLIGHT=${OPEN_INFLIGHT:-1024}
SEED=${SEED:-7}
CARTDB_PORT=17601
REDIS_PORT=17611
REPLICATED_PORT=17621 # primary; its two replicas on the next two ports
OUT=bench/results/compare
SERVER_PIDS="" # the processes whose CPU a run counts (set per target below)

run_child cargo build --release -p cart-node -p cart-bench
ensure_redis_server
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.log "$OUT"/*.cpu

# bench NAME TARGET [extra cart-bench flags…]: one cart-bench run, output in $OUT/NAME.{json,log}.
# The CPU the servers (SERVER_PIDS) and cart-bench used during the run goes to $OUT/NAME.cpu
# ("SERVER_TICKS CLIENT_TICKS", 1/100 s), which summarize.py turns into CPU per operation.
bench() {
    local name=$1 target=$2 server0 client0
    shift 2
    echo "cart-bench $name: $PROFILE, ${DURATION}s $* (output: $OUT/$name.log)"
    server0=$(cpu_ticks $SERVER_PIDS)
    children_cpu_ticks
    client0=$CHILDREN_TICKS
    if ! run_child "$BIN_DIR/cart-bench" --profile "$PROFILE" --duration "$DURATION" \
        --target "$target" --json "$OUT/$name.json" --no-progress --seed "$SEED" "$@" \
        >"$OUT/$name.log" 2>&1; then
        echo "cart-bench $name failed; its output:" >&2
        cat "$OUT/$name.log" >&2
        exit 1
    fi
    children_cpu_ticks
    echo "$(($(cpu_ticks $SERVER_PIDS) - server0)) $((CHILDREN_TICKS - client0))" >"$OUT/$name.cpu"
    grep '^target ' "$OUT/$name.log" || true
}

# against NAME MODE [flags…]: start NAME's system (cartdb | redis-everysec | redis-always |
# redis-replicated), run, stop it. MODE names the pass (closed | open).
against() {
    local name=$1 mode=$2
    shift 2
    case $name in
    cartdb | cartdb-sled)
        # cartdb runs its default engine (fjall); cartdb-sled the same cluster on sled.
        local extra=""
        if [[ $name == cartdb-sled ]]; then
            extra="$OUT/sled.toml"
            printf '[storage]\nengine = "sled"\n' >"$extra"
        fi
        start_cluster 3 "$CARTDB_PORT" "$extra"
        SERVER_PIDS=$(cluster_pids)
        bench "$mode-$name" "cartdb=$CLUSTER_ENDPOINTS" "$@"
        stop_cluster
        ;;
    redis-everysec | redis-always)
        start_redis "$REDIS_PORT" "${name#redis-}"
        SERVER_PIDS=$REDIS_PID
        bench "$mode-$name" "redis=$REDIS_URL" "$@"
        stop_redis
        ;;
    redis-replicated)
        start_redis_replicated "$REPLICATED_PORT" everysec 2
        SERVER_PIDS=$REDIS_ALL_PIDS
        bench "$mode-$name" "redis=$REDIS_URL?wait=1&wait_timeout_ms=1000" "$@"
        stop_redis
        ;;
    esac
}

CLOSED_TARGETS=${CLOSED_TARGETS:-cartdb cartdb-sled redis-everysec redis-always redis-replicated}
OPEN_TARGETS=${OPEN_TARGETS:-cartdb cartdb-sled redis-everysec redis-replicated}
for name in $CLOSED_TARGETS; do
    against "$name" closed --concurrency "$CONCURRENCY"
done
for name in $OPEN_TARGETS; do
    against "$name" open --concurrency "$OPEN_INFLIGHT" --rate "$RATE"
done

# reports MODE TARGETS: LABEL=FILE per target; with_mode MODE TARGETS: MODE:LABEL=FILE.
reports() { for name in $2; do echo "$name=$OUT/$1-$name.json"; done; }
with_mode() { for name in $2; do echo "$1:$name=$OUT/$1-$name.json"; done; }

echo
echo "== closed loop, $CONCURRENCY workers; $(nproc) cores shared by the client and the servers =="
# shellcheck disable=SC2046 # one word per target
python3 bench/summarize.py compare $(reports closed "$CLOSED_TARGETS")
echo
echo "== open loop at $RATE ops/s, at most $OPEN_INFLIGHT in flight =="
# shellcheck disable=SC2046
python3 bench/summarize.py compare $(reports open "$OPEN_TARGETS")
echo
# shellcheck disable=SC2046
python3 bench/summarize.py summary-json "$OUT/summary.json" \
    $(with_mode closed "$CLOSED_TARGETS") $(with_mode open "$OPEN_TARGETS")
echo

if [[ -n "${SKIP_SCALING:-}" ]]; then
    exit 0
fi
echo "== cartdb on 1, 3 and 5 nodes (bench/run-scaling.sh) =="
run_child env DURATION="$DURATION" CONCURRENCY="$CONCURRENCY" PROFILE="$PROFILE" SEED="$SEED" SKIP_BUILD=1 \
    bench/run-scaling.sh
