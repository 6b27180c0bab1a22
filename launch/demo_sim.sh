#!/usr/bin/env bash
# The demo on simulated BraTS-like cases (configs/sim.py, docs/simulator.md): simulate the
# dataset on first use, train Fuse4Seg bi-level, then score every held-out case whole
# (evaluate's volume protocol, into WORKDIR/eval-validation/).
#   bash launch/demo_sim.sh [WORKDIR] [--config.x.y=value ...]
DEMO_CONFIG=configs/sim.py DEMO_WORKDIR=runs/sim exec bash "$(dirname "${BASH_SOURCE[0]}")/demo.sh" "$@"
