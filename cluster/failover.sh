# shellcheck shell=bash
# cluster/failover.sh — changing which server is the primary: kill, promote,
# failover, rejoin. Sourced by cluster.sh, whose helpers (port_of, q, as_pg,
# start_pg, clone_replica, streams_within...) and layout it uses; not run on
# its own.
#
# Server names stay with data directories and ports; the role moves. The
# primary is recorded in cluster.env (L_PRIMARY_NAME) by `promote`, so that
# every other command knows whom standbys follow and where writes go.
# Each standby streams through a physical slot named after it on the primary:
# `promote` gives the new primary fresh slots for every other server, so a
# standby that is down while the primary moves finds its WAL kept.

cmd_kill() {
  local name=${1:?usage: $PROG kill NAME}
  require_layout
  [[ $name != redis ]] || die "kill is for Postgres servers (stop-server redis stops Redis)"
  port_of "$name" >/dev/null
  need_server_bins
  kill_pg "$name"
}

# Stops a server as a crash would: no shutdown checkpoint, clients cut off.
kill_pg() {
  if pg_running "$1"; then
    as_pg "$PG_CTL" -D "$(datadir_of "$1")" -m immediate -w -t 60 stop >/dev/null
    say "$1 killed (pg_ctl stop -m immediate)"
  else
    say "$1 not running"
  fi
}

cmd_promote() {
  local name=${1:?usage: $PROG promote NAME} old port
  require_layout
  port=$(port_of "$name")
  need_server_bins
  pg_running "$name" || die "$name is not running"
  [[ $(q "$port" -c "SELECT pg_is_in_recovery()") == t ]] ||
    die "$name is not a standby (it is out of recovery already)"
  old=$(primary_name)
  as_pg "$PG_CTL" -D "$(datadir_of "$name")" -w -t 60 promote >/dev/null ||
    die "$name was not promoted; see $LOG_DIR/$name.log"
  # shellcheck disable=SC2034  # read by save_layout and primary_name
  L_PRIMARY_NAME=$name
  save_layout
  renew_slots "$name"
  if [[ $old == "$name" ]]; then
    say "$name promoted: it is the primary"
  else
    say "$name promoted: it is the primary now; the other servers still follow $old until '$PROG rejoin NAME'"
  fi
}

cmd_failover() {
  local name=${1:?usage: $PROG failover NAME}
  require_layout
  [[ $name != "$(primary_name)" ]] || die "$name is the primary already"
  cmd_stop_server "$(primary_name)"
  cmd_promote "$name"
}

cmd_rejoin() {
  local name=${1:?usage: $PROG rejoin NAME}
  require_layout
  require_replica "$name"
  need_server_bins
  rejoin_server "$name"
}

# Drops the physical slots a new primary kept from an earlier life and gives
# it a fresh one for every other server. A slot created on a primary keeps
# WAL from the last checkpoint on, so a standby a little behind can follow.
renew_slots() {
  local primary=$1 name sql=
  while read -r name; do
    sql+="SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
          WHERE slot_name = '$name' AND slot_type = 'physical' AND NOT active;"
  done < <(server_names)
  q "$(port_of "$primary")" -c "$sql" >/dev/null
  while read -r name; do
    [[ $name == "$primary" ]] || ensure_slot "$name"
  done < <(server_names)
}

# ensure_slot NAME: the slot standby NAME streams through, on the primary.
ensure_slot() {
  q "$(primary_port)" -c "SELECT pg_create_physical_replication_slot('$1', true)
    WHERE NOT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = '$1')" >/dev/null
}

# How standby NAME reaches the primary; application_name is what
# pg_stat_replication (and so streams_within) knows it by.
conninfo_of() {
  echo "host=127.0.0.1 port=$(primary_port) user=postgres application_name=$1"
}

