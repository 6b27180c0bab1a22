"""Feature-level baselines: early-fusion U-Net and the multi-encoder DualEncoderUNet."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fuse4seg_jax import models
from fuse4seg_jax.models.feature_level import DualEncoderUNet

KEY = jax.random.key(0)
SIZES = ("base", "small", "tiny")
# Documented in models/__init__.py (M = 2 modalities, 4 classes).
DUAL_PARAMS = {"dual_unet_base": 3_274_212, "dual_unet_small": 820_212, "dual_unet_tiny": 2_968}


def _uniform(shape, seed=0):
    return jax.random.uniform(jax.random.key(seed), shape, jnp.float32)


def _count(tree):
    return sum(x.size for x in jax.tree.leaves(tree))


def _shapes(tree):
    return jax.tree.map(lambda a: a.shape, tree)


def _host_params(model, x, seed=0):
    """Random parameters of `model` for input x, drawn with numpy on the host.

    Compiling Flax's `init` takes seconds on CPU (it compiles the forward pass
    plus one PRNG stream per parameter); tests that only need some non-degenerate
    parameters take these: kernels N(0, 1 / fan_in), norm scales 1 + N(0, 0.1^2),
    biases N(0, 0.1^2).
    """
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        noise = rng.normal(size=leaf.shape)
        if leaf.ndim > 1:
            noise /= np.sqrt(np.prod(leaf.shape[:-1]))
        elif jax.tree_util.keystr(path).endswith("['scale']"):
            noise = 1.0 + 0.1 * noise
        else:
            noise = 0.1 * noise
        return jnp.asarray(noise, leaf.dtype)

    shapes = jax.eval_shape(model.init, KEY, x)["params"]
    return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def dual_tiny():
    """dual_unet_tiny, its params from the real Flax init for M = 2, and a jitted apply.

    The init key uses the "rbg" PRNG: same initializers and distributions as
    training, but XLA compiles the init in ~3 s instead of ~15 s with threefry.
    """
    model = models.get_segmentation_model("dual_unet_tiny")
    key = jax.random.key(0, impl="rbg")
    params = jax.jit(model.init)(key, jnp.zeros((2, 32, 32, 2)))["params"]
    return model, params, jax.jit(lambda p, x: model.apply({"params": p}, x))


@pytest.fixture(scope="module")
def dual_tiny_grad(dual_tiny):
    """Jitted (params, x, target) -> gradient of the mean squared logit error."""
    model = dual_tiny[0]

    def loss(p, x, target):
        return jnp.mean((model.apply({"params": p}, x) - target) ** 2)

    return jax.jit(jax.grad(loss))


def test_registry_widths_match_the_unet_variants():
    for size in SIZES:
        unet = models.SEGMENTATION_MODELS[f"unet_{size}"]
        early = models.SEGMENTATION_MODELS[f"early_unet_{size}"]
        dual = models.SEGMENTATION_MODELS[f"dual_unet_{size}"]
        assert early.func is unet.func and early.keywords == unet.keywords
        assert dual.func is DualEncoderUNet and dual.keywords == unet.keywords


def test_dual_output_shape_and_one_encoder_per_modality(dual_tiny):
    model, params, apply = dual_tiny
    logits = apply(params, _uniform((2, 32, 32, 2)))
    assert logits.shape == (2, 32, 32, 4) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))
    assert {k for k in params if k.startswith("encoder_")} == {"encoder_0", "encoder_1"}
    # Separate parameters: same structure, different values.
    enc0, enc1 = params["encoder_0"], params["encoder_1"]
    assert _shapes(enc0) == _shapes(enc1)
    kernels = [e["enc0_0"]["Conv_0"]["kernel"] for e in (enc0, enc1)]
    assert float(jnp.max(jnp.abs(kernels[0] - kernels[1]))) > 1e-3
    # Three modalities: three encoders, same logits shape.
    x3 = jnp.zeros((1, 32, 32, 3))
    p3 = jax.eval_shape(model.init, KEY, x3)
    assert sorted(k for k in p3["params"] if k.startswith("encoder_")) == [
        f"encoder_{i}" for i in range(3)
    ]
    assert jax.eval_shape(model.apply, p3, x3).shape == (1, 32, 32, 4)


def test_dual_structure_is_unet_encoders_plus_merges_plus_unet_decoder():
    """Each encoder is UNet's encoder on one channel; the decoder and head are UNet's."""
    x2 = jnp.zeros((1, 32, 32, 2))
    dual = jax.eval_shape(models.get_segmentation_model("dual_unet_base").init, KEY, x2)["params"]
    unet = jax.eval_shape(
        models.get_segmentation_model("unet_base").init, KEY, jnp.zeros((1, 32, 32, 1))
    )["params"]
    unet_enc = {k: v for k, v in unet.items() if k.startswith("enc")}
    unet_dec = {k: v for k, v in unet.items() if not k.startswith("enc")}
    for i in range(2):
        assert _shapes(dual[f"encoder_{i}"]) == _shapes(unet_enc)
    assert _shapes({k: dual[k] for k in unet_dec}) == _shapes(unet_dec)
    merges = {k: v for k, v in dual.items() if k.startswith("merge")}
    widths = (32, 64, 128, 256)
    assert [merges[f"merge{s}"]["Conv_0"]["kernel"].shape for s in range(4)] == [
        (1, 1, 2 * f, f) for f in widths
    ]
    assert set(dual) == {"encoder_0", "encoder_1", *merges, *unet_dec}


@pytest.mark.parametrize("name", sorted(DUAL_PARAMS))
def test_dual_param_counts(name):
    shapes = jax.eval_shape(
        models.get_segmentation_model(name).init, KEY, jnp.zeros((1, 32, 32, 2))
    )
    assert _count(shapes) == DUAL_PARAMS[name]


def test_gradients_reach_every_encoder(dual_tiny, dual_tiny_grad):
    params = dual_tiny[1]
    grads = dual_tiny_grad(params, _uniform((2, 32, 32, 2), 1), _uniform((2, 32, 32, 4), 2))
    for i in range(2):
        leaves = jax.tree.leaves(grads[f"encoder_{i}"])
        assert leaves and all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
        assert all(float(jnp.max(jnp.abs(g))) > 0 for g in leaves), f"encoder_{i}"


def test_dual_encoder_is_not_invariant_to_swapping_modalities(dual_tiny):
    _, params, apply = dual_tiny
    x = _uniform((2, 32, 32, 2), 3)
    out, swapped = apply(params, x), apply(params, x[..., ::-1])
    assert float(jnp.max(jnp.abs(out - swapped))) > 1e-3
    np.testing.assert_array_equal(apply(params, x), out)  # deterministic: the swap is the cause


@pytest.mark.parametrize("m", [2, 4])
def test_early_fusion_unet_takes_all_modalities(m):
    model = models.get_segmentation_model("early_unet_tiny")
    x = _uniform((2, 32, 32, m), m)
    params = _host_params(model, x, seed=m)
    assert params["enc0_0"]["Conv_0"]["kernel"].shape[2] == m  # every modality is an input
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x))
    logits = apply(params, x)
    assert logits.shape == (2, 32, 32, 4) and bool(jnp.all(jnp.isfinite(logits)))
    # Every modality influences the logits.
    for i in range(m):
        other = apply(params, x.at[..., i].set(0.0))
        assert float(jnp.max(jnp.abs(other - logits))) > 1e-4


def test_constructor_knobs_and_bad_sizes():
    model = models.get_segmentation_model("dual_unet_tiny", num_classes=3, dtype=jnp.bfloat16)
    x = _uniform((1, 32, 32, 2))
    shapes = jax.eval_shape(model.init, KEY, x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(shapes))  # stored in float32
    out = jax.jit(lambda p, x: model.apply({"params": p}, x))(_host_params(model, x), x)
    assert out.shape == (1, 32, 32, 3) and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))
    with pytest.raises(ValueError, match="divisible by 8"):
        models.get_segmentation_model("dual_unet_small").init(KEY, jnp.zeros((1, 20, 24, 2)))
    with pytest.raises(ValueError, match="B, H, W, M"):
        DualEncoderUNet().init(KEY, jnp.zeros((32, 32, 2)))


def test_tiny_variant_is_small(dual_tiny):
    """The tests' twin stays tiny (its speed is measured by benchmarks, not asserted)."""
    assert _count(dual_tiny[1]) < 5_000
