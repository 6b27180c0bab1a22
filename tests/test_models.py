"""Fusion and segmentation networks: shapes, ranges, sizes, layers and second order."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fuse4seg_jax import models
from fuse4seg_jax.models import layers

KEY = jax.random.key(0)

# Documented bounds (models/__init__.py docstring).
PARAM_BOUNDS = {
    "fusion_base": (100_000, 200_000),
    "fusion_small": (30_000, 100_000),
    "fusion_tiny": (500, 5_000),
    "unet_base": (1_500_000, 2_500_000),
    "unet_small": (350_000, 650_000),
    "unet_tiny": (500, 5_000),
}


def _init(model, x):
    # Jitted: eager init compiles every op separately (seconds per model).
    return jax.jit(model.init)(KEY, x)


def _count(params):
    return sum(x.size for x in jax.tree.leaves(params))


def _tree_dot(a, b):
    return sum(jax.tree.leaves(jax.tree.map(jnp.vdot, a, b)))


def _uniform(shape, seed=0):
    return jax.random.uniform(jax.random.key(seed), shape, jnp.float32)


def _perturb(params, scale=0.3, seed=1):
    """Random non-zero parameters (the fusion head is zero-initialised)."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [
        p + scale * jax.random.normal(k, p.shape, p.dtype)
        for p, k in zip(leaves, keys, strict=True)
    ]
    return jax.tree.unflatten(tree, leaves)


@pytest.mark.parametrize("m", [2, 4])
def test_fusion_shape_range_and_prior(m):
    model = models.get_fusion_model("fusion_tiny")
    x = _uniform((3, 16, 16, m))
    params = _init(model, x)
    apply = jax.jit(model.apply)
    out = apply(params, x)
    assert out.shape == (3, 16, 16, 1) and out.dtype == jnp.float32
    # Zero-initialised head: the output starts at the (clipped) mean of the sources.
    prior = jnp.clip(jnp.mean(x, -1, keepdims=True), 1e-3, 1 - 1e-3)
    np.testing.assert_allclose(out, prior, atol=1e-6)
    out = apply(_perturb(params, scale=3.0), x)
    assert float(jnp.min(out)) >= 0.0 and float(jnp.max(out)) <= 1.0
    assert float(jnp.max(jnp.abs(out - prior))) > 1e-2


def test_fusion_is_invariant_to_modality_order():
    model = models.get_fusion_model("fusion_tiny")
    x = _uniform((2, 16, 16, 3))
    params = _perturb(_init(model, x))
    apply = jax.jit(model.apply)
    out = apply(params, x)
    np.testing.assert_allclose(apply(params, x[..., ::-1]), out, atol=1e-5)
    # ... but not to the modalities' values.
    other = x.at[..., 0].multiply(0.5)
    assert float(jnp.max(jnp.abs(out - apply(params, other)))) > 1e-3


@pytest.mark.parametrize("c", [1, 3])
def test_unet_logits_shape(c):
    model = models.get_segmentation_model("unet_tiny")
    x = _uniform((2, 16, 16, c))
    logits = jax.jit(model.apply)(_init(model, x), x)
    assert logits.shape == (2, 16, 16, 4) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))


def test_bfloat16_compute_returns_float32():
    x = _uniform((1, 16, 16, 2))
    for model in (
        models.get_fusion_model("fusion_tiny", dtype=jnp.bfloat16),
        models.get_segmentation_model("unet_tiny", dtype=jnp.bfloat16),
    ):
        params = _init(model, x)
        assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
        assert jax.jit(model.apply)(params, x).dtype == jnp.float32


@pytest.mark.parametrize("name", sorted(PARAM_BOUNDS))
def test_named_variant_param_counts(name):
    if name.startswith("fusion"):
        model, c = models.get_fusion_model(name), 2
    else:
        model, c = models.get_segmentation_model(name), 1
    shapes = jax.eval_shape(model.init, KEY, jnp.zeros((1, 32, 32, c)))
    lo, hi = PARAM_BOUNDS[name]
    assert lo <= _count(shapes) <= hi, (name, _count(shapes))


