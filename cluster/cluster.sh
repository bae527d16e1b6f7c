#!/usr/bin/env bash
# cluster/cluster.sh — a local PostgreSQL primary + N streaming replicas + Redis
# on loopback, for causeway's demo, integration tests and benchmarks.
#
# Needs only the PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup,
# postgres), psql and redis-server:  apt-get install -y postgresql-15 redis-server
# Postgres is found in $PG_BIN, else the highest /usr/lib/postgresql/*/bin,
# else $PATH.
#
# Usage: cluster.sh [options] COMMAND [args]      (options may go anywhere)
#
#   start                  initdb the primary, clone N replicas with
#                          `pg_basebackup -R -X stream` (one physical slot each),
#                          start Redis; returns once every replica is 'streaming'
#                          in pg_stat_replication. Idempotent: starts only what is
#                          down, clones only replicas that do not exist yet.
#   stop                   stop every server (pg_ctl -m fast) and Redis
#   status                 table: name, port, real role (pg_is_in_recovery()),
#                          replayed LSN, lag bytes vs the primary's
#                          pg_current_wal_lsn(), replay paused, apply delay, whom
#                          a standby streams from; and Redis up/down.
#                          Exit 0 when everything is up, 3 when something is down.
#   pause NAME             pg_wal_replay_pause() on a replica (waits until paused)
#   resume NAME            pg_wal_replay_resume()
#   delay NAME MS          recovery_min_apply_delay = MS ms (ALTER SYSTEM + reload);
#                          0 removes the delay
#   stop-server NAME       stop one server (NAME may also be `redis`)
#   start-server NAME      start one server; a replica is waited for until streaming
#   kill NAME              stop one server with `pg_ctl -m immediate`, as a crash
#   promote NAME           pg_ctl promote a standby (waits until it is out of
#                          recovery) and record it as the primary; causeway sends
#                          writes to it once the old primary is gone or in recovery
#   failover NAME          stop the primary, then promote standby NAME
#   rejoin NAME            make NAME a streaming standby of the current primary:
#                          re-point it (primary_conninfo, reload), else pg_rewind
#                          it, else clone it afresh with pg_basebackup; waits until
#                          it streams. For the other standbys and the old primary
#                          after a promotion.
#   chaos [OPTIONS]        kill, restart and promote servers at random under load
#                          through causeway, then print what clients saw (stale
#                          reads, lost writes, errors, closed sessions); see
#                          cluster/chaos.sh --help and docs/chaos.md
#   psql NAME [ARGS...]    psql to one server as the superuser (rest passed to psql)
#   env                    print `export` lines: ports, URLs, DIR, PG_BIN
#   destroy                stop everything and delete DIR (only if DIR holds a cluster)
#
#   NAME is primary, replica0, replica1, ... (ports in that order). A name is a
#   server (data directory and port), not a role: after a promotion, `replica0`
#   may be the primary and `primary` a standby. DIR/cluster.env records which
#   server is the primary; `status` shows each server's real role.
#
# Options (and the environment variables that set the same default):
#   --dir DIR                 data directory          CLUSTER_DIR   ($REPO/.cluster)
#   --replicas N              replicas for `start`    CLUSTER_REPLICAS      (2)
#   --port P                  primary port            PGPORT_PRIMARY        (5433)
#   --replica-base-port P     replica K gets P+K      PGPORT_REPLICA_BASE   (primary+1)
#   --redis-port P            Redis port              REDIS_PORT            (6379)
#   --no-redis                no Redis in this cluster
#   --no-fsync                fsync=off, full_page_writes=off, synchronous_commit=off
#                             (throwaway test clusters; never for benchmarks)
#
# The layout (ports, replicas, Redis, which server is the primary) is saved in
# DIR/cluster.env at the first `start`; later commands read it, so only --dir is
# needed after that.
#
# Layout of DIR: primary/ replicaK/ (data directories), run/ (Unix sockets),
# log/NAME.log (server logs), redis/ (Redis data, log, pid), cluster.env.
#
# Authentication (pg_hba.conf, same on every server; listen_addresses=127.0.0.1):
#   local  all          all                     trust
#   host   all          postgres  127.0.0.1/32  trust          (superuser, admin)
#   host   replication  postgres  127.0.0.1/32  trust          (replicas stream as postgres)
#   host   all          all       127.0.0.1/32  scram-sha-256
#   host   replication  all       127.0.0.1/32  scram-sha-256
# Roles: `postgres` superuser (password `postgres`, unused over trust);
#        `app` password `app`, LOGIN REPLICATION, member of pg_monitor, owner of
#        database `app` — what the proxy, demo app and pgbench log in as:
#        postgres://app:app@127.0.0.1:5433/app
#
# Postgres refuses to run as root: as root, the servers run as the unprivileged
# user `postgres` (created if missing), DIR is chowned to it and its parent
# directories are made traversable (o+x). Redis runs as the invoking user.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROG=${0##*/}

