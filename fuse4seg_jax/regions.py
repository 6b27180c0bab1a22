"""BraTS label and region conventions (METHOD.md section 2).

Labels: 0 background, 1 necrotic core (NCR/NETC), 2 oedema (ED/SNFH),
3 enhancing tumour (ET). BraTS up to 2021 stores ET as 4; readers map 4 -> 3.
Regions: WT = {1, 2, 3}, TC = {1, 3}, ET = {3}.
"""

import jax.numpy as jnp

NUM_CLASSES = 4
LABEL_NAMES = ("background", "necrotic_core", "oedema", "enhancing")
REGIONS = {"wt": (1, 2, 3), "tc": (1, 3), "et": (3,)}
REGION_NAMES = tuple(REGIONS)


def labels_to_regions(labels):
    """Integer labels (..., ) -> region masks (..., 3) bool in the order WT, TC, ET."""
    return jnp.stack([jnp.isin(labels, jnp.asarray(v)) for v in REGIONS.values()], axis=-1)


def regions_to_labels(regions):
    """Region masks or probabilities > 0.5 (..., 3) in order WT, TC, ET -> labels (...) int32.

    Nested by construction: ET wins, then TC without ET is necrosis, then WT
    without TC is oedema.
    """
    wt, tc, et = (regions[..., i] > 0.5 for i in range(3))
    labels = jnp.where(wt, 2, 0)
    labels = jnp.where(tc, 1, labels)
    labels = jnp.where(et, 3, labels)
    return labels.astype(jnp.int32)


def logits_to_labels(logits, mode="softmax"):
    """Segmentation logits (B, H, W, C) -> labels (B, H, W) int32.

    mode "softmax": C == 4 class logits, argmax. mode "regions": C == 3
    independent sigmoid logits for WT, TC, ET.
    """
    if mode == "softmax":
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if mode == "regions":
        return regions_to_labels(jnp.asarray(logits) > 0.0)
    raise ValueError(f"unknown segmentation mode {mode!r}: expected 'softmax' or 'regions'")
