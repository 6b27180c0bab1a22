#!/usr/bin/env bash
# Quick start, part 2: set up .venv if needed, lint and format-check with ruff,
# then run the whole test suite, in FUSE4SEG_TEST_WORKERS pytest-xdist worker
# processes (default 2; 0 runs in this process). Extra arguments go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
exec "$PY" -m pytest -q -n "${FUSE4SEG_TEST_WORKERS:-2}" --dist loadfile "$@"
