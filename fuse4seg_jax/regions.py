"""BraTS label and region conventions (docs/method.md section 2).

Labels: 0 background, 1 necrotic core (NCR/NETC), 2 oedema (ED/SNFH),
3 enhancing tumour (ET). BraTS up to 2021 stores ET as 4; readers map 4 -> 3.
Regions: WT = {1, 2, 3}, TC = {1, 3}, ET = {3}.
"""

import jax
import jax.numpy as jnp

NUM_CLASSES = 4
LABEL_NAMES = ("background", "necrotic_core", "oedema", "enhancing")
REGIONS = {"wt": (1, 2, 3), "tc": (1, 3), "et": (3,)}
REGION_NAMES = tuple(REGIONS)
SEG_MODES = ("softmax", "regions")


def _check_mode(mode):
    if mode not in SEG_MODES:
        raise ValueError(f"unknown segmentation mode {mode!r}: expected 'softmax' or 'regions'")


def channel_names(mode="softmax") -> tuple:
    """What the C channels of `probabilities` are: the 4 classes (softmax) or the 3
    regions WT, TC, ET (regions)."""
    _check_mode(mode)
    return LABEL_NAMES if mode == "softmax" else REGION_NAMES


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
    _check_mode(mode)
    if mode == "softmax":
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return regions_to_labels(jnp.asarray(logits) > 0.0)


def probabilities(logits, mode="softmax"):
    """Segmentation logits (..., C) -> probabilities (..., C) float32: the softmax over the
    4 classes (mode "softmax"), or the 3 independent region sigmoids WT, TC, ET ("regions")."""
    _check_mode(mode)
    logits = jnp.asarray(logits, jnp.float32)
    return jax.nn.softmax(logits, axis=-1) if mode == "softmax" else jax.nn.sigmoid(logits)


def probabilities_to_labels(probs, mode="softmax"):
    """Probabilities (..., C) (`probabilities`, or a mean of them, e.g. over flips) ->
    labels (...) int32 by the rule of logits_to_labels: the most probable class
    (softmax), or the nested region rule of regions_to_labels with each region present
    where its probability is > 0.5 (regions). Softmax is monotonic and sigmoid(l) > 0.5
    exactly when l > 0, so for one prediction this gives logits_to_labels' labels (up to
    float rounding of near ties)."""
    _check_mode(mode)
    if mode == "softmax":
        return jnp.argmax(jnp.asarray(probs), axis=-1).astype(jnp.int32)
    return regions_to_labels(jnp.asarray(probs))
