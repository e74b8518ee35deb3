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
# REDIS_URL. `stop_redis` stops it with SIGTERM (SIGKILL after STOP_TIMEOUT_S) and removes the
# dir. Scripts call stop_redis from their EXIT trap.

REDIS_PID=""
REDIS_DIR=""
REDIS_URL=""
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

start_redis() {
    local port=$1 fsync=$2
    if port_answers "$port"; then
        echo "something already listens on 127.0.0.1:$port; refusing to benchmark it" >&2
        return 1
    fi
    REDIS_DIR="$(mktemp -d)"
    redis-server --port "$port" --bind 127.0.0.1 --dir "$REDIS_DIR" --save "" --daemonize no \
        --appendonly yes --appendfsync "$fsync" --logfile "$REDIS_DIR/redis.log" &
    REDIS_PID=$!
    local waited=0
    until grep -q 'Ready to accept connections' "$REDIS_DIR/redis.log" 2>/dev/null; do
        if ! kill -0 "$REDIS_PID" 2>/dev/null || ((waited >= READY_TIMEOUT_S * 10)); then
            echo "redis-server did not come up; its log:" >&2
            cat "$REDIS_DIR/redis.log" >&2 || true
            return 1
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    REDIS_URL="redis://127.0.0.1:$port"
    echo "redis up: $REDIS_URL (appendonly yes, appendfsync $fsync, dir $REDIS_DIR)"
}

stop_redis() {
    if [[ -n "$REDIS_PID" ]]; then
        stop_pid "$REDIS_PID" "redis-server"
    fi
    REDIS_PID=""
    REDIS_URL=""
    if [[ -n "$REDIS_DIR" && -d "$REDIS_DIR" ]]; then
        rm -rf -- "$REDIS_DIR"
    fi
    REDIS_DIR=""
}
