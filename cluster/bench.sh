#!/usr/bin/env bash
# cluster/bench.sh — pgbench against several targets in one run: the primary
# directly, through causeway (with replicas, and with the primary alone), and
# through PgBouncer; then a write-then-read workload that checks
# read-your-writes under load. Prints markdown tables.
#
#   bash cluster/bench.sh
#
# Why every target in one run: numbers from different runs on a shared 2-core
# machine are not comparable; numbers from one run, with the target order
# rotated from one combination to the next (and from round to round), are.
#
# Targets:
#   direct                 the primary, no proxy
#   causeway               causeway with the cluster's replicas: reads (pgbench -S)
#                          go to the REPLICAS, so against `direct` this compares
#                          reads spread over replicas with the primary alone
#   causeway-primary-only  causeway configured with no replicas: everything on
#                          the primary, so against `direct` this is the pure
#                          cost of the proxy hop
#   pgbouncer              PgBouncer in front of the primary, pool_mode=$POOL_MODE
#                          (by default the same as causeway's pool mode)
#   causeway-global        causeway with the replicas and causal_scope = "global"
#                          (every read waits for every commit made before it);
#                          not in the default target lists
#
# What it does:
#   1. Uses the cluster in $CLUSTER_DIR (default $REPO/.cluster). If it is not
#      running, starts it there with cluster/cluster.sh (default ports) and
#      stops it again on exit.
#   2. pgbench -i -s $BENCH_SCALE on the primary as role app, then waits until
#      every replica has replayed it.
#   3. Starts the causeway targets (start_causeway: cargo build --release, or
#      $CAUSEWAY_BIN, with a generated config) unless something already listens
#      on their ports, and PgBouncer with a generated ini.
#   4. For each workload x clients x mode, runs pgbench -T $BENCH_SECONDS on
#      each target (order rotated), with a CHECKPOINT before each run.
#      For the causeway target it also counts where the reads ran: the scans of
#      pgbench_accounts on each server (pg_stat_user_tables; a standby counts
#      the scans run on it), read $BENCH_SETTLE s after the run, once idle
#      server connections have flushed their statistics.
#   5. Prints | workload | clients | mode | target | reads ran on | TPS |
#      mean latency ms | vs direct | proxy CPU us/tx | of it user us/tx |;
#      proxy CPU is the proxy process's CPU time (/proc/PID/task/*/schedstat)
#      over the run divided by transactions, and the last column the part of
#      it in user space (utime in clock ticks). A run that fails is reported
#      as "failed", with its log kept.
#   6. Write-then-read (BENCH_RW=1): each transaction of a custom pgbench script
#      inserts a row on the primary, reads it back at once by id, and records
#      any read that did not see it in table rw_misses (pgbench cannot write
#      files; an error would abort the client). Reports TPS, the share of reads
#      served by replicas (pg_stat_user_tables of rw_bench, as above), stale
#      reads (rows in rw_misses: must be 0), per-statement mean latency
#      (pgbench -r) and transaction latency p50/p99 (pgbench -l). For the
#      causeway target it also reads causeway's own metrics before and after
#      the run (/metrics): reads by route and reason, and how long reads
#      waited for a replica to replay the write (causeway_read_wait_seconds;
#      p50/p99 over all reads, a read that did not wait counting as 0).
#
# Environment (defaults):
#   BENCH_SECONDS=15  BENCH_SCALE=10  BENCH_ROUNDS=1  BENCH_SKIP_INIT=0
#   BENCH_COMBOS="select-only:8:simple select-only:8:extended
#     select-only:8:prepared tpcb-like:8:simple select-only:1:simple
#     select-only:1:prepared"   (WORKLOAD:CLIENTS:MODE; the summary's rows)
#   BENCH_WORKLOADS BENCH_CLIENTS BENCH_MODES   (instead of BENCH_COMBOS:
#     every combination; unset ones default to "select-only tpcb-like",
#     "1 8" and "simple extended prepared")
#   BENCH_TARGETS="direct causeway causeway-primary-only pgbouncer"
#   BENCH_RW=1  BENCH_RW_CLIENTS="1 8"  BENCH_RW_MODE=simple
#   BENCH_RW_MIX=0   (percent of write-then-read transactions that are plain
#                     reads of a random recent row instead: 95 gives a
#                     read-heavy 95/5 mix; stale reads are still counted on
#                     the 5% that read their own write)
#   BENCH_RW_TARGETS="direct causeway causeway-primary-only"
#   BENCH_SETTLE=11   (s; Postgres 15 flushes an idle backend's statistics
#                      within 10 s)
#   CAUSEWAY_PORT=6432  CAUSEWAY_PRIMARY_ONLY_PORT=6433  PGBOUNCER_PORT=6532
#   CAUSEWAY_METRICS_PORT=9187  CAUSEWAY_PRIMARY_ONLY_METRICS_PORT=9188
#   CAUSEWAY_GLOBAL_PORT=6434  CAUSEWAY_GLOBAL_METRICS_PORT=9189
#   CAUSEWAY_POOL_MODE=transaction   POOL_MODE=$CAUSEWAY_POOL_MODE (PgBouncer)
#   CAUSEWAY_BIN=   (a prebuilt causeway binary; default: cargo build --release
#                    in this repository and use target/release/causeway)
#   CAUSEWAY_REV=   (label for the binary in the report; default: git HEAD,
#                    "-dirty" when src/ has uncommitted changes)
#   BENCH_OUT=$REPO/target/bench   (results.md and every pgbench log)
#   CLUSTER_DIR=$REPO/.cluster     BENCH_RUST_LOG=warn (RUST_LOG for causeway)
#
# Logins: every target is reached as role app (password app, SCRAM), as the
# cluster sets it up; PgBouncer authenticates clients with SCRAM too.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=cluster/lib.sh
source "$REPO/cluster/lib.sh"
CLUSTER=("bash" "$REPO/cluster/cluster.sh")

