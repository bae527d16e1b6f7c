#!/usr/bin/env bash
# cluster/chaos.sh — kills, restarts and promotes the local cluster's servers
# at random while a load checker (examples/chaos) runs sessions through
# causeway, then prints what the clients saw and each server's role.
# Usually run as `bash cluster/cluster.sh chaos [options]`; docs/chaos.md
# tells how to read the result.
#
# Usage: chaos.sh [options]
#   --duration S        seconds of chaos (default 180); the last action may
#                       end a little later
#   --sessions N        sessions of the load checker (default 8)
#   --seed N            seed of the actions and of the sessions (default: from
#                       the clock; printed, so a run can be repeated action for
#                       action, though not to the millisecond)
#   --proxy HOST:PORT   causeway (default 127.0.0.1:6432)
#   --actions LIST      comma-separated, drawn at random (default: all four)
#       kill-replica     a random standby: pg_ctl stop -m immediate, down 2-6 s,
#                        started again, waited for until it streams
#       restart-primary  the primary: -m immediate, down 0-3 s, started again,
#                        waited for until it accepts connections and every
#                        standby streams
#       failover         the primary is killed (-m immediate), the standby that
#                        received the most WAL promoted, the other standbys
#                        re-pointed at it, the old primary rewound (pg_rewind,
#                        else a fresh pg_basebackup) into a standby of it
#       promote-first    the same, but the standby is promoted while the old
#                        primary still runs (two primaries for 0-2 s) and the
#                        old one is killed after
#   --interval A-B      seconds between actions, drawn from A..B (default 2-6)
#   --settle S          seconds of load on the healed cluster before the end (5)
#   --strict            the checker also fails on a failed read, a closed
#                       session, an unresolved read or an anomaly
#   --checker PATH      the load checker's binary (default: built here with
#                       cargo build --release --example chaos)
#   --dir DIR           the cluster's directory (default: cluster.sh's)
#
# Needs the cluster up (bash cluster/cluster.sh start) and causeway listening
# (target/release/causeway --config proxy.toml). Every wait is on observable
# state (pg_ctl -w, pg_is_in_recovery(), pg_stat_replication 'streaming');
# the sleeps only space actions out and keep servers down for a while.
#
# Exit status: the checker's (0 passed; 1 stale reads, or a --strict failure;
# 2 nothing was checked); 3 when the checker passed but the cluster could not
# be healed after an action; 1 for a usage or set-up error.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ALL_ACTIONS=kill-replica,restart-primary,failover,promote-first

usage() {
  sed -n '2,/^set -euo pipefail/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}
now() { date -u +%H:%M:%S.%3N; }
say() { printf 'chaos %s %s\n' "$(now)" "$*"; }
die() { printf 'chaos: error: %s\n' "$*" >&2; exit 1; }
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

# ---------------------------------------------------------------- arguments

DURATION=180
SESSIONS=8
SEED=$(($(date +%s) % 100000))
PROXY=127.0.0.1:6432
ACTIONS=$ALL_ACTIONS
INTERVAL=2-6
SETTLE=5
STRICT=()
CHECKER=
CLUSTER=(bash "$REPO/cluster/cluster.sh")

while (($#)); do
  case $1 in
    --duration) DURATION=${2:?--duration needs a value}; shift 2 ;;
    --sessions) SESSIONS=${2:?--sessions needs a value}; shift 2 ;;
    --seed) SEED=${2:?--seed needs a value}; shift 2 ;;
    --proxy) PROXY=${2:?--proxy needs a value}; shift 2 ;;
    --actions) ACTIONS=${2:?--actions needs a value}; shift 2 ;;
    --interval) INTERVAL=${2:?--interval needs a value}; shift 2 ;;
    --settle) SETTLE=${2:?--settle needs a value}; shift 2 ;;
    --strict) STRICT=(--strict); shift ;;
    --checker) CHECKER=${2:?--checker needs a value}; shift 2 ;;
    --dir) CLUSTER+=(--dir "${2:?--dir needs a value}"); shift 2 ;;
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;
    -h | --help | help) usage; exit 0 ;;
    *) die "unknown argument $1 (see cluster.sh chaos --help)" ;;
  esac
done

for v in "$DURATION" "$SESSIONS" "$SEED" "$SETTLE"; do
  is_uint "$v" || die "expected a whole number, got '$v'"
done
if ! [[ $INTERVAL =~ ^([0-9]+)-([0-9]+)$ ]] || ((BASH_REMATCH[1] > BASH_REMATCH[2])); then
  die "--interval takes A-B seconds with A <= B, got '$INTERVAL'"
