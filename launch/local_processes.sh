#!/usr/bin/env bash
# Start N training processes on this machine, the way a multi-host run starts one
# per host, to try multi-process data parallelism without a cluster: CPU only,
# gloo collectives, jax.distributed with the coordinator on localhost.
#
#   bash launch/local_processes.sh N [WORKDIR] [TRAIN_FLAGS ...]
#   bash launch/local_processes.sh 2 --config.train.num_steps=2
#
#   N            number of processes (1 or more)
#   WORKDIR      run folder, relative to the repository root like demo.sh's
#                (default runs/local_processes); --workdir=DIR works too
#   TRAIN_FLAGS  passed to every `python -m fuse4seg_jax.train` after
#                --distributed and the process flags; the config is configs/tiny.py
#                unless one is given (--config=FILE or --config FILE)
#
# Environment: DEVICES_PER_PROCESS (XLA CPU devices per process, default 2),
# PORT (coordinator port, default a free one), GRACE_SECONDS (default 120: how
# long stopped processes may take to save a checkpoint before they are killed),
# and those of launch/venv.sh (FUSE4SEG_VENV, PYTHON).
# Process i logs to WORKDIR/process_<i>.log; process 0's log is also shown here.
# If a process fails, the others are stopped; the exit status is the first
# non-zero status (0 when all succeed). Ctrl-C (or SIGTERM) stops all of them:
# the trainer saves a checkpoint and exits with 75, so rerunning resumes.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }
case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  '' | *[!0-9]* | 0*)
    echo "usage: bash launch/local_processes.sh N [WORKDIR] [TRAIN_FLAGS ...]   (-h for help)" >&2
    echo "error: N must be a positive integer, got '${1:-}'" >&2
    exit 2 ;;
esac
n=$1; shift
devices=${DEVICES_PER_PROCESS:-2}
[[ $devices =~ ^[1-9][0-9]*$ ]] || { echo "error: DEVICES_PER_PROCESS=$devices" >&2; exit 2; }
if [[ ${XLA_FLAGS:-} == *xla_force_host_platform_device_count* ]]; then
  echo "error: XLA_FLAGS already sets the device count: use DEVICES_PER_PROCESS instead" >&2
  exit 2
fi

config=configs/tiny.py
workdir=runs/local_processes
if [ $# -gt 0 ] && [[ "$1" != -* ]]; then workdir=$1; shift; fi
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --config=*) config=${1#--config=} ;;
    --config) config=${2:?--config needs a file}; shift ;;
    --workdir=*) workdir=${1#--workdir=} ;;
    --workdir) workdir=${2:?--workdir needs a folder}; shift ;;
    *) extra+=("$1") ;;
  esac
  shift
done

source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
port=${PORT:-$("$PY" -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')}
mkdir -p "$workdir"
export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$devices"
export JAX_PLATFORMS=cpu

pids=()
tail_pid=
stop_all() {  # stop_all SIGNAL: signal every process still running
  local pid
  for pid in ${pids[@]+"${pids[@]}"}; do kill -0 "$pid" 2>/dev/null && kill "-$1" "$pid" 2>/dev/null; done
  return 0
}
deadline=  # set when stopping: SECONDS after which the processes still running are killed
stop_gracefully() {
  echo "local_processes: $1; stopping all processes (they save a checkpoint first)" >&2
  deadline=$((SECONDS + ${GRACE_SECONDS:-120}))
  stop_all TERM
}
# The two trap handlers carry SC2329 directives: a script that ends in `exit`
# makes ShellCheck 0.11 miss trap handlers (koalaman/shellcheck#3385).
# shellcheck disable=SC2329
on_signal() {
  if [ -n "$deadline" ]; then
    echo "local_processes: killing all processes" >&2
    stop_all KILL
  else
    stop_gracefully "interrupted (again to kill)"
  fi
}
# shellcheck disable=SC2329
cleanup() { stop_all KILL; [ -z "$tail_pid" ] || kill "$tail_pid" 2>/dev/null || true; }
trap on_signal INT TERM
trap cleanup EXIT

echo "local_processes: $n processes x $devices CPU devices, coordinator localhost:$port," \
  "config $config, logs in $workdir/process_<i>.log" >&2
for ((i = 0; i < n; i++)); do
  : >"$workdir/process_$i.log"  # exists before tail follows it
  "$PY" -m fuse4seg_jax.train --config "$config" --workdir "$workdir" --distributed \
    --coordinator_address="localhost:$port" --num_processes="$n" --process_id="$i" \
    ${extra[@]+"${extra[@]}"} >"$workdir/process_$i.log" 2>&1 &
  pids+=("$!")
done
tail -n +1 -f "$workdir/process_0.log" &
tail_pid=$!

# Poll rather than `wait -n` (macOS's bash 3.2 has none). A failed process stops
# the others, which would otherwise wait for it in a collective.
status=0
rcs=()  # exit status per process, empty while it runs
for ((i = 0; i < n; i++)); do rcs+=(""); done
running=$n
while [ "$running" -gt 0 ]; do
  sleep 0.5
  for ((i = 0; i < n; i++)); do
    [ -z "${rcs[$i]}" ] || continue
    ! kill -0 "${pids[$i]}" 2>/dev/null || continue
    rc=0
    wait "${pids[$i]}" || rc=$?
    rcs[i]=$rc
    running=$((running - 1))
    if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then
      status=$rc
      [ -n "$deadline" ] || stop_gracefully "process $i exited with status $rc"
    fi
  done
  if [ -n "$deadline" ] && [ "$SECONDS" -ge "$deadline" ]; then stop_all KILL; fi
done
sleep 0.5  # let tail print the last lines of process 0
for ((i = 1; i < n; i++)); do
  if [ "${rcs[$i]}" -ne 0 ] && [ "${rcs[$i]}" -ne 75 ]; then  # 75: stopped after a checkpoint
    echo "--- process $i exited with status ${rcs[$i]}; last lines of $workdir/process_$i.log:" >&2
    tail -n 5 "$workdir/process_$i.log" >&2
  fi
done
echo "local_processes: exit statuses ${rcs[*]}; exiting with $status" >&2
exit "$status"
