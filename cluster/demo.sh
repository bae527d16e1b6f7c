#!/usr/bin/env bash
# cluster/demo.sh — the whole demo in one command:
#
#   bash cluster/demo.sh
#
# 1. starts the local cluster (primary, 2 replicas, Redis) with cluster.sh,
#    unless it is already running;
# 2. builds everything (cargo build --release);
# 3. starts causeway with proxy.toml from the repository root;
# 4. starts the demo app (placeholder below until demo-app is written);
# 5. prints the URLs, then waits. Ctrl-C stops what this script started
#    (the proxy, the demo app, and the cluster if it was not already running).
#
# Environment: CAUSEWAY_CONFIG (default $REPO/proxy.toml), CAUSEWAY_PORT (6432)
# and METRICS_PORT (9187) — keep these in step with the config; RUST_LOG
# (default info); CLUSTER_DIR, PGPORT_PRIMARY, REDIS_PORT... as for cluster.sh.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLUSTER=("bash" "$REPO/cluster/cluster.sh")
CONFIG=${CAUSEWAY_CONFIG:-$REPO/proxy.toml}
CAUSEWAY_PORT=${CAUSEWAY_PORT:-6432}
METRICS_PORT=${METRICS_PORT:-9187}
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

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

[[ -f $CONFIG ]] || die "no config at $CONFIG (set CAUSEWAY_CONFIG)"
port_open "$CAUSEWAY_PORT" && die "port $CAUSEWAY_PORT is already in use (another causeway?)"

# 1. The cluster.
if "${CLUSTER[@]}" status >/dev/null 2>&1; then
  say "cluster already running"
else
  "${CLUSTER[@]}" start
  STARTED_CLUSTER=1
fi
eval "$("${CLUSTER[@]}" env)"

# 2. Build.
say "cargo build --release"
(cd "$REPO" && cargo build --release)

# 3. The proxy, its output prefixed so it reads apart from the demo app's.
"$REPO/target/release/causeway" --config "$CONFIG" > >(sed -u 's/^/causeway | /') 2>&1 &
CAUSEWAY_PID=$!
for _ in $(seq 1 100); do
  port_open "$CAUSEWAY_PORT" && break
  kill -0 "$CAUSEWAY_PID" 2>/dev/null || die "causeway exited; see its output above"
  sleep 0.1
done
port_open "$CAUSEWAY_PORT" || die "causeway is not listening on $CAUSEWAY_PORT after 10 s"

PROXY_URL="postgres://app:app@127.0.0.1:$CAUSEWAY_PORT/app"
CLUSTER_CMD="bash cluster/cluster.sh"
[[ $CLUSTER_DIR == "$REPO/.cluster" ]] || CLUSTER_CMD+=" --dir $CLUSTER_DIR"

# 4. The demo app.
# ----------------------------------------------------------------------------
# TODO(demo-app): start every demo process here once `demo-app all` exists:
#
#   DATABASE_URL=$PROXY_URL REDIS_URL=$REDIS_URL \
#     "$REPO/target/release/demo-app" all &
#   DEMO_APP_PID=$!
#
# and add its HTTP address to the URLs printed below.
# ----------------------------------------------------------------------------

cat <<EOF

  causeway is running in front of the local cluster.

  proxy     $PROXY_URL
            psql "$PROXY_URL"
  admin     psql "postgres://app:app@127.0.0.1:$CAUSEWAY_PORT/causeway" -c 'SHOW REPLICAS'
  metrics   http://127.0.0.1:$METRICS_PORT/metrics
  primary   $PRIMARY_URL   (direct, bypassing the proxy)
  redis     ${REDIS_URL:-none}

  Make a replica lag:  $CLUSTER_CMD pause replica0   (then: resume replica0)
  Cluster status:      $CLUSTER_CMD status

  Ctrl-C stops what this script started.

EOF

# Wait until Ctrl-C or until the proxy (or the demo app) exits on its own.
wait -n $CAUSEWAY_PID $DEMO_APP_PID || true
say "a demo process exited; stopping"
