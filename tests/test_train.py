"""End-to-end: the trainer on tiny configs (loss falls, resume is exact, outputs written),
the CLI's config errors, and 8 devices == 1 device for the same global batch."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import timeouts

from configs import tiny
from fuse4seg_jax import checkpointing, recipe, trainer
from fuse4seg_jax.checkpointing import Checkpointer
from fuse4seg_jax.config_validation import ConfigError
from fuse4seg_jax.metric_writer import read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny(**overrides):
    config = tiny.get_config()
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        config[section][key] = value
    return config


def _final_params(workdir, config):
    """The state saved in workdir's latest checkpoint, restored like a fresh state."""
    template = recipe.build(config).init_state()
    ckpt = Checkpointer(workdir, every=0)
    state, meta = ckpt.restore(template)
    ckpt.close()
    return state, meta


@pytest.mark.slow
def test_resume_gives_the_same_params_as_a_straight_run(tmp_path):
    config = _tiny(train__num_steps=4, train__checkpoint_every=0, train__eval_every=100)
    trainer.train_and_evaluate(config, str(tmp_path / "straight"))
    assert trainer.train_and_evaluate(config, str(tmp_path / "split"), stop_at=2) is None
    trainer.train_and_evaluate(config, str(tmp_path / "split"))
    a, _ = _final_params(str(tmp_path / "straight"), config)
    b, meta = _final_params(str(tmp_path / "split"), config)
    assert int(a.step) == int(b.step) == 4 and meta["data_position"] == 4
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)
    steps_logged = [
        row["step"]
        for row in read_jsonl(str(tmp_path / "split" / "metrics.jsonl"))
        if "train/loss_seg" in row
    ]
    assert steps_logged == sorted(set(steps_logged))  # no duplicate rows after the restart


@pytest.mark.slow
def test_a_failing_run_finishes_its_checkpoint_and_closes_its_writer(tmp_path, monkeypatch):
    """An error in the loop (here a non-finite loss at the second logged window) still
    finishes the pending asynchronous checkpoint save and closes the metric writer."""
    closed = []
    for cls in (trainer.Checkpointer, trainer.MetricWriter):
        original = cls.close
        monkeypatch.setattr(
            cls, "close", lambda self, _o=original, _c=cls: (closed.append(_c), _o(self))[1]
        )
    real_log_window = trainer._log_window

    def log_window(window, step, *args):
        if step >= 4:
            raise trainer.NonFiniteLossError(f"planted at step {step}")
        return real_log_window(window, step, *args)

    monkeypatch.setattr(trainer, "_log_window", log_window)
    config = _tiny(train__num_steps=6, train__log_every=2, train__checkpoint_every=3)
    with pytest.raises(trainer.NonFiniteLossError, match="planted at step 4"):
        trainer.train_and_evaluate(config, str(tmp_path))
    assert set(closed) == {trainer.Checkpointer, trainer.MetricWriter}
    state, meta = _final_params(str(tmp_path), config)  # step 3's save completed
    assert int(state.step) == 3 and meta["data_position"] == 3
    assert not [p.name for p in (tmp_path / "checkpoints").iterdir() if not p.name.isdigit()]


@pytest.mark.slow
@pytest.mark.parametrize("sync", [False, True])
def test_the_logged_step_rate_counts_finished_steps(tmp_path, monkeypatch, sync):
    """A train step that lasts at least 0.2 s (a host callback sleeps inside it): the
    logged steps/s is at most 5, whether or not the loop waits on every step. (Timed as
    they were dispatched, without a per-step wait, the windows looked several times
    faster than they ran.) The evaluation between windows is not counted."""
    import dataclasses
    import time

    from jax.experimental import io_callback

    real_build = trainer.recipe.build

    def build(config):
        run = real_build(config)

        def slow_step(state, batch):
            io_callback(lambda: time.sleep(0.2), None, ordered=False)
            return run.train_step(state, batch)

        return dataclasses.replace(run, train_step=slow_step)

    monkeypatch.setattr(trainer.recipe, "build", build)
    monkeypatch.setattr(trainer.sharding, "needs_sync_every_step", lambda mesh: sync)
    config = _tiny(train__num_steps=9, train__log_every=4, train__eval_every=4,
                   train__checkpoint_every=0)  # fmt: skip
    trainer.train_and_evaluate(config, str(tmp_path))
    rates = [row["train/steps_per_second"] for row in read_jsonl(str(tmp_path / "metrics.jsonl"))
             if "train/steps_per_second" in row]  # fmt: skip
    assert len(rates) == 3 and max(rates) <= 5.0, rates


