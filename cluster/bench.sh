#!/usr/bin/env bash
# cluster/bench.sh — pgbench against three targets in one run: the primary
# directly, through causeway, and through PgBouncer; prints a markdown table.
#
#   bash cluster/bench.sh
#
# Why three targets in one run: numbers from different runs on a shared 2-core
# machine are not comparable; numbers from one run, with the target order
# rotated from one combination to the next (and from round to round), are.
#
# What it does:
#   1. Uses the cluster in $CLUSTER_DIR (default $REPO/.cluster). If it is not
#      running, starts it there with cluster/cluster.sh (default ports) and
#      stops it again on exit.
#   2. pgbench -i -s $BENCH_SCALE on the primary as role app, then waits until
#      every replica has replayed it (causeway serves reads from replicas).
#   3. Starts causeway (start_causeway below: cargo build --release, then
#      target/release/causeway --config <generated toml>) unless something
#      already listens on $CAUSEWAY_PORT, and PgBouncer with a generated ini.
#   4. For each workload x clients x mode, runs pgbench -T $BENCH_SECONDS on
#      each target (order rotated), with a CHECKPOINT before each run.
#   5. Prints | workload | clients | mode | target | TPS | mean latency ms |
#      vs direct | proxy CPU us/tx |; the last is the proxy process's
#      utime+stime (/proc/PID/stat) over the run divided by transactions.
#      A run that fails is reported as "failed", with its log kept.
#
# Environment (defaults):
#   BENCH_SECONDS=15  BENCH_SCALE=10  BENCH_ROUNDS=1  BENCH_SKIP_INIT=0
#   BENCH_WORKLOADS="select-only tpcb-like"  BENCH_CLIENTS="1 8"
#   BENCH_MODES="simple extended prepared"  BENCH_TARGETS="direct causeway pgbouncer"
#   CAUSEWAY_PORT=6432  PGBOUNCER_PORT=6532  POOL_MODE=session (PgBouncer)
#   BENCH_OUT=$REPO/target/bench   (results.md and every pgbench log)
#   CLUSTER_DIR=$REPO/.cluster     BENCH_RUST_LOG=warn (RUST_LOG for causeway)
#
# Logins: every target is reached as role app (password app, SCRAM), as the
# cluster sets it up; PgBouncer authenticates clients with SCRAM too.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLUSTER=("bash" "$REPO/cluster/cluster.sh")

BENCH_SECONDS=${BENCH_SECONDS:-15}
BENCH_SCALE=${BENCH_SCALE:-10}
BENCH_ROUNDS=${BENCH_ROUNDS:-1}
BENCH_SKIP_INIT=${BENCH_SKIP_INIT:-0}
read -r -a WORKLOADS <<<"${BENCH_WORKLOADS:-select-only tpcb-like}"
read -r -a CLIENTS <<<"${BENCH_CLIENTS:-1 8}"
read -r -a MODES <<<"${BENCH_MODES:-simple extended prepared}"
read -r -a TARGETS <<<"${BENCH_TARGETS:-direct causeway pgbouncer}"
CAUSEWAY_PORT=${CAUSEWAY_PORT:-6432}
PGBOUNCER_PORT=${PGBOUNCER_PORT:-6532}
POOL_MODE=${POOL_MODE:-session}
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
CAUSEWAY_PID=
PGBOUNCER_PID=

