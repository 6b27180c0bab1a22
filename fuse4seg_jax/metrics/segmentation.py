"""Segmentation metrics on host numpy arrays: Dice, HD95, sensitivity, specificity.

Regions (docs/method.md section 2): WT = {1,2,3}, TC = {1,3}, ET = {3}; label maps
must hold labels 0..3 only (the region functions raise ValueError otherwise).
Empty-mask conventions (BraTS, docs/metrics.md):
- Dice: both prediction and truth empty -> 1; exactly one empty -> 0.
- HD95: both empty -> 0 mm; exactly one empty -> `HD95_EMPTY` = 373 mm.
- Sensitivity TP / (TP + FN): empty truth -> 1 if the prediction is empty, else 0.
- Specificity TN / (TN + FP) over the array given: truth without negatives
  (all positive) -> 1 (no false positive is possible).

HD95 follows MedPy's `hd95` (used by the BraTS evaluations): the boundary of a
mask is the mask minus its binary erosion with the face-connected structuring
element (`generate_binary_structure(ndim, 1)`; voxels outside the array count
as background, so a mask touching the array edge has a boundary there); the
distances from each boundary voxel of P to the nearest boundary voxel of G
(Euclidean, in mm via `distance_transform_edt(sampling=spacing)`) and from G to
P are pooled, and the 95th percentile is taken with `np.percentile`'s default
linear interpolation.

Two protocols (report which): per 2D slice (`slice_scores`) and per 3D case
(`case_scores`, each case's slices stacked back in slice order).
"""

import numbers

import numpy as np
from scipy import ndimage

from fuse4seg_jax.regions import REGIONS

HD95_EMPTY = 373.0  # mm: the BraTS replacement for an infinite distance (one mask empty)
_LABELS = (0, 1, 2, 3)
_METRICS = ("dice", "hd95", "sens", "spec")


