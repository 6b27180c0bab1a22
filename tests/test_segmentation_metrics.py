"""Segmentation metrics (Dice, HD95, sensitivity, specificity, per slice / per case)
against hand-made cases and independent computations."""

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from fuse4seg_jax.metrics import segmentation as sm


def test_dice_hand_cases_and_empty_conventions():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert sm.dice(a, b) == 1.0  # both empty
    b[0, 0] = True
    assert sm.dice(a, b) == 0.0  # one empty
    a[0, :2] = True  # |A| = 2, |B| = 1, overlap 1 -> 2/3
    assert np.isclose(sm.dice(a, b), 2 / 3)


def test_regions_follow_brats_nesting():
    truth = np.array([[0, 1, 2, 3]])
    pred = np.array([[0, 3, 2, 1]])  # NCR and ET swapped
    d = sm.dice_per_region(pred, truth)
    assert d["wt"] == 1.0 and d["tc"] == 1.0  # TC = {1, 3} unchanged by the swap
    assert d["et"] == 0.0


def test_per_case_matches_independent_computation():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, (12, 8, 8))
    pred = np.where(rng.random((12, 8, 8)) < 0.8, truth, rng.integers(0, 4, (12, 8, 8)))
    cases = np.repeat(np.arange(3), 4)
    per_case = sm.dice_per_case(pred, truth, cases)
    for c in range(3):
        p, t = pred[cases == c], truth[cases == c]
        for name, labels in (("wt", [1, 2, 3]), ("tc", [1, 3]), ("et", [3])):
            pm, tm = np.isin(p, labels), np.isin(t, labels)
            expected = 2 * (pm & tm).sum() / (pm.sum() + tm.sum())
            assert np.isclose(per_case[c][name], expected)
    means = sm.mean_dice(per_case)
    assert np.isclose(means["et"], np.mean([per_case[c]["et"] for c in range(3)]))


# --- HD95, sensitivity, specificity, per-slice / per-case scores -------------------------
# The references below are independent of the module: boundaries from each voxel's face
# neighbours (padding + np.roll, not binary erosion), distances by brute force over all
# pairs of boundary points (cdist on coordinates scaled by the spacing, not a distance
# transform), and the percentile by sorting and interpolating by hand.

REG = {"wt": (1, 2, 3), "tc": (1, 3), "et": (3,)}  # written out, not imported


def _ref_boundary(mask):
    """Voxels of `mask` with at least one face neighbour outside it (outside the array = 0)."""
    padded = np.pad(mask, 1)
    inner = tuple(slice(1, -1) for _ in range(mask.ndim))
    interior = mask.copy()
    for axis in range(mask.ndim):
        for step in (-1, 1):
            interior &= np.roll(padded, step, axis=axis)[inner]
    return mask & ~interior


def _ref_percentile95(values):
    s = np.sort(values)
    pos = 0.95 * (len(s) - 1)
    lo = int(np.floor(pos))
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _ref_hd95(p, g, spacing):
    if not p.any() and not g.any():
        return 0.0
    if not (p.any() and g.any()):
        return 373.0
    a = np.argwhere(_ref_boundary(p)) * np.asarray(spacing)
    b = np.argwhere(_ref_boundary(g)) * np.asarray(spacing)
    d = cdist(a, b)
    return _ref_percentile95(np.concatenate([d.min(axis=1), d.min(axis=0)]))


def _ellipsoid(shape, centre, radii):
    grid = np.indices(shape, dtype=np.float64)
    r = sum(((grid[i] - centre[i]) / radii[i]) ** 2 for i in range(len(shape)))
    return r <= 1.0


def _random_labels(rng, shape):
    """A nested tumour (oedema > necrosis > enhancing blobs) plus label noise."""
    c = rng.uniform(0.3, 0.7, len(shape)) * np.asarray(shape)
    r = rng.uniform(0.2, 0.35, len(shape)) * np.asarray(shape)
    labels = np.where(_ellipsoid(shape, c, r), 2, 0)
    labels[_ellipsoid(shape, c + rng.normal(0, 1, len(shape)), 0.6 * r)] = 1
    labels[_ellipsoid(shape, c + rng.normal(0, 1, len(shape)), 0.35 * r)] = 3
    noise = rng.random(shape) < 0.03
    labels[noise] = rng.integers(0, 4, noise.sum())
    return labels


