"""The frequency-decoupled fusion network F_theta (docs/method.md section 3).

Input: co-registered sources (B, H, W, M) in [0, 1], any M >= 1 (with the default
merge the model has no M-dependent parameters). Output: one fused image (B, H, W, 1) float32
in [0, 1].

Architecture (our design; the paper's is unpublished):
1. Split every source into base B_i = G_sigma * I_i and detail D_i = I_i - B_i
   (filters.gaussian_blur, sigma default 2.0).
2. Per-modality encoders with weights shared across modalities (the M axis is
   folded into the batch):
   - low-frequency branch on B_i: `low_levels` stride-2 conv blocks (x4
     downsampling by default), then `low_depth` conv blocks at low
     resolution, for a large receptive field at low cost;
   - high-frequency branch on D_i: `high_depth` conv blocks at full
     resolution.
3. Merge across modalities, one conv block per branch after merging. `merge`:
   - "symmetric" (default): [mean, max] over M, so any M works and the result does not
     depend on the order of the modalities, but the network cannot weigh a modality
     by sign: FLAIR - 0.5 T1ce, the one channel in which every tumour part of the
     phantom is visible, is out of its reach, and the fusion losses pull it toward
     max fusion, under which enhancing tumour and oedema look alike;
   - "ordered": the M modalities' features side by side in the order of
     data.modalities, so the merge block has weights of its own for each modality and
     can form signed, modality-specific combinations. Its parameters then depend on
     M (a checkpoint fits one modality count and order).
4. The low branch is projected (1x1) and upsampled back with fixed bilinear
   2x steps: a learned transposed conv would add blocky, high-frequency
   artefacts to the branch meant to carry low frequencies.
5. Concatenate both branches, one conv block, a 1x1 conv to one channel,
   plus a global residual toward a prior, through a sigmoid:
     F = sigmoid(head(features) + logit(clip(prior, eps, 1 - eps))).
   The head is zero-initialised, so at initialisation F equals the prior
   (up to the clip): by default the mean of the sources, a sensible fused
   image to start from. `prior="max"` starts from the per-pixel maximum,
   `prior="none"` from 0.5 everywhere.

Normalisation defaults to "none": per-sample norms inside the per-modality
encoders would erase absolute and cross-modality intensity, which is what a
fusion must preserve. The network is shallow (about 6 convs on any path), so
it trains without norms.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from fuse4seg_jax import filters
from fuse4seg_jax.dtypes import at_least_f32
from fuse4seg_jax.models.layers import block_for, check_divisible, upsample_bilinear2x

PRIORS = ("mean", "max", "none")
MERGES = ("symmetric", "ordered")


def _fold_modalities(x):
    """(B, H, W, M) -> (B * M, H, W, 1), modality-major within each sample."""
    b, h, w, m = x.shape
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(b * m, h, w, 1)


def _merge_modalities(x, m, how="symmetric"):
    """(B * M, h, w, C) -> (B, h, w, 2C) [mean, max] over the M modalities ("symmetric")
    or (B, h, w, M * C) their features side by side, modality-major ("ordered")."""
    bm, h, w, c = x.shape
    x = x.reshape(bm // m, m, h, w, c)
    if how == "ordered":
        return jnp.transpose(x, (0, 2, 3, 1, 4)).reshape(bm // m, h, w, m * c)
    return jnp.concatenate([jnp.mean(x, axis=1), jnp.max(x, axis=1)], axis=-1)


class FrequencyFusionNet(nn.Module):
    """Frequency-decoupled fusion net: (B, H, W, M) in [0, 1] -> (B, H, W, 1) float32 in [0, 1].

    H and W must be divisible by 2 ** low_levels.
    """

    sigma: float = 2.0
    high_features: int = 16
    high_depth: int = 2
    low_features: int = 32
    low_depth: int = 2
    low_levels: int = 2
    fuse_features: int = 16
    prior: str = "mean"
    merge: str = "symmetric"  # MERGES (module docstring)
    prior_eps: float = 1e-3
    norm: str = "none"
    activation: str = "leaky_relu"  # layers.ACTIVATIONS
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def _block(self, features, strides=1, name=None):
        return block_for(self, features, strides, name)

    @nn.compact
    def __call__(self, x):
        if x.ndim != 4:
            raise ValueError(f"FrequencyFusionNet expects (B, H, W, M), got shape {x.shape}")
        if self.prior not in PRIORS:
            raise ValueError(f"unknown prior {self.prior!r}: expected one of {PRIORS}")
        if self.merge not in MERGES:
            raise ValueError(f"unknown merge {self.merge!r}: expected one of {MERGES}")
        _, h, w, m = x.shape
        check_divisible(h, w, 2**self.low_levels, "FrequencyFusionNet")
        x = at_least_f32(x)  # the frequency split is done in >= float32

        base = filters.gaussian_blur(x, self.sigma)
        detail = x - base

        # High-frequency branch: full resolution, per modality, shared weights.
        hi = _fold_modalities(detail).astype(self.dtype)
        for i in range(self.high_depth):
            hi = self._block(self.high_features, name=f"high_{i}")(hi)
        hi = _merge_modalities(hi, m, self.merge)
        hi = self._block(self.high_features, name="high_merge")(hi)

        # Low-frequency branch: downsample, convs at low resolution, per modality.
        lo = _fold_modalities(base).astype(self.dtype)
        for i in range(self.low_levels):
            lo = self._block(self.low_features, strides=2, name=f"low_down_{i}")(lo)
        for i in range(self.low_depth):
            lo = self._block(self.low_features, name=f"low_{i}")(lo)
        lo = _merge_modalities(lo, m, self.merge)
        lo = self._block(self.low_features, name="low_merge")(lo)
        lo = nn.Conv(
            self.fuse_features,
            (1, 1),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="low_proj",
        )(lo)
        for _ in range(self.low_levels):
            lo = upsample_bilinear2x(lo)

        y = jnp.concatenate([hi, lo.astype(hi.dtype)], axis=-1)
        y = self._block(self.fuse_features, name="fuse")(y)
        y = nn.Conv(
            1,
            (1, 1),
            kernel_init=nn.initializers.zeros,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="head",
        )(y)
        y = at_least_f32(y)

        if self.prior == "none":
            return nn.sigmoid(y)
        prior = jnp.mean(x, axis=-1, keepdims=True)
        if self.prior == "max":
            prior = jnp.max(x, axis=-1, keepdims=True)
        prior = jnp.clip(prior, self.prior_eps, 1.0 - self.prior_eps)
        return nn.sigmoid(y + jnp.log(prior) - jnp.log1p(-prior))
