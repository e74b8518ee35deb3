# Sourced by the bench scripts: start and stop a `cartd dev` cluster on loopback with a throw-away
# data dir. `start_cluster NODES PORT` sets CLUSTER_PID / CLUSTER_ENDPOINTS; `stop_cluster` stops it
# with SIGTERM (SIGKILL after STOP_TIMEOUT_S) and removes the data dir. The scripts trap EXIT to
# call stop_cluster on every path, failures included.

READY_TIMEOUT_S=${READY_TIMEOUT_S:-60}
STOP_TIMEOUT_S=${STOP_TIMEOUT_S:-30}
CLUSTER_PID=""
CLUSTER_DIR=""
CLUSTER_ENDPOINTS=""

port_answers() {
    # bash's /dev/tcp: succeeds when something accepts a TCP connection on the port.
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start_cluster() {
    local nodes=$1 port=$2 i
    for ((i = 0; i < nodes; i++)); do
        if port_answers $((port + i)); then
            echo "something already listens on 127.0.0.1:$((port + i)); refusing to benchmark it" >&2
            return 1
        fi
    done
    CLUSTER_DIR="$(mktemp -d)"
    target/release/cartd dev --nodes "$nodes" --base-port "$port" --data-dir "$CLUSTER_DIR" >"$CLUSTER_DIR/dev.log" 2>&1 &
    CLUSTER_PID=$!
    local waited=0
    until grep -q 'cartdb dev cluster up:' "$CLUSTER_DIR/dev.log"; do
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
        kill -TERM "$CLUSTER_PID" 2>/dev/null || true
        local waited=0
        while kill -0 "$CLUSTER_PID" 2>/dev/null && ((waited < STOP_TIMEOUT_S * 10)); do
            sleep 0.1
            waited=$((waited + 1))
        done
        if kill -0 "$CLUSTER_PID" 2>/dev/null; then
            echo "dev cluster did not stop within ${STOP_TIMEOUT_S}s; sending SIGKILL" >&2
            kill -KILL "$CLUSTER_PID" 2>/dev/null || true
        fi
        wait "$CLUSTER_PID" 2>/dev/null || true
    fi
    CLUSTER_PID=""
    if [[ -n "$CLUSTER_DIR" && -d "$CLUSTER_DIR" ]]; then
        rm -rf -- "$CLUSTER_DIR"
    fi
    CLUSTER_DIR=""
}
