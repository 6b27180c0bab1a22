#!/usr/bin/env bash
# The demo on simulated BraTS-like cases (configs/sim.py, docs/simulator.md): simulate the
# dataset on first use, train Fuse4Seg bi-level, then score every held-out case whole
# (evaluate's volume protocol, into WORKDIR/eval-validation/).
#   bash launch/demo_sim.sh [WORKDIR] [--config.x.y=value ...]
# Rerunning with the same WORKDIR resumes from its latest checkpoint.
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
workdir=runs/sim
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then workdir=$1; shift; fi
"$PY" -m fuse4seg_jax.train --config configs/sim.py --workdir "$workdir" "$@" || exit $?
exec "$PY" -m fuse4seg_jax.evaluate --config configs/sim.py --workdir "$workdir" \
  --overwrite "$@"
