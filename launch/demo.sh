#!/usr/bin/env bash
# Quick start, part 1: set up .venv if needed, train Fuse4Seg bi-level on the built-in
# phantom (held-out Dice of the selected slices at the end), then score every held-out
# case whole (evaluate's volume protocol, into WORKDIR/eval-validation/).
#   bash launch/demo.sh [WORKDIR] [--config.x.y=value ...]
# Rerunning with the same WORKDIR resumes from its latest checkpoint. demo_sim.sh runs
# this script with DEMO_CONFIG=configs/sim.py and DEMO_WORKDIR=runs/sim.
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
config=${DEMO_CONFIG:-configs/demo.py}
workdir=${DEMO_WORKDIR:-runs/demo}
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then workdir=$1; shift; fi
"$PY" -m fuse4seg_jax.train --config "$config" --workdir "$workdir" "$@" || exit $?
exec "$PY" -m fuse4seg_jax.evaluate --config "$config" --workdir "$workdir" --overwrite "$@"
