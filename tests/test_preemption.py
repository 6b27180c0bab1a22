"""Preemption: SIGTERM mid-run saves a checkpoint and exits 75; rerunning resumes to the
same parameters as an uninterrupted run."""

import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
import timeouts
from test_train import ROOT, _final_params, _tiny

from fuse4seg_jax import preemption, trainer
from fuse4seg_jax.checkpointing import Checkpointer

NUM_STEPS = 200
OVERRIDES = {
    "train.num_steps": NUM_STEPS,
    "train.checkpoint_every": 0,  # only the signal and the end save
    "train.log_every": 5,
    "train.eval_every": 10_000,
}


def _command(workdir):
    flags = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
    return [
        sys.executable, "-m", "fuse4seg_jax.train", "--config", "configs/tiny.py",
        "--workdir", str(workdir), *flags,
    ]  # fmt: skip


@pytest.mark.slow
def test_sigterm_checkpoints_and_the_rerun_matches_a_straight_run(tmp_path):
    work = tmp_path / "interrupted"
    env = dict(os.environ, PYTHONPATH=ROOT)
    out_path, err_path = tmp_path / "interrupted.out", tmp_path / "interrupted.err"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(_command(work), cwd=ROOT, env=env, stdout=out, stderr=err)
    try:  # wait until training is under way (a step line, however long that takes), preempt
        timeouts.wait_for_line(
            out_path, lambda line: line.startswith("step") and f"/{NUM_STEPS}" in line, proc,
            timeout=600, what="the training command to log its first steps",
            stderr_path=err_path,
        )  # fmt: skip
        proc.send_signal(signal.SIGTERM)
        timeouts.wait_all([proc], timeout=300, what="the training command to stop on SIGTERM")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = err_path.read_text()
    assert proc.returncode == preemption.EXIT_PREEMPTED, err
    assert "stopped by SIGTERM after step" in err and "rerun the same command" in err
    ckpt = Checkpointer(str(work), every=0)
    stopped_at = ckpt.latest_step()
    ckpt.close()
    assert 5 <= stopped_at < NUM_STEPS  # saved mid-run, not at the end
    assert not (work / "results.json").exists()

    rerun = subprocess.run(
        _command(work), cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=timeouts.limit(600),
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    assert f"resumed from checkpoint at step {stopped_at}" in rerun.stdout

    config = _tiny()
    for dotted, value in OVERRIDES.items():
        section, key = dotted.split(".")
        config[section][key] = value
    trainer.train_and_evaluate(config, str(tmp_path / "straight"))
    a, _ = _final_params(str(tmp_path / "straight"), config)
    b, meta = _final_params(str(work), config)
    assert int(b.step) == NUM_STEPS and meta["data_position"] == NUM_STEPS
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def test_stop_signal_restores_the_previous_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with preemption.StopSignal() as stopper:
        assert signal.getsignal(signal.SIGTERM) != before
        os.kill(os.getpid(), signal.SIGTERM)
        assert stopper.should_stop() and stopper.received == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) == before
