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
# 2. builds everything (cargo build --profile demo --workspace: proxy and demo
#    app, release code with a quicker link than --release's whole-program one);
# 3. starts causeway with proxy.toml from the repository root (rewritten to
#    the cluster's ports and CAUSEWAY_PORT / METRICS_PORT when they are not
#    the defaults);
# 4. starts Prometheus, when it is installed, with grafana/prometheus.yml's
#    scrape config pointed at causeway's metrics port (data in a temporary
#    directory, removed at the end);
# 5. runs `demo-app migrate` and `demo-app cdc --once` (creates the CDC
#    slot, so it sees every ride), then `demo-app all` (api, payments, enqueuer,
#    completer, reaper, streamer, two consumers, cdc, simulator), every
#    query through causeway;
# 6. prints the URLs, then a status line every 5 seconds (the simulator's:
#    rides, reads on replicas and on the primary, stale reads, read-wait p99,
#    the consumers' and CDC's lag). Ctrl-C stops what this script started
#    (the demo app, the proxy, Prometheus, and the cluster if it was not
#    already running), and the simulator's summary is the last line.
#
# Per-event lines (each ride, charge, job, log pass, CDC change) are at
# debug level: `--verbose` (or DEMO_VERBOSE=1) shows them, with the build's
# and the cluster's full output; RUST_LOG sets the level outright.
#
# Environment: CAUSEWAY_CONFIG (default $REPO/proxy.toml), CAUSEWAY_PORT
# (6432), METRICS_PORT (9187), API_PORT (5000), PAYMENTS_PORT (5001),
# PROMETHEUS_PORT (9090), DEMO_PAUSE_MS (the simulator's pause between rides,
# 200), DEMO_STATUS_EVERY (seconds between status lines, 5), DEMO_VERBOSE,
# RUST_LOG (default info); CLUSTER_DIR, PGPORT_PRIMARY, REDIS_PORT... as for
# cluster.sh; CARGO_TARGET_DIR as for cargo. DEMO_DURATION=N stops
# everything after N seconds (for scripts and CI; default: run until Ctrl-C).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLUSTER=("bash" "$REPO/cluster/cluster.sh")
CONFIG=${CAUSEWAY_CONFIG:-$REPO/proxy.toml}
CAUSEWAY_PORT=${CAUSEWAY_PORT:-6432}
METRICS_PORT=${METRICS_PORT:-9187}
API_PORT=${API_PORT:-5000}
PAYMENTS_PORT=${PAYMENTS_PORT:-5001}
PROMETHEUS_PORT=${PROMETHEUS_PORT:-9090}
DEMO_PAUSE_MS=${DEMO_PAUSE_MS:-200}
DEMO_STATUS_EVERY=${DEMO_STATUS_EVERY:-5}
DEMO_DURATION=${DEMO_DURATION:-}
DEMO_VERBOSE=${DEMO_VERBOSE:-0}
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}

case ${1:-} in
  "") ;;
  -v | --verbose) DEMO_VERBOSE=1 ;;
  -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
  *) printf 'demo: unknown argument %s (--verbose, --help)\n' "$1" >&2; exit 2 ;;
esac
if [[ $DEMO_VERBOSE == 0 ]]; then DEMO_VERBOSE=; fi
# causeway logs at RUST_LOG (info: replicas turning healthy or not); the
# demo app too, unless RUST_LOG is unset and the demo verbose: then its
# per-event lines (debug) show.
if [[ -n ${RUST_LOG:-} ]]; then
  DEMO_APP_LOG=$RUST_LOG
elif [[ -n $DEMO_VERBOSE ]]; then
  DEMO_APP_LOG=info,demo_app=debug
else
  DEMO_APP_LOG=info
fi
export RUST_LOG=${RUST_LOG:-info}

say() { printf 'demo: %s\n' "$*"; }
die() { printf 'demo: error: %s\n' "$*" >&2; exit 1; }
# Runs "$@" with its output shown when verbose, else kept and shown only if
# it fails.
quietly() {
  if [[ -n $DEMO_VERBOSE ]]; then "$@"; return; fi
  local out status=0
  out=$("$@" 2>&1) || status=$?
  ((status == 0)) || printf '%s\n' "$out" >&2
  return "$status"
}

