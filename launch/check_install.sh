#!/usr/bin/env bash
# Installs fuse4seg-jax as a user would (`pip install ".[tf]"` into a fresh virtual
# environment, from a copy of this clone's package files) and runs its commands from a
# folder outside the clone: every console command's --help, `--config tiny` (a shipped
# config named from anywhere), and a two-step training run followed by evaluate. CI runs
# it (.ci/run); a few minutes with a warm pip cache.
#
#   bash launch/check_install.sh
#
# PYTHON picks the interpreter (default python3.11, else python3); the requirements.txt
# pins are used as constraints, so the versions are the tested ones.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BASE_PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fuse4seg-install-XXXXXX")
trap 'rm -rf "$WORK"' EXIT

echo "== copying the package files of $ROOT"
mkdir -p "$WORK/src" "$WORK/elsewhere"
cp "$ROOT/pyproject.toml" "$ROOT/README.md" "$WORK/src/"
cp -r "$ROOT/fuse4seg_jax" "$ROOT/configs" "$WORK/src/"
find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +

echo "== pip install \".[tf]\" into a fresh venv ($("$BASE_PY" -V 2>&1))"
"$BASE_PY" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q --upgrade pip
"$WORK/venv/bin/python" -m pip install -q -c "$ROOT/requirements.txt" "$WORK/src[tf]"
export PATH="$WORK/venv/bin:$PATH"
unset PYTHONPATH

cd "$WORK/elsewhere"
echo "== the commands, from $(pwd)"
for cmd in train evaluate predict score export ablate simulate; do
  fuse4seg-$cmd --help > "help-$cmd.txt" 2>&1 || true  # absl's --help exits 1
  grep -q -- "--" "help-$cmd.txt" || { echo "fuse4seg-$cmd --help printed no flags:" >&2; cat "help-$cmd.txt" >&2; exit 1; }
done
grep -q -- "--workdir" help-train.txt || { echo "fuse4seg-train --help lacks --workdir" >&2; exit 1; }
python - <<'EOF'
import pathlib, fuse4seg_jax
from fuse4seg_jax import config_files
installed = pathlib.Path(fuse4seg_jax.__file__).parent
assert config_files.shipped_dir() == installed / "configs", config_files.shipped_dir()
assert "demo" in config_files.shipped_names() and "tiny" in config_files.shipped_names()
print("shipped configs:", ", ".join(config_files.shipped_names()))
EOF

echo "== a two-step run of the shipped tiny config, then evaluate"
export FUSE4SEG_JAX_CACHE="$WORK/xla-cache"
fuse4seg-train --config tiny --workdir run --config.train.num_steps=2 \
  --config.train.eval_every=2 --config.train.checkpoint_every=2 \
  --config.data.tfds_dir="$WORK/tfds"
test -s run/results.json || { echo "no run/results.json after training" >&2; exit 1; }
fuse4seg-evaluate --config tiny --workdir run --config.data.tfds_dir="$WORK/tfds" \
  --config.train.num_steps=2
ls run
echo "install check passed"
