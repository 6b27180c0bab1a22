"""Segmentation metrics on host numpy arrays: Dice per BraTS region.

Regions (METHOD.md section 2): WT = {1,2,3}, TC = {1,3}, ET = {3}.
BraTS convention for empty masks: both prediction and truth empty -> Dice 1;
exactly one empty -> Dice 0.
"""

import numpy as np

from fuse4seg_jax.regions import REGIONS


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks of equal shape, with the BraTS empty-mask convention."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} != ground-truth shape {truth.shape}")
    total = pred.sum() + truth.sum()
    if total == 0:
        return 1.0
    return float(2.0 * np.logical_and(pred, truth).sum() / total)


def dice_per_region(pred_labels: np.ndarray, true_labels: np.ndarray) -> dict:
    """{"wt", "tc", "et"} -> Dice for integer label maps (any shape, labels 0..3)."""
    return {
        name: dice(np.isin(pred_labels, labels), np.isin(true_labels, labels))
        for name, labels in REGIONS.items()
    }


def dice_per_case(pred_labels, true_labels, case_ids) -> dict:
    """Dice per region for each case, its slices stacked: {case_id: {"wt": ..}}.

    Keys are the case ids as Python values (int or str)."""
    case_ids = np.asarray(case_ids)
    return {
        c.item(): dice_per_region(pred_labels[case_ids == c], true_labels[case_ids == c])
        for c in np.unique(case_ids)
    }


def mean_dice(per_case: dict) -> dict:
    """Mean over cases of each region's Dice."""
    return {r: float(np.mean([d[r] for d in per_case.values()])) for r in REGIONS}