BENCH_SECONDS=${BENCH_SECONDS:-15}
BENCH_SCALE=${BENCH_SCALE:-10}
BENCH_ROUNDS=${BENCH_ROUNDS:-1}
BENCH_SKIP_INIT=${BENCH_SKIP_INIT:-0}
BENCH_SETTLE=${BENCH_SETTLE:-11}
BENCH_RW=${BENCH_RW:-1}
BENCH_RW_MODE=${BENCH_RW_MODE:-simple}
# The runs: WORKLOAD:CLIENTS:MODE triples. BENCH_COMBOS lists them; else
# every combination of BENCH_WORKLOADS x BENCH_CLIENTS x BENCH_MODES, when
# any of those is set; else the rows of the summary table.
if [[ -n ${BENCH_COMBOS:-} ]]; then
  read -r -a COMBOS <<<"$BENCH_COMBOS"
elif [[ -n ${BENCH_WORKLOADS:-}${BENCH_CLIENTS:-}${BENCH_MODES:-} ]]; then
  read -r -a WORKLOADS <<<"${BENCH_WORKLOADS:-select-only tpcb-like}"
  read -r -a CLIENTS <<<"${BENCH_CLIENTS:-1 8}"
  read -r -a MODES <<<"${BENCH_MODES:-simple extended prepared}"
  COMBOS=()
  for workload in "${WORKLOADS[@]}"; do
    for clients in "${CLIENTS[@]}"; do
      for mode in "${MODES[@]}"; do COMBOS+=("$workload:$clients:$mode"); done
    done
  done
else
  COMBOS=(select-only:8:simple select-only:8:extended select-only:8:prepared
    tpcb-like:8:simple select-only:1:simple select-only:1:prepared)
fi
read -r -a TARGETS <<<"${BENCH_TARGETS:-direct causeway causeway-primary-only pgbouncer}"
read -r -a RW_CLIENTS <<<"${BENCH_RW_CLIENTS:-1 8}"
read -r -a RW_TARGETS <<<"${BENCH_RW_TARGETS:-direct causeway causeway-primary-only}"
CAUSEWAY_PORT=${CAUSEWAY_PORT:-6432}
CAUSEWAY_PRIMARY_ONLY_PORT=${CAUSEWAY_PRIMARY_ONLY_PORT:-6433}
CAUSEWAY_METRICS_PORT=${CAUSEWAY_METRICS_PORT:-9187}
CAUSEWAY_PRIMARY_ONLY_METRICS_PORT=${CAUSEWAY_PRIMARY_ONLY_METRICS_PORT:-9188}
CAUSEWAY_GLOBAL_PORT=${CAUSEWAY_GLOBAL_PORT:-6434}
CAUSEWAY_GLOBAL_METRICS_PORT=${CAUSEWAY_GLOBAL_METRICS_PORT:-9189}
BENCH_RW_MIX=${BENCH_RW_MIX:-0}
PGBOUNCER_PORT=${PGBOUNCER_PORT:-6532}
CAUSEWAY_POOL_MODE=${CAUSEWAY_POOL_MODE:-transaction}
POOL_MODE=${POOL_MODE:-$CAUSEWAY_POOL_MODE}
export PGPASSWORD=app

say() { printf 'bench: %s\n' "$*" >&2; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }

STAMP=$(date +%Y%m%d-%H%M%S)
OUT=${BENCH_OUT:-$REPO/target/bench}/$STAMP
mkdir -p "$OUT"
# PgBouncer refuses to run as root, so its files live where `postgres` can reach.
WORK=$(mktemp -d /tmp/causeway-bench.XXXXXX)
chmod 755 "$WORK"

STARTED_CLUSTER=0
CAUSEWAY_PIDS=()
PGBOUNCER_PID=

