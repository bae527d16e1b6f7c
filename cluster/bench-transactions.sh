#!/usr/bin/env bash
# cluster/bench-transactions.sh — transaction blocks as ORMs send them, through
# causeway with optimistic transactions off and on, against the primary
# directly, in one run. Prints a markdown table.
#
#   bash cluster/bench-transactions.sh
#
# Workload (pgbench, custom scripts, -M $MODE): 95% of transactions are
#   BEGIN; SELECT abalance FROM pgbench_accounts WHERE aid = :aid; COMMIT;
# and 5% read then write:
#   BEGIN; SELECT ...; UPDATE pgbench_accounts SET abalance = abalance + 1
#   WHERE aid = :aid; COMMIT;
#
# Targets: direct (the primary), causeway (optimistic_transactions = false,
# the default: every block runs on the primary) and causeway-optimistic
# (true). "units on replicas" and "replays/s" come from causeway's /metrics
# (causeway_statements_total by route; causeway_optimistic_replays_total),
# read before and after each run.
#
# Needs the cluster of cluster/cluster.sh running (default ports) with
# pgbench tables (pgbench -i -s 10 -U app app, as cluster/bench.sh makes), and
# a causeway binary: $CAUSEWAY_BIN, else target/release/causeway (built if
# missing). Environment: SECONDS_PER_RUN=15 CLIENTS="1 8" MODE=prepared
# PORT_OFF=6442 PORT_ON=6443 METRICS_OFF=9197 METRICS_ON=9198.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
eval "$(bash "$REPO/cluster/cluster.sh" env)"
SECONDS_PER_RUN=${SECONDS_PER_RUN:-15}
read -r -a CLIENTS <<<"${CLIENTS:-1 8}"
MODE=${MODE:-prepared}
PORT_OFF=${PORT_OFF:-6442} PORT_ON=${PORT_ON:-6443}
METRICS_OFF=${METRICS_OFF:-9197} METRICS_ON=${METRICS_ON:-9198}
PGBENCH=${PG_BIN:+$PG_BIN/}pgbench
[[ -x $PGBENCH ]] || PGBENCH=pgbench
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]+"${PIDS[@]}"}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
say() { echo "bench-transactions: $*" >&2; }

CAUSEWAY_BIN=${CAUSEWAY_BIN:-}
if [[ -z $CAUSEWAY_BIN ]]; then
  CAUSEWAY_BIN=$REPO/target/release/causeway
  [[ -x $CAUSEWAY_BIN ]] || (cd "$REPO" && cargo build --release --bin causeway)
fi

# start PORT METRICS_PORT OPTIMISTIC
start() {
  local config=$WORK/causeway-$1.toml
  sed -e "s/^listen = \"127.0.0.1:6432\"/listen = \"127.0.0.1:$1\"/" \
    -e "s/^listen = \"127.0.0.1:9187\"/listen = \"127.0.0.1:$2\"/" \
    -e "s/^optimistic_transactions = .*/optimistic_transactions = $3/" \
    "$REPO/proxy.toml" >"$config"
  RUST_LOG=warn "$CAUSEWAY_BIN" --config "$config" >"$WORK/causeway-$1.log" 2>&1 &
  PIDS+=("$!")
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$2/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  say "causeway on $1 did not become ready"; cat "$WORK/causeway-$1.log" >&2; exit 1
}
start "$PORT_OFF" "$METRICS_OFF" false
start "$PORT_ON" "$METRICS_ON" true

cat >"$WORK/read.sql" <<'EOF'
\set aid random(1, 100000 * :scale)
BEGIN;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
COMMIT;
EOF
cat >"$WORK/write.sql" <<'EOF'
\set aid random(1, 100000 * :scale)
BEGIN;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;
COMMIT;
EOF

# metric NAME FILTER FILE: the sum of a metric's samples matching FILTER.
metric() { { grep "^$1" "$3" || true; } | { grep -- "$2" || true; } | awk '{ s += $NF } END { printf "%d\n", s }'; }

echo "| clients | target | TPS | failed | units on replicas | replays/s | mismatches |"
echo "|---:|---|---:|---:|---:|---:|---:|"
for clients in "${CLIENTS[@]}"; do
  for target in direct causeway causeway-optimistic; do
    case $target in
      direct) port=$PGPORT_PRIMARY metrics= ;;
      causeway) port=$PORT_OFF metrics=$METRICS_OFF ;;
      causeway-optimistic) port=$PORT_ON metrics=$METRICS_ON ;;
    esac
    [[ -z $metrics ]] || curl -fs "http://127.0.0.1:$metrics/metrics" >"$WORK/before"
    PGPASSWORD=app "$PGBENCH" -h 127.0.0.1 -p "$port" -U app -n -M "$MODE" --max-tries=10 \
      -f "$WORK/read.sql@95" -f "$WORK/write.sql@5" -c "$clients" -j "$((clients < 2 ? 1 : 2))" \
      -T "$SECONDS_PER_RUN" app >"$WORK/run.log" 2>&1 || true
    tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$WORK/run.log" | head -n 1)
    [[ -z $tps ]] || tps=$(printf '%.0f' "$tps")
    failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$WORK/run.log")
    share=- replays=- mismatches=-
    if [[ -n $metrics ]]; then
      curl -fs "http://127.0.0.1:$metrics/metrics" >"$WORK/after"
      r=$(($(metric causeway_statements_total 'route="replica"' "$WORK/after") - $(metric causeway_statements_total 'route="replica"' "$WORK/before")))
      p=$(($(metric causeway_statements_total 'route="primary"' "$WORK/after") - $(metric causeway_statements_total 'route="primary"' "$WORK/before")))
      share=$(awk -v r="$r" -v p="$p" 'BEGIN { if (r + p) printf "%.1f%%", 100 * r / (r + p); else print "-" }')
      n=$(($(metric causeway_optimistic_replays_total '' "$WORK/after") - $(metric causeway_optimistic_replays_total '' "$WORK/before")))
      replays=$(awk -v n="$n" -v s="$SECONDS_PER_RUN" 'BEGIN { printf "%.1f", n / s }')
      mismatches=$(($(metric causeway_optimistic_transactions_total 'outcome="mismatched"' "$WORK/after") - $(metric causeway_optimistic_transactions_total 'outcome="mismatched"' "$WORK/before")))
    fi
    echo "| $clients | $target | ${tps:-failed} | ${failed:-0} | $share | $replays | $mismatches |"
    say "$clients clients, $target: ${tps:-failed} tps"
  done
done