usage() {
  sed -n '2,/^set -euo pipefail/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

say() { printf 'cluster: %s\n' "$*"; }
die() { printf 'cluster: error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- arguments

DIR=${CLUSTER_DIR:-$REPO/.cluster}
OPT_REPLICAS=${CLUSTER_REPLICAS:-}
OPT_PORT=${PGPORT_PRIMARY:-}
OPT_REPLICA_BASE=${PGPORT_REPLICA_BASE:-}
OPT_REDIS_PORT=${REDIS_PORT:-}
OPT_NO_REDIS=0
OPT_NO_FSYNC=0

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

ARGS=()
while (($#)); do
  # Everything after `psql NAME` belongs to psql, after `chaos` to chaos.sh.
  if { ((${#ARGS[@]} == 2)) && [[ ${ARGS[0]} == psql ]]; } ||
    { ((${#ARGS[@]} == 1)) && [[ ${ARGS[0]} == chaos ]]; }; then
    ARGS+=("$@")
    break
  fi
  case $1 in
    --dir) DIR=${2:?--dir needs a value}; shift 2 ;;
    --dir=*) DIR=${1#*=}; shift ;;
    --replicas) OPT_REPLICAS=${2:?--replicas needs a value}; shift 2 ;;
    --replicas=*) OPT_REPLICAS=${1#*=}; shift ;;
    --port) OPT_PORT=${2:?--port needs a value}; shift 2 ;;
    --port=*) OPT_PORT=${1#*=}; shift ;;
    --replica-base-port) OPT_REPLICA_BASE=${2:?--replica-base-port needs a value}; shift 2 ;;
    --replica-base-port=*) OPT_REPLICA_BASE=${1#*=}; shift ;;
    --redis-port) OPT_REDIS_PORT=${2:?--redis-port needs a value}; shift 2 ;;
    --redis-port=*) OPT_REDIS_PORT=${1#*=}; shift ;;
    --no-redis) OPT_NO_REDIS=1; shift ;;
    --no-fsync) OPT_NO_FSYNC=1; shift ;;
    -h | --help | help) usage; exit 0 ;;
    --) shift; ARGS+=("$@"); break ;;
    -*) die "unknown option $1 (see $PROG --help)" ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
set -- "${ARGS[@]+"${ARGS[@]}"}"

for v in "$OPT_REPLICAS" "$OPT_PORT" "$OPT_REPLICA_BASE" "$OPT_REDIS_PORT"; do
  [[ -z $v ]] || is_uint "$v" || die "expected a number, got '$v'"
done

DIR=$(realpath -m -- "$DIR")
LAYOUT=$DIR/cluster.env
RUN_DIR=$DIR/run
LOG_DIR=$DIR/log
REDIS_DIR=$DIR/redis

# ---------------------------------------------------------------- binaries

PKG_SERVER="postgresql-15"
INSTALL_HINT="apt-get install -y postgresql-15 postgresql-client-15 redis-server"

find_pg_bin() {
  if [[ -n ${PG_BIN:-} ]]; then
    printf '%s\n' "$PG_BIN"
    return
  fi
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [[ -n $d && -x $d/pg_ctl ]]; then
    printf '%s\n' "$d"
  elif command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(command -v pg_ctl)"
  fi
}
PG_BIN_FROM_ENV=${PG_BIN:-}
PG_BIN=$(find_pg_bin)

# pg_bin NAME PACKAGE: full path of a Postgres program, or a message naming the
# Debian package that provides it.
pg_bin() {
  if [[ -n $PG_BIN && -x $PG_BIN/$1 ]]; then
    printf '%s\n' "$PG_BIN/$1"
  elif [[ -n ${PG_BIN_FROM_ENV:-} ]]; then
    die "PG_BIN=$PG_BIN has no $1 (unset PG_BIN to search /usr/lib/postgresql/*/bin and \$PATH)"
  elif command -v "$1" >/dev/null 2>&1; then
    command -v "$1"
  else
    die "$1 not found (looked in \$PG_BIN, /usr/lib/postgresql/*/bin, \$PATH); install it: apt-get install -y $2   (all: $INSTALL_HINT)"
  fi
}

need_server_bins() {
  INITDB=$(pg_bin initdb "$PKG_SERVER")
  PG_CTL=$(pg_bin pg_ctl "$PKG_SERVER")
  PG_BASEBACKUP=$(pg_bin pg_basebackup "$PKG_SERVER")
  pg_bin postgres "$PKG_SERVER" >/dev/null
  need_psql
}
need_psql() {
  PSQL=$(pg_bin psql postgresql-client-15)
  # Debian's /usr/bin/psql is a wrapper that fails when no client is installed.
  "$PSQL" --version >/dev/null 2>&1 ||
    die "$PSQL does not run; install the client: apt-get install -y postgresql-client-15"
}
need_redis() {
  command -v redis-server >/dev/null 2>&1 ||
    die "redis-server not found; install it: apt-get install -y redis-server   (all: $INSTALL_HINT)"
}

# ---------------------------------------------------------------- running as postgres

AS_ROOT=0
[[ $(id -u) == 0 ]] && AS_ROOT=1

# Runs a command as the user that owns the servers, from a directory that user
# can enter (initdb and pg_ctl complain when the cwd is unreadable).
as_pg() {
  if ((AS_ROOT)); then
    (cd "$DIR" 2>/dev/null || cd /; runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

ensure_pg_user() {
  ((AS_ROOT)) || return 0
  if ! id -u postgres >/dev/null 2>&1; then
    say "creating system user postgres (Postgres refuses to run as root)"
    useradd --system --user-group --home-dir /var/lib/postgresql --no-create-home \
      --shell /bin/bash postgres
  fi
}

# Creates DIR and its subdirectories; as root, hands them to postgres and makes
# every parent directory traversable so the servers can reach their data.
prepare_dir() {
  mkdir -p "$DIR" "$RUN_DIR" "$LOG_DIR"
  ((AS_ROOT)) || return 0
  chown postgres: "$DIR" "$RUN_DIR" "$LOG_DIR"
  chmod 0755 "$DIR"
  # From / down, so each check sees the fixes above it.
  local p parents=()
  p=$DIR
  while [[ $p != / ]]; do
    p=$(dirname "$p")
    parents=("$p" "${parents[@]+"${parents[@]}"}")
  done
  for p in "${parents[@]}"; do
    if ! runuser -u postgres -- test -x "$p"; then
      say "making $p traversable (chmod o+x) so user postgres can reach $DIR"
      chmod o+x "$p"
    fi
  done
}

# ---------------------------------------------------------------- layout

L_PRIMARY_PORT=
L_REPLICA_PORTS=
L_REDIS_PORT=
L_NO_FSYNC=0
# The server that is the primary now (a layout saved before promotions were
# recorded has no such line: then it is `primary`).
L_PRIMARY_NAME=primary

load_layout() {
  [[ -f $LAYOUT ]] || return 1
  # shellcheck disable=SC1090
  source "$LAYOUT"
}

require_layout() {
  load_layout || die "no cluster in $DIR (start one: $PROG start --dir $DIR)"
}

save_layout() {
  {
    echo "# written by cluster/cluster.sh; read by its later commands"
    printf 'L_PRIMARY_PORT=%q\n' "$L_PRIMARY_PORT"
    printf 'L_REPLICA_PORTS=%q\n' "$L_REPLICA_PORTS"
    printf 'L_REDIS_PORT=%q\n' "$L_REDIS_PORT"
    printf 'L_NO_FSYNC=%q\n' "$L_NO_FSYNC"
    printf 'L_PRIMARY_NAME=%q\n' "$L_PRIMARY_NAME"
  } >"$LAYOUT"
}

# The layout that options and environment ask for (used when DIR is new).
wanted_layout() {
  L_PRIMARY_PORT=${OPT_PORT:-5433}
  local base=${OPT_REPLICA_BASE:-$((L_PRIMARY_PORT + 1))} n=${OPT_REPLICAS:-2} k
  L_REPLICA_PORTS=
  for ((k = 0; k < n; k++)); do L_REPLICA_PORTS+="${L_REPLICA_PORTS:+ }$((base + k))"; done
  if ((OPT_NO_REDIS)); then L_REDIS_PORT=; else L_REDIS_PORT=${OPT_REDIS_PORT:-6379}; fi
  L_NO_FSYNC=$OPT_NO_FSYNC
  L_PRIMARY_NAME=primary
}

replica_ports() { read -r -a REPLICA_PORTS <<<"$L_REPLICA_PORTS"; }
replica_count() { replica_ports; echo "${#REPLICA_PORTS[@]}"; }
server_names() {
  local k n
  n=$(replica_count)
  echo primary
  for ((k = 0; k < n; k++)); do echo "replica$k"; done
}

# port_of NAME -> port, or an error naming the servers that exist.
port_of() {
  local name=$1
  replica_ports
  case $name in
    primary) echo "$L_PRIMARY_PORT" ;;
    redis)
      [[ -n $L_REDIS_PORT ]] || die "this cluster has no Redis"
      echo "$L_REDIS_PORT" ;;
    replica[0-9]*)
      local k=${name#replica}
      is_uint "$k" && ((k < ${#REPLICA_PORTS[@]})) ||
        die "no server '$name' (servers: $(server_names | paste -sd" "))"
      echo "${REPLICA_PORTS[$k]}" ;;
    *) die "no server '$name' (servers: $(server_names | paste -sd" ")${L_REDIS_PORT:+ redis})" ;;
  esac
}

# The current primary (recorded by start, promote and failover) and its port.
primary_name() { echo "$L_PRIMARY_NAME"; }
primary_port() { port_of "$L_PRIMARY_NAME"; }
standby_names() { server_names | grep -vx "$L_PRIMARY_NAME"; }

require_replica() {
  port_of "$1" >/dev/null
  [[ $1 != "$L_PRIMARY_NAME" ]] ||
    die "$1 is the primary, not a standby (standbys: $(standby_names | paste -sd" "))"
}

datadir_of() { echo "$DIR/$1"; }

# ---------------------------------------------------------------- small helpers

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# q PORT SQL...: one psql call as the superuser, unaligned, tuples only.
q() {
  local port=$1
  shift
  PGCONNECT_TIMEOUT=5 "$PSQL" -X -q -A -t -v ON_ERROR_STOP=1 \
    -h 127.0.0.1 -p "$port" -U postgres -d postgres "$@"
}

pg_running() { as_pg "$PG_CTL" -D "$(datadir_of "$1")" status >/dev/null 2>&1; }

# streams_within NAME SECONDS: true once the primary's pg_stat_replication
# shows NAME 'streaming', false when SECONDS pass first.
streams_within() {
  local name=$1 deadline=$((SECONDS + $2)) port
  port=$(primary_port)
  STREAM_STATE=
  while :; do
    STREAM_STATE=$(q "$port" -c \
      "SELECT state FROM pg_stat_replication WHERE application_name = '$name'" 2>/dev/null || true)
    [[ $STREAM_STATE == *streaming* ]] && return 0
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

wait_streaming() {
  local name=$1 wait=${CLUSTER_WAIT_SECONDS:-60}
  streams_within "$name" "$wait" ||
    die "$name is not streaming from $(primary_name) after ${wait}s (state '${STREAM_STATE:-absent}'); see $LOG_DIR/$name.log ($PROG rejoin $name makes it follow $(primary_name))"
}

# ---------------------------------------------------------------- Postgres servers

# Settings of one server, in DATADIR/causeway.conf, included from postgresql.conf.
# pg_basebackup copies the file; each replica then gets its own port and name.
write_conf() {
  local name=$1 port=$2 datadir sockets
  datadir=$(datadir_of "$name")
  sockets=$RUN_DIR
  # A Unix socket path longer than 107 bytes stops the server; TCP is enough.
  if ((${#RUN_DIR} + 20 > 107)); then sockets=; fi
  cat >"$datadir/causeway.conf" <<EOF
# Written by cluster/cluster.sh for server '$name'; rewritten on clone.
cluster_name = '$name'
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$sockets'
max_connections = 200
wal_level = logical
hot_standby = on
hot_standby_feedback = on
max_wal_senders = 10
max_replication_slots = 10
max_slot_wal_keep_size = '2GB'
wal_receiver_status_interval = 1s
# Lets pg_rewind turn a failed primary into a standby (cluster.sh rejoin).
wal_log_hints = on
log_line_prefix = '%m [%p] %q%u@%d '
EOF
  if ((L_NO_FSYNC)); then
    printf '%s\n' "fsync = off" "full_page_writes = off" "synchronous_commit = off" \
      >>"$datadir/causeway.conf"
  fi
  ((AS_ROOT)) && chown postgres: "$datadir/causeway.conf"
  return 0
}

init_primary() {
  local datadir pwfile
  datadir=$(datadir_of primary)
  say "initdb primary in $datadir"
  pwfile=$DIR/.pwfile
  echo postgres >"$pwfile"
  ((AS_ROOT)) && chown postgres: "$pwfile"
  local sync=()
  ((L_NO_FSYNC)) && sync=(--no-sync)
  as_pg "$INITDB" -D "$datadir" -U postgres --pwfile="$pwfile" -E UTF8 --locale=C \
    --auth-local=trust --auth-host=scram-sha-256 "${sync[@]+"${sync[@]}"}" \
    >"$LOG_DIR/initdb.log" 2>&1 || {
    rm -rf -- "$pwfile" "$datadir"
    die "initdb failed; see $LOG_DIR/initdb.log"
  }
  rm -f "$pwfile"
  cat >"$datadir/pg_hba.conf" <<'EOF'
# Written by cluster/cluster.sh. Superuser over trust on loopback (a local dev
# cluster); every other role must give its password (SCRAM).
# TYPE  DATABASE     USER      ADDRESS        METHOD
local   all          all                      trust
host    all          postgres  127.0.0.1/32   trust
host    replication  postgres  127.0.0.1/32   trust
host    all          all       127.0.0.1/32   scram-sha-256
host    replication  all       127.0.0.1/32   scram-sha-256
EOF
  echo "include_if_exists = 'causeway.conf'" >>"$datadir/postgresql.conf"
  write_conf primary "$L_PRIMARY_PORT"
}

# Run at every start, so a start interrupted after initdb still ends with them.
ensure_app_role() {
  local port
  port=$(primary_port)
  [[ -z $(q "$port" -c "SELECT 1 FROM pg_database WHERE datname = 'app'") ]] || return 0
  q "$port" >/dev/null <<'SQL'
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'app') THEN
    CREATE ROLE app LOGIN REPLICATION PASSWORD 'app';
  END IF;
END $$;
GRANT pg_monitor TO app;
CREATE DATABASE app OWNER app;
SQL
  say "created role app (password app) and database app"
}

start_pg() {
  local name=$1 port
  port=$(port_of "$name")
  if pg_running "$name"; then
    say "$name already running (port $port)"
    return 1
  fi
  port_open "$port" && die "port $port is in use by another process; pick other ports (--port, --replica-base-port)"
  as_pg "$PG_CTL" -D "$(datadir_of "$name")" -l "$LOG_DIR/$name.log" -w -t 120 start >/dev/null ||
    die "$name did not start; see $LOG_DIR/$name.log"
  say "$name started (port $port)"
}

stop_pg() {
  local name=$1
  if pg_running "$name"; then
    as_pg "$PG_CTL" -D "$(datadir_of "$name")" -m fast -w -t 120 stop >/dev/null
    say "$name stopped"
  else
    say "$name not running"
  fi
}

clone_replica() {
  local name=$1 port datadir source
  port=$(port_of "$name")
  datadir=$(datadir_of "$name")
  source=$(primary_port)
  say "cloning $name from $(primary_name) (pg_basebackup -R -X stream, slot $name)"
  # A slot left by an earlier replica of that name would make -C fail.
  q "$source" -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                  WHERE slot_name = '$name' AND NOT active" >/dev/null
  as_pg "$PG_BASEBACKUP" -h 127.0.0.1 -p "$source" -U postgres -D "$datadir" \
    -R -X stream -C -S "$name" -c fast >"$LOG_DIR/$name-basebackup.log" 2>&1 ||
    die "pg_basebackup for $name failed; see $LOG_DIR/$name-basebackup.log"
  write_conf "$name" "$port"
}

# ---------------------------------------------------------------- Redis

redis_pid() {
  local pid
  [[ -f $REDIS_DIR/redis.pid ]] || return 1
  pid=$(<"$REDIS_DIR/redis.pid")
  kill -0 "$pid" 2>/dev/null && echo "$pid"
}

redis_up() {
  local reply
  reply=$(
    exec 2>/dev/null
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 0
    printf 'PING\r\n' >&3
    read -r -t 2 line <&3 && printf '%s' "$line"
  ) || true
  [[ $reply == +PONG* ]]
}

start_redis() {
  local port=$L_REDIS_PORT
  if redis_pid >/dev/null; then
    say "redis already running (port $port)"
    return 1
  fi
  if port_open "$port"; then
    say "warning: port $port already answers and is not this cluster's Redis; leaving it as it is"
    return 1
  fi
  need_redis
  mkdir -p "$REDIS_DIR"
  redis-server --bind 127.0.0.1 --port "$port" --daemonize yes --dir "$REDIS_DIR" \
    --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log" >/dev/null
  local deadline=$((SECONDS + 10))
  until redis_up "$port"; do
    ((SECONDS < deadline)) || die "redis did not answer on port $port; see $REDIS_DIR/redis.log"
    sleep 0.1
  done
  say "redis started (port $port)"
}

stop_redis() {
  local pid
  if pid=$(redis_pid); then
    kill -TERM "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    say "redis stopped"
  else
    say "redis not running"
  fi
}

# ---------------------------------------------------------------- commands

cmd_start() {
  need_server_bins
  ensure_pg_user
  if load_layout; then
    # The saved layout wins; asking for other ports is a mistake worth stopping for.
    [[ -z $OPT_PORT || $OPT_PORT == "$L_PRIMARY_PORT" ]] ||
      die "$DIR holds a cluster with its primary on port $L_PRIMARY_PORT, not $OPT_PORT ($PROG destroy --dir $DIR to start afresh)"
    local have
    have=$(replica_count)
    if [[ -n $OPT_REPLICAS ]] && ((OPT_REPLICAS > have)); then
      local base k
      replica_ports
      base=${OPT_REPLICA_BASE:-$((L_PRIMARY_PORT + 1))}
      for ((k = have; k < OPT_REPLICAS; k++)); do L_REPLICA_PORTS+="${L_REPLICA_PORTS:+ }$((base + k))"; done
    fi
  else
    [[ ! -e $DIR/primary ]] || die "$DIR/primary exists but $LAYOUT does not; remove $DIR or pick another --dir"
    wanted_layout
  fi

  local started=0 name port
  # Check every port before the slow part, so a clash costs nothing.
  while read -r name; do
    port=$(port_of "$name")
    if [[ ! -f $(datadir_of "$name")/PG_VERSION ]] || ! pg_running "$name"; then
      ! port_open "$port" ||
        die "port $port ($name) is in use by another process; pick other ports (--port, --replica-base-port)"
    fi
  done < <(server_names)
  prepare_dir
  save_layout
  local primary
  primary=$(primary_name)
  if [[ ! -f $(datadir_of "$primary")/PG_VERSION ]]; then
    [[ $primary == primary ]] ||
      die "$LAYOUT names $primary as the primary, but $(datadir_of "$primary") holds no server"
    init_primary
  fi
  start_pg "$primary" && started=1
  ensure_app_role
  while read -r name; do
    if [[ ! -f $(datadir_of "$name")/PG_VERSION ]]; then
      clone_replica "$name"
    elif [[ ! -f $(datadir_of "$name")/standby.signal ]] && ! pg_running "$name"; then
      # A former primary left stopped after a promotion: started as it is,
      # it would be a second primary.
      say "$name is not a standby (no standby.signal); rejoining it to $primary"
      rejoin_server "$name"
      started=1
      continue
    fi
    start_pg "$name" && started=1
  done < <(standby_names)
  if [[ -n $L_REDIS_PORT ]]; then
    start_redis && started=1
  fi
  while read -r name; do
    wait_streaming "$name"
  done < <(standby_names)
  if ((started)); then
    say "cluster up in $DIR"
  else
    say "already running in $DIR"
  fi
  cmd_status || true
}

cmd_stop() {
  require_layout
  need_server_bins
  local name
  # Standbys first, so none of them logs the primary going away.
  while read -r name; do
    stop_pg "$name"
  done < <(standby_names)
  stop_pg "$(primary_name)"
  [[ -z $L_REDIS_PORT ]] || stop_redis
}

cmd_status() {
  require_layout
  need_psql
  local name port primary_lsn all_up=0 row role lsn lag paused delay upstream out_of_recovery=
  primary_lsn=$(q "$(primary_port)" -c \
    "SELECT pg_current_wal_lsn() WHERE NOT pg_is_in_recovery()" 2>/dev/null || true)
  printf '%-10s %-6s %-8s %-14s %-11s %-16s %-11s %s\n' \
    NAME PORT ROLE REPLAYED_LSN LAG_BYTES REPLAY_PAUSED APPLY_DELAY UPSTREAM
  while read -r name; do
    port=$(port_of "$name")
    # On a replica: its replayed LSN and the bytes it is behind the primary.
    # On a server that is not in recovery: its own current LSN.
    row=$(q "$port" -F '|' -c "
      SELECT CASE WHEN pg_is_in_recovery() THEN 'replica' ELSE 'primary' END,
             CASE WHEN pg_is_in_recovery() THEN coalesce(pg_last_wal_replay_lsn()::text, '-')
                  ELSE pg_current_wal_lsn()::text END,
             CASE WHEN NOT pg_is_in_recovery() THEN '0'
                  WHEN '$primary_lsn' = '' THEN '?'
                  ELSE greatest(0, pg_wal_lsn_diff(nullif('$primary_lsn', '')::pg_lsn,
                                                   pg_last_wal_replay_lsn()))::bigint::text END,
             CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() ELSE '-' END,
             current_setting('recovery_min_apply_delay'),
             CASE WHEN NOT pg_is_in_recovery() THEN '-'
                  ELSE coalesce((SELECT status || ':' || coalesce(sender_port::text, '?')
                                 FROM pg_stat_wal_receiver), 'none') END" 2>/dev/null || true)
    if [[ -z $row ]]; then
      all_up=3
      printf '%-10s %-6s %-8s %-14s %-11s %-16s %-11s %s\n' "$name" "$port" down - - - - -
      continue
    fi
    IFS='|' read -r role lsn lag paused delay upstream <<<"$row"
    [[ $role == primary ]] && out_of_recovery+="${out_of_recovery:+ }$name"
    printf '%-10s %-6s %-8s %-14s %-11s %-16s %-11s %s\n' \
      "$name" "$port" "$role" "$lsn" "$lag" "$paused" "$delay" "$(upstream_label "$upstream")"
  done < <(server_names)
  if [[ -n $out_of_recovery && $out_of_recovery != "$(primary_name)" ]]; then
    say "note: $LAYOUT records $(primary_name) as the primary; out of recovery: $out_of_recovery"
  fi
  if [[ -n $L_REDIS_PORT ]]; then
    if redis_up "$L_REDIS_PORT"; then
      printf '%-10s %-6s %s\n' redis "$L_REDIS_PORT" up
    else
      all_up=3
      printf '%-10s %-6s %s\n' redis "$L_REDIS_PORT" down
    fi
  fi
  return "$all_up"
}

# "streaming:5434" (pg_stat_wal_receiver's status and sender port) as
# "streaming from replica0"; a receiver that is not running as "no receiver".
upstream_label() {
  local status=${1%%:*} port=${1#*:} name
  case $1 in
    - | '') echo - ; return ;;
    none) echo "no receiver"; return ;;
  esac
  while read -r name; do
    if [[ $(port_of "$name") == "$port" ]]; then
      echo "$status from $name"
      return
    fi
  done < <(server_names)
  echo "$status from port $port"
}

cmd_pause() {
  local name=${1:?usage: $PROG pause NAME} port state deadline
  require_layout
  need_psql
  require_replica "$name"
  port=$(port_of "$name")
  q "$port" -c "SELECT pg_wal_replay_pause()" >/dev/null
  # The pause takes effect at the next record; wait so callers can rely on it.
  deadline=$((SECONDS + 10))
  while state=$(q "$port" -c "SELECT pg_get_wal_replay_pause_state()") && [[ $state != paused ]]; do
    ((SECONDS < deadline)) || break
    sleep 0.05
  done
  say "$name replay: $state"
}

cmd_resume() {
  local name=${1:?usage: $PROG resume NAME} port
  require_layout
  need_psql
  require_replica "$name"
  port=$(port_of "$name")
  q "$port" -c "SELECT pg_wal_replay_resume()" >/dev/null
  say "$name replay: $(q "$port" -c "SELECT pg_get_wal_replay_pause_state()")"
}

cmd_delay() {
  local name=${1:?usage: $PROG delay NAME MS} ms=${2:?usage: $PROG delay NAME MS} port
  is_uint "$ms" || die "MS must be a whole number of milliseconds, got '$ms'"
  require_layout
  need_psql
  require_replica "$name"
  port=$(port_of "$name")
  if ((ms == 0)); then
    q "$port" -c "ALTER SYSTEM RESET recovery_min_apply_delay" >/dev/null
  else
    q "$port" -c "ALTER SYSTEM SET recovery_min_apply_delay = '${ms}ms'" >/dev/null
  fi
  q "$port" -c "SELECT pg_reload_conf()" >/dev/null
  # The reload is asynchronous; wait until the setting shows.
  local want=$ms got deadline=$((SECONDS + 10))
  ((ms == 0)) && want=0
  while got=$(q "$port" -c "SELECT setting FROM pg_settings WHERE name = 'recovery_min_apply_delay'") &&
    [[ $got != "$want" ]]; do
    ((SECONDS < deadline)) || break
    sleep 0.05
  done
  say "$name recovery_min_apply_delay = $(q "$port" -c "SHOW recovery_min_apply_delay")"
}

cmd_stop_server() {
  local name=${1:?usage: $PROG stop-server NAME}
  require_layout
  port_of "$name" >/dev/null
  if [[ $name == redis ]]; then
    stop_redis
  else
    need_server_bins
    stop_pg "$name"
  fi
}

cmd_start_server() {
  local name=${1:?usage: $PROG start-server NAME}
  require_layout
  port_of "$name" >/dev/null
  if [[ $name == redis ]]; then
    start_redis || true
    return
  fi
  need_server_bins
  start_pg "$name" || true
  [[ $name == "$(primary_name)" ]] || wait_streaming "$name"
}

cmd_psql() {
  local name=${1:?usage: $PROG psql NAME [psql args]} port
  shift
  require_layout
  need_psql
  port=$(port_of "$name")
  exec "$PSQL" -X -h 127.0.0.1 -p "$port" -U postgres -d postgres "$@"
}

cmd_env() {
  load_layout || wanted_layout
  local k
  replica_ports
  printf 'export CLUSTER_DIR=%q\n' "$DIR"
  printf 'export PG_BIN=%q\n' "$PG_BIN"
  printf 'export PGPORT_PRIMARY=%s\n' "$L_PRIMARY_PORT"
  for ((k = 0; k < ${#REPLICA_PORTS[@]}; k++)); do
    printf 'export PGPORT_REPLICA%d=%s\n' "$k" "${REPLICA_PORTS[$k]}"
  done
  printf 'export PGPORT_REPLICAS="%s"\n' "$L_REPLICA_PORTS"
  printf 'export CLUSTER_REPLICAS=%d\n' "${#REPLICA_PORTS[@]}"
  # PGPORT_PRIMARY is the server named `primary`; the URLs reach the server
  # that is the primary now (CLUSTER_PRIMARY, another one after a promotion).
  printf 'export CLUSTER_PRIMARY=%s\n' "$(primary_name)"
  printf 'export CLUSTER_SERVERS="%s"\n' "$(server_names | paste -sd" ")"
  printf 'export PRIMARY_URL=%q\n' "postgres://app:app@127.0.0.1:$(primary_port)/app"
  printf 'export ADMIN_URL=%q\n' "postgres://postgres@127.0.0.1:$(primary_port)/postgres"
  if [[ -n $L_REDIS_PORT ]]; then
    printf 'export REDIS_PORT=%s\n' "$L_REDIS_PORT"
    printf 'export REDIS_URL=%q\n' "redis://127.0.0.1:$L_REDIS_PORT"
  fi
}

cmd_destroy() {
  if ! load_layout; then
    [[ -e $DIR ]] || { say "nothing at $DIR"; return 0; }
    die "$DIR does not hold a cluster ($LAYOUT missing); not deleting it"
  fi
  cmd_stop
  rm -rf -- "$DIR"
  say "deleted $DIR"
}

# kill, promote, failover, rejoin: changing which server is the primary.
# shellcheck source=cluster/failover.sh
source "$REPO/cluster/failover.sh"

cmd_chaos() {
  exec bash "$REPO/cluster/chaos.sh" --dir "$DIR" "$@"
}

cmd=${1:-}
[[ -n $cmd ]] || { usage >&2; exit 2; }
shift
case $cmd in
  start) cmd_start "$@" ;;
  stop) cmd_stop "$@" ;;
  status) cmd_status "$@" ;;
  pause) cmd_pause "$@" ;;
  resume) cmd_resume "$@" ;;
  delay) cmd_delay "$@" ;;
  stop-server) cmd_stop_server "$@" ;;
  start-server) cmd_start_server "$@" ;;
  kill) cmd_kill "$@" ;;
  promote) cmd_promote "$@" ;;
  failover) cmd_failover "$@" ;;
  rejoin) cmd_rejoin "$@" ;;
  chaos) cmd_chaos "$@" ;;
  psql) cmd_psql "$@" ;;
  env) cmd_env "$@" ;;
  destroy) cmd_destroy "$@" ;;
  *) die "unknown command '$cmd' (see $PROG --help)" ;;
esac
