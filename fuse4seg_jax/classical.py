"""Classical image fusion without training: the "classical" baselines (docs/method.md section 6).

Every method maps co-registered sources `modalities` (B, H, W, M) float in
[0, 1], M >= 2, NHWC, to one fused image (B, H, W, 1) float32 (float64 passes
through) in [0, 1]. All are pure `jax.numpy`, have no parameters and jit.

- mean: the per-pixel average of the sources; the simplest fusion, it keeps
  every source's content but halves each one's contrast (for M = 2).
- max: the per-pixel maximum ("choose-max"); keeps the brightest structure
  of every source, at the cost of the darker ones' texture.
- pca: a weighted average whose weights are the leading principal component
  of the M x M covariance of the image's pixel values (PCA fusion, e.g.
  Naidu & Raol 2008); the source with most variance gets the most weight.
- laplacian: Laplacian pyramid fusion (Burt & Adelson 1983, "The Laplacian
  pyramid as a compact image code"; fusion rule of Burt & Kolczynski 1993):
  per band, per pixel, keep the detail coefficient of largest magnitude;
  average the coarsest (base) band; reconstruct.

`METHODS` maps names to functions, `get(name)` looks one up, `host_fuser(name)`
runs one on host arrays (evaluate, export).
"""

import jax
import jax.numpy as jnp
import numpy as np

from fuse4seg_jax import filters
from fuse4seg_jax.dtypes import at_least_f32

_HIGHEST = jax.lax.Precision.HIGHEST
# Burt & Adelson's generating kernel with a = 0.375: the 5-tap binomial [1, 4, 6, 4, 1] / 16.
BINOMIAL5 = (1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16)
# PCA falls back to equal weights when the leading eigenvalue is below this (a constant
# image has no principal direction; eigh would return an arbitrary one).
PCA_MIN_VARIANCE = 1e-12


def _check(modalities, name):
    x = at_least_f32(modalities)
    if x.ndim != 4 or x.shape[-1] < 2:
        raise ValueError(f"classical.{name} expects (B, H, W, M) with M >= 2, got {x.shape}")
    return x


def mean(modalities):
    """Per-pixel mean over the M sources: (B, H, W, M) -> (B, H, W, 1)."""
    return jnp.mean(_check(modalities, "mean"), axis=-1, keepdims=True)


def max(modalities):  # shadows the builtin on purpose: the method's name in configs
    """Per-pixel maximum over the M sources: (B, H, W, M) -> (B, H, W, 1)."""
    return jnp.max(_check(modalities, "max"), axis=-1, keepdims=True)


def pca_weights(modalities):
    """PCA fusion weights, one set per image: (B, H, W, M) -> (B, M), each row summing to 1.

    Per image, the pixel values form N = H * W samples of an M-vector (all
    pixels, no brain mask). Their M x M covariance (centred, divided by N) is
    diagonalised in closed form with `jnp.linalg.eigh`; v is the eigenvector
    of the largest eigenvalue and the weights are |v| / sum(|v|).

    Sign handling: an eigenvector is only defined up to sign, and eigh's
    choice is arbitrary. When the sources are positively correlated (the usual
    case for co-registered scans) all entries of v share one sign (Perron-
    Frobenius), so |v| / sum|v| equals the textbook v / sum(v) for either
    sign. Taking absolute values also keeps the weights non-negative for
    anti-correlated sources, so the fused image stays a convex combination
    of the sources and in [0, 1]. A constant image (leading eigenvalue below
    PCA_MIN_VARIANCE) gets equal weights 1 / M.
    """
    x = _check(modalities, "pca")
    b, h, w, m = x.shape
    samples = x.reshape(b, h * w, m)
    centred = samples - jnp.mean(samples, axis=1, keepdims=True)
    cov = jnp.einsum("bni,bnj->bij", centred, centred, precision=_HIGHEST) / (h * w)
    eigvals, eigvecs = jnp.linalg.eigh(cov)  # ascending eigenvalues, eigenvectors in columns
    lead = jnp.abs(eigvecs[..., -1])  # (B, M), unit norm so sum >= 1: no division by 0
    weights = lead / jnp.sum(lead, axis=-1, keepdims=True)
    flat = eigvals[..., -1:] < PCA_MIN_VARIANCE
    return jnp.where(flat, jnp.full_like(weights, 1.0 / m), weights)


def pca(modalities):
    """PCA-weighted average of the sources (see pca_weights): (B, H, W, M) -> (B, H, W, 1)."""
    x = _check(modalities, "pca")
    weights = pca_weights(x)
    fused = jnp.einsum("bhwm,bm->bhw", x, weights, precision=_HIGHEST)[..., None]
    return jnp.clip(fused, 0.0, 1.0)


