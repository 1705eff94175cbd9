#!/usr/bin/env bash
# Installs DuckDB (from PyPI, pinned) into the lake queries' own Python venv, .stack/sql-venv
# (STACK_DIR overrides .stack), and prints the python to use. A fast no-op once done.
# `cartstream-admin lake-query` and the lake SQL test call it; run it by hand with `bash sql/setup.sh`.
# Needs python3 with the venv module (Debian/Ubuntu: apt-get install python3-venv) and access to PyPI
# (or a mirror via PIP_INDEX_URL).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${STACK_DIR:-$ROOT/.stack}/sql-venv
DUCKDB_VERSION=1.4.2
if ! "$VENV/bin/python" -c "import duckdb, sys; sys.exit(duckdb.__version__ != '$DUCKDB_VERSION')" 2>/dev/null; then
  mkdir -p "$(dirname "$VENV")"
  # A concurrent caller (two tests) waits for the first install instead of racing it.
  exec 9>"$VENV.lock"
  flock 9
  if ! "$VENV/bin/python" -c "import duckdb, sys; sys.exit(duckdb.__version__ != '$DUCKDB_VERSION')" 2>/dev/null; then
    [[ -x $VENV/bin/python ]] || python3 -m venv "$VENV" >&2
    "$VENV/bin/pip" install -q --disable-pip-version-check "duckdb==$DUCKDB_VERSION" >&2
  fi
fi
echo "$VENV/bin/python"
