# shellcheck shell=bash
# cluster/lib.sh — sourced by the scripts that start causeway in front of
# the local cluster (bench.sh, scale.sh, icount.sh). Needs REPO set.

# servers_toml PRIMARY_PORT [REPLICA_PORT...]: the [primary], [[replicas]]
# and [[users]] (app / app) sections of a causeway config for the cluster.
servers_toml() {
  local primary=$1 k=0 port
  shift
  printf '[primary]\nname = "primary"\nhost = "127.0.0.1"\nport = %d\n' "$primary"
  for port in "$@"; do
    printf '\n[[replicas]]\nname = "replica%d"\nhost = "127.0.0.1"\nport = %d\n' "$k" "$port"
    k=$((k + 1))
  done
  printf '\n[[users]]\nname = "app"\npassword = "app"\n'
}

# release_causeway: prints the path of the release binary, built first
# (cargo does nothing when it is up to date), so a stale build is never
# the one measured.
release_causeway() {
  (cd "$REPO" && cargo build --release --bin causeway) >&2
  printf '%s' "$REPO/target/release/causeway"
}

# wait_listening PORT SECONDS: waits up to SECONDS for a server (causeway)
# to accept connections on 127.0.0.1:PORT; fails if none does. Needs PG_BIN.
wait_listening() {
  local port=$1 tries=$(($2 * 10))
  while ((tries-- > 0)); do
    "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" && return 0
    sleep 0.1
  done
  return 1
}

# scratch_dir NAME: sets WORK to a new temporary directory, removed on
# exit after the causeway whose pid is in PID (if any) is stopped.
scratch_dir() {
  WORK=$(mktemp -d "/tmp/causeway-$1.XXXXXX")
  PID=
  trap 'if [[ -n $PID ]]; then kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null; fi; rm -rf "$WORK"' EXIT
}