def _masks(pred, truth):
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} != ground-truth shape {truth.shape}")
    return pred, truth


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks of equal shape, with the BraTS empty-mask convention."""
    pred, truth = _masks(pred, truth)
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


def _sampling(spacing, ndim: int) -> tuple:
    """Voxel spacing in mm, one positive number per axis (None -> 1 mm; a scalar -> all axes)."""
    if spacing is None:
        return (1.0,) * ndim
    sp = np.asarray(spacing, np.float64)
    if sp.ndim == 0:
        sp = np.full(ndim, float(sp))
    if sp.shape != (ndim,) or not np.all(np.isfinite(sp) & (sp > 0)):
        raise ValueError(f"spacing {spacing!r} must be {ndim} positive numbers (mm, one per axis)")
    return tuple(sp.tolist())


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Mask minus its erosion by the face-connected element (outside the array = background)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure)


def hd95(pred, truth, spacing=None) -> float:
    """95th-percentile symmetric surface distance (mm) between boolean masks of equal shape.

    pred, truth: (H, W) or (D, H, W) (any rank >= 1) boolean masks. spacing: voxel
    size in mm per axis (None -> 1). Both empty -> 0.0; exactly one empty ->
    HD95_EMPTY. Boundaries, pooling and percentile: see the module docstring.
    """
    pred, truth = _masks(pred, truth)
    if pred.ndim == 0:
        raise ValueError("hd95 needs masks of rank >= 1, got scalars")
    sampling = _sampling(spacing, pred.ndim)
    has_pred, has_truth = bool(pred.any()), bool(truth.any())
    if not (has_pred or has_truth):
        return 0.0
    if not (has_pred and has_truth):
        return HD95_EMPTY
    # Crop to the bounding box of P | G: outside it both masks are background, so the
    # boundaries and nearest-boundary distances are unchanged and the transforms are smaller.
    box = ndimage.find_objects((pred | truth).astype(np.int8))[0]
    bp, bt = _boundary(pred[box]), _boundary(truth[box])
    to_truth = ndimage.distance_transform_edt(~bt, sampling=sampling)[bp]
    to_pred = ndimage.distance_transform_edt(~bp, sampling=sampling)[bt]
    return float(np.percentile(np.concatenate([to_truth, to_pred]), 95))


def sensitivity(pred, truth) -> float:
    """TP / (TP + FN) for boolean masks; empty truth -> 1.0 if pred is empty, else 0.0."""
    pred, truth = _masks(pred, truth)
    positives = truth.sum()
    if positives == 0:
        return 0.0 if pred.any() else 1.0
    return float(np.logical_and(pred, truth).sum() / positives)


def specificity(pred, truth) -> float:
    """TN / (TN + FP) over the whole array; truth without negatives -> 1.0 (no FP possible)."""
    pred, truth = _masks(pred, truth)
    negatives = truth.size - truth.sum()
    if negatives == 0:
        return 1.0
    return float(np.logical_not(pred | truth).sum() / negatives)


def _check_labels(pred_labels, true_labels):
    pred_labels, true_labels = np.asarray(pred_labels), np.asarray(true_labels)
    if pred_labels.shape != true_labels.shape:
        raise ValueError(
            f"prediction shape {pred_labels.shape} != ground-truth shape {true_labels.shape}"
        )
    for name, labels in (("prediction", pred_labels), ("ground truth", true_labels)):
        bad = ~np.isin(labels, _LABELS)
        if bad.any():
            found = np.unique(labels[bad])[:5].tolist()
            raise ValueError(f"{name} holds labels {found} outside 0..3 (map BraTS label 4 to 3)")
    return pred_labels, true_labels


def check_labels(pred_labels, true_labels) -> tuple[np.ndarray, np.ndarray]:
    """Both label maps as arrays; ValueError if their shapes differ or a label is not 0..3."""
    return _check_labels(pred_labels, true_labels)


def _scores(pred_labels, true_labels, spacing, observed=None) -> dict:
    """Per-region scores of checked label maps; `observed` selects (along axis 0) the
    voxels that count for Dice/sensitivity/specificity (HD95 always uses the whole map)."""
    out = {}
    for region, labels in REGIONS.items():
        p, t = np.isin(pred_labels, labels), np.isin(true_labels, labels)
        po, to = (p, t) if observed is None else (p[observed], t[observed])
        out[f"dice_{region}"] = dice(po, to)
        out[f"hd95_{region}"] = hd95(p, t, spacing)
        out[f"sens_{region}"] = sensitivity(po, to)
        out[f"spec_{region}"] = specificity(po, to)
    return {f"{m}_{r}": out[f"{m}_{r}"] for m in _METRICS for r in REGIONS}


def region_scores(pred_labels, true_labels, spacing=None) -> dict:
    """Dice, HD95 (mm), sensitivity and specificity per region of two label maps.

    pred_labels, true_labels: integer label maps of equal shape (2D or 3D), labels
    0..3. spacing: voxel size in mm per axis (None -> 1). Returns floats keyed
    "dice_wt", "dice_tc", "dice_et", "hd95_wt", ..., "sens_..", "spec_..".
    """
    pred_labels, true_labels = _check_labels(pred_labels, true_labels)
    return _scores(pred_labels, true_labels, spacing)


def slice_scores(pred_labels, true_labels, spacing=None) -> list[dict]:
    """`region_scores` of each 2D slice: one dict per slice, in input order.

    pred_labels, true_labels: (N, H, W) integer labels 0..3. spacing: in-plane
    pixel size in mm, (N, 2) per slice, (2,) shared, or None (1 mm).
    """
    pred_labels, true_labels = _check_labels(pred_labels, true_labels)
    if pred_labels.ndim != 3:
        raise ValueError(f"expected (N, H, W) label slices, got shape {pred_labels.shape}")
    n = len(pred_labels)
    sp = np.ones((n, 2)) if spacing is None else np.asarray(spacing, np.float64)
    if sp.shape == (2,):
        sp = np.broadcast_to(sp, (n, 2))
    if sp.shape != (n, 2):
        raise ValueError(f"spacing shape {sp.shape} is neither (2,) nor (N, 2) = ({n}, 2)")
    return [_scores(p, t, s) for p, t, s in zip(pred_labels, true_labels, sp, strict=True)]


def case_scores(pred_labels, true_labels, case_ids, slice_indices, spacing=None,
                slice_spacing=1.0) -> dict:  # fmt: skip
    """`region_scores` per 3D case, its 2D slices stacked back: {case_id: {"dice_wt": ..}}.

    pred_labels, true_labels: (N, H, W) integer labels 0..3; case_ids, slice_indices:
    (N,), any order. Each case becomes a (slice, H, W) volume with voxel spacing
    (slice_spacing, *spacing) mm; spacing is the in-plane (2,) pixel size shared by
    the case (None -> 1 mm). Slice k of a case sits at position k - min index, so
    slices are adjacent only when their indices are: a case with missing indices is
    padded with empty (background) slices at the missing positions for HD95, which
    keeps the true distances between slices, while Dice, sensitivity and specificity
    count only the slices given. Duplicate slice indices in a case raise ValueError.
    Keys are the case ids as Python values (int or str).
    """
    pred_labels, true_labels = _check_labels(pred_labels, true_labels)
    if pred_labels.ndim != 3:
        raise ValueError(f"expected (N, H, W) label slices, got shape {pred_labels.shape}")
    case_ids, slice_indices = np.asarray(case_ids), np.asarray(slice_indices)
    n = len(pred_labels)
    if case_ids.shape != (n,) or slice_indices.shape != (n,):
        raise ValueError(f"case_ids {case_ids.shape} and slice_indices "
                         f"{slice_indices.shape} must both be ({n},)")  # fmt: skip
    if not np.issubdtype(slice_indices.dtype, np.integer):
        raise ValueError(f"slice_indices must be integers, got dtype {slice_indices.dtype}")
    sampling = _sampling((slice_spacing, *_sampling(spacing, 2)), 3)
    out = {}
    for case in np.unique(case_ids):
        rows = np.flatnonzero(case_ids == case)
        rows = rows[np.argsort(slice_indices[rows], kind="stable")]
        pos = slice_indices[rows] - slice_indices[rows[0]]
        if np.any(np.diff(pos) == 0):
            raise ValueError(f"case {case.item()!r} has duplicate slice indices")
        pred, truth, observed = pred_labels[rows], true_labels[rows], None
        if pos[-1] + 1 != len(pos):  # gaps: place the slices at their true positions
            observed = pos
            pred = np.zeros((pos[-1] + 1, *pred.shape[1:]), pred.dtype)
            truth = np.zeros_like(pred)
            pred[pos], truth[pos] = pred_labels[rows], true_labels[rows]
        out[case.item()] = _scores(pred, truth, sampling, observed)
    return out


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


def summarise(rows, skip=("case_id", "slice_index")) -> dict:
    """Mean and standard deviation per numeric key over rows: {key: {"mean", "std", "n"}}.

    rows: list of dicts (e.g. from `slice_scores` or the values of `case_scores`).
    A key is summarised when every row's value for it is a real number (bool is
    not) or None; keys in `skip` and keys with any other value are left out.
    None and non-finite values are dropped, and n counts the values kept. The
    standard deviation is the population one (ddof=0, as np.std), NaN when n = 0.
    """
    keys = dict.fromkeys(k for row in rows for k in row if k not in skip)
    out = {}
    for key in keys:
        values = [row[key] for row in rows if row.get(key) is not None]
        if not all(_is_number(v) for v in values):
            continue
        v = np.asarray(values, np.float64)
        v = v[np.isfinite(v)]
        mean, std = (float(v.mean()), float(v.std())) if v.size else (np.nan, np.nan)
        out[key] = {"mean": mean, "std": std, "n": int(v.size)}
    return out