def test_lookup_overrides_and_unknown_names():
    assert models.get_segmentation_model("unet_small", num_classes=3).num_classes == 3
    assert models.get_fusion_model("fusion_small", sigma=1.0).sigma == 1.0
    with pytest.raises(ValueError, match=r"'unet_huge'.*unet_base.*unet_small.*unet_tiny"):
        models.get_segmentation_model("unet_huge")
    with pytest.raises(ValueError, match=r"'nope'.*fusion_base.*fusion_small.*fusion_tiny"):
        models.get_fusion_model("nope")


def test_bad_spatial_size_raises():
    unet = models.get_segmentation_model("unet_small")  # needs multiples of 8
    with pytest.raises(ValueError, match="divisible by 8"):
        unet.init(KEY, jnp.zeros((1, 20, 24, 1)))
    fusion = models.get_fusion_model("fusion_small")  # needs multiples of 4
    with pytest.raises(ValueError, match="divisible by 4"):
        fusion.init(KEY, jnp.zeros((1, 16, 18, 2)))


def test_einsum_upsample_matches_conv_transpose_and_loop():
    x = _uniform((2, 3, 5, 4), 1)
    ref = nn.ConvTranspose(6, (2, 2), strides=(2, 2), padding="VALID")
    ref_params = _init(ref, x)
    kernel = ref_params["params"]["kernel"]
    bias = 0.1 * jnp.arange(6.0)
    # Flax's ConvTranspose (transpose_kernel=False) applies its kernel flipped.
    ref_params = {"params": {"kernel": kernel[::-1, ::-1], "bias": bias}}
    got = layers.upsample_transposed(x, kernel, bias)
    np.testing.assert_allclose(got, ref.apply(ref_params, x), atol=1e-5)

    xn, kn = np.asarray(x), np.asarray(kernel)
    loop = np.zeros((2, 6, 10, 6), np.float32)
    for h in range(3):
        for w in range(5):
            for i in range(2):
                for j in range(2):
                    loop[:, 2 * h + i, 2 * w + j] = xn[:, h, w] @ kn[i, j]
    np.testing.assert_allclose(got, loop + np.asarray(bias), atol=1e-5)

    # The module wraps the same function.
    up = layers.UpConv(6)
    p = _init(up, x)
    np.testing.assert_allclose(
        up.apply(p, x), layers.upsample_transposed(x, p["params"]["kernel"], p["params"]["bias"])
    )


def test_bilinear_upsample_matches_jax_image_resize():
    x = _uniform((2, 5, 7, 3), 2)
    want = jax.image.resize(x, (2, 10, 14, 3), "linear")
    np.testing.assert_allclose(layers.upsample_bilinear2x(x), want, atol=1e-6)


@pytest.mark.slow
def test_second_order_through_fusion_and_unet():
    """The bi-level mixed product: jvp of grad through F_theta then S_phi is finite and agrees."""
    fusion = models.get_fusion_model("fusion_tiny")
    unet = models.get_segmentation_model("unet_tiny")
    x = _uniform((2, 16, 16, 2), 3)
    labels = jax.random.randint(jax.random.key(4), (2, 16, 16), 0, 4)
    theta = _perturb(_init(fusion, x), scale=0.1)
    phi = _init(unet, x[..., :1])

    def seg_loss(theta, phi):
        logits = unet.apply(phi, fusion.apply(theta, x))
        return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * jax.nn.one_hot(labels, 4), -1))

    def grad_phi(theta):
        return jax.grad(seg_loss, argnums=1)(theta, phi)

    tangent = _perturb(jax.tree.map(jnp.zeros_like, theta), scale=1.0, seed=5)
    fwd = jax.jit(lambda t: jax.jvp(grad_phi, (theta,), (t,))[1])(tangent)

    # Reverse-over-reverse reference: grad_theta <grad_phi(theta), w> for w = fwd.
    def inner(t):
        return _tree_dot(grad_phi(t), fwd)

    rev = jax.jit(jax.grad(inner))(theta)
    leaves = jax.tree.leaves(fwd)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in leaves)
    norm_sq = sum(float(jnp.vdot(a, a)) for a in leaves)
    assert norm_sq > 0
    # <J t, J t> == <J^T (J t), t>: the two products agree.
    dot = float(_tree_dot(rev, tangent))
    np.testing.assert_allclose(dot, norm_sq, rtol=1e-3)
