#!/usr/bin/env bash
# Installs the lake's independent reader (pyarrow, from PyPI) into the stack's Python venv
# (.stack/venv, made by scripts/stack.sh smoke; created here if missing). Prints the python to use.
# A fast no-op once done. The lake tests call it; run it by hand with `bash sinks/tests/lake_reader/setup.sh`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
VENV=${STACK_DIR:-$ROOT/.stack}/venv
PYARROW_VERSION=26.0.1
if [[ ! -x $VENV/bin/python ]]; then
  python3 -m venv "$VENV" >&2
fi
if ! "$VENV/bin/python" -c "import pyarrow, sys; sys.exit(pyarrow.__version__ != '$PYARROW_VERSION')" 2>/dev/null; then
  "$VENV/bin/pip" install -q --disable-pip-version-check "pyarrow==$PYARROW_VERSION" >&2
fi
echo "$VENV/bin/python"