def test_hd95_single_voxels_at_known_distance():
    a, b = np.zeros((8, 10), bool), np.zeros((8, 10), bool)
    a[2, 3], b[5, 7] = True, True
    assert sm.hd95(a, b) == pytest.approx(5.0)
    assert sm.hd95(a, b, (2.0, 0.5)) == pytest.approx(np.hypot(3 * 2.0, 4 * 0.5))
    a3, b3 = np.zeros((5, 6, 7), bool), np.zeros((5, 6, 7), bool)
    a3[0, 1, 2], b3[4, 5, 0] = True, True  # offsets (4, 4, -2) voxels
    expected = np.sqrt((4 * 1.0) ** 2 + (4 * 0.5) ** 2 + (2 * 2.0) ** 2)
    assert sm.hd95(a3, b3, (1.0, 0.5, 2.0)) == pytest.approx(expected)
    assert sm.hd95(a3, a3, (1.0, 0.5, 2.0)) == 0.0


@pytest.mark.parametrize("k", [1, 2, 3])
def test_hd95_squares_offset_by_k_pixels(k):
    # Identical 8x8 squares shifted by k columns: every boundary distance is at most k
    # columns, and the 6 interior pixels of each leading column (>5% of the pooled 56
    # distances) are exactly k columns away, so the 95th percentile is k * column spacing.
    a, b = np.zeros((16, 20), bool), np.zeros((16, 20), bool)
    a[4:12, 3:11] = True
    b[4:12, 3 + k : 11 + k] = True
    assert sm.hd95(a, b) == pytest.approx(k)
    assert sm.hd95(a, b, (0.5, 2.0)) == pytest.approx(2.0 * k)
    assert sm.hd95(b, a, (0.5, 2.0)) == pytest.approx(2.0 * k)  # symmetric
    assert sm.hd95(a, b, (0.5, 2.0)) == pytest.approx(_ref_hd95(a, b, (0.5, 2.0)))


def test_hd95_matches_brute_force_on_random_masks_2d_and_3d():
    rng = np.random.default_rng(1)
    cases = []
    for _ in range(4):  # noisy masks, many touching the array border
        cases.append((rng.random((17, 23)) < 0.3, rng.random((17, 23)) < 0.4, (0.7, 1.3)))
        shape = (9, 11, 13)
        cases.append((rng.random(shape) < 0.2, rng.random(shape) < 0.3, (1.0, 0.5, 2.0)))
    for _ in range(4):  # smooth blobs at different places
        shape = (14, 16, 12)
        p = _ellipsoid(shape, rng.uniform(3, 10, 3), rng.uniform(2, 6, 3))
        g = _ellipsoid(shape, rng.uniform(3, 10, 3), rng.uniform(2, 6, 3))
        cases.append((p, g, (1.0, 0.5, 2.0)))
        cases.append((p[7], g[7], (0.5, 2.0)))
    values = []
    for p, g, spacing in cases:
        got = sm.hd95(p, g, spacing)
        assert got == pytest.approx(_ref_hd95(p, g, spacing), rel=1e-9, abs=1e-12)
        values.append(got)
    assert len(set(np.round(values, 6))) > len(cases) // 2  # the cases are not all trivial


def test_hd95_empty_mask_conventions():
    empty, full = np.zeros((4, 5, 6), bool), np.zeros((4, 5, 6), bool)
    full[1:3, 1:3, 1:3] = True
    assert sm.hd95(empty, empty, (1.0, 0.5, 2.0)) == 0.0
    assert sm.hd95(full, empty) == sm.HD95_EMPTY == 373.0
    assert sm.hd95(empty, full) == 373.0


