#!/usr/bin/env bash
# Train on a Cloud TPU VM slice with several hosts (e.g. v4-32, v5litepod-16),
# driven from your workstation with the gcloud CLI. Every TPU host ("worker")
# gets the code and a venv, then runs one training process; on TPU VMs
# jax.distributed.initialize() finds the other workers by itself, so --distributed
# needs no further flags.
#
#   TPU_NAME=my-tpu ZONE=us-central2-b BUCKET=my-bucket bash launch/tpu_pod.sh [COMMAND] [TRAIN_FLAGS ...]
#
# COMMAND (default: all)
#   setup  put the code on every worker (git clone REPO_URL, or copy this checkout
#          with `gcloud compute tpus tpu-vm scp`), mount BUCKET, create
#          REMOTE_DIR/.venv, `pip install -r requirements.txt`, then jax[tpu] of the
#          JAX version that installed (0.12.0.1 on Python 3.12+, 0.10.2 on 3.11)
#   train  start `python -m fuse4seg_jax.train ... --distributed` on every worker in
#          the background (it survives the ssh session), logging to
#          ~/fuse4seg_train.log on each; rerunning resumes from WORKDIR's checkpoint
#   all    setup, then train
#   logs   follow worker 0's log (Ctrl-C stops following, not training)
#   stop   send SIGTERM to the trainers: they save a checkpoint and exit (status 75)
# TRAIN_FLAGS (train, all) are appended to the trainer's command line, e.g.
# --config.train.num_steps=5000.
#
# Variables (environment), with defaults. Relative paths are relative to the
# home folder on the workers.
#   TPU_NAME, ZONE  the TPU VM slice and its zone (required); PROJECT (gcloud's default)
#   REPO_URL     git URL to clone on every worker; unset: copy this checkout
#                (without .git, .venv, runs)
#   REMOTE_DIR   fuse4seg-jax   where the code and its .venv go on the workers
#   PYTHON       python3        interpreter for the venv on the workers (3.11+)
#   BUCKET       (unset)        Cloud Storage bucket to mount with gcsfuse at MOUNT
#                               on every worker (installs gcsfuse if missing)
#   MOUNT        gcs            where BUCKET is mounted
#   CONFIG       configs/brats_fuse.py
#   DATA         gcs/BraTS2021_Training_Data   BraTS folder (data.manual_dir)
#   WORKDIR      gcs/runs/brats_fuse   run folder: it must be one folder that all
#                workers share (the bucket mount or an NFS share): all processes
#                write and read the same checkpoints. The trainer writes with local
#                file APIs, so a gs:// URL does not work here; mount the bucket.
#   TFDS_DIR     tfds           the built dataset (data.tfds_dir), on each worker's
#                               own disk: worker 0 builds first, then the others
#   BATCH_SIZE   64             global batch: a multiple of 2 x the number of TPU
#                               devices (v4-32 and v5litepod-16 have 16)
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }
command=all
case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  setup | train | all | logs | stop) command=$1; shift ;;
  '' | -*) ;;
  *) usage >&2; echo "error: unknown command '$1'" >&2; exit 2 ;;
esac
if [ -z "${TPU_NAME:-}" ] || [ -z "${ZONE:-}" ]; then
  usage >&2
  echo "error: set TPU_NAME and ZONE (the TPU VM slice to run on)" >&2
  exit 2
fi
command -v gcloud >/dev/null || { echo "error: the gcloud CLI is not installed" >&2; exit 1; }

workdir_given=${WORKDIR:+yes}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPO_URL=${REPO_URL:-}
REMOTE_DIR=${REMOTE_DIR:-fuse4seg-jax}
PYTHON=${PYTHON:-python3}
BUCKET=${BUCKET:-}
MOUNT=${MOUNT:-gcs}
CONFIG=${CONFIG:-configs/brats_fuse.py}
DATA=${DATA:-gcs/BraTS2021_Training_Data}
WORKDIR=${WORKDIR:-gcs/runs/brats_fuse}
TFDS_DIR=${TFDS_DIR:-tfds}
BATCH_SIZE=${BATCH_SIZE:-64}
if [ -z "$BUCKET" ] && [ -z "$workdir_given" ] && [[ $command == train || $command == all ]]; then
  echo "error: set BUCKET (mounted at $MOUNT, holding WORKDIR=$WORKDIR), or WORKDIR to a" \
    "folder all workers share" >&2
  exit 2
