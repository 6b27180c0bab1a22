"""Faults: a training run killed with SIGKILL at random moments (some inside checkpoint
writes, which happen every step here), then rerun until it finishes, ends with the same
parameters as a run that was never interrupted."""

import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import timeouts
from test_train import ROOT, _final_params, _tiny

from fuse4seg_jax import trainer

NUM_STEPS = 60
OVERRIDES = {
    "train.num_steps": NUM_STEPS,
    "train.checkpoint_every": 1,  # a save every step: many kills land inside one
    "train.keep_checkpoints": 2,
    "train.log_every": 1,
    "train.eval_every": 10_000,
}
KILLS = 10  # at least this many SIGKILLs, each at a random moment after training started


def _config():
    config = _tiny()
    for dotted, value in OVERRIDES.items():
        section, key = dotted.split(".")
        config[section][key] = value
    return config


@pytest.mark.slow
def test_runs_killed_at_random_moments_resume_to_the_uninterrupted_result(tmp_path):
    work = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=ROOT)
    command = [
        sys.executable, "-m", "fuse4seg_jax.train", "--config", "configs/tiny.py",
        "--workdir", str(work), *(f"--config.{k}={v}" for k, v in OVERRIDES.items()),
    ]  # fmt: skip
    rng = random.Random(0)
    kills, finished = 0, False
    for attempt in range(KILLS + 1):  # bounded: KILLS killed runs, then one run to the end
        out_path, err_path = tmp_path / f"run{attempt}.out", tmp_path / f"run{attempt}.err"
        with open(out_path, "w") as out, open(err_path, "w") as err:
            proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=err)
        try:
            if attempt < KILLS:
                timeouts.wait_for_line(
                    out_path, lambda line: "first train step" in line or "finished run" in line,
                    proc, timeout=600, what=f"run {attempt} to start training",
                    stderr_path=err_path,
                )  # fmt: skip
                time.sleep(rng.uniform(0.0, 1.0))  # the random moment of the kill (not a wait)
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    kills += 1
            timeouts.wait_all([proc], timeout=600, what=f"run {attempt} to end")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if proc.returncode == 0:
            finished = True
            break
        assert proc.returncode == -signal.SIGKILL, err_path.read_text()[-2000:]
    assert finished and kills == KILLS

    trainer.train_and_evaluate(_config(), str(tmp_path / "straight"))
    a, _ = _final_params(str(tmp_path / "straight"), _config())
    b, meta = _final_params(str(work), _config())
    assert int(b.step) == NUM_STEPS and meta["data_position"] == NUM_STEPS
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