def test_hd95_rejects_bad_input():
    a = np.zeros((4, 4), bool)
    with pytest.raises(ValueError, match="shape"):
        sm.hd95(a, np.zeros((4, 5), bool))
    with pytest.raises(ValueError, match="spacing"):
        sm.hd95(a, a, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        sm.hd95(a, a, (1.0, 0.0))


def test_sensitivity_specificity_hand_cases():
    truth = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], bool)
    pred = np.array([1, 1, 1, 0, 1, 1, 0, 0, 0, 0], bool)
    assert sm.sensitivity(pred, truth) == pytest.approx(3 / 4)  # TP 3, FN 1
    assert sm.specificity(pred, truth) == pytest.approx(4 / 6)  # TN 4, FP 2
    empty, full = np.zeros(6, bool), np.ones(6, bool)
    some = np.array([1, 0, 0, 0, 0, 0], bool)
    assert sm.sensitivity(empty, empty) == 1.0  # nothing to find, nothing claimed
    assert sm.sensitivity(some, empty) == 0.0  # nothing to find, something claimed
    assert sm.sensitivity(empty, some) == 0.0
    assert sm.specificity(empty, full) == 1.0  # no negatives: no false positive possible
    assert sm.specificity(some, full) == 1.0
    assert sm.specificity(full, empty) == 0.0
    assert sm.specificity(empty, empty) == 1.0


