#!/usr/bin/env bash
# Installs everything the tests need and runs the whole suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev

# The storage tests run on SQLite and on the local PostgreSQL server; start it if it is down.
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null && command -v pg_ctlcluster >/dev/null; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi

exec .venv/bin/python -m pytest "$@"