fi
INTERVAL_MIN=${BASH_REMATCH[1]}
INTERVAL_MAX=${BASH_REMATCH[2]}
IFS=, read -r -a ACTION_LIST <<<"$ACTIONS"
((${#ACTION_LIST[@]})) || die "--actions is empty"
for a in "${ACTION_LIST[@]}"; do
  [[ ,$ALL_ACTIONS, == *",$a,"* ]] || die "unknown action '$a' (actions: $ALL_ACTIONS)"
done
RANDOM=$SEED

# ---------------------------------------------------------------- the cluster

# The cluster's servers, ports and current primary, from `cluster.sh env`;
# read again after every promotion.
refresh() {
  local env
  env=$("${CLUSTER[@]}" env) || die "cluster.sh env failed"
  eval "$env"
  PSQL=$PG_BIN/psql
  [[ -x $PSQL ]] || PSQL=psql
}

port_of() {
  local var
  case $1 in
    primary) echo "$PGPORT_PRIMARY" ;;
    replica*) var=PGPORT_REPLICA${1#replica}; echo "${!var}" ;;
  esac
}

q() {
  PGCONNECT_TIMEOUT=3 "$PSQL" -X -q -A -t -h 127.0.0.1 -p "$(port_of "$1")" \
    -U postgres -d postgres -c "$2" 2>/dev/null
}

standbys() {
  local s
  for s in $CLUSTER_SERVERS; do
    [[ $s == "$CLUSTER_PRIMARY" ]] || echo "$s"
  done
}

# A cluster.sh command, shown and indented under the action that runs it.
cl() {
  say "  \$ cluster.sh $*"
  "${CLUSTER[@]}" "$@" 2>&1 | sed -u 's/^/      /'
}

# Standbys the primary's pg_stat_replication does not show streaming.
not_streaming() {
  local streaming s
  streaming=$(q "$CLUSTER_PRIMARY" "SELECT string_agg(application_name, ' ')
    FROM pg_stat_replication WHERE state = 'streaming'") || streaming=
  for s in $(standbys); do
    [[ " $streaming " == *" $s "* ]] || echo "$s"
  done
}

wait_all_streaming() {
  local deadline=$((SECONDS + 60)) missing
  while missing=$(not_streaming) && [[ -n $missing ]]; do
    if ((SECONDS >= deadline)); then
      say "  not streaming after 60s: $missing"
      return 1
    fi
    sleep 0.2
  done
  say "  every standby streams from $CLUSTER_PRIMARY"
}

# The running standby that has received (or replayed) the most WAL: the
# one whose promotion loses the least.
furthest_standby() {
  local s lsn hi lo best='' best_value=-1 value
  for s in $(standbys); do
    lsn=$(q "$s" "SELECT greatest(coalesce(pg_last_wal_receive_lsn(), '0/0'),
                                  coalesce(pg_last_wal_replay_lsn(), '0/0'))
                  WHERE pg_is_in_recovery()") || continue
    [[ $lsn == */* ]] || continue
    hi=${lsn%/*}
    lo=${lsn#*/}
    value=$(((16#$hi << 32) + 16#$lo))
    say "  $s has WAL up to $lsn" >&2
    if ((value > best_value)); then
      best=$s
      best_value=$value
    fi
  done
  [[ -n $best ]] && echo "$best"
}

healthy() {
  [[ $(q "$CLUSTER_PRIMARY" "SELECT NOT pg_is_in_recovery()") == t ]] && [[ -z $(not_streaming) ]]
}

# Back to every server up and every standby streaming from the primary.
heal() {
  local s
  refresh
  if [[ $(q "$CLUSTER_PRIMARY" "SELECT NOT pg_is_in_recovery()") != t ]]; then
    cl start-server "$CLUSTER_PRIMARY" || return 1
  fi
  for s in $(not_streaming); do
    cl rejoin "$s" || return 1
  done
  wait_all_streaming
}

# ---------------------------------------------------------------- actions
# Each gets two random numbers drawn by the caller (subshells do not share
# $RANDOM's sequence) and runs in a subshell with `set -e`, so that the first
# command that fails ends it.

action_kill_replica() {
  local victims name down
  mapfile -t victims < <(standbys)
  name=${victims[$1 % ${#victims[@]}]}
  cl kill "$name"
  down=$((2 + $2 % 5))
  say "  $name stays down ${down}s"
  sleep "$down"
  cl start-server "$name"
}

action_restart_primary() {
  local down=$(($2 % 4))
  cl kill "$CLUSTER_PRIMARY"
  if ((down)); then
    say "  $CLUSTER_PRIMARY stays down ${down}s"
    sleep "$down"
  fi
  cl start-server "$CLUSTER_PRIMARY"
  wait_all_streaming
}

# rejoin_all OLD: after a promotion (and OLD's death), every server but the
# new primary becomes a standby of it, OLD last.
rejoin_all() {
  local old=$1 s
  refresh
  for s in $(standbys); do
    [[ $s == "$old" ]] || cl rejoin "$s"
  done
  cl rejoin "$old"
  wait_all_streaming
}

action_failover() {
  local old=$CLUSTER_PRIMARY new
  cl kill "$old"
  if ! new=$(furthest_standby); then
    say "  no standby answers; restarting $old instead"
    cl start-server "$old"
    return
  fi
  cl promote "$new"
  rejoin_all "$old"
}

action_promote_first() {
  local old=$CLUSTER_PRIMARY new overlap=$(($2 % 3))
  new=$(furthest_standby) || { say "  no standby answers; skipped"; return; }
  cl promote "$new"
  if ((overlap)); then
    say "  $old and $new both out of recovery for ${overlap}s"
    sleep "$overlap"
  fi
  cl kill "$old"
  rejoin_all "$old"
}

# ---------------------------------------------------------------- the run

refresh
host=${PROXY%:*}
port=${PROXY##*:}
(exec 3<>"/dev/tcp/$host/$port") 2>/dev/null || die "causeway is not listening on $PROXY;
  start it first, in another terminal: target/release/causeway --config proxy.toml
  (cargo build --release builds it)"
healthy || {
  "${CLUSTER[@]}" status || true
  die "the cluster is not fully up (primary $CLUSTER_PRIMARY, not streaming: $(not_streaming | paste -sd' '));
  bash cluster/cluster.sh start starts what is down, bash cluster/cluster.sh rejoin NAME re-attaches a standby"
}

if [[ -z $CHECKER ]]; then
  say "building the load checker: cargo build --release --example chaos"
  (cd "$REPO" && cargo build --release --example chaos) ||
    die "could not build examples/chaos (or pass --checker PATH)"
  CHECKER=$REPO/target/release/examples/chaos
fi
[[ -x $CHECKER ]] || die "no load checker at $CHECKER"

say "seed $SEED, ${DURATION}s, actions $ACTIONS every ${INTERVAL}s, $SESSIONS sessions through $PROXY"
"$CHECKER" --proxy "$PROXY" --sessions "$SESSIONS" --seed "$SEED" "${STRICT[@]+"${STRICT[@]}"}" &
CHECKER_PID=$!
stop_checker() {
  if kill -0 "$CHECKER_PID" 2>/dev/null; then kill -TERM "$CHECKER_PID" 2>/dev/null || true; fi
}
trap stop_checker EXIT

declare -A ACTIONS_DONE=()
ACTION_LOG=()
FAILED_ACTIONS=0
HEAL_FAILED=0
deadline=$((SECONDS + DURATION))
while ((SECONDS < deadline)); do
  pause=$((INTERVAL_MIN + RANDOM % (INTERVAL_MAX - INTERVAL_MIN + 1)))
  ((pause < deadline - SECONDS)) || pause=$((deadline - SECONDS))
  sleep "$pause"
  ((SECONDS < deadline)) || break
  kill -0 "$CHECKER_PID" 2>/dev/null || { say "the load checker ended early"; break; }
  action=${ACTION_LIST[RANDOM % ${#ACTION_LIST[@]}]}
  r1=$RANDOM
  r2=$RANDOM
  refresh
  started=$(now)
  say "action ${action} (primary: $CLUSTER_PRIMARY)"
  set +e
  (
    set -e
    case $action in
      kill-replica) action_kill_replica "$r1" "$r2" ;;
      restart-primary) action_restart_primary "$r1" "$r2" ;;
      failover) action_failover "$r1" "$r2" ;;
      promote-first) action_promote_first "$r1" "$r2" ;;
    esac
  )
  rc=$?
  set -e
  refresh
  ACTIONS_DONE[$action]=$((${ACTIONS_DONE[$action]:-0} + 1))
  if ((rc == 0)); then
    ACTION_LOG+=("$started-$(now) $action ok, primary now $CLUSTER_PRIMARY")
    say "action ${action} done (primary: $CLUSTER_PRIMARY)"
  else
    FAILED_ACTIONS=$((FAILED_ACTIONS + 1))
    ACTION_LOG+=("$started-$(now) $action FAILED (exit $rc), primary now $CLUSTER_PRIMARY")
    say "action ${action} FAILED (exit $rc); healing the cluster"
    if ! heal; then
      say "the cluster could not be healed; ending the run"
      HEAL_FAILED=1
      break
    fi
  fi
done

say "chaos over; making sure every server is up and streaming"
if ((HEAL_FAILED == 0)) && ! heal; then HEAL_FAILED=1; fi
if ((HEAL_FAILED == 0)); then
  say "the load runs ${SETTLE}s more on the healed cluster"
  sleep "$SETTLE"
fi
stop_checker
set +e
wait "$CHECKER_PID"
status=$?
set -e
trap - EXIT

echo
say "actions:"
for a in "${ACTION_LIST[@]}"; do
  printf '  %-16s %s\n' "$a" "${ACTIONS_DONE[$a]:-0}"
done
printf '  %-16s %s\n' failed "$FAILED_ACTIONS"
for line in "${ACTION_LOG[@]+"${ACTION_LOG[@]}"}"; do
  printf '  %s\n' "$line"
done
say "servers (primary per cluster.env: $CLUSTER_PRIMARY):"
"${CLUSTER[@]}" status || true
if ((HEAL_FAILED)); then
  say "the cluster was left unhealed: see bash cluster/cluster.sh status and .cluster/log/"
fi
if ((status == 0 && HEAL_FAILED)); then
  status=3
fi
say "exit $status"
exit "$status"
