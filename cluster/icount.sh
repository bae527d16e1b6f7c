#!/usr/bin/env bash
# cluster/icount.sh — causeway's user-space instructions per unit of work,
# counted by callgrind: a number that does not move with the machine's load,
# so a change to the hot path can be judged to the percent, where CPU time
# on a shared 2-core machine moves by ±5% from run to run.
#
#   bash cluster/icount.sh [BIN...]        (default: target/release/causeway, built)
#
# For each binary: starts it under `valgrind --tool=callgrind` in front of
# the local cluster, runs pgbench (4 clients) for ICOUNT_SECONDS, zeroes the
# counters once the clients and server connections are up, and after
# ICOUNT_WINDOW seconds dumps them. Units are read from causeway's own
# `causeway_statements_total` over the same window. Prints instructions per
# unit; the dump (callgrind_annotate, or kcachegrind) shows where they go.
#
# What it leaves out: the kernel (system calls, wake-ups), and the cost of
# an instruction (cache misses, atomics). It counts what causeway's own code
# and its libraries execute, which is what a hot-path change changes.
#
# Needs the cluster running (cluster/cluster.sh start) with pgbench's tables
# (cluster/bench.sh makes them) and valgrind (apt-get install -y valgrind).
#
# Environment (defaults):
#   ICOUNT_MODE=simple (pgbench -M)  ICOUNT_ARGS=-S (pgbench workload flags;
#   empty for TPC-B)  ICOUNT_REPLICAS=0 (1: route reads to the replicas)
#   ICOUNT_SECONDS=14  ICOUNT_WINDOW=8  ICOUNT_PORT=6462  ICOUNT_METRICS_PORT=9207
#   ICOUNT_KEEP=PATH (keep each dump as PATH.BINNAME)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=cluster/lib.sh
source "$REPO/cluster/lib.sh"
ICOUNT_MODE=${ICOUNT_MODE:-simple}
ICOUNT_ARGS=${ICOUNT_ARGS--S}
ICOUNT_REPLICAS=${ICOUNT_REPLICAS:-0}
ICOUNT_SECONDS=${ICOUNT_SECONDS:-14}
ICOUNT_WINDOW=${ICOUNT_WINDOW:-8}
ICOUNT_PORT=${ICOUNT_PORT:-6462}
ICOUNT_METRICS_PORT=${ICOUNT_METRICS_PORT:-9207}
export PGPASSWORD=app

say() { printf 'icount: %s\n' "$*" >&2; }
die() { printf 'icount: error: %s\n' "$*" >&2; exit 1; }

command -v valgrind >/dev/null || die "valgrind not found (apt-get install -y valgrind)"
eval "$(bash "$REPO/cluster/cluster.sh" env)"
bash "$REPO/cluster/cluster.sh" status >/dev/null || die "the cluster is not running (cluster/cluster.sh start)"
read -r -a REPLICA_PORTS <<<"$PGPORT_REPLICAS"
((ICOUNT_SECONDS > ICOUNT_WINDOW + 4)) || die "ICOUNT_SECONDS must exceed ICOUNT_WINDOW + 4"

BINS=("$@")
((${#BINS[@]} > 0)) || BINS=("$(release_causeway)")

scratch_dir icount

# The monitor polls once a second, not every 10 ms: its polls are not the
# hot path, and at callgrind's speed they would be a large share of the count.
{
  cat <<EOF
[proxy]
listen = "127.0.0.1:$ICOUNT_PORT"

[pool]
mode = "transaction"

EOF
  if ((ICOUNT_REPLICAS)); then
    servers_toml "$PGPORT_PRIMARY" "${REPLICA_PORTS[@]}"
  else
    servers_toml "$PGPORT_PRIMARY"
  fi
  cat <<EOF

[routing]
poll_interval_ms = 1000
monitor_database = "postgres"

[metrics]
enabled = true
listen = "127.0.0.1:$ICOUNT_METRICS_PORT"
EOF
} >"$WORK/causeway.toml"

units() {
  curl -fsS --max-time 30 "http://127.0.0.1:$ICOUNT_METRICS_PORT/metrics" |
    awk '/^causeway_statements_total/ { s += $2 } END { printf "%d", s }'
}

for bin in "${BINS[@]}"; do
  [[ -x $bin ]] || die "$bin is not an executable"
  out=$WORK/callgrind.out
  rm -f "$out"*
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$bin" --config "$WORK/causeway.toml" >"$WORK/causeway.log" 2>&1 &
  PID=$!
  wait_listening "$ICOUNT_PORT" 60 || true
  # shellcheck disable=SC2086 # ICOUNT_ARGS is a list of pgbench flags
  "$PG_BIN/pgbench" -h 127.0.0.1 -p "$ICOUNT_PORT" -U app -n -M "$ICOUNT_MODE" \
    -c 4 -j 1 -T "$ICOUNT_SECONDS" $ICOUNT_ARGS app >"$WORK/pgbench.out" 2>&1 &
  bench=$!
  sleep 4
  before=$(units)
  callgrind_control --zero "$PID" >/dev/null 2>&1
  sleep "$ICOUNT_WINDOW"
  callgrind_control --dump "$PID" >/dev/null 2>&1
  after=$(units)
  wait "$bench" || die "pgbench failed: $(tail -3 "$WORK/pgbench.out")"
  kill -INT "$PID"
  wait "$PID" 2>/dev/null || true
  PID=
  dump=$(ls -S "$out".* | head -1)
  instructions=$(awk '/^(summary|totals):/ { print $2; exit }' "$dump")
  counted=$((after - before))
  ((counted > 0)) || die "no units counted for $bin"
  printf '%s  -M %s %s%s: %d instructions per unit (%d units)\n' \
    "$bin" "$ICOUNT_MODE" "${ICOUNT_ARGS:-TPC-B}" "$( ((ICOUNT_REPLICAS)) && echo ', replicas')" \
    $((instructions / counted)) "$counted"
  if [[ -n ${ICOUNT_KEEP:-} ]]; then
    cp "$dump" "$ICOUNT_KEEP.$(basename "$bin")"
    say "dump kept in $ICOUNT_KEEP.$(basename "$bin")"
  fi
done
