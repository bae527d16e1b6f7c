#!/usr/bin/env bash
# cluster/test.sh — the test command the README gives and .ci/run runs:
#
#   bash cluster/test.sh [extra cargo test args, e.g. -- --test-threads=1]
#
# 1. cargo fmt --all -- --check
# 2. cargo clippy --workspace --all-targets -- -D warnings
# 3. cargo test --workspace --no-fail-fast "$@"   (debug build: it compiles
#    much faster than --release, and the tests measure behaviour, not speed;
#    --no-fail-fast so one failing test binary does not hide the others)
#
# First `cluster/setup.sh test` installs what the machine lacks (as root on
# Debian; otherwise it prints the apt-get line): PostgreSQL 15, Redis,
# Prometheus, PgBouncer, Chromium, rustfmt and clippy. The integration tests
# start their own throwaway clusters (primary + replicas on free ports,
# tests/support/cluster.rs), so nothing needs to be running first.
# cargo test's own output comes last, so its closing "test result:" lines are
# the last lines of this script's output.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
bash cluster/setup.sh test
if ! command -v cargo >/dev/null 2>&1 && [[ -f ${CARGO_HOME:-$HOME/.cargo}/env ]]; then
  # shellcheck disable=SC1091
  source "${CARGO_HOME:-$HOME/.cargo}/env"
fi

# Tell the tests where Postgres is, found the same way cluster.sh finds it.
if [[ -z ${PG_BIN:-} ]]; then
  PG_BIN=$(bash cluster/cluster.sh env | sed -n 's/^export PG_BIN=//p')
fi
export PG_BIN
if [[ -z $PG_BIN || ! -x $PG_BIN/initdb ]]; then
  echo "test: PostgreSQL server binaries not found (initdb); apt-get install -y postgresql-15 postgresql-client-15 redis-server" >&2
  exit 1
fi

echo "==> cargo fmt --all -- --check"
cargo fmt --all -- --check
echo "==> cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "==> cargo test --workspace --no-fail-fast $*"
exec cargo test --workspace --no-fail-fast "$@"
