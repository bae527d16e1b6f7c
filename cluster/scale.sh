#!/usr/bin/env bash
# cluster/scale.sh — causeway with many clients, on the local cluster:
#
#   1. SCALE_IDLE (10,000) clients connect and stay idle (each runs
#      `SELECT 1`, then sleeps): causeway's resident memory per client, and
#      what is left SCALE_SETTLE_SECONDS (15) after they have gone.
#   2. SCALE_ACTIVE (1,000) clients run `pgbench -S` at once over
#      `max_server_connections` (40) per server, in transaction mode:
#      failures, and latency p50 / p99 / max from `pgbench -l`.
#
#   bash cluster/scale.sh
#
# Needs the cluster running (cluster/cluster.sh start) with pgbench's tables
# (cluster/bench.sh makes them; or pgbench -i -s 10 on the primary as app),
# and an open-files limit above SCALE_IDLE for this shell (ulimit -n): the
# proxy and pgbench each hold one descriptor per client.
#
# Environment (defaults):
#   CAUSEWAY_BIN=target/release/causeway (built with cargo build --release
#     first)   SCALE_IDLE=10000  SCALE_ACTIVE=1000  SCALE_SECONDS=30
#   SCALE_PORT=6452  SCALE_METRICS_PORT=9197  SCALE_SERVER_CONNECTIONS=40
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=cluster/lib.sh
source "$REPO/cluster/lib.sh"
SCALE_IDLE=${SCALE_IDLE:-10000}
SCALE_ACTIVE=${SCALE_ACTIVE:-1000}
SCALE_SECONDS=${SCALE_SECONDS:-30}
SCALE_PORT=${SCALE_PORT:-6452}
SCALE_METRICS_PORT=${SCALE_METRICS_PORT:-9197}
SCALE_SERVER_CONNECTIONS=${SCALE_SERVER_CONNECTIONS:-40}
export PGPASSWORD=app

say() { printf 'scale: %s\n' "$*" >&2; }
die() { printf 'scale: error: %s\n' "$*" >&2; exit 1; }

eval "$(bash "$REPO/cluster/cluster.sh" env)"
bash "$REPO/cluster/cluster.sh" status >/dev/null || die "the cluster is not running (cluster/cluster.sh start)"
PGBENCH=$PG_BIN/pgbench
read -r -a REPLICA_PORTS <<<"$PGPORT_REPLICAS"
limit=$(ulimit -n)
((limit > SCALE_IDLE + 100)) || die "open files limit $limit: raise it above $SCALE_IDLE (ulimit -n)"

BIN=${CAUSEWAY_BIN:-$(release_causeway)}
[[ -x $BIN ]] || die "CAUSEWAY_BIN=$BIN is not executable"

scratch_dir scale

{
  cat <<EOF
[proxy]
listen = "127.0.0.1:$SCALE_PORT"
max_client_connections = $((SCALE_IDLE + 100))

[pool]
mode = "transaction"
max_server_connections = $SCALE_SERVER_CONNECTIONS

EOF
  servers_toml "$PGPORT_PRIMARY" "${REPLICA_PORTS[@]}"
  cat <<EOF

[routing]
monitor_database = "postgres"

[metrics]
enabled = true
listen = "127.0.0.1:$SCALE_METRICS_PORT"
EOF
} >"$WORK/causeway.toml"

RUST_LOG=warn "$BIN" --config "$WORK/causeway.toml" >"$WORK/causeway.log" 2>&1 &
PID=$!
wait_listening "$SCALE_PORT" 10 || true
sleep 2

rss_kb() { awk '/^VmRSS/ { print $2 }' "/proc/$PID/status"; }
clients() {
  curl -fsS --max-time 5 "http://127.0.0.1:$SCALE_METRICS_PORT/metrics" |
    awk '/^causeway_client_connections / { printf "%d", $2 }'
}

# ---------------------------------------------------------------- idle
before=$(rss_kb)
printf 'SELECT 1;\n\\sleep %d s\n' $((SCALE_SECONDS * 2)) >"$WORK/idle.sql"
say "$SCALE_IDLE idle clients"
started=$(date +%s)
"$PGBENCH" -h 127.0.0.1 -p "$SCALE_PORT" -U app -n -c "$SCALE_IDLE" -j 2 \
  -T $((SCALE_SECONDS * 2 + 10)) -f "$WORK/idle.sql" app >"$WORK/idle.out" 2>&1 &
bench=$!
connected=0
for _ in $(seq $((SCALE_SECONDS * 4))); do
  sleep 1
  connected=$(clients || echo 0)
  ((connected >= SCALE_IDLE)) && break
done
took=$(($(date +%s) - started))
sleep 3
connected=$(clients || echo 0)
during=$(rss_kb)
wait "$bench" || true
idle_failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$WORK/idle.out")
# Once they have left, and the proxy's memory sweep has had its turn.
for _ in $(seq 30); do
  (($(clients || echo 1) == 0)) && break
  sleep 1
done
sleep "${SCALE_SETTLE_SECONDS:-15}"
left=$(rss_kb)

# ---------------------------------------------------------------- active
say "$SCALE_ACTIVE clients running pgbench -S for ${SCALE_SECONDS}s"
(cd "$WORK" && "$PGBENCH" -h 127.0.0.1 -p "$SCALE_PORT" -U app -n -S -c "$SCALE_ACTIVE" -j 2 \
  -T "$SCALE_SECONDS" -l --log-prefix=active app >"$WORK/active.out" 2>&1) || true
tx=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$WORK/active.out")
active_failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$WORK/active.out")
tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$WORK/active.out")
read -r p50 p99 pmax < <(cat "$WORK"/active.* | awk '{ print $3 }' | sort -n |
  awk '{ a[NR] = $1 } END { if (NR) printf "%.1f %.1f %.1f\n", a[int(NR * 0.5) + 1] / 1000, a[int(NR * 0.99)] / 1000, a[NR] / 1000; else print "- - -" }')

cat <<EOF
| check | result |
|---|---|
| $SCALE_IDLE idle clients | ${connected:-0} connected in ${took} s, ${idle_failed:-?} failed; RSS $((before / 1024)) MB before, $((during / 1024)) MB with them: $(awk -v a="$during" -v b="$before" -v n="$connected" 'BEGIN { if (n > 0) printf "%.1f", (a - b) / n; else print "-" }') KiB per client; $((left / 1024)) MB once they left |
| $SCALE_ACTIVE clients, pgbench -S, ${SCALE_SERVER_CONNECTIONS} server connections per server | ${tx:-0} transactions, ${active_failed:-?} failed, ${tps:-?} TPS; latency p50 $p50 ms, p99 $p99 ms, max $pmax ms |
EOF
