"""2D U-Net segmentation network S_phi in the nnU-Net manner (METHOD.md section 3).

(B, H, W, C) float, any C (1 for the fused image, M for early-fusion
baselines) -> logits (B, H, W, num_classes) float32.

Stage s (features[s]) holds `num_convs` conv blocks (3x3 conv, norm, leaky
ReLU 0.01); stages s > 0 start with a stride-2 conv block (strided-conv
downsampling, no pooling). The decoder upsamples with 2x2 stride-2
transposed convs (einsum form, layers.UpConv), concatenates the encoder skip
and applies `num_convs` conv blocks; a 1x1 conv gives the logits. No deep
supervision. Default norm is instance norm (nnU-Net), which is stateless.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from fuse4seg_jax.dtypes import at_least_f32
from fuse4seg_jax.models.layers import UpConv, block_for, check_divisible


class UNet(nn.Module):
    """nnU-Net-style 2D U-Net; H and W must be divisible by 2 ** (len(features) - 1)."""

    features: Sequence[int] = (16, 32, 64, 128)
    num_classes: int = 4
    num_convs: int = 2
    norm: str = "instance"
    activation: str = "leaky_relu"  # layers.ACTIVATIONS
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def _block(self, features, strides=1, name=None):
        return block_for(self, features, strides, name)

    @nn.compact
    def __call__(self, x):
        if x.ndim != 4:
            raise ValueError(f"UNet expects (B, H, W, C), got shape {x.shape}")
        if len(self.features) < 1:
            raise ValueError("UNet needs at least one stage in `features`")
        if self.num_convs < 1:
            raise ValueError(f"UNet needs num_convs >= 1, got {self.num_convs}")
        _, h, w, _ = x.shape
        check_divisible(
            h, w, 2 ** (len(self.features) - 1), f"UNet(features={tuple(self.features)})"
        )
        x = x.astype(self.dtype)

        skips = []
        for s, f in enumerate(self.features):
            for i in range(self.num_convs):
                strides = 2 if (s > 0 and i == 0) else 1
                x = self._block(f, strides=strides, name=f"enc{s}_{i}")(x)
            skips.append(x)

        for s in range(len(self.features) - 2, -1, -1):
            f = self.features[s]
            x = UpConv(f, dtype=self.dtype, param_dtype=self.param_dtype, name=f"up{s}")(x)
            x = jnp.concatenate([x, skips[s]], axis=-1)
            for i in range(self.num_convs):
                x = self._block(f, name=f"dec{s}_{i}")(x)

        logits = nn.Conv(
            self.num_classes, (1, 1), dtype=self.dtype, param_dtype=self.param_dtype, name="head"
        )(x)
        return at_least_f32(logits)