cleanup() {
  set +e
  local pid
  for pid in "${CAUSEWAY_PIDS[@]+"${CAUSEWAY_PIDS[@]}"}"; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      wait "$pid" 2>/dev/null
    fi
  done
  if [[ -n $PGBOUNCER_PID ]] && kill -0 "$PGBOUNCER_PID" 2>/dev/null; then
    kill -TERM "$PGBOUNCER_PID"
  fi
  ((STARTED_CLUSTER)) && "${CLUSTER[@]}" stop >/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 deadline=$((SECONDS + $2))
  until port_open "$port"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

# PID of the process listening on a loopback port (to read its CPU time).
listener_pid() {
  ss -ltnpH "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | head -n 1 | cut -d= -f2
}

# CPU time of a process, all its threads, in nanoseconds: the scheduler's
# own count (/proc/PID/task/*/schedstat), not utime+stime, which are
# sampled at the clock tick.
cpu_ns() {
  local sum=0 t
  for t in /proc/"$1"/task/*/schedstat; do
    read -r ns _ <"$t" 2>/dev/null || continue
    sum=$((sum + ns))
  done
  ((sum > 0)) || return 1
  echo "$sum"
}

# User-space CPU time of a process, all its threads, in clock ticks (utime,
# field 14 of /proc/PID/task/*/stat, counted after the thread name, which
# is in parentheses and may hold spaces): coarse, but over a run of seconds
# it splits the CPU time above into user space and kernel.
user_ticks() {
  local sum=0 t line fields
  for t in /proc/"$1"/task/*/stat; do
    read -r line <"$t" 2>/dev/null || continue
    read -r -a fields <<<"${line##*) }"
    sum=$((sum + fields[11]))
  done
  echo "$sum"
}

# ---------------------------------------------------------------- the cluster

if ! "${CLUSTER[@]}" status >/dev/null 2>&1; then
  say "cluster not running; starting it (${CLUSTER_DIR:-$REPO/.cluster})"
  "${CLUSTER[@]}" start >&2
  STARTED_CLUSTER=1
fi
eval "$("${CLUSTER[@]}" env)"
PGBENCH=$PG_BIN/pgbench
PSQL=$PG_BIN/psql
[[ -x $PGBENCH ]] || die "pgbench not found in $PG_BIN; apt-get install -y postgresql-15"
read -r -a REPLICA_PORTS <<<"$PGPORT_REPLICAS"
SERVER_PORTS=("$PGPORT_PRIMARY" "${REPLICA_PORTS[@]}")

# admin_on PORT SQL: one statement as the superuser (trust on loopback).
admin_on() { "$PSQL" -X -q -A -t -h 127.0.0.1 -p "$1" -U postgres -d app -c "$2"; }
admin() { admin_on "$PGPORT_PRIMARY" "$1"; }
# as_app SQL: statements on the primary as role app, stopping at the first error.
as_app() { "$PSQL" -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT_PRIMARY" -U app -d app -c "$1"; }

wait_replicas_caught_up() {
  local deadline=$((SECONDS + 300))
  until [[ $(admin "SELECT count(*) FROM pg_stat_replication
                    WHERE replay_lsn IS NULL OR replay_lsn < pg_current_wal_lsn()") == 0 ]]; do
    ((SECONDS < deadline)) || die "replicas did not catch up within 300 s"
    sleep 0.5
  done
}

# scans TABLE: seq_scan + idx_scan of TABLE on the primary and each replica,
# space-separated in that order. On a standby these count the scans run there.
scans() {
  local port out=()
  for port in "${SERVER_PORTS[@]}"; do
    out+=("$(admin_on "$port" "SELECT coalesce(sum(seq_scan + coalesce(idx_scan, 0)), 0)
                               FROM pg_stat_user_tables WHERE relname = '$1'")")
  done
  echo "${out[*]}"
}

# replica_share BEFORE AFTER: "P R" = scans on the primary and on all replicas
# between two `scans` snapshots.
scan_delta() {
  local -a b a
  read -r -a b <<<"$1"
  read -r -a a <<<"$2"
  local primary=$((a[0] - b[0])) replicas=0 k
  for ((k = 1; k < ${#a[@]}; k++)); do replicas=$((replicas + a[k] - b[k])); done
  echo "$primary $replicas"
}

if [[ $BENCH_SKIP_INIT != 1 ]]; then
  say "pgbench -i -s $BENCH_SCALE on the primary (port $PGPORT_PRIMARY)"
  "$PGBENCH" -i -s "$BENCH_SCALE" -q -h 127.0.0.1 -p "$PGPORT_PRIMARY" -U app app \
    >"$OUT/init.log" 2>&1 || die "pgbench -i failed; see $OUT/init.log"
fi
wait_replicas_caught_up
SCALE=$(admin "SELECT count(*) FROM pgbench_branches") ||
  die "no pgbench tables in database app (run without BENCH_SKIP_INIT=1)"

# ---------------------------------------------------------------- causeway

# The binary every causeway target runs: $CAUSEWAY_BIN, or a release build of
# this repository (built once).
causeway_binary() {
  if [[ -n ${CAUSEWAY_BIN:-} ]]; then
    [[ -x $CAUSEWAY_BIN ]] || { say "CAUSEWAY_BIN=$CAUSEWAY_BIN is not executable"; return 1; }
    return 0
  fi
  say "cargo build --release --bin causeway (log: $OUT/cargo-build.log)"
  (cd "$REPO" && cargo build --release --bin causeway) >"$OUT/cargo-build.log" 2>&1 || {
    say "causeway did not build; see $OUT/cargo-build.log"
    return 1
  }
  CAUSEWAY_BIN=$REPO/target/release/causeway
}

if [[ -z ${CAUSEWAY_REV:-} ]]; then
  if [[ -n ${CAUSEWAY_BIN:-} ]]; then
    CAUSEWAY_REV="binary $CAUSEWAY_BIN"
  else
    CAUSEWAY_REV=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')
    [[ -z $(git -C "$REPO" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]] ||
      CAUSEWAY_REV+="-dirty"
  fi
fi

# causeway_config PORT METRICS_PORT WITH_REPLICAS: a config for the cluster,
# using only keys of src/config/ (see proxy.toml for all of them); defaults
# otherwise. A file that names its [primary] gets only the replicas it lists.
causeway_config() {
  local port=$1 metrics_port=$2 with_replicas=$3 scope=${4:-client_id}
  cat <<EOF
[proxy]
listen = "127.0.0.1:$port"

[pool]
mode = "$CAUSEWAY_POOL_MODE"

EOF
  if ((with_replicas)); then
    servers_toml "$PGPORT_PRIMARY" "${REPLICA_PORTS[@]}"
  else
    servers_toml "$PGPORT_PRIMARY"
  fi
  cat <<EOF

[routing]
on_stale = "wait"
max_wait_ms = 50
poll_interval_ms = 10
monitor_database = "postgres"
causal_scope = "$scope"

[metrics]
enabled = true
listen = "127.0.0.1:$metrics_port"
EOF
}

# start_causeway TARGET PORT METRICS_PORT WITH_REPLICAS: starts the proxy in
# front of the cluster; sets START_PID. Returns non-zero if it does not listen.
start_causeway() {
  local target=$1 port=$2 metrics_port=$3 with_replicas=$4 scope=${5:-client_id} config=$WORK/$1.toml pid
  if port_open "$metrics_port"; then
    say "$target: metrics port $metrics_port is already in use"
    return 1
  fi
  causeway_config "$port" "$metrics_port" "$with_replicas" "$scope" >"$config"
  cp "$config" "$OUT/$target.toml"
  "$CAUSEWAY_BIN" --check --config "$config" >"$OUT/$target.log" 2>&1 || {
    say "$target: config refused; see $OUT/$target.log"
    return 1
  }
  # In a session of its own, as PgBouncer's `-d` puts itself: with the
  # kernel's autogroups on, a proxy left in pgbench's session shares its
  # CPU share with pgbench and is preempted by every pgbench thread it
  # wakes (TPC-B: 4.8 involuntary switches per transaction instead of 2).
  # Not a process-group leader here, so setsid execs without forking and
  # $! is causeway's own pid.
  RUST_LOG=${BENCH_RUST_LOG:-warn} setsid "$CAUSEWAY_BIN" --config "$config" \
    >>"$OUT/$target.log" 2>&1 &
  pid=$!
  CAUSEWAY_PIDS+=("$pid")
  if ! wait_port "$port" 30 || ! kill -0 "$pid" 2>/dev/null; then
    say "$target is not listening on $port; see $OUT/$target.log"
    return 1
  fi
  START_PID=$pid
}

# ---------------------------------------------------------------- PgBouncer

start_pgbouncer() {
  local dir=$WORK/pgbouncer
  command -v pgbouncer >/dev/null 2>&1 || {
    say "pgbouncer not installed (apt-get install -y pgbouncer)"
    return 1
  }
  mkdir -p "$dir"
  echo '"app" "app"' >"$dir/userlist.txt"
  cat >"$dir/pgbouncer.ini" <<EOF
[databases]
app = host=127.0.0.1 port=$PGPORT_PRIMARY dbname=app

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGBOUNCER_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $dir/userlist.txt
pool_mode = $POOL_MODE
max_client_conn = 200
default_pool_size = 20
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
EOF
  cp "$dir/pgbouncer.ini" "$OUT/pgbouncer.ini"
  local run=()
  if [[ $(id -u) == 0 ]]; then
    chown -R postgres: "$dir"
    run=(runuser -u postgres --)
  fi
  (cd "$dir" && "${run[@]+"${run[@]}"}" pgbouncer -d "$dir/pgbouncer.ini") >"$OUT/pgbouncer.out" 2>&1 || {
    say "pgbouncer did not start; see $OUT/pgbouncer.out"
    return 1
  }
  wait_port "$PGBOUNCER_PORT" 10 || {
    cp "$dir/pgbouncer.log" "$OUT/" 2>/dev/null || true
    say "pgbouncer is not listening on $PGBOUNCER_PORT"
    return 1
  }
  PGBOUNCER_PID=$(<"$dir/pgbouncer.pid")
}

# ---------------------------------------------------------------- targets

declare -A PORT PID UNAVAILABLE
PORT[direct]=$PGPORT_PRIMARY
PORT[causeway]=$CAUSEWAY_PORT
PORT[causeway-primary-only]=$CAUSEWAY_PRIMARY_ONLY_PORT
PORT[causeway-global]=$CAUSEWAY_GLOBAL_PORT
PORT[pgbouncer]=$PGBOUNCER_PORT
declare -A METRICS_PORT
METRICS_PORT[causeway]=$CAUSEWAY_METRICS_PORT
METRICS_PORT[causeway-primary-only]=$CAUSEWAY_PRIMARY_ONLY_METRICS_PORT
METRICS_PORT[causeway-global]=$CAUSEWAY_GLOBAL_METRICS_PORT
REUSED=()

ALL_TARGETS=("${TARGETS[@]}")
((BENCH_RW)) && ALL_TARGETS+=("${RW_TARGETS[@]}")
declare -A SEEN_TARGET
BUILT=0
for target in "${ALL_TARGETS[@]}"; do
  [[ -n ${SEEN_TARGET[$target]:-} ]] && continue
  SEEN_TARGET[$target]=1
  case $target in
    direct) ;;
    causeway | causeway-primary-only | causeway-global)
      port=${PORT[$target]}
      if port_open "$port"; then
        PID[$target]=$(listener_pid "$port")
        REUSED+=("$target")
        say "using the $target already listening on $port (pid ${PID[$target]:-unknown})"
      elif { ((BUILT)) || causeway_binary; } && BUILT=1 &&
        start_causeway "$target" "$port" "${METRICS_PORT[$target]}" \
          "$([[ $target == causeway-primary-only ]] && echo 0 || echo 1)" \
          "$([[ $target == causeway-global ]] && echo global || echo client_id)"; then
        PID[$target]=$START_PID
      else
        UNAVAILABLE[$target]="did not start"
      fi ;;
    pgbouncer)
      if port_open "$PGBOUNCER_PORT"; then
        UNAVAILABLE[pgbouncer]="port $PGBOUNCER_PORT already in use"
      elif start_pgbouncer; then
        PID[pgbouncer]=$PGBOUNCER_PID
      else
        UNAVAILABLE[pgbouncer]="did not start"
      fi ;;
    *) die "unknown target '$target' (direct, causeway, causeway-primary-only, causeway-global, pgbouncer)" ;;
  esac
done
# Give the replica monitor time to see the replicas healthy before reads.
sleep 1

# ---------------------------------------------------------------- runs

declare -A SUM_TPS SUM_LAT OK FAILED TX CPU_NS USER_TICKS SCAN_P SCAN_R
FAILED_RUNS=()
NPROC=$(nproc)

# Where a target's reads can run, by construction.
reads_on() {
  case $1 in
    causeway) echo "replicas" ;;
    *) echo "primary" ;;
  esac
}

# run_one WORKLOAD CLIENTS MODE TARGET ROUND: one pgbench run, results recorded.
run_one() {
  local workload=$1 clients=$2 mode=$3 target=$4 round=$5
  local key="$workload|$clients|$mode|$target"
  local log="$OUT/$workload-c$clients-$mode-$target-r$round.log"
  local jobs=$((clients < NPROC ? clients : NPROC)) script before= after= rc=0
  local measure=0 scans_before= scans_after=
  if [[ -n ${UNAVAILABLE[$target]:-} ]]; then
    echo "not run: $target ${UNAVAILABLE[$target]}" >"$log"
    FAILED[$key]=$((${FAILED[$key]:-0} + 1))
    FAILED_RUNS+=("$log")
    return
  fi
  case $workload in
    select-only) script=(-S) ;;
    tpcb-like) script=(-b tpcb-like) ;;
    *) die "unknown workload '$workload' (select-only, tpcb-like)" ;;
  esac
  [[ $target == causeway ]] && measure=1
  admin "CHECKPOINT" >/dev/null
  if ((measure)); then
    sleep "$BENCH_SETTLE"
    scans_before=$(scans pgbench_accounts)
  fi
  local pid=${PID[$target]:-}
  local user_before= user_after=
  [[ -n $pid ]] && before=$(cpu_ns "$pid" || true) && user_before=$(user_ticks "$pid")
  timeout -k 5 $((BENCH_SECONDS + 60)) "$PGBENCH" -h 127.0.0.1 -p "${PORT[$target]}" -U app \
    "${script[@]}" -M "$mode" -c "$clients" -j "$jobs" -T "$BENCH_SECONDS" app \
    >"$log" 2>&1 || rc=$?
  [[ -n $pid ]] && after=$(cpu_ns "$pid" || true) && user_after=$(user_ticks "$pid")
  if ((measure)); then
    sleep "$BENCH_SETTLE"
    scans_after=$(scans pgbench_accounts)
  fi
  local tps lat tx
  tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$log" | head -n 1)
  lat=$(sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' "$log")
  tx=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$log")
  if ((rc != 0)) || [[ -z $tps || -z $tx ]] || ((tx == 0)); then
    echo "exit status $rc" >>"$log"
    FAILED[$key]=$((${FAILED[$key]:-0} + 1))
    FAILED_RUNS+=("$log")
    say "$key: failed (exit $rc; $log)"
    return
  fi
  OK[$key]=$((${OK[$key]:-0} + 1))
  SUM_TPS[$key]=$(awk -v a="${SUM_TPS[$key]:-0}" -v b="$tps" 'BEGIN { print a + b }')
  SUM_LAT[$key]=$(awk -v a="${SUM_LAT[$key]:-0}" -v b="$lat" 'BEGIN { print a + b }')
  TX[$key]=$((${TX[$key]:-0} + tx))
  if [[ -n $before && -n $after ]]; then
    CPU_NS[$key]=$((${CPU_NS[$key]:-0} + after - before))
  fi
  if [[ -n $user_before && -n $user_after ]]; then
    USER_TICKS[$key]=$((${USER_TICKS[$key]:-0} + user_after - user_before))
  fi
  if ((measure)); then
    local p r
    read -r p r <<<"$(scan_delta "$scans_before" "$scans_after")"
    SCAN_P[$key]=$((${SCAN_P[$key]:-0} + p))
    SCAN_R[$key]=$((${SCAN_R[$key]:-0} + r))
    echo "scans of pgbench_accounts: primary $p, replicas $r" >>"$log"
  fi
  say "$key: $tps tps, $lat ms"
}

# ---------------------------------------------------------------- write-then-read

RW_SCRIPT=$WORK/write-then-read.sql
cat >"$RW_SCRIPT" <<'EOF'
INSERT INTO rw_bench(v) VALUES (random()) RETURNING id \gset
SELECT count(*) AS seen FROM rw_bench WHERE id = :id \gset
\if :seen = 0
INSERT INTO rw_misses(id) VALUES (:id);
\endif
EOF
cp "$RW_SCRIPT" "$OUT/write-then-read.sql"
# The plain reads of a read-heavy mix (BENCH_RW_MIX): a row that may or may
# not exist, read with no write before it.
READ_SCRIPT=$WORK/read-only.sql
cat >"$READ_SCRIPT" <<'EOF'
\set rid random(1, 1000000)
SELECT count(*) AS seen FROM rw_bench WHERE id = :rid \gset
EOF
RW_FILES=(-f "$RW_SCRIPT")
if ((BENCH_RW_MIX > 0)); then
  RW_FILES=(-f "$RW_SCRIPT@$((100 - BENCH_RW_MIX))" -f "$READ_SCRIPT@$BENCH_RW_MIX")
fi

declare -A RW_TPS RW_OK RW_REPLICA RW_STALE RW_INS RW_SEL RW_P50 RW_P99 RW_FAILED RW_ERR
declare -A RW_READS RW_M_REPLICA RW_M_PRIMARY RW_WAITED RW_GAVE_UP RW_W50 RW_W99 RW_WW99

# scrape TARGET FILE: the target's /metrics (empty if it has none).
scrape() {
  local port=${METRICS_PORT[$1]:-}
  : >"$2"
  [[ -n $port ]] || return 0
  curl -fsS --max-time 5 "http://127.0.0.1:$port/metrics" >"$2" 2>/dev/null || : >"$2"
}

# metric_delta BEFORE AFTER NAME [LABEL...]: the growth of the sum of every
# sample of NAME that carries all the LABELs (like route="replica").
metric_delta() {
  local before=$1 after=$2 name=$3
  shift 3
  awk -v name="$name" -v labels="$*" '
    BEGIN { n = split(labels, want, " ") }
    /^#/ { next }
    index($0, name "{") == 1 || index($0, name " ") == 1 {
      for (i = 1; i <= n; i++) if (!index($0, want[i])) next
      if (FILENAME == ARGV[1]) b += $NF; else a += $NF
    }
    END { printf "%.0f", a - b }' "$before" "$after"
}

# wait_quantile BEFORE AFTER Q READS: the Q-quantile, in ms, of the time READS
# reads waited for a replica (causeway_read_wait_seconds), a read that did not
# wait counting as 0; READS = "waited" for the reads that waited only. Linear
# within a bucket, as Prometheus's histogram_quantile; ">X" past the last bucket.
wait_quantile() {
  awk -v q="$3" -v n="$4" '
    /^causeway_read_wait_seconds_bucket/ {
      match($0, /le="[^"]*"/)
      le = substr($0, RSTART + 4, RLENGTH - 5)
      if (FILENAME == ARGV[1]) b[le] = $NF
      else { a[le] = $NF; if (!(le in seen)) { seen[le] = 1; names[++k] = le } }
    }
    END {
      if (!k) { print "-"; exit }
      for (i = 1; i <= k; i++) bound[i] = (names[i] == "+Inf") ? 1e300 : names[i] + 0
      for (i = 2; i <= k; i++) {
        v = bound[i]; m = names[i]; j = i - 1
        while (j > 0 && bound[j] > v) { bound[j + 1] = bound[j]; names[j + 1] = names[j]; j-- }
        bound[j + 1] = v; names[j + 1] = m
      }
      waited = a["+Inf"] - b["+Inf"]
      if (n == "waited") n = waited
      if (n < waited) n = waited
      if (n <= 0) { print "-"; exit }
      rank = q * n
      if (rank <= n - waited) { print "0"; exit }
      r = rank - (n - waited); prev = 0; prevc = 0
      for (i = 1; i <= k; i++) {
        c = a[names[i]] - b[names[i]]
        if (c >= r) {
          if (names[i] == "+Inf") { printf ">%.3f\n", prev * 1000; exit }
          printf "%.3f\n", (prev + (bound[i] - prev) * (r - prevc) / (c - prevc)) * 1000
          exit
        }
        prev = bound[i]; prevc = c
      }
      print "-"
    }' "$1" "$2"
}

rw_setup() {
  as_app "CREATE TABLE IF NOT EXISTS rw_bench (id bigserial PRIMARY KEY, v float8 NOT NULL);
          CREATE TABLE IF NOT EXISTS rw_misses (id bigint NOT NULL, at timestamptz NOT NULL DEFAULT now())" \
    >/dev/null
}

# rw_one CLIENTS TARGET: one write-then-read run, results recorded.
rw_one() {
  local clients=$1 target=$2 key="$1|$2"
  local log="$OUT/write-then-read-c$clients-$target.log" prefix="$OUT/write-then-read-c$clients-$target.tx"
  local jobs=$((clients < NPROC ? clients : NPROC)) rc=0
  if [[ -n ${UNAVAILABLE[$target]:-} ]]; then
    RW_ERR[$key]="not run: $target ${UNAVAILABLE[$target]}"
    return
  fi
  as_app "TRUNCATE rw_bench, rw_misses" >/dev/null
  wait_replicas_caught_up
  admin "CHECKPOINT" >/dev/null
  sleep "$BENCH_SETTLE"
  local scans_before scans_after metrics_before=$OUT/write-then-read-c$clients-$target.metrics-before
  local metrics_after=$OUT/write-then-read-c$clients-$target.metrics-after
  scans_before=$(scans rw_bench)
  scrape "$target" "$metrics_before"
  timeout -k 5 $((BENCH_SECONDS + 60)) "$PGBENCH" -h 127.0.0.1 -p "${PORT[$target]}" -U app \
    -n "${RW_FILES[@]}" -M "$BENCH_RW_MODE" -c "$clients" -j "$jobs" -T "$BENCH_SECONDS" \
    -r -l --log-prefix="$prefix" app >"$log" 2>&1 || rc=$?
  scrape "$target" "$metrics_after"
  sleep "$BENCH_SETTLE"
  scans_after=$(scans rw_bench)
  local tps tx failed
  tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$log" | head -n 1)
  tx=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$log")
  failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$log")
  if ((rc != 0)) || [[ -z $tps || -z $tx ]] || ((tx == 0)); then
    RW_ERR[$key]="exit $rc: $(grep -m 1 -iE 'error|fatal|abort' "$log" || echo 'no error line')"
    say "write-then-read $key: failed (exit $rc; $log)"
    return
  fi
  local p r
  read -r p r <<<"$(scan_delta "$scans_before" "$scans_after")"
  echo "scans of rw_bench: primary $p, replicas $r" >>"$log"
  RW_OK[$key]=1
  RW_TPS[$key]=$tps
  RW_FAILED[$key]=${failed:-0}
  RW_REPLICA[$key]=$(awk -v p="$p" -v r="$r" 'BEGIN { if (p + r > 0) printf "%.1f%%", 100 * r / (p + r); else print "-" }')
  RW_STALE[$key]=$(as_app "SELECT count(*) FROM rw_misses")
  # pgbench -r: "  latency  failures  statement" under "statement latencies".
  RW_INS[$key]=$(awk '/^ *[0-9.]+ +[0-9]+ +INSERT INTO rw_bench/ { printf "%.3f", $1; exit }' "$log")
  RW_SEL[$key]=$(awk '/^ *[0-9.]+ +[0-9]+ +SELECT count/ { printf "%.3f", $1; exit }' "$log")
  # pgbench -l: the third field of each line is the transaction's latency in µs.
  local sorted=$WORK/latencies
  cat "$prefix".* 2>/dev/null | awk '{ print $3 }' | sort -n >"$sorted"
  RW_P50[$key]=$(awk '{ v[NR] = $1 } END { if (NR) printf "%.3f", v[int(NR * 0.50) + (NR * 0.50 > int(NR * 0.50))] / 1000 }' "$sorted")
  RW_P99[$key]=$(awk '{ v[NR] = $1 } END { if (NR) printf "%.3f", v[int(NR * 0.99) + (NR * 0.99 > int(NR * 0.99))] / 1000 }' "$sorted")
  rm -f "$prefix".*
  if [[ -s $metrics_before && -s $metrics_after ]]; then
    local m=("$metrics_before" "$metrics_after") reason part=
    # One SELECT per transaction: the reads are the transactions.
    RW_READS[$key]=$tx
    RW_M_REPLICA[$key]=$(metric_delta "${m[@]}" causeway_statements_total 'route="replica"')
    for reason in stale no_replica pipelined retry pinned hint; do
      local k
      k=$(metric_delta "${m[@]}" causeway_statements_total 'route="primary"' "reason=\"$reason\"")
      ((k == 0)) || part+="${part:+, }$reason $k"
    done
    RW_M_PRIMARY[$key]=${part:-none}
    RW_WAITED[$key]=$(metric_delta "${m[@]}" causeway_read_wait_seconds_count)
    RW_GAVE_UP[$key]=$(metric_delta "${m[@]}" causeway_read_waits_total 'outcome="gave_up"')
    RW_W50[$key]=$(wait_quantile "${m[@]}" 0.50 "$tx")
    RW_W99[$key]=$(wait_quantile "${m[@]}" 0.99 "$tx")
    RW_WW99[$key]=$(wait_quantile "${m[@]}" 0.99 waited)
  fi
  say "write-then-read $key: $tps tps, replicas ${RW_REPLICA[$key]}, stale ${RW_STALE[$key]}"
}

# ---------------------------------------------------------------- the runs

combo=0
total=$((${#COMBOS[@]} * ${#TARGETS[@]} * BENCH_ROUNDS))
say "$total pgbench runs of ${BENCH_SECONDS}s; logs in $OUT"
for ((round = 1; round <= BENCH_ROUNDS; round++)); do
  for spec in "${COMBOS[@]}"; do
    IFS=: read -r workload clients mode <<<"$spec"
    n=${#TARGETS[@]}
    for ((i = 0; i < n; i++)); do
      target=${TARGETS[$(((i + combo + round) % n))]}
      run_one "$workload" "$clients" "$mode" "$target" "$round"
    done
    combo=$((combo + 1))
  done
done

if ((BENCH_RW)); then
  say "write-then-read: ${#RW_CLIENTS[@]} x ${#RW_TARGETS[@]} runs of ${BENCH_SECONDS}s"
  rw_setup
  for clients in "${RW_CLIENTS[@]}"; do
    n=${#RW_TARGETS[@]}
    for ((i = 0; i < n; i++)); do
      rw_one "$clients" "${RW_TARGETS[$(((i + combo) % n))]}"
    done
    combo=$((combo + 1))
  done
fi

# ---------------------------------------------------------------- report

mean() { awk -v s="$1" -v n="$2" "BEGIN { printf \"$3\", s / n }"; }
# cpu_per_tx KEY: the proxy's CPU per transaction over the key's runs, µs.
cpu_per_tx() {
  awk -v t="${CPU_NS[$1]}" -v n="${TX[$1]}" 'BEGIN { printf "%.1f", t / 1000 / n }'
}

# user_per_tx KEY: the proxy's user-space CPU per transaction, µs.
user_per_tx() {
  awk -v t="${USER_TICKS[$1]}" -v n="${TX[$1]}" -v hz="$(getconf CLK_TCK)" \
    'BEGIN { printf "%.1f", t * 1000000 / hz / n }'
}
# summary_cell KIND KEY DIRECT_KEY: one target's figure for the summary:
# its TPS over direct's (ratio), its CPU µs/tx (cpu), or its mean latency
# minus direct's in µs (added); "-" when a run is missing.
summary_cell() {
  local kind=$1 key=$2 direct=$3
  if ((${OK[$key]:-0} == 0)); then echo "failed"; return; fi
  case $kind in
    ratio | added)
      ((${OK[$direct]:-0} > 0)) || { echo -; return; }
      if [[ $kind == ratio ]]; then
        awk -v a="${SUM_TPS[$key]}" -v na="${OK[$key]}" -v b="${SUM_TPS[$direct]}" \
          -v nb="${OK[$direct]}" 'BEGIN { printf "%.2f", (a / na) / (b / nb) }'
      else
        awk -v a="${SUM_LAT[$key]}" -v na="${OK[$key]}" -v b="${SUM_LAT[$direct]}" \
          -v nb="${OK[$direct]}" 'BEGIN { printf "%+.0f", ((a / na) - (b / nb)) * 1000 }'
      fi ;;
    cpu) if [[ -n ${CPU_NS[$key]:-} ]]; then cpu_per_tx "$key"; else echo -; fi ;;
  esac
}
# diff_ms A B: A - B, signed, 3 decimals; "-" if either is missing.
diff_ms() {
  [[ -n $1 && -n $2 ]] || { echo -; return; }
  awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.3f", a - b }'
}

{
  echo "## Summary"
  echo
  echo "Each row: the same pgbench run against each target, in rotated order ($BENCH_ROUNDS round(s)" \
    "of ${BENCH_SECONDS}s). TPS as a share of \`direct\` (the primary, no proxy); proxy CPU" \
    "µs per transaction (the proxy's scheduler CPU time over the run, all threads); added" \
    "latency = mean latency minus direct's, µs. \`causeway + replicas\` sends the reads to" \
    "the replicas; \`primary-only\` is causeway with no replica configured."
  echo
  echo "| workload | direct TPS | PgBouncer / direct | causeway primary-only / direct | causeway + replicas / direct | CPU µs/tx PgBouncer · primary-only · + replicas | added latency µs PgBouncer · primary-only · + replicas |"
  echo "|---|---:|---:|---:|---:|---|---|"
  for spec in "${COMBOS[@]}"; do
    IFS=: read -r workload clients mode <<<"$spec"
    base="$workload|$clients|$mode"
    label="\`-S -c $clients\` $mode"
    [[ $workload == tpcb-like ]] && label="TPC-B \`-c $clients\` $mode"
    direct_tps=failed
    ((${OK[$base|direct]:-0} > 0)) && direct_tps=$(mean "${SUM_TPS[$base|direct]}" "${OK[$base|direct]}" '%.0f')
    row="| $label | $direct_tps"
    for target in pgbouncer causeway-primary-only causeway; do
      row="$row | $(summary_cell ratio "$base|$target" "$base|direct")"
    done
    cells=() added=()
    for target in pgbouncer causeway-primary-only causeway; do
      cells+=("$(summary_cell cpu "$base|$target" "$base|direct")")
      added+=("$(summary_cell added "$base|$target" "$base|direct")")
    done
    echo "$row | ${cells[0]} · ${cells[1]} · ${cells[2]} | ${added[0]} · ${added[1]} · ${added[2]} |"
  done
  echo
  echo "## pgbench: direct vs causeway vs PgBouncer"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $("$PG_BIN/postgres" --version)," \
    "$(pgbouncer --version 2>/dev/null | head -n 1 || echo 'no pgbouncer')," \
    "causeway $CAUSEWAY_REV."
  echo "Scale $SCALE, ${BENCH_SECONDS}s per run, $BENCH_ROUNDS round(s), ${#REPLICA_PORTS[@]} replicas;" \
    "causeway pool mode $CAUSEWAY_POOL_MODE, PgBouncer pool_mode=$POOL_MODE."
  echo "Targets: \`direct\` = the primary; \`causeway\` = causeway with the replicas (reads run on" \
    "the replicas, so its \`vs direct\` compares reads spread over replicas with the primary alone);" \
    "\`causeway-primary-only\` = causeway with no replicas configured (the proxy's own cost);" \
    "\`pgbouncer\` = PgBouncer in front of the primary."
  echo "\"reads ran on\" for causeway is measured: the share of pgbench_accounts scans" \
    "(pg_stat_user_tables) that ran on replicas. Proxy CPU = the proxy process's CPU time" \
    "(/proc/PID/task/*/schedstat) per transaction; user = the part of it in user space" \
    "(utime, /proc/PID/task/*/stat, counted in clock ticks), the rest is the kernel's."
  if ((${#REUSED[@]})); then
    echo "Already running before this script, used as found: ${REUSED[*]}."
  fi
  echo
  echo "| workload | clients | mode | target | reads ran on | TPS | mean latency ms | vs direct | proxy CPU µs/tx | of it user µs/tx |"
  echo "|---|---:|---|---|---|---:|---:|---:|---:|---:|"
  for spec in "${COMBOS[@]}"; do
    IFS=: read -r workload clients mode <<<"$spec"
    direct_key="$workload|$clients|$mode|direct"
    for target in "${TARGETS[@]}"; do
      key="$workload|$clients|$mode|$target"
      ok=${OK[$key]:-0}
      failed=${FAILED[$key]:-0}
      where=$(reads_on "$target")
      if [[ -n ${SCAN_R[$key]:-} ]]; then
        where=$(awk -v p="${SCAN_P[$key]}" -v r="${SCAN_R[$key]}" \
          'BEGIN { if (p + r > 0) printf "replicas %.0f%%", 100 * r / (p + r); else print "-" }')
      fi
      if ((ok == 0)); then
        echo "| $workload | $clients | $mode | $target | $where | failed | - | - | - | - |"
        continue
      fi
      tps=$(mean "${SUM_TPS[$key]}" "$ok" '%.0f')
      lat=$(mean "${SUM_LAT[$key]}" "$ok" '%.3f')
      ratio=-
      if ((${OK[$direct_key]:-0} > 0)); then
        ratio=$(awk -v a="${SUM_TPS[$key]}" -v na="$ok" -v b="${SUM_TPS[$direct_key]}" \
          -v nb="${OK[$direct_key]}" 'BEGIN { printf "%.2f", (a / na) / (b / nb) }')
      fi
      cpu=- user=-
      [[ -n ${CPU_NS[$key]:-} ]] && cpu=$(cpu_per_tx "$key")
      [[ -n ${USER_TICKS[$key]:-} ]] && user=$(user_per_tx "$key")
      ((failed == 0)) || tps="$tps ($failed failed)"
      echo "| $workload | $clients | $mode | $target | $where | $tps | $lat | $ratio | $cpu | $user |"
    done
  done
  if ((${#FAILED_RUNS[@]})); then
    echo
    echo "Failed runs (first error line; full log alongside):"
    echo
    for log in "${FAILED_RUNS[@]}"; do
      why=$(grep -m 1 -iE 'error|fatal|abort|not run|exit status' "$log" || echo "no error line")
      echo "- \`$(basename "$log")\`: $why"
    done
  fi

  if ((BENCH_RW)); then
    echo
    echo "## write-then-read: insert a row, read it back at once"
    echo
    echo "pgbench -f write-then-read.sql -M $BENCH_RW_MODE, ${BENCH_SECONDS}s per run. Each transaction:"
    if ((BENCH_RW_MIX > 0)); then
      echo "Read-heavy mix: $((100 - BENCH_RW_MIX))% of transactions write then read (below), $BENCH_RW_MIX% only" \
        "read a random row (read-only.sql); \"reads\" counts both."
    fi
    echo "INSERT ... RETURNING id, then SELECT count(*) WHERE id = that id (both outside any"
    echo "transaction block, so through causeway the read is routed on its own). \"reads on"
    echo "replicas\" = share of rw_bench scans (pg_stat_user_tables) that ran on replicas."
    echo "\"stale\" = reads that did not see the row just written (rows in rw_misses; must be 0)."
    echo "Statement means from pgbench -r; transaction (insert + read) percentiles from pgbench -l."
    echo
    echo "| clients | target | TPS | reads on replicas | stale reads | failed tx | INSERT mean ms | SELECT mean ms | tx p50 ms | tx p99 ms |"
    echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for clients in "${RW_CLIENTS[@]}"; do
      for target in "${RW_TARGETS[@]}"; do
        key="$clients|$target"
        if [[ -z ${RW_OK[$key]:-} ]]; then
          echo "| $clients | $target | failed: ${RW_ERR[$key]:-?} | | | | | | | |"
          continue
        fi
        echo "| $clients | $target | $(printf '%.0f' "${RW_TPS[$key]}") | ${RW_REPLICA[$key]} |" \
          "${RW_STALE[$key]} | ${RW_FAILED[$key]} | ${RW_INS[$key]} | ${RW_SEL[$key]} |" \
          "${RW_P50[$key]} | ${RW_P99[$key]} |"
      done
    done
    echo
    echo "causeway's own count (its /metrics, read before and after each run) of the reads of"
    echo "the \`causeway\` target: where they went and how long they waited for a replica to"
    echo "replay the write just made (causeway_read_wait_seconds; p50/p99 over all reads, a"
    echo "read that found a fresh replica at once counting as 0; estimated within histogram"
    echo "buckets 0.05/0.1/0.25/0.5/1/2/5 ms...)."
    echo
    echo "| clients | reads | to replicas | to the primary (reason) | waited | gave up (after max_wait_ms) | wait p50 ms | wait p99 ms | p99 of the reads that waited, ms |"
    echo "|---:|---:|---:|---|---:|---:|---:|---:|---:|"
    for clients in "${RW_CLIENTS[@]}"; do
      key="$clients|causeway"
      [[ -n ${RW_READS[$key]:-} ]] || { echo "| $clients | no metrics | | | | | | | |"; continue; }
      echo "| $clients | ${RW_READS[$key]} | ${RW_M_REPLICA[$key]} | ${RW_M_PRIMARY[$key]} |" \
        "${RW_WAITED[$key]} | ${RW_GAVE_UP[$key]} | ${RW_W50[$key]} | ${RW_W99[$key]} | ${RW_WW99[$key]} |"
    done
    echo
    echo "Added read latency through causeway with replicas, against causeway with the primary"
    echo "only (same proxy hop, no replica, no waiting): the cost of reading from a replica,"
    echo "including any wait for it to replay the write."
    echo
    echo "| clients | SELECT mean | tx p50 | tx p99 |"
    echo "|---:|---:|---:|---:|"
    for clients in "${RW_CLIENTS[@]}"; do
      a="$clients|causeway" b="$clients|causeway-primary-only"
      if [[ -n ${RW_OK[$a]:-} && -n ${RW_OK[$b]:-} ]]; then
        echo "| $clients | $(diff_ms "${RW_SEL[$a]}" "${RW_SEL[$b]}") ms |" \
          "$(diff_ms "${RW_P50[$a]}" "${RW_P50[$b]}") ms | $(diff_ms "${RW_P99[$a]}" "${RW_P99[$b]}") ms |"
      else
        echo "| $clients | - | - | - |"
      fi
    done
  fi
} | tee "$OUT/results.md"
say "results: $OUT/results.md"
