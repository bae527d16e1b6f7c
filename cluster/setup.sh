#!/usr/bin/env bash
# cluster/setup.sh — installs what a fresh Debian machine lacks for the demo
# or the tests; both README commands (cluster/demo.sh, cluster/test.sh) and
# .ci/run call it first, so there is one set-up path.
#
#   bash cluster/setup.sh demo    PostgreSQL 15 (server + client), Redis,
#                                 Prometheus (the demo scrapes causeway when
#                                 it is there)
#   bash cluster/setup.sh test    the same, plus PgBouncer (benchmarks and
#                                 comparisons), HAProxy (several instances
#                                 behind one address) and Chromium (the
#                                 dashboard's browser test); and cargo's fmt
#                                 and clippy
#
# As root on Debian/Ubuntu it runs `apt-get install` for what is missing.
# Otherwise it prints the one `apt-get install` line to run and exits 1.
# Nothing is installed when everything is there (a few file checks).
# Prints `export PG_BIN=...` on success when asked with --print-pg-bin.
set -euo pipefail

what=${1:-test}
case $what in
  demo | test) ;;
  -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
  *) echo "setup: unknown target '$what' (demo or test)" >&2; exit 2 ;;
esac

# The PostgreSQL server binaries: $PG_BIN, else the newest under
# /usr/lib/postgresql, as cluster.sh finds them.
pg_bin() {
  if [[ -n ${PG_BIN:-} && -x $PG_BIN/initdb ]]; then echo "$PG_BIN"; return; fi
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [[ -x $d/initdb ]] && { echo "$d"; return; }
  done
}

have() { command -v "$1" >/dev/null 2>&1 || [[ -x /usr/sbin/$1 || -x /usr/bin/$1 ]]; }

missing=()
bin=$(pg_bin || true)
for tool in initdb pg_ctl postgres pg_basebackup pgbench; do
  if [[ -z $bin || ! -x $bin/$tool ]]; then missing+=(postgresql-15); break; fi
done
have psql || [[ -n $bin && -x $bin/psql ]] || missing+=(postgresql-client-15)
have redis-server || missing+=(redis-server)
have prometheus || missing+=(prometheus)
if [[ $what == test ]]; then
  have pgbouncer || missing+=(pgbouncer)
  have haproxy || missing+=(haproxy)
  have chromium || missing+=(chromium)
fi

if ((${#missing[@]})); then
  line="apt-get install -y --no-install-recommends ${missing[*]}"
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    $line
  else
    echo "setup: missing ${missing[*]}; as root, run:" >&2
    echo "  $line" >&2
    exit 1
  fi
fi

# Rust: cargo (a login shell may not have it on PATH), and for the tests
# rustfmt and clippy.
if ! command -v cargo >/dev/null 2>&1 && [[ -f ${CARGO_HOME:-$HOME/.cargo}/env ]]; then
  # shellcheck disable=SC1091
  source "${CARGO_HOME:-$HOME/.cargo}/env"
fi
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo not found; install Rust (https://rustup.rs)" >&2; exit 1; }
if [[ $what == test ]]; then
  for component in rustfmt clippy; do
    sub=${component/rustfmt/fmt}
    if ! cargo "$sub" --version >/dev/null 2>&1; then
      command -v rustup >/dev/null 2>&1 && rustup component add "$component"
    fi
  done
fi
