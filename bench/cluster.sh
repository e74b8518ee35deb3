# Sourced by the bench scripts: start and stop a `cartd dev` cluster on loopback with a throw-away
# data dir. `start_cluster NODES PORT` sets CLUSTER_PID / CLUSTER_ENDPOINTS; `stop_cluster` stops it
# with SIGTERM (SIGKILL after STOP_TIMEOUT_S, then also to any node it left behind) and removes
# the data dir. The scripts trap EXIT to call stop_cluster on every path, failures included.
# `cpu_ticks`, `children_cpu_ticks` and `cluster_pids` measure the CPU a run used (CPU per op).
#
# `BIN_DIR` is where the release binaries are: cargo's target dir + /release, from CARGO_TARGET_DIR
# (or CARGO_BUILD_TARGET_DIR) as cargo reads it, `target` when unset. A relative one is relative
# to the repository root, the directory every script cds to before it runs cargo.
#
# `run_child CMD…` runs a long command (cargo, cart-bench, another bench script) in the background,
# in a process group of its own, and waits for it, so a signal to the script runs its traps at once
# instead of after the command; `stop_child` (called from the EXIT trap) sends SIGTERM to that
# whole group (cargo's rustc jobs, a sub-script's cluster) and waits.

BENCH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CARGO_TARGET_DIR_RESOLVED=${CARGO_TARGET_DIR:-${CARGO_BUILD_TARGET_DIR:-target}}
if [[ $CARGO_TARGET_DIR_RESOLVED != /* ]]; then
    CARGO_TARGET_DIR_RESOLVED=$BENCH_ROOT/$CARGO_TARGET_DIR_RESOLVED
fi
BIN_DIR=$CARGO_TARGET_DIR_RESOLVED/release
unset CARGO_TARGET_DIR_RESOLVED

READY_TIMEOUT_S=${READY_TIMEOUT_S:-60}
STOP_TIMEOUT_S=${STOP_TIMEOUT_S:-30}
CLUSTER_PID=""
CLUSTER_DIR=""
CLUSTER_ENDPOINTS=""

CHILD_PID=""

# on_exit FN: FN runs on every exit of the script; INT, TERM and HUP exit with 128 + the signal's
# number, so FN runs then too (once).
on_exit() {
    trap "$1" EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    trap 'exit 129' HUP
}

run_child() {
    local rc=0
    # A background job of a script is no group leader, so setsid execs in place: the pid is the
    # new group's id.
    setsid "$@" &
    CHILD_PID=$!
    wait "$CHILD_PID" || rc=$?
    CHILD_PID=""
    return "$rc"
}

stop_child() {
    if [[ -n "$CHILD_PID" ]] && kill -0 "$CHILD_PID" 2>/dev/null; then
        kill -TERM -- "-$CHILD_PID" 2>/dev/null || kill -TERM "$CHILD_PID" 2>/dev/null || true
        wait "$CHILD_PID" 2>/dev/null || true
    fi
    CHILD_PID=""
}

# Waits for a process to exit, SIGKILL after STOP_TIMEOUT_S. `stop_pid PID WHAT`
stop_pid() {
    local pid=$1 what=$2 waited=0
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null && ((waited < STOP_TIMEOUT_S * 10)); do
        sleep 0.1
        waited=$((waited + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "$what (pid $pid) did not stop within ${STOP_TIMEOUT_S}s; sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# cpu_ticks PID…: user + system CPU the processes used so far, in clock ticks (1/100 s on Linux);
# a process that is gone counts 0.
cpu_ticks() {
    local total=0 pid ticks
    for pid in "$@"; do
        ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null) || ticks=0
        total=$((total + ${ticks:-0}))
    done
    echo "$total"
}

# children_cpu_ticks: sets CHILDREN_TICKS to the user + system CPU of this shell's finished
# children (a cart-bench run once `run_child` waited for it), in clock ticks, from bash's `times`.
# Not a `$(…)` function: `times` in a subshell would count only that subshell's children.
CHILDREN_TICKS=0
children_cpu_ticks() {
    local file
    file=$(mktemp)
    times >"$file"
    CHILDREN_TICKS=$(awk 'NR == 2 {
        split($1, u, /[ms]/); split($2, s, /[ms]/)
        printf "%d\n", (u[1] * 60 + u[2] + s[1] * 60 + s[2]) * 100
    }' "$file")
    rm -f -- "$file"
}

# cluster_pids: the node processes of the running dev cluster.
cluster_pids() {
    pgrep -P "$CLUSTER_PID" 2>/dev/null || true
}

port_answers() {
    # bash's /dev/tcp: succeeds when something accepts a TCP connection on the port.
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start_cluster() {
    local nodes=$1 port=$2 extra=${3:-} i
    for ((i = 0; i < nodes; i++)); do
        if port_answers $((port + i)); then
            echo "something already listens on 127.0.0.1:$((port + i)); refusing to benchmark it" >&2
            return 1
        fi
    done
    if [[ ! -x "$BIN_DIR/cartd" ]]; then
        echo "$BIN_DIR/cartd is missing: build with cargo build --release -p cart-node (CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-unset})" >&2
        return 1
    fi
    CLUSTER_DIR="$(mktemp -d)"
    local extra_args=()
    if [[ -n "$extra" ]]; then
        extra_args=(--extra-toml "$extra")
    fi
    # CLUSTER_TLS=1: TLS and mutual TLS between the nodes (`cartd dev --tls`); clients then need
    # --tls-ca "$CLUSTER_TLS_CA".
    CLUSTER_TLS_CA=""
    if [[ "${CLUSTER_TLS:-0}" == 1 ]]; then
        extra_args+=(--tls)
        CLUSTER_TLS_CA="$CLUSTER_DIR/tls/ca.pem"
    fi
    "$BIN_DIR/cartd" dev --nodes "$nodes" --base-port "$port" --data-dir "$CLUSTER_DIR" "${extra_args[@]}" \
        >"$CLUSTER_DIR/dev.log" 2>&1 &
    CLUSTER_PID=$!
    local waited=0
    until grep -q 'cartdb dev cluster up:' "$CLUSTER_DIR/dev.log" 2>/dev/null; do
        if ! kill -0 "$CLUSTER_PID" 2>/dev/null || ((waited >= READY_TIMEOUT_S * 10)); then
            echo "the dev cluster did not come up; its output:" >&2
            cat "$CLUSTER_DIR/dev.log" >&2
            return 1
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    CLUSTER_ENDPOINTS=$(sed -n 's/^cartdb dev cluster up: //p' "$CLUSTER_DIR/dev.log")
    echo "cluster of $nodes up: $CLUSTER_ENDPOINTS"
}

stop_cluster() {
    if [[ -n "$CLUSTER_PID" ]] && kill -0 "$CLUSTER_PID" 2>/dev/null; then
        # The nodes are children of `cartd dev`; noted now so none outlives a SIGKILLed parent.
        local nodes node
        nodes=$(pgrep -P "$CLUSTER_PID" 2>/dev/null || true)
        stop_pid "$CLUSTER_PID" "dev cluster"
        for node in $nodes; do
            if kill -0 "$node" 2>/dev/null; then
                echo "node pid $node outlived the dev cluster; sending SIGKILL" >&2
                kill -KILL "$node" 2>/dev/null || true
            fi
        done
    fi
    CLUSTER_PID=""
    if [[ -n "$CLUSTER_DIR" && -d "$CLUSTER_DIR" ]]; then
        rm -rf -- "$CLUSTER_DIR"
    fi
    CLUSTER_DIR=""
}
