#!/usr/bin/env bash
# cluster/demo.sh — the whole demo in one command:
#
#   bash cluster/demo.sh
#
# 0. installs what the machine lacks (cluster/setup.sh demo: PostgreSQL 15,
#    Redis, Prometheus; as root, else it prints the apt-get line);
# 1. starts the local cluster (primary, 2 replicas, Redis) with cluster.sh,
#    unless it is already running (with fsync on: a --no-fsync cluster sets
#    synchronous_commit=off, which delays WAL shipping, so replicas lag and
#    reads fall back to the primary);
# 2. builds everything (cargo build --release --workspace: proxy and demo app);
# 3. starts causeway with proxy.toml from the repository root (rewritten to
#    the cluster's ports and CAUSEWAY_PORT / METRICS_PORT when they are not
#    the defaults);
# 4. runs `demo-app migrate` and `demo-app cdc --once` (creates the CDC
#    slot, so it sees every ride), then `demo-app all` (api, payments, enqueuer,
#    completer, reaper, streamer, two consumers, cdc, simulator), every
#    query through causeway;
# 5. prints the URLs, then waits. Ctrl-C stops what this script started
#    (the demo app, the proxy, and the cluster if it was not already running).
#
# Environment: CAUSEWAY_CONFIG (default $REPO/proxy.toml), CAUSEWAY_PORT
# (6432), METRICS_PORT (9187), API_PORT (5000), PAYMENTS_PORT (5001),
# DEMO_PAUSE_MS (the simulator's pause between rides, 200), RUST_LOG
# (default info); CLUSTER_DIR, PGPORT_PRIMARY, REDIS_PORT... as for
# cluster.sh. DEMO_DURATION=N stops everything after N seconds (for scripts
# and CI; default: run until Ctrl-C).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLUSTER=("bash" "$REPO/cluster/cluster.sh")
CONFIG=${CAUSEWAY_CONFIG:-$REPO/proxy.toml}
CAUSEWAY_PORT=${CAUSEWAY_PORT:-6432}
METRICS_PORT=${METRICS_PORT:-9187}
API_PORT=${API_PORT:-5000}
PAYMENTS_PORT=${PAYMENTS_PORT:-5001}
DEMO_PAUSE_MS=${DEMO_PAUSE_MS:-200}
DEMO_DURATION=${DEMO_DURATION:-}
export RUST_LOG=${RUST_LOG:-info}

say() { printf 'demo: %s\n' "$*"; }
die() { printf 'demo: error: %s\n' "$*" >&2; exit 1; }

STARTED_CLUSTER=0
CAUSEWAY_PID=
DEMO_APP_PID=

