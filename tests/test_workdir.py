"""A workdir belongs to one run: a torn metrics line does not block resume, a different
config is refused before anything is written, a finished run is not redone, two trainers
never share a workdir, and an unreadable latest checkpoint falls back to an older one."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import timeouts
from test_train import ROOT, _tiny

from fuse4seg_jax import checkpointing, inference, trainer
from fuse4seg_jax.config_validation import ConfigError
from fuse4seg_jax.metric_writer import MetricWriter, read_jsonl
from fuse4seg_jax.workdir import RESUMABLE_KEYS, WorkdirBusyError, check_config, lock


def _write_config(workdir, config, *, checkpoint_step=None):
    """The config.json of a run; with checkpoint_step, also a (stand-in) checkpoint at that
    step, so the workdir is one that trained."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort())
    if checkpoint_step is not None:
        ckpt = checkpointing.Checkpointer(workdir, every=1)
        ckpt.save(checkpoint_step, {"w": np.zeros(2, np.float32)}, {"step": checkpoint_step})
        ckpt.close()


def _files(workdir):
    return {
        p: os.stat(p).st_mtime_ns
        for p in glob.glob(os.path.join(workdir, "**"), recursive=True)
        if os.path.isfile(p) and not p.endswith(".lock")
    }


# A. metrics.jsonl


def test_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 2, "train/loss_seg": 1.0}, {"step": 4, "train/loss_seg": 0.5}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 6, "train/lo')
    writer = MetricWriter(str(tmp_path), resume_step=4)
    writer.close()
    assert read_jsonl(str(path)) == rows
    out = capsys.readouterr().out
    assert "dropped an incomplete last line" in out and len(out.strip().splitlines()) == 1


def test_a_write_once_does_not_repeat_a_row(tmp_path):
    writer = MetricWriter(str(tmp_path))
    writer.write(6, {"eval/dice_wt": 0.5}, once=True)
    writer.write(6, {"eval/dice_wt": 0.5}, once=True)
    writer.close()
    assert read_jsonl(str(tmp_path / "metrics.jsonl")) == [{"step": 6, "eval/dice_wt": 0.5}]


# B. one config per workdir


def test_b_a_different_config_is_refused_before_anything_is_written(tmp_path):
    workdir = str(tmp_path / "run")
    _write_config(workdir, _tiny(), checkpoint_step=2)
    before = _files(workdir)
    config = _tiny(model__fusion="fusion_small", optim__learning_rate=0.5)
    with pytest.raises(ConfigError) as info:
        trainer.train_and_evaluate(config, workdir)
    message = str(info.value)
    assert "\n" not in message
    assert "model.fusion 'fusion_tiny' in the workdir, 'fusion_small' here" in message
    assert "optim.learning_rate" in message and "allow_config_change=True" in message
    assert _files(workdir) == before and not os.path.exists(os.path.join(workdir, ".lock"))


def test_b_resumable_keys_may_change_and_num_steps_only_upward(tmp_path):
    workdir = str(tmp_path)
    _write_config(workdir, _tiny(), checkpoint_step=2)
    assert "train.num_steps" in RESUMABLE_KEYS
    check_config(_tiny(train__num_steps=12, train__log_every=3, train__eval_every=4), workdir)
    check_config(_tiny(train__checkpoint_every=1, train__keep_checkpoints=5), workdir)
    with pytest.raises(ConfigError, match=r"train\.num_steps 6 in the workdir, 3 here"):
        check_config(_tiny(train__num_steps=3), workdir)
    allowed = _tiny(train__num_steps=3)
    allowed.train.allow_config_change = True
    check_config(allowed, workdir)


def test_b_a_run_that_saved_no_checkpoint_does_not_bind_the_workdir(tmp_path, capsys):
    """A run that stopped before its first checkpoint trained nothing to keep: another
    config starts afresh there (one line says so), replacing config.json, and its metrics
    start again from step 0; once that run has saved a checkpoint, the workdir is its."""
    workdir = str(tmp_path / "run")
    _write_config(workdir, _tiny(model__fusion="fusion_small"))
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        f.write(json.dumps({"step": 2, "train/loss_seg": 9.0}) + "\n")
    config = _tiny(train__num_steps=2, train__checkpoint_every=2, train__eval_every=2)
    trainer.train_and_evaluate(config, workdir)
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if "saved no checkpoint" in line]
    assert len(notes) == 1 and "model.fusion 'fusion_small' in the workdir" in notes[0]
    assert "starting afresh" in notes[0]
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["model"]["fusion"] == config.model.fusion
    losses = [r["train/loss_seg"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))
              if "train/loss_seg" in r]  # fmt: skip
    assert losses and 9.0 not in losses
    with pytest.raises(ConfigError, match="belongs to another config"):
        check_config(_tiny(model__fusion="fusion_small"), workdir)


# C. one trainer per workdir