@pytest.mark.slow
def test_the_best_checkpoint_is_the_state_of_the_best_evaluation(tmp_path, monkeypatch):
    """Held-out mean Dice scripted to 0.5, 0.7, 0.6 at steps 2, 4, 6: the best checkpoint
    is step 4's state (equal to the regular checkpoint of step 4), and a resumed trainer
    knows its score."""
    scripted = iter([0.5, 0.7, 0.6])
    real_evaluate = trainer.evaluate

    def evaluate(*args):
        result = real_evaluate(*args)
        value = next(scripted)
        result["scores"] = {k: value for k in result["scores"]}
        return result

    monkeypatch.setattr(trainer, "evaluate", evaluate)
    config = _tiny(train__num_steps=6, train__eval_every=2, train__checkpoint_every=2)
    config.train.keep_checkpoints = 3
    trainer.train_and_evaluate(config, str(tmp_path))
    assert next(scripted, None) is None  # evaluated at 2, 4 and the end
    assert checkpointing.available_steps(str(tmp_path), best=True) == [4]
    best = checkpointing.BestCheckpoint(str(tmp_path))
    assert (best.step, best.score) == (4, pytest.approx(0.7))
    assert not best.offer(6, None, {}, 0.65)  # not better: nothing saved
    best.close()
    template = recipe.build(config).init_state()
    regular, best_ckpt = (
        Checkpointer(str(tmp_path), every=0, best=b, read_only=True) for b in (False, True)
    )
    (a, _), (b, meta) = regular.restore(template, 4), best_ckpt.restore(template, 4)
    regular.close(), best_ckpt.close()
    assert meta["best_score"] == pytest.approx(0.7) and meta["data_position"] == 4
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert not np.array_equal(  # and not the final state
        np.asarray(jax.tree.leaves(a.seg.params)[0]),
        np.asarray(jax.tree.leaves(_final_params(str(tmp_path), config)[0].seg.params)[0]),
    )


@pytest.mark.slow
@pytest.mark.parametrize("inner", ["fusion", "segmentation"])
def test_tiny_training_lowers_the_losses_and_writes_outputs(tmp_path, inner):
    config = _tiny(
        train__num_steps=40,
        train__log_every=10,
        train__eval_every=1000,
        bilevel__inner=inner,
        bilevel__method="unrolled",
    )
    config.optim.learning_rate = 1e-2  # the follower keeps the default SGD rate 1
    dice = trainer.train_and_evaluate(config, str(tmp_path))
    rows = [r for r in read_jsonl(str(tmp_path / "metrics.jsonl")) if "train/loss_seg" in r]
    assert rows[-1]["train/loss_seg"] < 0.8 * rows[0]["train/loss_seg"]
    # both levels' objectives fall (L_fuse alone may rise: with mu = 1 the fusion follower
    # trades some of it for the segmentation loss)
    for level in ("inner", "outer"):
        assert rows[-1][f"train/loss_{level}"] < rows[0][f"train/loss_{level}"], level
    assert set(dice) == {"wt", "tc", "et"} and all(0.0 <= v <= 1.0 for v in dice.values())
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["dice_mean"] == pytest.approx(dice)
    png = (tmp_path / "figure.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert list((tmp_path / "tensorboard").iterdir())


def test_bad_config_values_name_the_key(tmp_path):
    config = _tiny()
    config.bilevel.method = "magic"
    with pytest.raises(ConfigError, match="bilevel.method='magic'"):
        trainer.train_and_evaluate(config, str(tmp_path))
    config = _tiny()
    config.data.modalities = ("t1ce", "pet")
    with pytest.raises(ConfigError, match="data.modalities"):
        trainer.train_and_evaluate(config, str(tmp_path))
    config = _tiny()
    config.train.batch_size = 12  # 8 devices x 2 halves
    with pytest.raises(ConfigError, match="train.batch_size=12: must be a multiple of 16"):
        trainer.train_and_evaluate(config, str(tmp_path))


def test_cli_rejects_unknown_override_keys(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fuse4seg_jax.train",
            "--config",
            "configs/tiny.py",
            "--workdir",
            str(tmp_path),
            "--config.train.nm_steps=3",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeouts.limit(120),
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "--config.train.nm_steps" in last and "num_steps" in last
    assert not (tmp_path / "checkpoints").exists()
