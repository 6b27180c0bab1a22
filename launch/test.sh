#!/usr/bin/env bash
# Quick start, part 2: set up .venv if needed, lint and format-check with ruff,
# then run the whole test suite, in FUSE4SEG_TEST_WORKERS pytest-xdist worker
# processes (default 2; 0 runs in this process). Extra arguments go to pytest.
#
#   bash launch/test.sh           # everything (what CI runs)
#   bash launch/test.sh --fast    # leave out the tests marked slow (pytest -m "not slow"):
#                                 # about 3 minutes on 2 cores with a cold XLA cache
#
# FUSE4SEG_TEST_TIMEOUT_SCALE multiplies every wall-clock limit of the tests (default 1;
# e.g. 3 on a slow or busy machine): see tests/timeouts.py.
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
args=()  # "$@" with --fast made -m "not slow" (${args[@]+...}: bash 3.2 and set -u)
for arg in "$@"; do
  if [ "$arg" = "--fast" ]; then
    args=(-m "not slow" ${args[@]+"${args[@]}"})  # first: a later -m of the caller's wins
  else
    args+=("$arg")
  fi
done
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
exec "$PY" -m pytest -q -n "${FUSE4SEG_TEST_WORKERS:-2}" --dist loadfile ${args[@]+"${args[@]}"}
