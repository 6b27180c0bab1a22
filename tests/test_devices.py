"""Data parallelism: every step kind computes the same on 8 devices as on 1.

For each hypergradient method, each baseline and the fusion-only step: one train step and
one eval step on the same global batch, with the state replicated and the batch sharded
over a 1-device and an 8-device `data` mesh; the updated states, the metrics and the eval
outputs must agree to float tolerance. Then the Predictor (what predict and evaluate run)
splitting its batch over 8 devices against 1.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import tiny
from fuse4seg_jax import bilevel, inference, recipe, sharding
from fuse4seg_jax.data import phantom

KINDS = [("fuse4seg", m) for m in bilevel.METHODS] + [
    ("two_stage", None),
    ("classical", "pca"),
    ("single", "flair"),
    ("early_fusion", None),
    ("dual_encoder", None),
    ("fusion_only", None),
]


def _config(kind, option):
    config = tiny.get_config()
    config.train.batch_size = 16
    if kind == "fuse4seg":
        config.bilevel.method = option
        if option == "implicit_cg":
            config.bilevel.cg_steps = 3  # unrolled into the program: short compiles
        if option == "implicit_neumann":
            config.bilevel.neumann_steps = 3
        if option == "darts":
            # darts differentiates the inner Adam's first step, whose derivative near a
            # zero gradient is up to 1/sqrt(eps): it amplifies the all-reduce's different
            # summation order to ~4e-3 relative (measured), against ~4e-6 with SGD.
            config.bilevel.inner_optimizer = "sgd"
    elif kind == "fusion_only":
        config.model.segmentation = "none"
    else:
        config.model.kind = kind
        if kind == "classical":
            config.model.classical = option
        if kind == "single":
            config.model.single_modality = option
    return config


def _batch(config):
    data = phantom.make_dataset(
        seed=2, num_cases=4, slices_per_case=4, image_size=config.data.image_size
    )
    return {k: jnp.asarray(data[k]) for k in ("modalities", "label", "mask")}


def _on_mesh(fn, state, batch, n):
    mesh = sharding.make_mesh(n)
    repl = sharding.replicated(mesh)
    step = jax.jit(fn, in_shardings=(repl, sharding.batch_sharding(mesh)))
    return jax.device_get(step(jax.device_put(state, repl), sharding.shard_batch(batch, mesh)))


def _assert_trees_close(a, b, rtol, atol):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def _uses_adam(opt_state) -> bool:
    leaves = jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
    return any(isinstance(x, optax.ScaleByAdamState) for x in leaves)


def _assert_states_close(a, b, learning_rate, rtol=2e-4, atol=2e-6):
    """Two train states after the same step agree: the step counter, every optimiser
    state (Adam's moments are the gradients' running averages: an all-reduce that sums
    wrongly shows there) and the parameters to rtol/atol, except that parameters an Adam
    step updated get an absolute tolerance of 5% of the learning rate. Adam's first
    update is lr * g / (|g| + eps): a gradient within rounding of zero (|g| ~ eps) can
    move its update by a sizeable fraction of lr when the all-reduce sums in another
    order (measured under jax 0.12: 7e-5 with lr 2e-3, while the moments agreed to 2e-4)."""
    assert int(a.step) == int(b.step)
    for net_a, net_b in ((a.fusion, b.fusion), (a.seg, b.seg)):
        _assert_trees_close(net_a.opt_state, net_b.opt_state, rtol, atol)
        params_atol = max(atol, 0.05 * learning_rate) if _uses_adam(net_a.opt_state) else atol
        _assert_trees_close(net_a.params, net_b.params, rtol, params_atol)


@pytest.mark.slow
@pytest.mark.parametrize("kind,option", KINDS, ids=[f"{k}-{o}" if o else k for k, o in KINDS])
def test_step_kind_on_eight_devices_matches_one(kind, option):
    assert jax.device_count() == 8, "conftest sets 8 fake CPU devices"
    config = _config(kind, option)
    run = recipe.build(config)
    state = run.init_state()
    batch = _batch(config)
    (s1, m1), (s8, m8) = (_on_mesh(run.train_step, state, batch, n) for n in (1, 8))
    _assert_trees_close(m1, m8, rtol=2e-5, atol=1e-6)
    _assert_states_close(s1, s8, config.optim.learning_rate)
    before, after = jax.tree.leaves((state.fusion, state.seg)), jax.tree.leaves((s8.fusion, s8.seg))
    assert any(not np.allclose(a, b) for a, b in zip(before, after, strict=True)), "no update"
    e1, e8 = (_on_mesh(run.eval_step, s1, {"modalities": batch["modalities"]}, n) for n in (1, 8))
    assert set(e1) == set(e8) and ("pred" in e1 or "fused" in e1)
    if "pred" in e1:  # argmax labels: identical except where two logits tie to rounding
        assert np.mean(e1["pred"] != e8["pred"]) < 1e-3
    rest = {k: v for k, v in e1.items() if k != "pred"}
    _assert_trees_close(rest, {k: e8[k] for k in rest}, rtol=2e-5, atol=1e-6)


def test_predictor_over_eight_devices_matches_one():
    config = tiny.get_config()
    run = recipe.build(config)
    state = run.init_state()
    images = _batch(config)["modalities"][:13]  # not a multiple of 8: the last batch is padded
    one = inference.Predictor(run.eval_step, state, batch_size=1)
    eight = inference.Predictor(run.eval_step, state, batch_size=8)
    assert one.mesh.size == 1 and eight.mesh.size == 8
    a, b = one.predict(images), eight.predict(images)
    assert set(a) == set(b) == {"pred", "fused"}
    np.testing.assert_allclose(a["fused"], b["fused"], rtol=2e-5, atol=1e-6)
    assert np.mean(a["pred"] != b["pred"]) < 1e-3
