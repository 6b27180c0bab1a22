"""Filters and losses against hand-computed values and scipy references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from fuse4seg_jax import filters, losses

EPS = 1e-6


def _rand(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(size=shape), jnp.float32)


# ---------------------------------------------------------------- filters


def test_gaussian_blur_matches_scipy_and_keeps_constants():
    x = np.random.default_rng(1).uniform(size=(2, 13, 9, 3)).astype(np.float32)
    got = np.asarray(filters.gaussian_blur(jnp.asarray(x), 2.0))
    # Radius 6 for sigma 2 == scipy's truncate 3; scipy "reflect" == numpy "symmetric".
    want = ndimage.gaussian_filter(x, sigma=(0, 2.0, 2.0, 0), mode="reflect", truncate=3.0)
    np.testing.assert_allclose(got, want, atol=1e-6)
    const = jnp.full((1, 8, 8, 2), 0.37, jnp.float32)
    np.testing.assert_allclose(filters.gaussian_blur(const, 2.0), const, atol=1e-6)


def test_sobel_step_edge_and_constant():
    x = np.zeros((1, 5, 6, 1), np.float32)
    x[:, :, 3:] = 1.0  # unit step between columns 2 and 3
    gx, gy = filters.sobel(jnp.asarray(x))
    want_gx = np.zeros((1, 5, 6, 1), np.float32)
    want_gx[:, :, 2:4] = 4.0  # (1 + 2 + 1) * (1 - 0) on the two columns beside the edge
    np.testing.assert_allclose(gx, want_gx, atol=1e-6)
    np.testing.assert_allclose(gy, 0.0, atol=1e-6)
    gx, gy = filters.sobel(jnp.full((1, 4, 4, 1), 0.5))
    assert float(jnp.max(jnp.abs(gx))) == 0.0 and float(jnp.max(jnp.abs(gy))) == 0.0


# ---------------------------------------------------------------- fusion losses


def test_fusion_losses_vanish_when_sources_equal_fused():
    f = _rand((2, 16, 16, 1))
    sources = jnp.concatenate([f, f], axis=-1)
    total, parts = losses.fusion_loss(f, sources, w_ssim=1.0)
    assert float(parts["loss_freq"]) == 0.0
    assert float(parts["loss_grad"]) == 0.0
    assert abs(float(parts["loss_ssim"])) < 1e-5
    assert abs(float(total)) < 1e-5


def test_freq_loss_constant_images_hand_value():
    f = jnp.full((1, 8, 8, 1), 0.5)
    sources = jnp.concatenate([jnp.full((1, 8, 8, 1), 0.2), jnp.full((1, 8, 8, 1), 0.7)], -1)
    # Details are 0; the base term is |0.5 - max(0.2, 0.7)|.
    np.testing.assert_allclose(losses.freq_loss(f, sources, 2.0), 0.2, atol=1e-6)


def test_freq_loss_matches_numpy_reference():
    rng = np.random.default_rng(3)
    f = rng.uniform(size=(2, 12, 10, 1)).astype(np.float32)
    src = rng.uniform(size=(2, 12, 10, 3)).astype(np.float32)

    def blur(x):  # sigma 2 -> radius 6 == scipy truncate 3
        return ndimage.gaussian_filter(x, sigma=(0, 2.0, 2.0, 0), mode="reflect", truncate=3.0)

    base_s = blur(src)
    det = src - base_s
    idx = np.argmax(np.abs(det), axis=-1)[..., None]
    d_sel = np.take_along_axis(det, idx, axis=-1)
    low = np.mean(np.abs(blur(f) - base_s.max(-1, keepdims=True)))
    high = np.mean(np.abs(f - blur(f) - d_sel))
    got = losses.freq_loss(jnp.asarray(f), jnp.asarray(src), sigma=2.0)
    np.testing.assert_allclose(got, low + high, rtol=1e-5)


def test_grad_loss_step_edge_hand_value():
    h, w = 6, 8
    step = np.zeros((1, h, w, 1), np.float32)
    step[:, :, 4:] = 1.0
    sources = jnp.concatenate([jnp.asarray(step), jnp.zeros((1, h, w, 1))], -1)
    fused = jnp.zeros((1, h, w, 1))
    # max_i |grad I_i| is sqrt(16 + eps) on the 2 columns beside the edge and
    # sqrt(eps) elsewhere; |grad F| = sqrt(eps) everywhere.
    want = 2 * h * (math.sqrt(16 + EPS) - math.sqrt(EPS)) / (h * w)
    np.testing.assert_allclose(losses.grad_loss(fused, sources), want, rtol=1e-6)


def test_ssim_identity_and_constants():
    a = _rand((2, 16, 16, 1))
    np.testing.assert_allclose(losses.ssim(a, a), 1.0, atol=1e-6)
    x, y = 0.2, 0.6
    c1 = 0.01**2
    # Constant images: zero variances, so SSIM = (2xy + C1) / (x^2 + y^2 + C1).
    want = (2 * x * y + c1) / (x * x + y * y + c1)
    got = losses.ssim(jnp.full((1, 12, 12, 1), x), jnp.full((1, 12, 12, 1), y))
    np.testing.assert_allclose(got, want, rtol=1e-4)
    with pytest.raises(ValueError, match="H, W >= 11"):
        losses.ssim(jnp.zeros((1, 8, 8, 1)), jnp.zeros((1, 8, 8, 1)))


def test_fusion_loss_weights_and_skipped_ssim():
    f, src = _rand((2, 16, 16, 1), 4), _rand((2, 16, 16, 2), 5)
    total, parts = losses.fusion_loss(f, src, w_freq=2.0, w_grad=0.5)
    assert float(parts["loss_ssim"]) == 0.0
    np.testing.assert_allclose(
        total, 2.0 * parts["loss_freq"] + 0.5 * parts["loss_grad"], rtol=1e-6
    )
    total, parts = losses.fusion_loss(f, src, w_freq=0.0, w_grad=0.0, w_ssim=1.0)
    mean_ssim = 0.5 * (losses.ssim(f, src[..., :1]) + losses.ssim(f, src[..., 1:]))
    np.testing.assert_allclose(total, 1.0 - mean_ssim, rtol=1e-5)
    assert all(v.dtype == jnp.float32 and v.shape == () for v in [total, *parts.values()])


# ---------------------------------------------------------------- segmentation losses

LABELS_2X2 = jnp.asarray([[[0, 1], [2, 3]]], jnp.int32)  # (1, 2, 2), every class once


def test_segmentation_perfect_logits():
    logits = 30.0 * jax.nn.one_hot(LABELS_2X2, 4)
    total, parts = losses.segmentation_loss(logits, LABELS_2X2)
    assert float(parts["loss_ce"]) < 1e-6
    assert float(parts["loss_dice"]) < 1e-5
    assert float(total) < 1e-5


def test_segmentation_uniform_logits_hand_values():
    s = losses.DICE_SMOOTH
    _, parts = losses.segmentation_loss(jnp.zeros((1, 2, 2, 4)), LABELS_2X2)
    np.testing.assert_allclose(parts["loss_ce"], math.log(4), rtol=1e-6)
    # Each foreground class: intersection 0.25, sum p = 1, sum t = 1.
    np.testing.assert_allclose(parts["loss_dice"], 1 - (0.5 + s) / (2 + s), rtol=1e-6)


def test_segmentation_soft_dice_hand_case():
    s = losses.DICE_SMOOTH
    probs = jnp.asarray(
        [[[[0.7, 0.1, 0.1, 0.1], [0.1, 0.6, 0.2, 0.1]], [[0.25] * 4, [0.1, 0.1, 0.4, 0.4]]]]
    )
    total, parts = losses.segmentation_loss(jnp.log(probs), LABELS_2X2)
    d1 = (2 * 0.6 + s) / (1.05 + 1 + s)
    d2 = (2 * 0.25 + s) / (0.95 + 1 + s)
    d3 = (2 * 0.4 + s) / (0.85 + 1 + s)
    ce = -(math.log(0.7) + math.log(0.6) + math.log(0.25) + math.log(0.4)) / 4
    np.testing.assert_allclose(parts["loss_dice"], 1 - (d1 + d2 + d3) / 3, rtol=1e-5)
    np.testing.assert_allclose(parts["loss_ce"], ce, rtol=1e-5)
    np.testing.assert_allclose(total, ce + 1 - (d1 + d2 + d3) / 3, rtol=1e-5)
    # The mask weights the CE only: keep pixels (0, 1) and (1, 1).
    mask = jnp.asarray([[[0.0, 1.0], [0.0, 1.0]]])
    _, masked = losses.segmentation_loss(jnp.log(probs), LABELS_2X2, mask=mask)
    np.testing.assert_allclose(masked["loss_ce"], -(math.log(0.6) + math.log(0.4)) / 2, rtol=1e-5)
    np.testing.assert_allclose(masked["loss_dice"], parts["loss_dice"], rtol=1e-6)


def test_segmentation_regions_mode():
    s = losses.DICE_SMOOTH
    # Regions of LABELS_2X2 (WT, TC, ET): 0 -> 000, 1 -> 110, 2 -> 100, 3 -> 111.
    _, parts = losses.segmentation_loss(jnp.zeros((1, 2, 2, 3)), LABELS_2X2, mode="regions")
    np.testing.assert_allclose(parts["loss_ce"], math.log(2), rtol=1e-6)
    # p = 0.5 everywhere: region sizes WT 3, TC 2, ET 1 out of 4 pixels.
    dice = [(2 * 0.5 * n + s) / (2 + n + s) for n in (3, 2, 1)]
    np.testing.assert_allclose(parts["loss_dice"], 1 - sum(dice) / 3, rtol=1e-6)
    # Perfect region logits built independently of regions.py.
    targets = jnp.asarray([[[[0, 0, 0], [1, 1, 0]], [[1, 0, 0], [1, 1, 1]]]], jnp.float32)
    total, parts = losses.segmentation_loss(30.0 * (2 * targets - 1), LABELS_2X2, mode="regions")
    assert float(parts["loss_ce"]) < 1e-6 and float(parts["loss_dice"]) < 1e-5
    # Swapping two regions' logits must hurt.
    wrong, _ = losses.segmentation_loss(
        30.0 * (2 * targets[..., ::-1] - 1), LABELS_2X2, mode="regions"
    )
    assert float(wrong) > 1.0
    with pytest.raises(ValueError, match="3 logits"):
        losses.segmentation_loss(jnp.zeros((1, 2, 2, 4)), LABELS_2X2, mode="regions")
    with pytest.raises(ValueError, match="unknown segmentation mode"):
        losses.segmentation_loss(jnp.zeros((1, 2, 2, 4)), LABELS_2X2, mode="bogus")


# ---------------------------------------------------------------- second order


def _second_order(fn, x, v):
    """jvp-of-grad and grad-of-(grad . v) Hessian-vector products of a scalar fn."""
    hvp_fwd = jax.jvp(jax.grad(fn), (x,), (v,))[1]
    hvp_rev = jax.grad(lambda y: jnp.vdot(jax.grad(fn)(y), v))(x)
    return hvp_fwd, hvp_rev


@pytest.mark.slow
def test_fusion_loss_second_order_finite():
    src = _rand((2, 16, 16, 2), 6)
    f = _rand((2, 16, 16, 1), 7)
    v = _rand((2, 16, 16, 1), 8) - 0.5

    def fn(f):
        return losses.fusion_loss(f, src, w_ssim=1.0)[0]

    fwd, rev = _second_order(fn, f, v)
    assert bool(jnp.all(jnp.isfinite(fwd))) and float(jnp.max(jnp.abs(fwd))) > 0
    np.testing.assert_allclose(fwd, rev, rtol=1e-4, atol=1e-6)
    # Flat images are the worst case for the sqrt in the gradient magnitude.
    flat = jnp.full((2, 16, 16, 1), 0.5)
    fwd, _ = _second_order(fn, flat, v)
    assert bool(jnp.all(jnp.isfinite(fwd)))


@pytest.mark.parametrize("mode,c", [("softmax", 4), ("regions", 3)])
def test_segmentation_loss_second_order_finite(mode, c):
    labels = jnp.asarray(np.random.default_rng(9).integers(0, 4, size=(2, 8, 8)), jnp.int32)
    logits = 3.0 * (_rand((2, 8, 8, c), 10) - 0.5)
    v = _rand((2, 8, 8, c), 11) - 0.5

    def fn(z):
        return losses.segmentation_loss(z, labels, mode=mode)[0]

    fwd, rev = _second_order(fn, logits, v)
    assert bool(jnp.all(jnp.isfinite(fwd))) and float(jnp.max(jnp.abs(fwd))) > 0
    np.testing.assert_allclose(fwd, rev, rtol=1e-4, atol=1e-7)