fi
if [[ $WORKDIR == gs://* ]]; then
  echo "error: WORKDIR=$WORKDIR: mount the bucket (BUCKET=..., then WORKDIR=$MOUNT/...)" >&2
  exit 2
fi

# on_workers WORKER SCRIPT [ARGS ...]: run the bash SCRIPT with ARGS on the worker(s).
on_workers() {
  local worker=$1 script=$2 args=""
  shift 2
  [ $# -eq 0 ] || args=$(printf ' %q' "$@")
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" ${PROJECT:+"--project=$PROJECT"} \
    --worker="$worker" --command="bash -c $(printf '%q' "$script") fuse4seg$args"
}

# The scripts run on the workers; they are single-quoted here, and read their
# arguments as $1, $2, ... (paths relative to the worker's home).
read -r -d '' SETUP <<'EOF' || true
set -euo pipefail
dir=$1 python=$2 repo_url=$3 bucket=$4 mount=$5
cd ~
if [ -n "$repo_url" ]; then
  if [ -d "$dir/.git" ]; then git -C "$dir" pull --ff-only; else git clone "$repo_url" "$dir"; fi
else
  mkdir -p "$dir" && tar -xzf fuse4seg-jax.tar.gz -C "$dir" && rm fuse4seg-jax.tar.gz
fi
if [ -n "$bucket" ] && ! mountpoint -q "$mount"; then
  if ! command -v gcsfuse >/dev/null; then  # the install steps of the Cloud Storage FUSE docs
    repo="gcsfuse-$(lsb_release -c -s)"
    echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt $repo main" |
      sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
    curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
    sudo apt-get update -qq && sudo apt-get install -y -qq fuse gcsfuse
  fi
  # --rename-dir-limit: Orbax and our evaluation folders are written under a temporary name
  # and renamed when complete; gcsfuse refuses directory renames without it
  mkdir -p "$mount" && gcsfuse --implicit-dirs --rename-dir-limit=200000 "$bucket" "$mount"
fi
cd "$dir"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "$(hostname): $python is $("$python" -V 2>&1); fuse4seg-jax needs 3.11+ (set PYTHON=python3.11" \
    "after sudo apt-get install python3.11-venv)" >&2
  exit 1
}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -r requirements.txt
.venv/bin/pip install -q "jax[tpu]==$(.venv/bin/python -c 'import jax; print(jax.__version__)')"
echo "$(hostname): ready in ~/$dir ($(.venv/bin/python -c 'import jax; print("jax", jax.__version__)'))"
EOF

read -r -d '' TRAIN <<'EOF' || true
set -euo pipefail
dir=$1 config=$2 data=$3 tfds=$4 workdir=$5 batch=$6
shift 6
abs() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$HOME/$1" ;; esac; }
if [ -f ~/fuse4seg_train.pid ] && kill -0 "$(cat ~/fuse4seg_train.pid)" 2>/dev/null; then
  echo "$(hostname): already training (pid $(cat ~/fuse4seg_train.pid)); stop it first" >&2
  exit 1
fi
cd "$(abs "$dir")"
nohup .venv/bin/python -m fuse4seg_jax.train --config "$config" --workdir "$(abs "$workdir")" \
  --distributed --config.data.manual_dir="$(abs "$data")" --config.data.tfds_dir="$(abs "$tfds")" \
  --config.train.batch_size="$batch" "$@" </dev/null >~/fuse4seg_train.log 2>&1 &
echo $! >~/fuse4seg_train.pid
echo "$(hostname): training (pid $!), log ~/fuse4seg_train.log"
EOF

read -r -d '' STOP <<'EOF' || true
if [ -f ~/fuse4seg_train.pid ] && kill -TERM "$(cat ~/fuse4seg_train.pid)" 2>/dev/null; then
  echo "$(hostname): SIGTERM sent; the trainer saves a checkpoint and exits"
else
  echo "$(hostname): not training"
fi
EOF

setup() {
  if [ -z "$REPO_URL" ]; then
    local tarball
    tarball=$(mktemp -d)/fuse4seg-jax.tar.gz
    tar -C "$ROOT" --exclude=.git --exclude=.venv --exclude=./runs --exclude=./tmp \
      --exclude=__pycache__ --exclude=.pytest_cache --exclude=.ruff_cache --exclude=.jax_cache \
      -czf "$tarball" .
    gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:fuse4seg-jax.tar.gz" \
      --zone="$ZONE" ${PROJECT:+"--project=$PROJECT"} --worker=all
    rm -r "$(dirname "$tarball")"
  fi
  on_workers all "$SETUP" "$REMOTE_DIR" "$PYTHON" "$REPO_URL" "$BUCKET" "$MOUNT"
}

train() {
  on_workers all "$TRAIN" "$REMOTE_DIR" "$CONFIG" "$DATA" "$TFDS_DIR" "$WORKDIR" "$BATCH_SIZE" "$@"
  echo "follow the log with: TPU_NAME=$TPU_NAME ZONE=$ZONE bash launch/tpu_pod.sh logs"
}

case "$command" in
  setup) setup ;;
  train) train "$@" ;;
  all) setup && train "$@" ;;
  logs) on_workers 0 'tail -n 100 -F ~/fuse4seg_train.log' ;;
  stop) on_workers all "$STOP" ;;
esac
