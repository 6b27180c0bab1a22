"""Fusion and segmentation losses (docs/method.md section 4), pure `jax.numpy`.

Conventions: sources I (B, H, W, M) float in [0, 1] (M >= 1 co-registered
modalities), fused image F (B, H, W, 1) float in [0, 1], segmentation logits
(B, H, W, C) and integer labels (B, H, W) (0 background, 1 NCR, 2 ED, 3 ET;
see `regions.py`). "|.|_1" below is the *mean* absolute value over all
pixels of the batch, so losses do not scale with image size. Every loss is
a float32 scalar, finite and twice differentiable on [0, 1] inputs (sqrt
carries an eps; argmax/max selections are piecewise linear).
"""

import jax
import jax.numpy as jnp

from fuse4seg_jax import filters
from fuse4seg_jax.dtypes import at_least_f32
from fuse4seg_jax.regions import NUM_CLASSES, labels_to_regions

DICE_SMOOTH = 1e-5


def _f32(x):
    return at_least_f32(x)


def _check_fusion_shapes(fused, sources):
    if fused.ndim != 4 or fused.shape[-1] != 1:
        raise ValueError(f"fused must be (B, H, W, 1), got {fused.shape}")
    if sources.ndim != 4 or sources.shape[:3] != fused.shape[:3]:
        raise ValueError(
            f"sources must be (B, H, W, M) matching fused {fused.shape}, got {sources.shape}"
        )


def freq_loss(fused, sources, sigma=2.0):
    """Frequency Decomposition Loss.

    L_freq = mean|G*F - max_i G*I_i| + mean|(F - G*F) - D_sel|, where G is the
    Gaussian blur of `sigma` (filters.gaussian_blur), D_i = I_i - G*I_i and
    D_sel is, per pixel, the signed detail D_i of largest magnitude
    (argmax_i |D_i|). The base of F should follow the brightest source base
    and its detail the strongest source detail.
    """
    fused, sources = _f32(fused), _f32(sources)
    _check_fusion_shapes(fused, sources)
    base_f = filters.gaussian_blur(fused, sigma)
    base_s = filters.gaussian_blur(sources, sigma)
    detail_s = sources - base_s
    idx = jnp.argmax(jnp.abs(detail_s), axis=-1, keepdims=True)
    detail_sel = jnp.take_along_axis(detail_s, idx, axis=-1)
    low = jnp.mean(jnp.abs(base_f - jnp.max(base_s, axis=-1, keepdims=True)))
    high = jnp.mean(jnp.abs((fused - base_f) - detail_sel))
    return low + high


def grad_loss(fused, sources, eps=1e-6):
    """Spatial Gradient Loss: mean| |grad F| - max_i |grad I_i| |.

    |grad .| is the Sobel magnitude sqrt(gx^2 + gy^2 + eps)
    (filters.gradient_magnitude); eps cancels when F equals a source.
    """
    fused, sources = _f32(fused), _f32(sources)
    _check_fusion_shapes(fused, sources)
    g_f = filters.gradient_magnitude(fused, eps)
    g_s = jnp.max(filters.gradient_magnitude(sources, eps), axis=-1, keepdims=True)
    return jnp.mean(jnp.abs(g_f - g_s))


