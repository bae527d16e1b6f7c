#!/usr/bin/env bash
# cluster/drivers.sh — real client drivers through causeway while servers
# die: psycopg 3 in pipeline mode (two ways), asyncpg, node-postgres,
# postgres.js and pgjdbc (plain, and with autosave=always and every
# statement prepared by name), six connections each, every result checked
# against its statement (cluster/drivers/). Under each driver's load, a
# replica is killed (pg_ctl -m immediate) and started again, then the
# primary is stopped and started again.
#
#   bash cluster/drivers.sh
#
# Needs the cluster running (cluster/cluster.sh start). Starts its own
# causeway (the release build) with both replicas. Installs what is missing
# and can be: psycopg[binary] and asyncpg with pip, pg and postgres with
# npm (in a scratch directory), Debian's libpostgresql-jdbc-java with apt
# (as root). A driver whose runtime is absent is reported and skipped.
#
# Prints one line per driver: results that matched their statement, wrong
# ones, connections closed under the client, errors by SQLSTATE (57P03
# while the primary is down and 08006 for statements running on a server
# as it goes are expected). Exits non-zero if any result was wrong, any
# connection was closed, or a driver's workers hung (postgres.js says HUNG).
#
# Environment (defaults): DRIVERS_PORT=6470 DRIVERS_SECONDS=22
#   DRIVERS=psycopg-sync,psycopg-flush,asyncpg,node-postgres,postgres-js,pgjdbc,
#   pgjdbc-autosave
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=cluster/lib.sh
source "$REPO/cluster/lib.sh"
DRIVERS_PORT=${DRIVERS_PORT:-6470}
DRIVERS_SECONDS=${DRIVERS_SECONDS:-22}
DRIVERS=${DRIVERS:-psycopg-sync,psycopg-flush,asyncpg,node-postgres,postgres-js,pgjdbc,pgjdbc-autosave}
HERE=$REPO/cluster/drivers
CLUSTER=$REPO/cluster/cluster.sh
export PGPASSWORD=app

say() { printf 'drivers: %s\n' "$*" >&2; }
die() { printf 'drivers: error: %s\n' "$*" >&2; exit 1; }

eval "$(bash "$CLUSTER" env)"
bash "$CLUSTER" status >/dev/null || die "the cluster is not running (cluster/cluster.sh start)"
read -r -a REPLICA_PORTS <<<"$PGPORT_REPLICAS"
((${#REPLICA_PORTS[@]} > 0)) || die "the cluster has no replica"
scratch_dir drivers

"$PG_BIN/psql" -qX -h 127.0.0.1 -p "$PGPORT_PRIMARY" -U app app -c \
  "CREATE TABLE IF NOT EXISTS pipe_chaos (id bigserial PRIMARY KEY, who int, v int)" >/dev/null

{
  printf '[proxy]\nlisten = "127.0.0.1:%d"\n\n[pool]\nmode = "transaction"\n\n' "$DRIVERS_PORT"
  servers_toml "$PGPORT_PRIMARY" "${REPLICA_PORTS[@]}"
  printf '\n[routing]\nmonitor_database = "postgres"\n\n[metrics]\nenabled = false\n'
} >"$WORK/causeway.toml"
bin=$(release_causeway)
"$bin" --config "$WORK/causeway.toml" >"$WORK/causeway.log" 2>&1 &
PID=$!
wait_listening "$DRIVERS_PORT" 10 || die "causeway did not start: $(tail -3 "$WORK/causeway.log")"

# The runtimes, installed where missing and possible.
have_python() { python3 -c "import $1" 2>/dev/null; }
if command -v python3 >/dev/null; then
  have_python psycopg || python3 -m pip install -q "psycopg[binary]" >&2 || true
  have_python asyncpg || python3 -m pip install -q asyncpg >&2 || true
fi
if command -v npm >/dev/null; then
  (cd "$WORK" && npm init -y >/dev/null 2>&1 && npm install -s pg postgres >/dev/null 2>&1) || true
fi
JDBC_JAR=/usr/share/java/postgresql.jar
if command -v javac >/dev/null && [[ ! -f $JDBC_JAR ]] && ((EUID == 0)); then
  apt-get install -y -q libpostgresql-jdbc-java >/dev/null 2>&1 || true
fi

# runs DRIVER: its command line, or nothing if its runtime is absent.
command_of() {
  case $1 in
    psycopg-sync | psycopg-flush)
      have_python psycopg && echo python3 "$HERE/psycopg_pipeline.py" "$DRIVERS_PORT" "$DRIVERS_SECONDS" "${1#psycopg-}" ;;
    asyncpg)
      have_python asyncpg && echo python3 "$HERE/asyncpg_load.py" "$DRIVERS_PORT" "$DRIVERS_SECONDS" ;;
    node-postgres)
      [[ -d $WORK/node_modules/pg ]] && cp "$HERE/node_pg_load.js" "$WORK/" &&
        echo node "$WORK/node_pg_load.js" "$DRIVERS_PORT" "$DRIVERS_SECONDS" ;;
    postgres-js)
      [[ -d $WORK/node_modules/postgres ]] && cp "$HERE/postgres_js_load.js" "$WORK/" &&
        echo node "$WORK/postgres_js_load.js" "$DRIVERS_PORT" "$DRIVERS_SECONDS" ;;
    pgjdbc | pgjdbc-autosave)
      [[ -f $JDBC_JAR ]] && command -v javac >/dev/null &&
        javac -d "$WORK" "$HERE/JdbcLoad.java" &&
        echo java -cp "$WORK:$JDBC_JAR" JdbcLoad "$DRIVERS_PORT" "$DRIVERS_SECONDS" \
          "$([[ $1 == pgjdbc-autosave ]] && echo '&autosave=always&prepareThreshold=-1')" ;;
    *) die "unknown driver $1" ;;
  esac
}

# The servers' schedule under each load: a replica killed and started
# again, then the primary stopped and started again.
chaos() {
  local replica=replica$(($1 % ${#REPLICA_PORTS[@]}))
  sleep 4
  bash "$CLUSTER" kill "$replica" >/dev/null 2>&1
  sleep 3
  bash "$CLUSTER" start-server "$replica" >/dev/null 2>&1
  sleep 3
  bash "$CLUSTER" stop-server primary >/dev/null 2>&1
  sleep 3
  bash "$CLUSTER" start-server primary >/dev/null 2>&1
}

failed=0
n=0
IFS=, read -r -a LIST <<<"$DRIVERS"
for driver in "${LIST[@]}"; do
  cmd=$(command_of "$driver" || true)
  if [[ -z $cmd ]]; then
    echo "$driver: skipped (its runtime or driver is not installed)"
    continue
  fi
  chaos "$n" &
  schedule=$!
  # shellcheck disable=SC2086 # a command line built above
  line=$($cmd 2>"$WORK/$driver.err" | tail -1) || true
  wait "$schedule"
  n=$((n + 1))
  echo "${line:-$driver: no result (see its errors: $(tail -2 "$WORK/$driver.err"))}"
  if [[ ! $line =~ \ wrong\ 0\ closed\ 0\  || $line == *HUNG* ]]; then
    failed=1
  fi
done
bash "$CLUSTER" status >&2
exit "$failed"
