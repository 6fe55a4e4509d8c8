#!/usr/bin/env bash
# Starts the PostgreSQL server the persistence tests use, with a role and a
# database of their own, and prints the URL to give them:
#   export OVERLAPPED_TEST_POSTGRES=$(scripts/postgres.sh)
# Installs Debian's `postgresql` if it is missing. Idempotent.
set -euo pipefail
if ! command -v pg_lsclusters >/dev/null 2>&1; then
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
read -r version cluster _ < <(pg_lsclusters -h | head -1)
pg_ctlcluster "$version" "$cluster" start >&2 2>/dev/null || true
for _ in $(seq 1 30); do
  pg_isready -q -h 127.0.0.1 && break
  sleep 1
done
psql_admin() { su postgres -c "psql -v ON_ERROR_STOP=1 -qAt -c \"$1\"" >&2; }
if ! su postgres -c "psql -qAt -c \"SELECT 1 FROM pg_roles WHERE rolname = 'overlapped'\"" | grep -q 1; then
  psql_admin "CREATE ROLE overlapped LOGIN PASSWORD 'overlapped'"
fi
if ! su postgres -c "psql -qAt -c \"SELECT 1 FROM pg_database WHERE datname = 'overlapped_test'\"" | grep -q 1; then
  psql_admin "CREATE DATABASE overlapped_test OWNER overlapped"
fi
echo "postgres://overlapped:overlapped@127.0.0.1/overlapped_test"