# Writes, while NAME is stopped, what makes it a standby of the primary.
standby_conf() {
  local name=$1 datadir auto
  datadir=$(datadir_of "$name")
  auto=$datadir/postgresql.auto.conf
  as_pg touch "$auto" "$datadir/standby.signal"
  as_pg sed -i -e '/^primary_conninfo[[:space:]]*=/d' -e '/^primary_slot_name[[:space:]]*=/d' "$auto"
  printf "primary_conninfo = '%s'\nprimary_slot_name = '%s'\n" "$(conninfo_of "$name")" "$name" |
    as_pg tee -a "$auto" >/dev/null
  as_pg rm -f "$datadir/recovery.signal"
}

# Stops NAME before a rewind or a clone: a standby cleanly, a server that
# still thinks it is the primary at once (it must take no more writes;
# pg_rewind recovers it in single-user mode first).
stop_to_rebuild() {
  local name=$1
  pg_running "$name" || return 0
  if [[ $(q "$(port_of "$name")" -c "SELECT pg_is_in_recovery()" 2>/dev/null) == t ]]; then
    as_pg "$PG_CTL" -D "$(datadir_of "$name")" -m fast -w -t 120 stop >/dev/null
  else
    kill_pg "$name"
  fi
}

# rejoin_server NAME: NAME streams from the primary when this returns, by
# the cheapest way that works: re-point a running standby (unless it has WAL
# past the primary's fork); start a stopped standby with the new
# primary_conninfo; pg_rewind; a fresh pg_basebackup. Each way is judged by
# pg_stat_replication on the primary, within CLUSTER_REJOIN_SECONDS (20) for
# the first three.
rejoin_server() {
  attach_standby "$1"
  # Physical slots a former primary kept would hold WAL on a standby for
  # nobody.
  q "$(port_of "$1")" -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                          WHERE slot_type = 'physical' AND NOT active" >/dev/null || true
}

attach_standby() {
  local name=$1 primary port datadir wait=${CLUSTER_REJOIN_SECONDS:-20}
  primary=$(primary_name)
  port=$(port_of "$name")
  datadir=$(datadir_of "$name")
  [[ $(q "$(primary_port)" -c "SELECT NOT pg_is_in_recovery()" 2>/dev/null) == t ]] ||
    die "$primary, the recorded primary, is not up as a primary; start it or promote a standby first"
  ensure_slot "$name"

  if pg_running "$name" && [[ $(q "$port" -c "SELECT pg_is_in_recovery()" 2>/dev/null) == t ]]; then
    if streams_within "$name" 0; then
      say "$name already streams from $primary"
      return 0
    fi
    if past_the_fork "$name"; then
      say "$name has WAL past the point where $primary's timeline forked ($FORK_WHY); rewinding it"
    else
      repoint_standby "$name" "$wait" && return 0
    fi
  elif ! pg_running "$name" && [[ -f $datadir/standby.signal ]]; then
    standby_conf "$name"
    start_pg "$name" >/dev/null || true
    if streams_within "$name" "$wait"; then
      say "$name started as a standby of $primary: streaming"
      return 0
    fi
    say "$name does not stream from $primary after ${wait}s (state '${STREAM_STATE:-absent}'); rewinding it"
  fi
  rebuild_standby "$name" "$wait"
}

# repoint_standby NAME SECONDS: a running standby follows the primary.
repoint_standby() {
  local name=$1 wait=$2 port primary
  port=$(port_of "$name")
  primary=$(primary_name)
  q "$port" -c "ALTER SYSTEM SET primary_conninfo = '$(conninfo_of "$name")'" \
    -c "ALTER SYSTEM SET primary_slot_name = '$name'" -c "SELECT pg_reload_conf()" >/dev/null
  if streams_within "$name" "$wait"; then
    say "$name re-pointed at $primary: streaming"
    return 0
  fi
  say "$name does not stream from $primary after ${wait}s (state '${STREAM_STATE:-absent}'); rewinding it"
  return 1
}

