#!/usr/bin/env bash
# Quick start, part 1: set up .venv if needed, then train Fuse4Seg bi-level on
# the built-in phantom and evaluate on held-out cases.
#   bash launch/demo.sh [WORKDIR] [--config.x.y=value ...]
# Rerunning with the same WORKDIR resumes from its latest checkpoint.
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
workdir=runs/demo
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then workdir=$1; shift; fi
exec "$PY" -m fuse4seg_jax.train --config configs/demo.py --workdir "$workdir" "$@"