def test_region_scores_match_independent_computation():
    rng = np.random.default_rng(2)
    truth = _random_labels(rng, (10, 18, 16))
    pred = np.where(rng.random(truth.shape) < 0.9, truth, _random_labels(rng, truth.shape))
    spacing = (2.0, 0.8, 1.1)
    got = sm.region_scores(pred, truth, spacing)
    assert set(got) == {f"{m}_{r}" for m in ("dice", "hd95", "sens", "spec") for r in REG}
    for r, labels in REG.items():
        p, t = np.isin(pred, labels), np.isin(truth, labels)
        tp, fp, fn = (p & t).sum(), (p & ~t).sum(), (~p & t).sum()
        tn = p.size - tp - fp - fn
        assert got[f"dice_{r}"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
        assert got[f"sens_{r}"] == pytest.approx(tp / (tp + fn))
        assert got[f"spec_{r}"] == pytest.approx(tn / (tn + fp))
        assert got[f"hd95_{r}"] == pytest.approx(_ref_hd95(p, t, spacing))
    assert all(0 < got[f"dice_{r}"] < 1 for r in REG)  # a real, imperfect prediction
    assert all(0 < got[f"hd95_{r}"] < 373 for r in REG)


def test_region_scores_reject_unknown_labels_and_shape_mismatch():
    a = np.zeros((3, 4), int)
    with pytest.raises(ValueError, match=r"labels \[4\] outside 0..3"):
        sm.region_scores(a, np.full((3, 4), 4))
    with pytest.raises(ValueError, match=r"prediction holds labels \[-1\]"):
        sm.region_scores(np.full((3, 4), -1), a)
    with pytest.raises(ValueError, match="shape"):
        sm.region_scores(a, np.zeros((3, 5), int))
    with pytest.raises(ValueError, match="shape"):
        sm.slice_scores(a, a)  # not (N, H, W)


def test_slice_scores_per_slice_and_shared_spacing():
    rng = np.random.default_rng(3)
    truth = _random_labels(rng, (5, 20, 20))
    pred = np.where(rng.random(truth.shape) < 0.85, truth, 0)
    pred[4] = 0  # one slice with an empty prediction
    spacing = rng.uniform(0.5, 2.0, (5, 2))
    rows = sm.slice_scores(pred, truth, spacing)
    assert len(rows) == 5
    for i, row in enumerate(rows):
        assert row == sm.region_scores(pred[i], truth[i], spacing[i])
        for r, labels in REG.items():
            p, t = np.isin(pred[i], labels), np.isin(truth[i], labels)
            assert row[f"hd95_{r}"] == pytest.approx(_ref_hd95(p, t, spacing[i]))
    assert rows[4]["hd95_wt"] == 373.0 and rows[4]["dice_wt"] == 0.0
    shared = sm.slice_scores(pred, truth, (0.5, 2.0))
    assert shared[1] == sm.region_scores(pred[1], truth[1], (0.5, 2.0))
    assert sm.slice_scores(pred, truth)[2] == sm.region_scores(pred[2], truth[2])
    with pytest.raises(ValueError, match="spacing"):
        sm.slice_scores(pred, truth, np.ones((4, 2)))


def test_case_scores_stacking_equals_direct_3d_computation():
    rng = np.random.default_rng(4)
    vols = {"a": _random_labels(rng, (6, 16, 16)), "b": _random_labels(rng, (4, 16, 16))}
    preds = {c: np.where(rng.random(v.shape) < 0.9, v, 0) for c, v in vols.items()}
    ids = np.array(["a"] * 6 + ["b"] * 4)
    idx = np.concatenate([np.arange(10, 16), np.arange(4)])
    order = rng.permutation(10)  # slices arrive shuffled across cases
    pred = np.concatenate([preds["a"], preds["b"]])[order]
    truth = np.concatenate([vols["a"], vols["b"]])[order]
    got = sm.case_scores(pred, truth, ids[order], idx[order], spacing=(0.8, 1.2),
                         slice_spacing=2.5)  # fmt: skip
    assert set(got) == {"a", "b"} and all(isinstance(c, str) for c in got)
    for c in ("a", "b"):
        assert got[c] == sm.region_scores(preds[c], vols[c], (2.5, 0.8, 1.2))
        wt_p, wt_t = np.isin(preds[c], (1, 2, 3)), np.isin(vols[c], (1, 2, 3))
        assert got[c]["hd95_wt"] == pytest.approx(_ref_hd95(wt_p, wt_t, (2.5, 0.8, 1.2)))


def test_case_scores_places_slices_at_their_indices_when_not_contiguous():
    truth = np.zeros((3, 8, 8), int)
    pred = np.zeros((3, 8, 8), int)
    truth[0, 4, 4] = 3  # slice index 3
    pred[2, 4, 4] = 3  # slice index 7: 4 slices away, two of them missing
    pred[1, 2, 2] = truth[1, 2, 2] = 2
    got = sm.case_scores(pred, truth, [7, 7, 7], [3, 4, 7], slice_spacing=2.0)[7]
    assert got["hd95_et"] == pytest.approx(4 * 2.0)  # naive stacking would give 2 * 2.0
    vol_p, vol_t = np.zeros((5, 8, 8), int), np.zeros((5, 8, 8), int)
    vol_p[[0, 1, 4]], vol_t[[0, 1, 4]] = pred, truth
    assert got["hd95_wt"] == sm.hd95(vol_p > 0, vol_t > 0, (2.0, 1.0, 1.0))
    # Dice / sensitivity / specificity count only the slices given (3 * 64 voxels).
    assert got["dice_et"] == 0.0 and got["dice_wt"] == pytest.approx(2 * 1 / (2 + 2))
    assert got["spec_et"] == pytest.approx((3 * 64 - 2) / (3 * 64 - 1))
    with pytest.raises(ValueError, match="duplicate slice indices"):
        sm.case_scores(pred, truth, [7, 7, 7], [3, 4, 4])


def test_summarise_mean_and_population_sd_over_numeric_keys():
    rows = [
        {"case_id": "x", "level": "case", "dice_wt": 0.5, "hd95_wt": 2.0, "ok": True},
        {"case_id": "y", "level": "case", "dice_wt": 0.7, "hd95_wt": None, "ok": False},
        {"case_id": "z", "level": "case", "dice_wt": np.float32(0.9), "hd95_wt": 6.0},
    ]
    s = sm.summarise(rows)
    assert set(s) == {"dice_wt", "hd95_wt"}  # strings, bools and skipped ids left out
    assert s["dice_wt"]["mean"] == pytest.approx(0.7)
    assert s["dice_wt"]["std"] == pytest.approx(np.std([0.5, 0.7, 0.9]))  # ddof 0
    assert s["dice_wt"]["n"] == 3
    assert s["hd95_wt"] == {"mean": 4.0, "std": 2.0, "n": 2}  # None dropped
    assert sm.summarise([]) == {}