def ssim(a, b, data_range=1.0, win_size=11, win_sigma=1.5, k1=0.01, k2=0.03):
    """Mean SSIM (Wang et al. 2004) with a Gaussian window, float32 scalar.

    Local statistics use an 11x11 Gaussian window (sigma 1.5) over the
    "valid" region only (no padding; H, W >= win_size). With C1 = (k1 L)^2,
    C2 = (k2 L)^2 and L = data_range:
      SSIM = (2 mu_a mu_b + C1)(2 cov_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(var_a + var_b + C2))
    averaged over the valid pixels, channels and batch. a, b: (B, H, W, C).
    """
    a, b = _f32(a), _f32(b)
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(
            f"ssim needs two (B, H, W, C) arrays of equal shape, got {a.shape}, {b.shape}"
        )
    radius = win_size // 2
    if min(a.shape[1:3]) < win_size:
        raise ValueError(f"ssim needs H, W >= {win_size}, got {a.shape[1:3]}")

    def win(x):
        return filters.gaussian_blur(x, win_sigma, radius=radius, mode="valid")

    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    mu_a, mu_b = win(a), win(b)
    var_a = win(a * a) - mu_a * mu_a
    var_b = win(b * b) - mu_b * mu_b
    cov = win(a * b) - mu_a * mu_b
    num = (2.0 * mu_a * mu_b + c1) * (2.0 * cov + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    return jnp.mean(num / den)


def ssim_loss(fused, sources, data_range=1.0):
    """L_ssim = 1 - mean_i SSIM(F, I_i); F (B, H, W, 1), I (B, H, W, M)."""
    fused, sources = _f32(fused), _f32(sources)
    _check_fusion_shapes(fused, sources)
    # Broadcasting F against every source is one SSIM over M channels, which
    # is exactly the mean over i of the per-source SSIMs.
    return 1.0 - ssim(jnp.broadcast_to(fused, sources.shape), sources, data_range)


def fusion_loss(fused, sources, *, sigma=2.0, w_freq=1.0, w_grad=1.0, w_ssim=0.0):
    """L_fuse = w_freq L_freq + w_grad L_grad + w_ssim L_ssim.

    Returns (total, {"loss_freq", "loss_grad", "loss_ssim"}), all float32 scalars. The SSIM
    term is not computed when w_ssim == 0 (python number) and reported as 0.
    """
    parts = {
        "loss_freq": freq_loss(fused, sources, sigma),
        "loss_grad": grad_loss(fused, sources),
        "loss_ssim": ssim_loss(fused, sources) if w_ssim != 0 else jnp.zeros((), jnp.float32),
    }
    total = w_freq * parts["loss_freq"] + w_grad * parts["loss_grad"] + w_ssim * parts["loss_ssim"]
    return _f32(total), parts


def _masked_mean(per_pixel, mask):
    """Mean of (B, H, W) values, weighted by mask (B, H, W) if given (0 when the mask is empty)."""
    if mask is None:
        return jnp.mean(per_pixel)
    mask = _f32(mask)
    return jnp.sum(per_pixel * mask) / (jnp.sum(mask) + 1e-8)


def soft_dice(probs, targets, smooth=DICE_SMOOTH):
    """Batch soft Dice per channel: (2 sum p t + s) / (sum p + sum t + s).

    probs, targets: (B, H, W, K) float; sums run over the whole batch (nnU-Net's
    "batch dice"), so a class absent from one slice does not dominate.
    Returns (K,) float32.
    """
    axes = (0, 1, 2)
    inter = jnp.sum(probs * targets, axis=axes)
    denom = jnp.sum(probs, axis=axes) + jnp.sum(targets, axis=axes)
    return (2.0 * inter + smooth) / (denom + smooth)


def segmentation_loss(logits, labels, *, mode="softmax", w_ce=1.0, w_dice=1.0, mask=None):
    """L_seg = w_ce * CE + w_dice * (1 - soft Dice).

    mode "softmax": logits (B, H, W, 4); CE = mean over pixels of
      -log softmax(logits)[label]; soft Dice (batch Dice, smooth 1e-5) of the
      softmax probabilities against one-hot labels, averaged over the
      foreground classes 1..3 (background excluded, as in nnU-Net).
    mode "regions": logits (B, H, W, 3) independent sigmoid logits for WT,
      TC, ET (regions.labels_to_regions); "loss_ce" is the binary cross-entropy
      averaged over pixels and the 3 regions, Dice averaged over the regions.
    mask: optional (B, H, W) weights for the cross-entropy only (None = all
      pixels); the Dice term always uses every pixel.
    Returns (total, {"loss_ce", "loss_dice"}) float32 scalars; "loss_dice" is 1 - mean soft Dice.
    """
    logits = _f32(logits)
    labels = jnp.asarray(labels).astype(jnp.int32)
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {logits.shape} and labels {labels.shape} disagree")
    if mode == "softmax":
        if logits.shape[-1] != NUM_CLASSES:
            raise ValueError(f"mode 'softmax' needs {NUM_CLASSES} logits, got {logits.shape[-1]}")
        logp = jax.nn.log_softmax(logits, axis=-1)
        onehot = jax.nn.one_hot(labels, NUM_CLASSES, dtype=jnp.float32)
        ce = _masked_mean(-jnp.sum(onehot * logp, axis=-1), mask)
        dice = soft_dice(jnp.exp(logp)[..., 1:], onehot[..., 1:])
    elif mode == "regions":
        if logits.shape[-1] != 3:
            raise ValueError(f"mode 'regions' needs 3 logits (WT, TC, ET), got {logits.shape[-1]}")
        targets = labels_to_regions(labels).astype(jnp.float32)
        # Stable BCE with logits: softplus(z) - z * t.
        bce = jnp.mean(jax.nn.softplus(logits) - logits * targets, axis=-1)
        ce = _masked_mean(bce, mask)
        dice = soft_dice(jax.nn.sigmoid(logits), targets)
    else:
        raise ValueError(f"unknown segmentation mode {mode!r}: expected 'softmax' or 'regions'")
    parts = {"loss_ce": _f32(ce), "loss_dice": _f32(1.0 - jnp.mean(dice))}
    return _f32(w_ce * parts["loss_ce"] + w_dice * parts["loss_dice"]), parts
