"""Mixed precision (model.compute_dtype = "bfloat16"): the networks compute in bfloat16,
while parameters, optimiser states, losses and hypergradient arithmetic stay float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from fuse4seg_jax import recipe
from fuse4seg_jax.data import phantom


def _step(method, compute_dtype):
    config = tiny.get_config()
    config.model.compute_dtype = compute_dtype
    config.bilevel.method = method
    if method == "implicit_cg":
        config.bilevel.cg_steps = 3  # each CG step is unrolled into the compiled program
    run = recipe.build(config)
    models, objs, state = (run.fusion_model, run.seg_model), run.parts, run.init_state()
    data = phantom.make_dataset(seed=1, num_cases=2, slices_per_case=4, image_size=32)
    batch = {k: jnp.asarray(data[k]) for k in ("modalities", "label", "mask")}
    logits = objs.segment(state.seg.params, objs.fuse(state.fusion.params, batch))
    new_state, metrics = jax.jit(run.train_step)(state, batch)
    return models, logits, new_state, metrics


@pytest.mark.slow
@pytest.mark.parametrize("method", ["unrolled", "implicit_cg"])
def test_bfloat16_compute_keeps_float32_state_and_losses(method):
    models, logits, state, metrics = _step(method, "bfloat16")
    assert all(m.dtype == jnp.bfloat16 for m in models)
    # the U-Net really computes in bfloat16: its logits are bf16 values handed on as float32
    assert logits.dtype == jnp.float32
    values = np.asarray(logits).ravel()
    assert np.array_equal(values, values.astype(jnp.bfloat16).astype(np.float32))
    leaves = jax.tree.leaves((state.fusion, state.seg))
    assert leaves and all(x.dtype == jnp.float32 for x in leaves if x.dtype.kind == "f")
    for key in ("loss_inner", "loss_outer", "hypergrad_norm"):
        assert metrics[key].dtype == jnp.float32 and np.isfinite(float(metrics[key]))
    if method == "implicit_cg":
        assert metrics["cg_residual"].dtype == jnp.float32
    _, _, _, reference = _step(method, "float32")
    np.testing.assert_allclose(
        float(metrics["loss_outer"]), float(reference["loss_outer"]), rtol=0.05
    )
