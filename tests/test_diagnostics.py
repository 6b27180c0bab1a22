"""Hypergradient diagnostics: the configured method against a reference implicit_cg."""

import jax
import numpy as np
import pytest

from configs import tiny
from fuse4seg_jax import recipe, trainer
from fuse4seg_jax.data import sources
from fuse4seg_jax.metric_writer import read_jsonl


def _diagnose(config):
    run = recipe.build(config)
    examples, _ = sources.load(config.data, config.seed)
    batch = {k: examples[k][:16] for k in ("modalities", "label", "mask")}
    return jax.device_get(jax.jit(run.diagnose_step)(run.init_state(), batch))


@pytest.mark.slow
def test_reference_against_itself_is_exact_and_first_order_is_not(tmp_path):
    config = tiny.get_config()
    config.data.tfds_dir = str(tmp_path)
    config.bilevel.diagnose_cg_steps = 4  # short reference: quick to compile
    config.bilevel.inner_optimizer = "sgd"
    config.bilevel.inner_lr = 0.5  # a large inner step makes the implicit term visible
    config.bilevel.method = "implicit_cg"
    config.bilevel.cg_steps = config.bilevel.diagnose_cg_steps
    config.bilevel.cg_damping = config.bilevel.diagnose_damping
    same = _diagnose(config)
    np.testing.assert_allclose(same["hypergrad_cosine"], 1.0, atol=1e-5)
    np.testing.assert_allclose(same["hypergrad_norm_ratio"], 1.0, atol=1e-5)
    assert np.isfinite(same["reference_cg_residual"])
    config.bilevel.method = "first_order"
    first = _diagnose(config)
    assert first["hypergrad_cosine"] < 1.0 - 1e-6  # the implicit term is missing


@pytest.mark.slow
def test_trainer_logs_diagnostics_on_its_cadence(tmp_path):
    config = tiny.get_config()
    config.data.tfds_dir = str(tmp_path / "tfds")
    config.bilevel.diagnose_every = 3
    config.bilevel.diagnose_cg_steps = 4
    trainer.train_and_evaluate(config, str(tmp_path / "run"))
    rows = [
        r
        for r in read_jsonl(str(tmp_path / "run" / "metrics.jsonl"))
        if "train/diag_hypergrad_cosine" in r
    ]
    assert [r["step"] for r in rows] == [3, 6]
    assert all(-1.0 <= r["train/diag_hypergrad_cosine"] <= 1.0 + 1e-6 for r in rows)


@pytest.mark.slow
def test_diagnostics_split_the_implicit_part_and_flag_an_unconverged_reference(tmp_path):
    """Unrolling one step through a fresh Adam state has no implicit term (Adam's first
    step is lr * sign(g), whose derivative is zero): implicit fraction 0. Through SGD it
    has one, and the implicit parts of method and reference can be compared. A reference
    of one CG step on the lightly damped system does not converge and is flagged; heavy
    damping makes the same reference converge in 4 steps."""
    config = tiny.get_config()
    config.data.tfds_dir = str(tmp_path)
    config.bilevel.method, config.bilevel.inner_steps = "unrolled", 1
    config.bilevel.inner_lr = 0.5
    config.bilevel.diagnose_cg_steps, config.bilevel.diagnose_damping = 4, 10.0
    config.bilevel.inner_optimizer = "adam"
    adam = _diagnose(config)
    assert adam["implicit_fraction"] < 1e-6 and adam["reference_reliable"] == 1.0
    assert adam["reference_cg_residual"] <= config.bilevel.diagnose_max_residual
    config.bilevel.inner_optimizer = "sgd"
    sgd = _diagnose(config)
    assert sgd["implicit_fraction"] > 1e-5 and sgd["reference_implicit_fraction"] > 1e-6
    assert -1.0 <= sgd["implicit_cosine"] <= 1.0 + 1e-6
    config.bilevel.diagnose_cg_steps, config.bilevel.diagnose_damping = 1, 1e-3
    config.bilevel.diagnose_max_residual = 1e-3
    rough = _diagnose(config)
    assert rough["reference_cg_residual"] > 1e-3 and rough["reference_reliable"] == 0.0