def _reduce(x):
    """Burt & Adelson REDUCE: binomial blur (reflect boundary), keep every other sample."""
    return filters.separable_filter(x, BINOMIAL5, BINOMIAL5, mode="reflect")[:, ::2, ::2]


def _expand(x):
    """Burt & Adelson EXPAND: (B, h, w, C) -> (B, 2h, 2w, C), zero insertion + 4 x blur.

    The factor 2 per axis restores the mean lost to the inserted zeros, so a
    constant image expands to the same constant.
    """
    b, h, w, c = x.shape
    up = jnp.stack([x, jnp.zeros_like(x)], axis=2)  # (B, h, 2, w, C); no scatter needed
    up = jnp.stack([up, jnp.zeros_like(up)], axis=4)  # (B, h, 2, w, 2, C)
    up = up.reshape(b, 2 * h, 2 * w, c)
    taps = tuple(2 * t for t in BINOMIAL5)
    return filters.separable_filter(up, taps, taps, mode="reflect")


def laplacian_pyramid(x, levels):
    """Laplacian pyramid of x (B, H, W, C), H and W divisible by 2 ** levels.

    Returns `levels` detail bands L_k = G_k - EXPAND(G_{k+1}) (full
    resolution first, each (B, H / 2**k, W / 2**k, C)) followed by the base
    G_levels. Invert with reconstruct(); the inverse is exact for any filter.
    """
    bands, g = [], x
    for _ in range(levels):
        smaller = _reduce(g)
        bands.append(g - _expand(smaller))
        g = smaller
    return bands + [g]


def reconstruct(pyramid):
    """Inverse of laplacian_pyramid: G_k = L_k + EXPAND(G_{k+1}), from the base up."""
    x = pyramid[-1]
    for band in reversed(pyramid[:-1]):
        x = band + _expand(x)
    return x


def laplacian(modalities, levels=4):
    """Laplacian pyramid fusion: (B, H, W, M) -> (B, H, W, 1) in [0, 1].

    Args:
      modalities: (B, H, W, M) float in [0, 1], M >= 2, any H and W.
      levels: number of REDUCE steps (python int >= 1; static under jit):
        `levels` detail bands plus one base band at 1 / 2**levels resolution.

    Each source gets its own pyramid (5-tap binomial kernel, reflect
    boundary, decimation by 2). Per detail band and pixel the coefficient of
    largest absolute value over the M sources is kept (ties: the first
    source); the base bands are averaged. The fused pyramid is reconstructed
    and clipped to [0, 1] (selected details can overshoot). H and W that are
    not multiples of 2**levels are mirror-padded at the bottom/right to the
    next multiple and the result cropped back.
    """
    x = _check(modalities, "laplacian")
    if int(levels) != levels or levels < 1:
        raise ValueError(f"classical.laplacian needs an integer levels >= 1, got {levels!r}")
    _, h, w, _ = x.shape
    f = 2**levels
    pad_h, pad_w = -h % f, -w % f
    # "symmetric" (edge sample repeated) works for any pad length, even on 1-pixel images.
    x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="symmetric")
    pyramid = laplacian_pyramid(x, levels)
    fused = []
    for band in pyramid[:-1]:
        pick = jnp.argmax(jnp.abs(band), axis=-1, keepdims=True)
        fused.append(jnp.take_along_axis(band, pick, axis=-1))
    fused.append(jnp.mean(pyramid[-1], axis=-1, keepdims=True))
    out = reconstruct(fused)[:, :h, :w]
    return jnp.clip(out, 0.0, 1.0)


METHODS = {"mean": mean, "max": max, "pca": pca, "laplacian": laplacian}


def get(name):
    """The fusion function called `name` (a key of METHODS)."""
    if name not in METHODS:
        raise ValueError(f"unknown classical fusion {name!r}; valid names: {sorted(METHODS)}")
    return METHODS[name]


def host_fuser(name, batch_size: int = 32):
    """fn(modalities (N, H, W, M) host array) -> fused (N, H, W) float32 numpy: the method
    `name`, jitted, over batches of at most `batch_size` images."""
    method = get(name)
    fuse = jax.jit(lambda x: method(x)[..., 0])

    def run(modalities):
        x = np.asarray(modalities, np.float32)
        parts = [np.asarray(fuse(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
        return np.concatenate(parts) if parts else np.zeros(x.shape[:3], np.float32)

    return run
