"""The one metric writer: TensorBoard event files plus `<workdir>/metrics.jsonl`, and `log`
for the run's progress lines on stdout.

Written (and printed) by process 0 only. Each JSONL line is one JSON object with `step` and
namespaced names (`train/loss_seg`, `eval/dice_wt`, ...). On resume the JSONL
is trimmed to the restored step, so a run interrupted after its last
checkpoint does not leave duplicate rows.
"""

import json
import os
import tempfile

import jax


def log(message: str):
    """Prints a progress line (process 0 only), flushed at once."""
    if jax.process_index() == 0:
        print(message, flush=True)


class MetricWriter:
    def __init__(self, workdir: str, *, resume_step: int = 0):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if not self.enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        _trim_jsonl(self.path, resume_step)
        from tensorboardX import SummaryWriter  # lazy: keeps imports light for library users

        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=resume_step + 1)

    def write(self, step: int, scalars: dict):
        if not self.enabled or not scalars:
            return
        row = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        for k, v in row.items():
            if k != "step":
                self._tb.add_scalar(k, v, int(step))
        self._tb.flush()

    def close(self):
        if self._tb is not None:
            self._tb.close()


def _trim_jsonl(path: str, max_step: int):
    """Drop rows with step > max_step (atomically); keep everything when the file is fine."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    keep = [ln for ln in lines if ln.strip() and json.loads(ln).get("step", 0) <= max_step]
    if len(keep) == len(lines):
        return
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".metrics.")
    with os.fdopen(fd, "w") as f:
        f.writelines(keep)
    os.replace(tmp, path)


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(ln) for ln in f if ln.strip()]
