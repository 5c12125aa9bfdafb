#!/usr/bin/env bash
# Installs what a fleet needs and runs one: a local redis-server and three replicas of the demo
# service sharing one rollout through it, all on 127.0.0.1. Prints their URLs; Ctrl-C (or a
# TERM to this script) stops every process it started, each by its own pid.
#
# Redis runs with appendonly yes and appendfsync always, so an acknowledged transition survives
# a crash of Redis; its files stay in ./driftgate-fleet, so the next run continues the rollout.
# Set DRIFTGATE_ADMIN_TOKEN to use the admin endpoints.
#
#   REDIS_PORT     Redis's port (default 6380: Debian's own redis-server service takes 6379)
#   REPLICA_PORTS  the replicas' ports (default "8001 8002 8003")
#   FLEET_DIR      Redis's data, the replicas' logs (default ./driftgate-fleet)
#   DRIFTGATE_BIN  a driftgate command to run instead of installing into .venv
source "$(dirname "$0")/setup.sh"
cd "$DRIFTGATE_ROOT"

redis_port="${REDIS_PORT:-6380}"
read -r -a replica_ports <<<"${REPLICA_PORTS:-8001 8002 8003}"
fleet_dir="${FLEET_DIR:-$DRIFTGATE_ROOT/driftgate-fleet}"
values="$DRIFTGATE_ROOT/examples/values_fleet.yaml"

if [ -z "${DRIFTGATE_BIN:-}" ]; then
    # redis-server brings redis-cli (redis-tools); curl waits for the replicas
    install_debian_packages curl redis-server
    install_driftgate "fastapi,redis"
    DRIFTGATE_BIN="$DRIFTGATE_ROOT/.venv/bin/driftgate"
fi
for tool in redis-server redis-cli curl setsid; do
    command -v "$tool" >/dev/null || {
        echo "fleet_demo.sh: $tool not found (Debian: apt-get install redis-server curl)" >&2
        exit 1
    }
done
if [ -z "${DRIFTGATE_ADMIN_TOKEN:-}" ]; then
    echo "==> DRIFTGATE_ADMIN_TOKEN is not set: the admin endpoints will refuse every request"
fi

mkdir -p "$fleet_dir/redis"
redis_pid=""
replica_pids=()

# TERM, then KILL after 10 s; `wait` reaps it, so nothing is left behind.
stop_process() {
    local pid="$1" name="$2" waited=0
    kill -TERM "$pid" 2>/dev/null || return 0
    while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt 100 ]; do
        sleep 0.1
        waited=$((waited + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "==> $name (pid $pid) did not stop in 10 s: killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# The replicas first (each gives up its evaluation lease), then Redis (which syncs its log).
stop_fleet() {
    trap - INT TERM EXIT
    local i
    for i in "${!replica_pids[@]}"; do
        stop_process "${replica_pids[$i]}" "replica on port ${replica_ports[$i]}"
    done
    [ -z "$redis_pid" ] || stop_process "$redis_pid" "redis-server"
    echo "==> fleet stopped"
}
trap 'stop_fleet; exit 130' INT
trap 'stop_fleet; exit 143' TERM
trap 'stop_fleet' EXIT

# Each child in its own session: Ctrl-C reaches this script alone, which stops them in order.
echo "==> starting redis-server on 127.0.0.1:$redis_port (data in $fleet_dir/redis)"
setsid redis-server --bind 127.0.0.1 --port "$redis_port" --dir "$fleet_dir/redis" \
    --appendonly yes --appendfsync always --save "" \
    --logfile "$fleet_dir/redis.log" --daemonize no &
redis_pid=$!
for _ in $(seq 100); do
    redis-cli -h 127.0.0.1 -p "$redis_port" ping 2>/dev/null | grep -q PONG && break
    kill -0 "$redis_pid" 2>/dev/null || break
    sleep 0.1
done
if ! redis-cli -h 127.0.0.1 -p "$redis_port" ping 2>/dev/null | grep -q PONG; then
    echo "fleet_demo.sh: redis-server did not come up on port $redis_port:" >&2
    tail -n 5 "$fleet_dir/redis.log" >&2 || true
    exit 1
fi

export DRIFTGATE_REDIS_URL="redis://127.0.0.1:$redis_port/0"
for port in "${replica_ports[@]}"; do
    echo "==> starting a replica on 127.0.0.1:$port (log: $fleet_dir/replica-$port.log)"
    setsid "$DRIFTGATE_BIN" serve --config "$values" --host 127.0.0.1 --port "$port" \
        --log-level warning >"$fleet_dir/replica-$port.log" 2>&1 &
    replica_pids+=($!)
done
for i in "${!replica_pids[@]}"; do
    port="${replica_ports[$i]}"
    for _ in $(seq 300); do
        curl -sf "http://127.0.0.1:$port/api/v1/healthz" >/dev/null && break
        kill -0 "${replica_pids[$i]}" 2>/dev/null || break
        sleep 0.1
    done
    if ! curl -sf "http://127.0.0.1:$port/api/v1/healthz" >/dev/null; then
        echo "fleet_demo.sh: the replica on port $port did not come up:" >&2
        tail -n 5 "$fleet_dir/replica-$port.log" >&2 || true
        exit 1
    fi
done

echo
echo "The fleet is up; one rollout in Redis (key driftgate:demo:rollout):"
echo "  redis-server  redis://127.0.0.1:$redis_port/0  pid $redis_pid"
for i in "${!replica_pids[@]}"; do
    echo "  replica       http://127.0.0.1:${replica_ports[$i]}  pid ${replica_pids[$i]}"
done
echo "Stop: Ctrl-C here, or kill $$ (stops each pid above, replicas first)"

# Runs until interrupted, or until a process exits on its own (then the rest are stopped).
exited=""
wait -n -p exited "$redis_pid" "${replica_pids[@]}" || true
echo "fleet_demo.sh: process $exited exited on its own; stopping the fleet" >&2
exit 1
