#!/usr/bin/env bash
# cluster/multi.sh — several causeway instances behind HAProxy on the local
# cluster, sharing causal LSNs through its Redis ([routing] causal_store):
# what a deployment behind a TCP load balancer looks like, on one machine.
#
#   bash cluster/multi.sh [--instances N] [--port P] [--duration S] [--check S]
#
#   --instances N   causeway instances (default 2): client ports 6441.., metrics
#                   ports 9441.., each a copy of proxy.toml with those ports and
#                   causal_store = the cluster's Redis
#   --port P        HAProxy's port, TCP round-robin over the instances (6440)
#   --duration S    stop everything after S seconds (default: at Ctrl-C)
#   --check S       instead of waiting: run the chaos load checker
#                   (examples/chaos) through HAProxy for S seconds, with one
#                   instance stopped and started again half-way, and exit with
#                   its status (stale reads fail it)
#
# Needs the cluster up (bash cluster/cluster.sh start), haproxy
# (bash cluster/setup.sh test installs it) and a release build (built here if
# missing). Connect with: psql -h 127.0.0.1 -p 6440 -U app app
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
INSTANCES=2
PORT=6440
DURATION=
CHECK=
while (($#)); do
  case $1 in
    --instances) INSTANCES=${2:?}; shift 2 ;;
    --port) PORT=${2:?}; shift 2 ;;
    --duration) DURATION=${2:?}; shift 2 ;;
    --check) CHECK=${2:?}; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "multi: unknown option $1" >&2; exit 2 ;;
  esac
done

say() { printf 'multi: %s\n' "$*"; }
die() { printf 'multi: error: %s\n' "$*" >&2; exit 1; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

command -v haproxy >/dev/null 2>&1 || [[ -x /usr/sbin/haproxy ]] || die "haproxy not found: bash cluster/setup.sh test"
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
bash "$REPO/cluster/cluster.sh" status >/dev/null 2>&1 || die "the cluster is not up: bash cluster/cluster.sh start"
eval "$(bash "$REPO/cluster/cluster.sh" env)"
[[ -n ${REDIS_PORT:-} ]] || die "the cluster has no Redis (started with --no-redis?)"
BIN=$REPO/target/release/causeway
[[ -x $BIN ]] || (cd "$REPO" && cargo build --release --bin causeway)

WORK=$(mktemp -d /tmp/causeway-multi-XXXXXX)
PIDS=()
cleanup() {
  set +e
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_instance() {
  local i=$1 port=$((6440 + $1)) metrics=$((9440 + $1))
  port_open "$port" && die "port $port is in use"
  sed -e "s/^listen = \"127.0.0.1:6432\"/listen = \"127.0.0.1:$port\"/" \
      -e "s/^listen = \"127.0.0.1:9187\"/listen = \"127.0.0.1:$metrics\"/" \
      -e "s|^# causal_store = .*|causal_store = \"redis://127.0.0.1:$REDIS_PORT/0\"|" \
      "$REPO/proxy.toml" > "$WORK/proxy$i.toml"
  "$BIN" --config "$WORK/proxy$i.toml" > "$WORK/causeway$i.log" 2>&1 &
  INSTANCE_PID[i]=$!
  PIDS+=("$!")
  for _ in $(seq 100); do port_open "$port" && return; sleep 0.1; done
  die "instance $i did not listen on $port (log: $WORK/causeway$i.log)"
}

declare -a INSTANCE_PID
servers=
for i in $(seq 1 "$INSTANCES"); do
  start_instance "$i"
  servers+="    server causeway$i 127.0.0.1:$((6440 + i)) check inter 200 fall 1 rise 2"$'\n'
done
cat > "$WORK/haproxy.cfg" <<CFG
global
    maxconn 4000
defaults
    mode tcp
    timeout connect 2s
    timeout client 1h
    timeout server 1h
frontend postgres
    bind 127.0.0.1:$PORT
    default_backend causeway
backend causeway
    balance roundrobin
$servers
CFG
"$HAPROXY" -db -f "$WORK/haproxy.cfg" > "$WORK/haproxy.log" 2>&1 &
PIDS+=("$!")
for _ in $(seq 50); do port_open "$PORT" && break; sleep 0.1; done
port_open "$PORT" || die "haproxy did not listen on $PORT"
say "$INSTANCES instances (ports 6441-$((6440 + INSTANCES)), metrics 9441-$((9440 + INSTANCES))) behind haproxy on 127.0.0.1:$PORT, causal store redis://127.0.0.1:$REDIS_PORT/0"
say "psql -h 127.0.0.1 -p $PORT -U app app      (logs in $WORK)"

if [[ -n $CHECK ]]; then
  CHECKER=$REPO/target/release/examples/chaos
  [[ -x $CHECKER ]] || (cd "$REPO" && cargo build --release --example chaos)
  "$CHECKER" --proxy "127.0.0.1:$PORT" --duration "$CHECK" &
  checker=$!
  sleep $((CHECK / 2))
  say "stopping instance 1 under load"
  kill -TERM "${INSTANCE_PID[1]}"; wait "${INSTANCE_PID[1]}" 2>/dev/null || true
  sleep 2
  say "starting instance 1 again"
  start_instance 1
  set +e
  wait "$checker"
  status=$?
  set -e
  say "load checker exited $status"
  exit "$status"
fi
if [[ -n $DURATION ]]; then sleep "$DURATION"; else wait; fi
