"""2D U-Net segmentation network S_phi in the nnU-Net manner (docs/method.md section 3).

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


def checked_input(module, x, name: str, layout: str = "B, H, W, C"):
    """x (B, H, W, C) in module's compute dtype, after checking the U-Net's shape rules
    (module: a U-Net-like model with `features` and `num_convs` fields)."""
    if x.ndim != 4:
        raise ValueError(f"{name} expects ({layout}), got shape {x.shape}")
    if len(module.features) < 1:
        raise ValueError(f"{name} needs at least one stage in `features`")
    if module.num_convs < 1:
        raise ValueError(f"{name} needs num_convs >= 1, got {module.num_convs}")
    _, h, w, _ = x.shape
    check_divisible(
        h, w, 2 ** (len(module.features) - 1), f"{name}(features={tuple(module.features)})"
    )
    return x.astype(module.dtype)


def encode(module, x) -> list:
    """The encoder, inside module's compact __call__: one feature map per stage."""
    skips = []
    for s, f in enumerate(module.features):
        for i in range(module.num_convs):
            strides = 2 if (s > 0 and i == 0) else 1
            x = block_for(module, f, strides, name=f"enc{s}_{i}")(x)
        skips.append(x)
    return skips


def decode(module, skips):
    """The decoder and 1x1 head, inside module's compact __call__: the deepest map of
    `skips` is the input, the others are concatenated on the way up -> float32 logits."""
    x = skips[-1]
    for s in range(len(module.features) - 2, -1, -1):
        f = module.features[s]
        x = UpConv(f, dtype=module.dtype, param_dtype=module.param_dtype, name=f"up{s}")(x)
        x = jnp.concatenate([x, skips[s]], axis=-1)
        for i in range(module.num_convs):
            x = block_for(module, f, name=f"dec{s}_{i}")(x)
    logits = nn.Conv(
        module.num_classes, (1, 1), dtype=module.dtype, param_dtype=module.param_dtype,
        name="head",
    )(x)  # fmt: skip
    return at_least_f32(logits)


class UNet(nn.Module):
    """nnU-Net-style 2D U-Net; H and W must be divisible by 2 ** (len(features) - 1)."""

    features: Sequence[int] = (16, 32, 64, 128)
    num_classes: int = 4
    num_convs: int = 2
    norm: str = "instance"
    activation: str = "leaky_relu"  # layers.ACTIVATIONS
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        return decode(self, encode(self, checked_input(self, x, "UNet")))
