"""Feature-level fusion baselines, the paper's foil (docs/method.md section 6).

Feature-level methods fuse the modalities inside the segmentation network,
so no fused image exists. Two baselines:

- Early fusion: the U-Net of models/segmentation.py with all M modalities
  as input channels, (B, H, W, M) -> logits. UNet already takes any number
  of channels, so early fusion needs no module of its own; the registry
  names `early_unet_{base,small,tiny}` are the `unet_*` variants under the
  name of the baseline they play (baselines.py feeds them M channels).
- Dual encoder (`DualEncoderUNet` here): one U-Net encoder per modality
  (separate parameters), modality features merged at every level, one
  shared decoder. Registry names `dual_unet_{base,small,tiny}`, with the
  widths and depths of the matching `unet_*`.

Both are Flax Linen, NHWC, stateless (no BatchNorm), built from the conv
blocks of models/layers.py in the nnU-Net manner of models/segmentation.py.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from fuse4seg_jax.models import segmentation
from fuse4seg_jax.models.layers import ConvBlock


class UNetEncoder(nn.Module):
    """The encoder half of segmentation.UNet: (B, H, W, C) -> one feature map per stage.

    Stage s gives (B, H / 2**s, W / 2**s, features[s]); stages s > 0 start
    with a stride-2 conv block. Parameter names (`enc{s}_{i}`) match UNet's.
    """

    features: Sequence[int] = (16, 32, 64, 128)
    num_convs: int = 2
    norm: str = "instance"
    activation: str = "leaky_relu"  # layers.ACTIVATIONS
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        return segmentation.encode(self, x)


class DualEncoderUNet(nn.Module):
    """Multi-encoder U-Net: (B, H, W, M) float -> logits (B, H, W, num_classes) float32.

    "Dual" for the default M = 2 pair; any M >= 1 works, and the parameters
    are made for the M seen at init (`encoder_0` ... `encoder_{M-1}`).

    1. Each modality x[..., m:m+1] goes through its own UNetEncoder
       (`encoder_m`, same widths and depths as the U-Net, no weight sharing),
       so each encoder specialises in one contrast.
    2. At every stage s the M feature maps are concatenated (M * features[s]
       channels) and merged by a 1x1 conv block (`merge{s}`: 1x1 conv, norm,
       activation) back to features[s] channels: a learned per-pixel mixing of
       the modalities at every scale, which is where this baseline fuses.
    3. One decoder, as in UNet (2x2 transposed-conv upsampling, skip
       concatenation, `num_convs` conv blocks per stage, 1x1 head), reads the
       merged features: the deepest as its input, the others as skips.

    Unlike the fusion network, the result depends on the order of the
    modalities (each encoder is tied to one input channel). H and W must be
    divisible by 2 ** (len(features) - 1). Takes the same fields as UNet.
    """

    features: Sequence[int] = (16, 32, 64, 128)
    num_classes: int = 4
    num_convs: int = 2
    norm: str = "instance"
    activation: str = "leaky_relu"  # layers.ACTIVATIONS
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = segmentation.checked_input(self, x, "DualEncoderUNet", "B, H, W, M")
        m = x.shape[-1]
        per_modality = [
            UNetEncoder(
                self.features,
                self.num_convs,
                self.norm,
                self.activation,
                self.dtype,
                self.param_dtype,
                name=f"encoder_{i}",
            )(x[..., i : i + 1])
            for i in range(m)
        ]
        merged = []
        for s, f in enumerate(self.features):
            stage = jnp.concatenate([feats[s] for feats in per_modality], axis=-1)
            merge = ConvBlock(
                f,
                kernel=1,
                norm=self.norm,
                activation=self.activation,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=f"merge{s}",
            )
            merged.append(merge(stage))

        return segmentation.decode(self, merged)
