"""Classical fusion baselines: references, ranges, PCA weights, Laplacian pyramid, lookup."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fuse4seg_jax import classical


def _uniform(shape, seed=0):
    return np.asarray(jax.random.uniform(jax.random.key(seed), shape, jnp.float32))


def _correlated(b=2, h=24, w=20, seed=0):
    """Two sources with different variances and a strong (positive) correlation."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(size=(b, h, w))
    a = 0.2 + 0.6 * base + 0.05 * rng.uniform(size=(b, h, w))
    c = 0.4 + 0.2 * base + 0.1 * rng.uniform(size=(b, h, w))
    return np.stack([a, c], axis=-1).astype(np.float32)


def _step_and_flat(h=32, w=32):
    """Source 0: a vertical step edge 0.2 -> 0.8 at column w // 2; source 1: flat 0.5."""
    a = np.full((1, h, w), 0.2, np.float32)
    a[:, :, w // 2 :] = 0.8
    return np.stack([a, np.full_like(a, 0.5)], axis=-1)


def test_mean_and_max_equal_numpy():
    x = _uniform((2, 16, 12, 3))
    np.testing.assert_allclose(classical.mean(x), x.mean(-1, keepdims=True), atol=1e-7)
    np.testing.assert_array_equal(classical.max(x), x.max(-1, keepdims=True))


@pytest.mark.parametrize("name", sorted(classical.METHODS))
@pytest.mark.parametrize("m", [2, 3])
def test_shape_dtype_range_and_jit(name, m):
    x = _uniform((2, 32, 32, m), seed=m)
    out = jax.jit(classical.get(name))(x)
    assert out.shape == (2, 32, 32, 1) and out.dtype == jnp.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_pca_weights_equal_numpy_eigendecomposition():
    x = np.concatenate([_correlated(seed=1), 1.0 - _correlated(b=1, seed=2)], axis=0)
    got = np.asarray(classical.pca_weights(x))
    for i, img in enumerate(x.astype(np.float64)):
        cov = np.cov(img.reshape(-1, 2), rowvar=False, bias=True)
        vals, vecs = np.linalg.eig(cov)  # general solver: independent of eigh
        lead = np.abs(vecs[:, np.argmax(vals)])
        np.testing.assert_allclose(got[i], lead / lead.sum(), atol=1e-5)
    # The higher-variance source dominates, and the output is that weighted sum.
    assert np.all(got[:, 0] > 0.7)
    want = np.einsum("bhwm,bm->bhw", x, got)[..., None]
    np.testing.assert_allclose(classical.pca(x), want, atol=1e-6)


def test_pca_of_identical_or_constant_channels():
    weights, pca = jax.jit(classical.pca_weights), jax.jit(classical.pca)
    img = _uniform((2, 20, 28, 1), seed=3)
    x = np.concatenate([img, img], axis=-1)
    np.testing.assert_allclose(weights(x), 0.5, atol=1e-6)
    np.testing.assert_allclose(pca(x), img, atol=1e-6)
    flat = np.full((1, 8, 8, 3), 0.25, np.float32)  # no principal direction: equal weights
    np.testing.assert_allclose(weights(flat), 1 / 3, atol=1e-7)
    np.testing.assert_allclose(pca(flat), 0.25, atol=1e-7)


@pytest.mark.parametrize("shape", [(32, 32), (37, 45)])
def test_laplacian_pyramid_reconstructs_and_fuses_identical_channels(shape):
    img = _uniform((2, *shape, 1), seed=4)
    x = np.concatenate([img, img], axis=-1)
    fused = jax.jit(classical.laplacian)(x)
    assert fused.shape == (2, *shape, 1)
    np.testing.assert_allclose(fused, img, atol=1e-5)
    if shape[0] % 16 == 0:
        roundtrip = jax.jit(lambda v: classical.reconstruct(classical.laplacian_pyramid(v, 4)))
        np.testing.assert_allclose(roundtrip(x), x, atol=1e-5)
        shapes = jax.eval_shape(lambda v: classical.laplacian_pyramid(v, 4), x)
        assert [p.shape[1:3] for p in shapes] == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]


def test_laplacian_bands_of_a_constant_are_zero():
    pyramid = jax.jit(classical.laplacian_pyramid, static_argnums=1)(
        jnp.full((1, 16, 16, 1), 0.3), 3
    )
    for band in pyramid[:-1]:
        np.testing.assert_allclose(band, 0.0, atol=1e-6)
    np.testing.assert_allclose(pyramid[-1], 0.3, atol=1e-6)


@pytest.mark.parametrize("shape", [(32, 32), (37, 45)])
def test_laplacian_keeps_a_sharp_edge_that_mean_halves(shape):
    x = _step_and_flat(*shape)
    col = shape[1] // 2
    fused = np.asarray(jax.jit(classical.laplacian)(x))[0, :, :, 0]
    step = fused[:, col] - fused[:, col - 1]  # jump across the edge, every row
    mean_step = np.asarray(classical.mean(x))[0, :, col, 0] - classical.mean(x)[0, :, col - 1, 0]
    np.testing.assert_allclose(mean_step, 0.3, atol=1e-6)
    assert np.all(step > 0.5), step.min()  # source 0's jump is 0.6; mean fusion keeps 0.3


def test_laplacian_levels_is_static_and_checked():
    x = _uniform((1, 37, 45, 2), seed=5)
    fn = jax.jit(classical.laplacian, static_argnames="levels")
    for levels in (1, 5):
        out = fn(x, levels=levels)
        assert out.shape == (1, 37, 45, 1)
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    with pytest.raises(ValueError, match="levels >= 1"):
        classical.laplacian(x, levels=0)


def test_bad_input_and_unknown_name_raise():
    with pytest.raises(ValueError, match="M >= 2"):
        classical.mean(np.zeros((1, 8, 8, 1), np.float32))
    with pytest.raises(ValueError, match=r"'median'.*laplacian.*max.*mean.*pca"):
        classical.get("median")
    assert classical.get("pca") is classical.pca