cleanup() {
  set +e
  trap - EXIT INT TERM
  local pid
  # The demo app first (it stops its children in order), then the proxy.
  for pid in $DEMO_APP_PID $CAUSEWAY_PID; do
    kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  done
  if ((STARTED_CLUSTER)); then
    say "stopping the cluster this script started"
    "${CLUSTER[@]}" stop
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
trap 'say "DEMO_DURATION (${DEMO_DURATION}s) is up"; exit 0' USR1

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

bash "$REPO/cluster/setup.sh" demo || die "set-up failed (see above)"
if ! command -v cargo >/dev/null 2>&1 && [[ -f ${CARGO_HOME:-$HOME/.cargo}/env ]]; then
  # shellcheck disable=SC1091
  source "${CARGO_HOME:-$HOME/.cargo}/env"
fi
[[ -f $CONFIG ]] || die "no config at $CONFIG (set CAUSEWAY_CONFIG)"
for port in "$CAUSEWAY_PORT" "$METRICS_PORT" "$API_PORT" "$PAYMENTS_PORT"; do
  port_open "$port" && die "port $port is already in use (another demo?); \
set CAUSEWAY_PORT, METRICS_PORT, API_PORT or PAYMENTS_PORT"
done

# 1. The cluster.
if "${CLUSTER[@]}" status >/dev/null 2>&1; then
  say "cluster already running"
else
  "${CLUSTER[@]}" start
  STARTED_CLUSTER=1
fi
eval "$("${CLUSTER[@]}" env)"
if grep -qs '^L_NO_FSYNC=1' "$CLUSTER_DIR/cluster.env"; then
  say "warning: this cluster was made with --no-fsync (synchronous_commit=off): WAL reaches"
  say "         the replicas late and reads fall back to the primary; for the real picture:"
  say "         bash cluster/cluster.sh --dir $CLUSTER_DIR destroy, then run this again"
fi

# 2. Build.
say "cargo build --release --workspace"
(cd "$REPO" && cargo build --release --workspace)
DEMO_APP=$REPO/target/release/demo-app

# 3. The proxy, its output prefixed so it reads apart from the demo app's.
# proxy.toml names the default ports; other ports get a copy that names them.
read -r -a REPLICA_PORT_LIST <<<"$PGPORT_REPLICAS"
if [[ $CAUSEWAY_PORT != 6432 || $METRICS_PORT != 9187 || $PGPORT_PRIMARY != 5433 ||
      $PGPORT_REPLICAS != "5434 5435" ]]; then
  [[ $CONFIG == "$REPO/proxy.toml" && ${#REPLICA_PORT_LIST[@]} == 2 ]] ||
    die "non-default ports need proxy.toml (2 replicas) to derive a config from; \
or give a config of your own in CAUSEWAY_CONFIG"
  DERIVED=$CLUSTER_DIR/demo-proxy.toml
  sed -e "s/^listen = \"127.0.0.1:6432\"/listen = \"127.0.0.1:$CAUSEWAY_PORT\"/" \
      -e "s/^listen = \"127.0.0.1:9187\"/listen = \"127.0.0.1:$METRICS_PORT\"/" \
      -e "s/^port = 5433 /port = $PGPORT_PRIMARY /" \
      -e "s/^port = 5434$/port = ${REPLICA_PORT_LIST[0]}/" \
      -e "s/^port = 5435$/port = ${REPLICA_PORT_LIST[1]}/" \
      "$CONFIG" >"$DERIVED"
  CONFIG=$DERIVED
  say "ports differ from proxy.toml's: using $CONFIG"
fi
"$REPO/target/release/causeway" --check --config "$CONFIG" >/dev/null ||
  die "causeway rejects $CONFIG"
"$REPO/target/release/causeway" --config "$CONFIG" > >(sed -u 's/^/causeway   | /') 2>&1 &
CAUSEWAY_PID=$!
for _ in $(seq 1 100); do
  port_open "$CAUSEWAY_PORT" && break
  kill -0 "$CAUSEWAY_PID" 2>/dev/null || die "causeway exited; see its output above"
  sleep 0.1
done
port_open "$CAUSEWAY_PORT" || die "causeway is not listening on $CAUSEWAY_PORT after 10 s"

# 4. The demo app: every query through the proxy.
export DATABASE_URL="postgres://app:app@127.0.0.1:$CAUSEWAY_PORT/app"
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
export PRIMARY_URL
DEMO_SERVERS="primary=$PGPORT_PRIMARY"
for k in "${!REPLICA_PORT_LIST[@]}"; do
  DEMO_SERVERS+=",replica$k=${REPLICA_PORT_LIST[$k]}"
done
export DEMO_SERVERS
"$DEMO_APP" migrate
# The CDC slot before any ride, so ride_stats counts every one.
"$DEMO_APP" cdc --once
"$DEMO_APP" all --port "$API_PORT" --payments-port "$PAYMENTS_PORT" --pause-ms "$DEMO_PAUSE_MS" &
DEMO_APP_PID=$!

CLUSTER_CMD="bash cluster/cluster.sh"
[[ $CLUSTER_DIR == "$REPO/.cluster" ]] || CLUSTER_CMD+=" --dir $CLUSTER_DIR"
ADMIN_PSQL="psql -h 127.0.0.1 -p $CAUSEWAY_PORT -U app causeway -c 'SHOW REPLICAS'"
cat <<EOF

  The demo runs through causeway in front of the local cluster.

  API        http://127.0.0.1:$API_PORT/rides
             curl -s -H 'Authorization: user@example.com' http://127.0.0.1:$API_PORT/rides/1
  metrics    http://127.0.0.1:$METRICS_PORT/metrics
  admin      $ADMIN_PSQL   (password: app)
  proxy      psql "$DATABASE_URL"
  primary    $PRIMARY_URL   (direct, bypassing the proxy)
  redis      $REDIS_URL   (the log: XLEN rocket-rides-log)

  Check it:            DATABASE_URL=$DATABASE_URL \\
                       PRIMARY_URL=$PRIMARY_URL REDIS_URL=$REDIS_URL \\
                       target/release/demo-app diagnose
  Make a replica lag:  $CLUSTER_CMD pause replica0   (then: resume replica0)
  Cluster status:      $CLUSTER_CMD status

  Ctrl-C stops what this script started.

EOF

# Wait until Ctrl-C, DEMO_DURATION, or until the proxy or the demo app exits.
if [[ -n $DEMO_DURATION ]]; then
  (sleep "$DEMO_DURATION" && kill -USR1 $$ 2>/dev/null) &
fi
wait -n $CAUSEWAY_PID $DEMO_APP_PID || true
say "a demo process exited; stopping"
