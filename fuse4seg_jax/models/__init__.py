"""Model zoo: named fusion and segmentation variants and their lookup.

Variants are `functools.partial`s of the module classes (as the Flax examples name their variants),
each with a tiny twin for tests. `get_*_model(name, **overrides)` builds one,
e.g. `get_segmentation_model("unet_small", dtype=jnp.bfloat16)`.

Parameter counts (M-independent for the fusion nets; UNet with 1 input
channel and 4 classes), checked by tests/test_models.py:
  fusion_base   131,785  (bounds checked: 100k-200k)
  fusion_small   58,801  (30k-100k; the FrequencyFusionNet defaults)
  fusion_tiny     2,489  (0.5k-5k; 16x16 inputs need H, W % 2 == 0)
  unet_base   1,926,532  (1.5M-2.5M; H, W % 8 == 0)
  unet_small    482,500  (350k-650k; H, W % 8 == 0)
  unet_tiny       1,692  (0.5k-5k; H, W % 2 == 0)
Feature-level baselines (models/feature_level.py) on M = 2 modalities, checked
by tests/test_feature_level.py (early_unet_* are the unet_* modules; with
2 input channels unet_base has 1,926,820):
  dual_unet_base   3,274,212  dual_unet_small   820,212  dual_unet_tiny   2,968
"""

import functools

from fuse4seg_jax.models.feature_level import DualEncoderUNet, UNetEncoder
from fuse4seg_jax.models.fusion import FrequencyFusionNet
from fuse4seg_jax.models.layers import ConvBlock, UpConv, upsample_bilinear2x, upsample_transposed
from fuse4seg_jax.models.segmentation import UNet

FUSION_MODELS = {
    "fusion_base": functools.partial(
        FrequencyFusionNet, high_features=24, low_features=48, fuse_features=24
    ),
    "fusion_small": functools.partial(
        FrequencyFusionNet, high_features=16, low_features=32, fuse_features=16
    ),
    "fusion_tiny": functools.partial(
        FrequencyFusionNet,
        high_features=4,
        high_depth=1,
        low_features=8,
        low_depth=1,
        low_levels=1,
        fuse_features=4,
    ),
}

SEGMENTATION_MODELS = {
    "unet_base": functools.partial(UNet, features=(32, 64, 128, 256)),
    "unet_small": functools.partial(UNet, features=(16, 32, 64, 128)),
    "unet_tiny": functools.partial(UNet, features=(4, 8)),
    # Feature-level baselines (models/feature_level.py), widths of the matching unet_*.
    # Early fusion is the U-Net itself fed all M modalities as input channels.
    "early_unet_base": functools.partial(UNet, features=(32, 64, 128, 256)),
    "early_unet_small": functools.partial(UNet, features=(16, 32, 64, 128)),
    "early_unet_tiny": functools.partial(UNet, features=(4, 8)),
    "dual_unet_base": functools.partial(DualEncoderUNet, features=(32, 64, 128, 256)),
    "dual_unet_small": functools.partial(DualEncoderUNet, features=(16, 32, 64, 128)),
    "dual_unet_tiny": functools.partial(DualEncoderUNet, features=(4, 8)),
}


def _lookup(table, kind, name, overrides):
    if name not in table:
        raise ValueError(f"unknown {kind} model {name!r}; valid names: {sorted(table)}")
    return table[name](**overrides)


def get_fusion_model(name, **overrides):
    """A fusion nn.Module by name (a key of FUSION_MODELS), fields overridden by keyword."""
    return _lookup(FUSION_MODELS, "fusion", name, overrides)


def get_segmentation_model(name, **overrides):
    """A segmentation nn.Module by name (key of SEGMENTATION_MODELS), fields overridden."""
    return _lookup(SEGMENTATION_MODELS, "segmentation", name, overrides)


__all__ = [
    "FUSION_MODELS",
    "SEGMENTATION_MODELS",
    "ConvBlock",
    "DualEncoderUNet",
    "FrequencyFusionNet",
    "UNet",
    "UNetEncoder",
    "UpConv",
    "get_fusion_model",
    "get_segmentation_model",
    "upsample_bilinear2x",
    "upsample_transposed",
]