cleanup() {
  set +e
  if [[ -n $CAUSEWAY_PID ]] && kill -0 "$CAUSEWAY_PID" 2>/dev/null; then
    kill -TERM "$CAUSEWAY_PID"
    wait "$CAUSEWAY_PID" 2>/dev/null
  fi
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

# utime+stime of a process, all threads, in clock ticks.
cpu_ticks() {
  local stat
  stat=$(<"/proc/$1/stat") || return 1
  stat=${stat##*) }            # drop "pid (comm) ", comm may hold spaces
  read -r -a f <<<"$stat"      # f[0] is field 3 (state)
  echo $((f[11] + f[12]))      # fields 14 and 15
}
CLK_TCK=$(getconf CLK_TCK)

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

admin() { "$PSQL" -X -q -A -t -h 127.0.0.1 -p "$PGPORT_PRIMARY" -U postgres -d app -c "$1"; }

wait_replicas_caught_up() {
  local deadline=$((SECONDS + 300))
  until [[ $(admin "SELECT count(*) FROM pg_stat_replication
                    WHERE replay_lsn IS NULL OR replay_lsn < pg_current_wal_lsn()") == 0 ]]; do
    ((SECONDS < deadline)) || die "replicas did not catch up within 300 s"
    sleep 0.5
  done
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

# ============================ start_causeway ===================================
# Builds the proxy and starts it in front of the cluster on $CAUSEWAY_PORT.
# TODO(config): the TOML below follows src/config.rs as it stood when this was
# written (sections [proxy], [primary], [[replicas]], [[users]]); keep it in
# step with proxy.toml. Sets CAUSEWAY_PID; returns non-zero if it does not listen.
start_causeway() {
  local config=$WORK/causeway.toml k
  {
    echo "[proxy]"
    echo "listen = \"127.0.0.1:$CAUSEWAY_PORT\""
    echo
    echo "[primary]"
    echo "name = \"primary\""
    echo "host = \"127.0.0.1\""
    echo "port = $PGPORT_PRIMARY"
    for k in "${!REPLICA_PORTS[@]}"; do
      echo
      echo "[[replicas]]"
      echo "name = \"replica$k\""
      echo "host = \"127.0.0.1\""
      echo "port = ${REPLICA_PORTS[$k]}"
    done
    echo
    echo "[[users]]"
    echo "name = \"app\""
    echo "password = \"app\""
  } >"$config"
  cp "$config" "$OUT/causeway.toml"
  say "cargo build --release (log: $OUT/cargo-build.log)"
  (cd "$REPO" && cargo build --release --bin causeway) >"$OUT/cargo-build.log" 2>&1 || {
    say "causeway did not build; see $OUT/cargo-build.log"
    return 1
  }
  RUST_LOG=${BENCH_RUST_LOG:-warn} "$REPO/target/release/causeway" --config "$config" \
    >"$OUT/causeway.log" 2>&1 &
  CAUSEWAY_PID=$!
  if ! wait_port "$CAUSEWAY_PORT" 30 || ! kill -0 "$CAUSEWAY_PID" 2>/dev/null; then
    say "causeway is not listening on $CAUSEWAY_PORT; see $OUT/causeway.log"
    return 1
  fi
}
# ================================================================================

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
PORT[pgbouncer]=$PGBOUNCER_PORT

for target in "${TARGETS[@]}"; do
  case $target in
    direct) ;;
    causeway)
      if port_open "$CAUSEWAY_PORT"; then
        PID[causeway]=$(listener_pid "$CAUSEWAY_PORT")
        say "using the causeway already listening on $CAUSEWAY_PORT (pid ${PID[causeway]:-unknown})"
      elif start_causeway; then
        PID[causeway]=$CAUSEWAY_PID
      else
        UNAVAILABLE[causeway]="did not start"
      fi ;;
    pgbouncer)
      if port_open "$PGBOUNCER_PORT"; then
        UNAVAILABLE[pgbouncer]="port $PGBOUNCER_PORT already in use"
      elif start_pgbouncer; then
        PID[pgbouncer]=$PGBOUNCER_PID
      else
        UNAVAILABLE[pgbouncer]="did not start"
      fi ;;
    *) die "unknown target '$target' (direct, causeway, pgbouncer)" ;;
  esac
done

# ---------------------------------------------------------------- runs

declare -A SUM_TPS SUM_LAT OK FAILED TX TICKS
FAILED_RUNS=()
NPROC=$(nproc)

# run_one WORKLOAD CLIENTS MODE TARGET ROUND: one pgbench run, results recorded.
run_one() {
  local workload=$1 clients=$2 mode=$3 target=$4 round=$5
  local key="$workload|$clients|$mode|$target"
  local log="$OUT/$workload-c$clients-$mode-$target-r$round.log"
  local jobs=$((clients < NPROC ? clients : NPROC)) script before= after= rc=0
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
  admin "CHECKPOINT" >/dev/null
  local pid=${PID[$target]:-}
  [[ -n $pid ]] && before=$(cpu_ticks "$pid" || true)
  timeout -k 5 $((BENCH_SECONDS + 60)) "$PGBENCH" -h 127.0.0.1 -p "${PORT[$target]}" -U app \
    "${script[@]}" -M "$mode" -c "$clients" -j "$jobs" -T "$BENCH_SECONDS" app \
    >"$log" 2>&1 || rc=$?
  [[ -n $pid ]] && after=$(cpu_ticks "$pid" || true)
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
    TICKS[$key]=$((${TICKS[$key]:-0} + after - before))
  fi
  say "$key: $tps tps, $lat ms"
}

combo=0
total=$((${#WORKLOADS[@]} * ${#CLIENTS[@]} * ${#MODES[@]} * ${#TARGETS[@]} * BENCH_ROUNDS))
say "$total runs of ${BENCH_SECONDS}s; logs in $OUT"
for ((round = 1; round <= BENCH_ROUNDS; round++)); do
  for workload in "${WORKLOADS[@]}"; do
    for clients in "${CLIENTS[@]}"; do
      for mode in "${MODES[@]}"; do
        n=${#TARGETS[@]}
        for ((i = 0; i < n; i++)); do
          target=${TARGETS[$(((i + combo + round) % n))]}
          run_one "$workload" "$clients" "$mode" "$target" "$round"
        done
        combo=$((combo + 1))
      done
    done
  done
done

# ---------------------------------------------------------------- report

mean() { awk -v s="$1" -v n="$2" "BEGIN { printf \"$3\", s / n }"; }

{
  echo "## pgbench: direct vs causeway vs PgBouncer"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $("$PG_BIN/postgres" --version)," \
    "$(pgbouncer --version 2>/dev/null | head -n 1 || echo 'no pgbouncer')," \
    "causeway $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')."
  echo "Scale $SCALE, ${BENCH_SECONDS}s per run, $BENCH_ROUNDS round(s), PgBouncer pool_mode=$POOL_MODE," \
    "${#REPLICA_PORTS[@]} replicas. Direct and PgBouncer use only the primary; causeway" \
    "may serve reads from replicas. Proxy CPU = utime+stime of the proxy process per transaction."
  echo
  echo "| workload | clients | mode | target | TPS | mean latency ms | vs direct | proxy CPU µs/tx |"
  echo "|---|---:|---|---|---:|---:|---:|---:|"
  for workload in "${WORKLOADS[@]}"; do
    for clients in "${CLIENTS[@]}"; do
      for mode in "${MODES[@]}"; do
        direct_key="$workload|$clients|$mode|direct"
        for target in "${TARGETS[@]}"; do
          key="$workload|$clients|$mode|$target"
          ok=${OK[$key]:-0}
          failed=${FAILED[$key]:-0}
          if ((ok == 0)); then
            echo "| $workload | $clients | $mode | $target | failed | - | - | - |"
            continue
          fi
          tps=$(mean "${SUM_TPS[$key]}" "$ok" '%.0f')
          lat=$(mean "${SUM_LAT[$key]}" "$ok" '%.3f')
          ratio=-
          if ((${OK[$direct_key]:-0} > 0)); then
            ratio=$(awk -v a="${SUM_TPS[$key]}" -v na="$ok" -v b="${SUM_TPS[$direct_key]}" \
              -v nb="${OK[$direct_key]}" 'BEGIN { printf "%.2f", (a / na) / (b / nb) }')
          fi
          cpu=-
          if [[ -n ${TICKS[$key]:-} ]]; then
            cpu=$(awk -v t="${TICKS[$key]}" -v hz="$CLK_TCK" -v n="${TX[$key]}" \
              'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
          fi
          ((failed == 0)) || tps="$tps ($failed failed)"
          echo "| $workload | $clients | $mode | $target | $tps | $lat | $ratio | $cpu |"
        done
      done
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
} | tee "$OUT/results.md"
say "results: $OUT/results.md"