_HOLDER = """
import sys
from fuse4seg_jax.workdir import lock
with lock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_c_a_second_trainer_stops_naming_the_holder(tmp_path):
    workdir = str(tmp_path / "run")
    out = tmp_path / "holder.out"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(out, "w") as stdout:
        holder = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, workdir],
            stdin=subprocess.PIPE, stdout=stdout, cwd=root,
        )  # fmt: skip
    try:
        timeouts.wait_for_line(
            out, lambda line: line == "locked", holder, timeout=120, what="lock holder"
        )
        with pytest.raises(WorkdirBusyError, match=f"process id {holder.pid}\\)") as info:
            trainer.train_and_evaluate(_tiny(), workdir)
        assert isinstance(info.value, ConfigError) and "\n" not in str(info.value)
    finally:
        holder.kill()  # the OS releases a dead process's flock: no stale lock
        holder.wait()
    with lock(workdir):
        with open(os.path.join(workdir, ".lock")) as f:
            assert f.read().strip() == str(os.getpid())


def test_c_the_lock_is_released_on_an_error(tmp_path):
    with pytest.raises(RuntimeError):
        with lock(str(tmp_path)):
            raise RuntimeError("planted")
    with lock(str(tmp_path)):
        pass


# D. unreadable checkpoints


def test_d_unreadable_reason_tells_a_damaged_checkpoint_from_a_mismatch(tmp_path):
    state = tmp_path / "checkpoints" / "4" / "state"
    state.mkdir(parents=True)
    assert "missing" in checkpointing.unreadable_reason(str(tmp_path), 4, ValueError("x"))
    (state / "_METADATA").write_text("{}")
    assert checkpointing.unreadable_reason(str(tmp_path), 4, ValueError("tree structure")) is None
    assert checkpointing.unreadable_reason(str(tmp_path), 4, FileNotFoundError("gone"))
    reading = Exception("Encountered error while reading array index: (slice(0, 3, 1),)")
    assert "could not be read" in checkpointing.unreadable_reason(str(tmp_path), 4, reading)


@pytest.mark.slow
def test_d_resume_falls_back_past_an_unreadable_latest_checkpoint(tmp_path, capsys):
    workdir = str(tmp_path)
    config = _tiny(train__num_steps=6, train__checkpoint_every=2, train__keep_checkpoints=3)
    config.train.eval_every = 100
    assert trainer.train_and_evaluate(config, workdir, stop_at=4) is None
    assert checkpointing.available_steps(workdir) == [2, 4]
    for f in glob.glob(os.path.join(workdir, "checkpoints/4/state/**/d/*"), recursive=True):
        with open(f, "r+b") as fh:
            fh.truncate(10)
    with pytest.raises(ValueError, match=r"checkpoint 4 is unreadable: ") as info:
        inference.load_trained(config, workdir)
    assert "\n" not in str(info.value) and "--config" not in str(info.value)
    proc = subprocess.run(  # the command says the same in one line, and nothing else
        [sys.executable, "-m", "fuse4seg_jax.evaluate", "--config", "configs/tiny.py",
         "--workdir", workdir, "--out", str(tmp_path / "eval")],
        cwd=ROOT, capture_output=True, text=True, timeout=timeouts.limit(300),
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "checkpoint 4 is unreadable" in proc.stderr
    assert "Traceback" not in proc.stderr and "Event loop is closed" not in proc.stderr
    capsys.readouterr()
    trainer.train_and_evaluate(config, workdir)
    out = capsys.readouterr().out
    assert "skipped checkpoint 4 (unreadable: " in out
    assert "resumed from checkpoint at step 2" in out
    assert checkpointing.available_steps(workdir)[-1] == 6
    assert os.path.isdir(os.path.join(workdir, checkpointing.UNREADABLE_DIR, "4"))


# A + B end to end


@pytest.mark.slow
def test_ab_rerunning_a_finished_run_changes_nothing_and_repeats_no_rows(tmp_path, capsys):
    workdir = str(tmp_path)
    config = _tiny(train__num_steps=4, train__checkpoint_every=0, train__eval_every=100)
    first = trainer.train_and_evaluate(config, workdir)
    before = _files(workdir)
    capsys.readouterr()
    again = trainer.train_and_evaluate(config, workdir)
    assert again == pytest.approx(first)
    assert "is a finished run" in capsys.readouterr().out
    assert _files(workdir) == before
    os.remove(os.path.join(workdir, "results.json"))  # died after the last checkpoint
    trainer.train_and_evaluate(config, workdir)
    evals = [r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "eval/dice_wt" in r]
    assert [r["step"] for r in evals] == [4]


def test_b_a_batch_the_data_cannot_give_is_refused_before_anything_is_written(tmp_path):
    # so that the corrected rerun into the same workdir is not refused as another config
    workdir = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"train\.batch_size=4096: the training split has"):
        trainer.train_and_evaluate(_tiny(train__batch_size=4096), str(workdir))
    assert not _files(str(workdir))
    assert trainer.train_and_evaluate(_tiny(train__num_steps=2), str(workdir)) is not None
