"""The fusion net's "ordered" merge can form a signed combination of modalities (FLAIR
minus half of T1ce, the phantom's all-parts-visible channel); the symmetric merge, which
cannot tell the modalities apart, cannot fit it."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fuse4seg_jax.data import phantom
from fuse4seg_jax.models import get_fusion_model


def _fit(merge, images, target, steps=300):
    """Final mean squared error of fusion_tiny trained to output `target`."""
    model = get_fusion_model("fusion_tiny", merge=merge)
    params = model.init(jax.random.PRNGKey(0), images)
    tx = optax.adam(1e-2)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt):
        loss, grads = jax.value_and_grad(
            lambda p: jnp.mean((model.apply(p, images)[..., 0] - target) ** 2)
        )(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, loss

    for _ in range(steps):
        params, opt, loss = step(params, opt)
    return float(loss)


@pytest.mark.slow
def test_the_ordered_merge_fits_a_signed_combination_the_symmetric_one_cannot():
    slices = phantom.make_dataset(0, num_cases=4, slices_per_case=2, image_size=32)
    images = jnp.asarray(slices["modalities"])  # t1ce, flair
    target = jnp.clip(images[..., 1] - 0.5 * images[..., 0], 0.0, 1.0)
    ordered, symmetric = _fit("ordered", images, target), _fit("symmetric", images, target)
    assert ordered < 0.5 * symmetric, (ordered, symmetric)
    # swapping the modalities changes the ordered net's output, not the symmetric one's
    for merge, changes in (("ordered", True), ("symmetric", False)):
        model = get_fusion_model("fusion_tiny", merge=merge, prior="none")
        params = model.init(jax.random.PRNGKey(1), images)
        params = jax.tree.map(lambda p: p + 0.1, params)  # the zero-initialised head too
        a, b = model.apply(params, images), model.apply(params, images[..., ::-1])
        assert (not np.allclose(a, b, atol=1e-6)) == changes


def test_an_unknown_merge_is_refused():
    model = get_fusion_model("fusion_tiny", merge="sum")
    with pytest.raises(ValueError, match="unknown merge 'sum': expected one of"):
        model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 2)))