STARTED_CLUSTER=0
CAUSEWAY_PID=
DEMO_APP_PID=
PROMETHEUS_PID=
DEMO_TMP=$(mktemp -d "${TMPDIR:-/tmp}/causeway-demo.XXXXXX")
# The simulator writes its summary here when it stops; it is printed last.
export SIMULATOR_SUMMARY_FILE=$DEMO_TMP/summary

cleanup() {
  set +e
  trap - EXIT INT TERM HUP
  local pid
  # The demo app first (it stops its children in order), then the proxy,
  # then Prometheus.
  for pid in $DEMO_APP_PID $CAUSEWAY_PID $PROMETHEUS_PID; do
    kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  done
  if ((STARTED_CLUSTER)); then
    say "stopping the cluster this script started"
    quietly "${CLUSTER[@]}" stop
  fi
  [[ -s $SIMULATOR_SUMMARY_FILE ]] && cat "$SIMULATOR_SUMMARY_FILE"
  rm -rf -- "$DEMO_TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
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
  say "starting the cluster (cluster.sh start)"
  quietly "${CLUSTER[@]}" start || die "the cluster did not start (see above)"
  STARTED_CLUSTER=1
fi
eval "$("${CLUSTER[@]}" env)"
if grep -qs '^L_NO_FSYNC=1' "$CLUSTER_DIR/cluster.env"; then
  say "warning: this cluster was made with --no-fsync (synchronous_commit=off): WAL reaches"
  say "         the replicas late and reads fall back to the primary; for the real picture:"
  say "         bash cluster/cluster.sh --dir $CLUSTER_DIR destroy, then run this again"
fi

# 2. Build (quietly unless verbose: a first build lists hundreds of crates).
build=(cargo build --profile demo --workspace)
if [[ -n $DEMO_VERBOSE ]]; then
  say "${build[*]}"
else
  say "${build[*]} (quietly; a first build takes minutes)"
  build+=(--quiet)
fi
(cd "$REPO" && "${build[@]}")
CAUSEWAY=$TARGET_DIR/demo/causeway
DEMO_APP=$TARGET_DIR/demo/demo-app

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
"$CAUSEWAY" --check --config "$CONFIG" >/dev/null ||
  die "causeway rejects $CONFIG"
# In a session of its own (and its prefixing sed deaf to SIGINT), so that a
# Ctrl-C in the terminal reaches this script and the demo app but not the
# proxy, which the demo app still needs while it stops: cleanup stops it last.
detached=()
if command -v setsid >/dev/null 2>&1; then detached=(setsid); fi
"${detached[@]}" "$CAUSEWAY" --config "$CONFIG" \
  > >(trap '' INT; exec sed -u 's/^/causeway   | /') 2>&1 &
CAUSEWAY_PID=$!
for _ in $(seq 1 100); do
  port_open "$CAUSEWAY_PORT" && break
  kill -0 "$CAUSEWAY_PID" 2>/dev/null || die "causeway exited; see its output above"
  sleep 0.1
done
port_open "$CAUSEWAY_PORT" || die "causeway is not listening on $CAUSEWAY_PORT after 10 s"

# 4. Prometheus, if installed, scraping causeway: grafana/prometheus.yml
# with its target (the host as Docker sees it) made this machine's port.
PROMETHEUS_URL=
if ! command -v prometheus >/dev/null 2>&1; then
  say "prometheus is not installed: not started (bash cluster/setup.sh demo installs it)"
elif port_open "$PROMETHEUS_PORT"; then
  say "port $PROMETHEUS_PORT is in use: Prometheus not started (set PROMETHEUS_PORT)"
else
  sed "s/host\.docker\.internal:9187/127.0.0.1:$METRICS_PORT/" \
    "$REPO/grafana/prometheus.yml" >"$DEMO_TMP/prometheus.yml"
  prometheus --config.file="$DEMO_TMP/prometheus.yml" \
    --storage.tsdb.path="$DEMO_TMP/prometheus" \
    --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" \
    >"$DEMO_TMP/prometheus.log" 2>&1 &
  PROMETHEUS_PID=$!
  for _ in $(seq 1 100); do
    port_open "$PROMETHEUS_PORT" && break
    kill -0 "$PROMETHEUS_PID" 2>/dev/null || break
    sleep 0.1
  done
  if port_open "$PROMETHEUS_PORT"; then
    PROMETHEUS_URL="http://127.0.0.1:$PROMETHEUS_PORT/"
  else
    say "Prometheus did not start; the end of its log:"
    tail -n 5 "$DEMO_TMP/prometheus.log" >&2
    kill "$PROMETHEUS_PID" 2>/dev/null
    PROMETHEUS_PID=
  fi
fi

# 5. The demo app: every query through the proxy.
export DATABASE_URL="postgres://app:app@127.0.0.1:$CAUSEWAY_PORT/app"
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
export PRIMARY_URL
DEMO_SERVERS="primary=$PGPORT_PRIMARY"
for k in "${!REPLICA_PORT_LIST[@]}"; do
  DEMO_SERVERS+=",replica$k=${REPLICA_PORT_LIST[$k]}"
done
export DEMO_SERVERS
export CAUSEWAY_METRICS_URL="http://127.0.0.1:$METRICS_PORT/metrics"
RUST_LOG=$DEMO_APP_LOG "$DEMO_APP" migrate
# The CDC slot before any ride, so ride_stats counts every one.
RUST_LOG=$DEMO_APP_LOG "$DEMO_APP" cdc --once
RUST_LOG=$DEMO_APP_LOG "$DEMO_APP" all --port "$API_PORT" --payments-port "$PAYMENTS_PORT" \
  --pause-ms "$DEMO_PAUSE_MS" --status-every "$DEMO_STATUS_EVERY" &
DEMO_APP_PID=$!

CLUSTER_CMD="bash cluster/cluster.sh"
[[ $CLUSTER_DIR == "$REPO/.cluster" ]] || CLUSTER_CMD+=" --dir $CLUSTER_DIR"
ADMIN_PSQL="psql -h 127.0.0.1 -p $CAUSEWAY_PORT -U app causeway -c 'SHOW REPLICAS'"
cat <<EOF

  The demo runs through causeway in front of the local cluster.

  API        http://127.0.0.1:$API_PORT/rides
             curl -s -H 'Authorization: user@example.com' http://127.0.0.1:$API_PORT/rides/1
  dashboard  http://127.0.0.1:$METRICS_PORT/
  metrics    http://127.0.0.1:$METRICS_PORT/metrics
  prometheus ${PROMETHEUS_URL:-(not running)}
  admin      $ADMIN_PSQL   (password: app)
  proxy      psql "$DATABASE_URL"
  primary    $PRIMARY_URL   (direct, bypassing the proxy)
  redis      $REDIS_URL   (the log: XLEN rocket-rides-log)

  Check it:            DATABASE_URL=$DATABASE_URL \\
                       PRIMARY_URL=$PRIMARY_URL REDIS_URL=$REDIS_URL \\
                       ${DEMO_APP#"$REPO"/} diagnose
  Make a replica lag:  $CLUSTER_CMD pause replica0   (then: resume replica0)
  Cluster status:      $CLUSTER_CMD status

  Every ${DEMO_STATUS_EVERY}s a status line (per-event lines: --verbose). Ctrl-C stops
  what this script started.

EOF

# Wait until Ctrl-C, DEMO_DURATION, or until the proxy or the demo app exits.
if [[ -n $DEMO_DURATION ]]; then
  (sleep "$DEMO_DURATION" && kill -USR1 $$ 2>/dev/null) &
fi
wait -n $CAUSEWAY_PID $DEMO_APP_PID || true
say "a demo process exited; stopping"
