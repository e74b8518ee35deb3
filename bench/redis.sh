# Sourced by the bench scripts (after cluster.sh): install, start and stop a throw-away Redis on
# loopback.
#
# `ensure_redis_server` installs the Debian package `redis-server` with apt-get when the binary is
# missing (root only; `apt-get update` only if the install fails without it). The package's own
# service is not started: when no /usr/sbin/policy-rc.d exists, one denying service starts is put
# in place for the install and removed after it (on systemd the unit is still enabled for the
# next boot: `systemctl disable --now redis-server` undoes that).
#
# `start_redis PORT FSYNC` starts `redis-server` in the foreground of a background job with only
# command-line flags (no config file): bound to 127.0.0.1, data in a fresh temp dir, no RDB
# snapshots, an append-only file fsynced per FSYNC (`everysec` or `always`). It sets REDIS_PID /
# REDIS_URL.
#
# `start_redis_replicated PORT FSYNC REPLICAS` starts a primary on PORT the same way and REPLICAS
# replicas on PORT+1… (`--replicaof 127.0.0.1 PORT`, each with its own dir and the same AOF
# setting), and returns once every replica reports `master_link_status:up` (`redis-cli INFO
# replication`, at most READY_TIMEOUT_S). REDIS_PID / REDIS_URL are the primary's;
# REDIS_ALL_PIDS holds every server's pid.
#
# `stop_redis` stops every server started here with SIGTERM (SIGKILL after STOP_TIMEOUT_S) and
# removes their dirs. Scripts call stop_redis from their EXIT trap.

REDIS_PID=""
REDIS_URL=""
REDIS_ALL_PIDS="" # every redis-server running from here (the primary first)
REDIS_DIRS=""     # their temp dirs
POLICY_RC_ADDED=""

ensure_redis_server() {
    if command -v redis-server >/dev/null 2>&1; then
        echo "using $(command -v redis-server): $(redis-server --version)"
        return 0
    fi
    if [[ $(id -u) -ne 0 ]]; then
        echo "redis-server is not installed; install the redis-server package (apt-get install redis-server) or run this as root" >&2
        return 1
    fi
    echo "redis-server is not installed: installing the Debian package redis-server (with its dependency redis-tools and their libraries) via apt-get; its system service will not be started"
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\n# added by cartdb bench/redis.sh for the duration of one install\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        POLICY_RC_ADDED=1
    fi
    local rc=0
    if ! DEBIAN_FRONTEND=noninteractive apt-get -q install -y --no-install-recommends redis-server; then
        echo "apt-get install failed; running apt-get update and trying again"
        DEBIAN_FRONTEND=noninteractive apt-get -q update &&
            DEBIAN_FRONTEND=noninteractive apt-get -q install -y --no-install-recommends redis-server || rc=$?
    fi
    remove_policy_rc
    if ((rc != 0)) || ! command -v redis-server >/dev/null 2>&1; then
        echo "could not install redis-server" >&2
        return 1
    fi
    echo "installed $(command -v redis-server): $(redis-server --version)"
}

remove_policy_rc() {
    if [[ -n "$POLICY_RC_ADDED" ]]; then
        rm -f /usr/sbin/policy-rc.d
        POLICY_RC_ADDED=""
    fi
}

# launch_redis PORT FSYNC [redis-server flags…]: one server in a fresh temp dir, up and
# accepting connections; its pid in LAUNCHED_PID (and REDIS_ALL_PIDS, so stop_redis stops it).
LAUNCHED_PID=""
launch_redis() {
    local port=$1 fsync=$2 dir
    shift 2
    if port_answers "$port"; then
        echo "something already listens on 127.0.0.1:$port; refusing to benchmark it" >&2
        return 1
    fi
    dir="$(mktemp -d)"
    REDIS_DIRS="$REDIS_DIRS $dir"
    redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save "" --daemonize no \
        --appendonly yes --appendfsync "$fsync" --logfile "$dir/redis.log" "$@" &
    LAUNCHED_PID=$!
    REDIS_ALL_PIDS="$REDIS_ALL_PIDS $LAUNCHED_PID"
    local waited=0
    until grep -q 'Ready to accept connections' "$dir/redis.log" 2>/dev/null; do
        if ! kill -0 "$LAUNCHED_PID" 2>/dev/null || ((waited >= READY_TIMEOUT_S * 10)); then
            echo "redis-server on port $port did not come up; its log:" >&2
            cat "$dir/redis.log" >&2 || true
            return 1
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
}

start_redis() {
    local port=$1 fsync=$2
    launch_redis "$port" "$fsync" || return 1
    REDIS_PID=$LAUNCHED_PID
    REDIS_URL="redis://127.0.0.1:$port"
    echo "redis up: $REDIS_URL (appendonly yes, appendfsync $fsync)"
}

# replica_link_up PORT: the replica on PORT reports its link to the primary up.
replica_link_up() {
    timeout 5 redis-cli -h 127.0.0.1 -p "$1" INFO replication 2>/dev/null | tr -d '\r' |
        grep -qx 'master_link_status:up'
}

start_redis_replicated() {
    local port=$1 fsync=$2 replicas=$3 i waited
    if ! command -v redis-cli >/dev/null 2>&1; then
        echo "redis-cli is missing (package redis-tools); it checks the replicas' links" >&2
        return 1
    fi
    for ((i = 0; i <= replicas; i++)); do
        if port_answers $((port + i)); then
            echo "something already listens on 127.0.0.1:$((port + i)); refusing to benchmark it" >&2
            return 1
        fi
    done
    launch_redis "$port" "$fsync" || return 1
    REDIS_PID=$LAUNCHED_PID
    for ((i = 1; i <= replicas; i++)); do
        launch_redis $((port + i)) "$fsync" --replicaof 127.0.0.1 "$port" || return 1
    done
    for ((i = 1; i <= replicas; i++)); do
        waited=0
        until replica_link_up $((port + i)); do
            if ((waited >= READY_TIMEOUT_S * 10)); then
                echo "the replica on port $((port + i)) has no link to its primary after ${READY_TIMEOUT_S}s:" >&2
                timeout 5 redis-cli -h 127.0.0.1 -p $((port + i)) INFO replication >&2 || true
                return 1
            fi
            sleep 0.1
            waited=$((waited + 1))
        done
    done
    REDIS_URL="redis://127.0.0.1:$port"
    echo "redis up: primary $REDIS_URL and $replicas replicas on ports $((port + 1))-$((port + replicas)), all linked (appendonly yes, appendfsync $fsync on each)"
}

stop_redis() {
    local pid dir
    for pid in $REDIS_ALL_PIDS; do
        stop_pid "$pid" "redis-server"
    done
    REDIS_ALL_PIDS=""
    REDIS_PID=""
    REDIS_URL=""
    for dir in $REDIS_DIRS; do
        if [[ -d "$dir" ]]; then
            rm -rf -- "$dir"
        fi
    done
    REDIS_DIRS=""
}