# past_the_fork NAME: true when running standby NAME has WAL the primary's
# history does not contain, so that it cannot follow the primary without a
# rewind; says why in FORK_WHY. NAME's timeline is the newest it knows (its
# WAL receiver's, or its newest history file); the primary's history file
# says where that timeline ended. On the primary's own timeline, or on one
# the history does not name, it is not decided here (false): re-pointing is
# tried and judged by pg_stat_replication.
past_the_fork() {
  local name=$1 port pport standby_tli primary_tli lsn fork
  port=$(port_of "$name")
  pport=$(primary_port)
  FORK_WHY=
  primary_tli=$(q "$pport" -c \
    "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int") || return 1
  IFS='|' read -r standby_tli lsn < <(q "$port" -F '|' -c "
    SELECT greatest((SELECT received_tli FROM pg_stat_wal_receiver),
                    (SELECT max(('x' || substr(name, 1, 8))::bit(32)::int) FROM pg_ls_waldir()
                      WHERE name ~ '^[0-9A-F]{8}[.]history\$'), 1),
           greatest(coalesce(pg_last_wal_receive_lsn(), '0/0'),
                    coalesce(pg_last_wal_replay_lsn(), '0/0'))") || return 1
  [[ -n $standby_tli && $standby_tli != "$primary_tli" ]] || return 1
  fork=$(q "$pport" -c "
    SELECT split_part(line, E'\t', 2) FROM regexp_split_to_table(
      pg_read_file('pg_wal/' || upper(lpad(to_hex($primary_tli), 8, '0')) || '.history'), E'\n') AS line
    WHERE split_part(line, E'\t', 1) = '$standby_tli'") || return 1
  [[ -n $fork ]] || return 1
  [[ $(q "$pport" -c "SELECT '$lsn'::pg_lsn > '$fork'::pg_lsn") == t ]] || return 1
  FORK_WHY="timeline $standby_tli ended at $fork, $name has WAL up to $lsn"
}

# rebuild_standby NAME SECONDS: pg_rewind NAME from the primary, else clone it
# afresh, and start it as a standby.
rebuild_standby() {
  local name=$1 wait=$2 primary port datadir rewind
  primary=$(primary_name)
  port=$(port_of "$name")
  datadir=$(datadir_of "$name")
  rewind=$(pg_bin pg_rewind "$PKG_SERVER")
  stop_to_rebuild "$name"
  # pg_rewind reads the new timeline from the source's control file, which a
  # promotion updates only at its next checkpoint.
  q "$(primary_port)" -c "CHECKPOINT" >/dev/null
  printf '\n== %s: pg_rewind of %s from %s\n' "$(date -u '+%F %T')" "$name" "$primary" \
    >>"$LOG_DIR/$name-rewind.log"
  if as_pg "$rewind" -D "$datadir" \
    --source-server="host=127.0.0.1 port=$(primary_port) user=postgres dbname=postgres" \
    >>"$LOG_DIR/$name-rewind.log" 2>&1; then
    # The rewind copied the source's configuration: this server's own again.
    write_conf "$name" "$port"
    standby_conf "$name"
    start_pg "$name" >/dev/null || true
    if streams_within "$name" "$wait"; then
      say "$name rewound (pg_rewind) and streaming from $primary"
      return 0
    fi
    say "$name was rewound but does not stream after ${wait}s (state '${STREAM_STATE:-absent}'); cloning it afresh"
    stop_to_rebuild "$name"
  else
    say "pg_rewind of $name failed ($(tail -n 1 "$LOG_DIR/$name-rewind.log")); cloning it afresh"
  fi

  [[ $datadir == "$DIR"/* && -f $datadir/PG_VERSION ]] || die "refusing to delete $datadir"
  rm -rf -- "$datadir"
  clone_replica "$name"
  standby_conf "$name"
  start_pg "$name" >/dev/null || true
  wait_streaming "$name"
  say "$name cloned afresh from $primary (pg_basebackup): streaming"
}
