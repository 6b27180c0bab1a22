#!/usr/bin/env bash
# Sourced by demo.sh and test.sh: makes sure ./.venv exists and matches the
# pinned requirements (re-installs when requirements*.txt change), then sets
# $PY to its python. Override the location with FUSE4SEG_VENV, the interpreter
# with PYTHON (Python >= 3.11).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${FUSE4SEG_VENV:-$ROOT/.venv}
BASE_PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
"$BASE_PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
  { echo "error: $BASE_PY is Python $("$BASE_PY" -V 2>&1); fuse4seg-jax needs 3.11+ (set PYTHON=...)" >&2; exit 1; }
want=$(cat "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" | sha256sum | cut -d' ' -f1)
stamp="$VENV/.requirements.sha256"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "setting up the virtual environment in $VENV (first run: a few minutes) ..." >&2
  "$BASE_PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -r "$ROOT/requirements-dev.txt"
  echo "$want" > "$stamp"
fi
PY="$VENV/bin/python"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT"
