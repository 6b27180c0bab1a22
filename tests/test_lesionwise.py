"""BraTS 2023 lesion-wise Dice / HD95 (fuse4seg_jax/metrics/lesionwise.py).

Hand-made cases use cubes on a 1 mm grid with the BraTS-GLI parameters (dilation 3,
lesions of <= 50 mm^3 dropped, 374 mm per false positive); expected values are worked
out in the comments. A brute-force reimplementation (breadth-first component search,
dilation by explicit shifts, no cropping) is compared with the module on random blobs.
"""

import collections
import itertools

import numpy as np
import pytest
from scipy import ndimage

from fuse4seg_jax.metrics import lesionwise
from fuse4seg_jax.metrics import segmentation as seg_metrics

SHAPE = (40, 24, 24)


def cube(labels, x0, x1, y0=2, y1=6, z0=2, z1=6, value=2):
    labels[x0:x1, y0:y1, z0:z1] = value
    return labels


def empty():
    return np.zeros(SHAPE, np.int32)


def wt(scores):
    return {k: scores[f"lw_{k}_wt"] for k in ("dice", "hd95", "tp", "fn", "fp")}


def test_constants_and_keys():
    assert (lesionwise.DILATION, lesionwise.MIN_VOLUME, lesionwise.HD95_FP) == (3, 50, 374.0)
    scores = lesionwise.lesion_scores(empty(), empty())
    assert list(scores) == [
        f"lw_{m}_{r}" for m in ("dice", "hd95", "tp", "fn", "fp") for r in ("wt", "tc", "et")
    ]
    assert all(isinstance(scores[f"lw_{m}_wt"], int) for m in ("tp", "fn", "fp"))


def test_one_lesion_found_one_missed():
    # GT: two 4x4x4 cubes (64 voxels each) 14 voxels apart (too far to merge).
    # Prediction: the first exactly. Lesion 1: Dice 1, HD95 0; lesion 2 missed: Dice 0,
    # HD95 374. No FP. Lesion-wise Dice (1 + 0) / 2, HD95 (0 + 374) / 2.
    truth = cube(cube(empty(), 2, 6), 20, 24)
    pred = cube(empty(), 2, 6)
    scores = lesionwise.lesion_scores(pred, truth)
    assert wt(scores) == {"dice": 0.5, "hd95": 187.0, "tp": 1, "fn": 1, "fp": 0}
    # Labels 2 are oedema: TC and ET are empty in both maps -> Dice 1, HD95 0, no lesions.
    for r in ("tc", "et"):
        assert (scores[f"lw_dice_{r}"], scores[f"lw_hd95_{r}"]) == (1.0, 0.0)
        assert scores[f"lw_tp_{r}"] == scores[f"lw_fn_{r}"] == scores[f"lw_fp_{r}"] == 0


def test_false_positive_component_of_any_size():
    # GT: one cube found exactly (Dice 1, HD95 0). Prediction adds a 2x2x2 cube (8 voxels)
    # 20 voxels away: a FP, counted although tiny (only GT lesions are size-filtered).
    # Lesion-wise Dice 1 / (1 + 1), HD95 (0 + 374) / 2.
    truth = cube(empty(), 2, 6)
    pred = cube(cube(empty(), 2, 6), 26, 28, 2, 4, 2, 4)
    assert wt(lesionwise.lesion_scores(pred, truth)) == {
        "dice": 0.5, "hd95": 187.0, "tp": 1, "fn": 0, "fp": 1
    }  # fmt: skip


def test_split_prediction_counts_once_and_scores_the_union():
    # GT: a 6x4x4 block (96 voxels). Prediction: the block without its x = 5 slab, i.e.
    # two components of 3x4x4 = 48 and 2x4x4 = 32 voxels, both touching the GT lesion:
    # one TP lesion, no FP, scored on the union (80 voxels, all inside the GT):
    # Dice = 2 * 80 / (96 + 80) = 10 / 11. HD95: that of the union against the block.
    truth = cube(empty(), 2, 8)
    pred = truth.copy()
    pred[5] = 0
    assert ndimage.label(pred > 0, np.ones((3, 3, 3)))[1] == 2
    got = wt(lesionwise.lesion_scores(pred, truth))
    assert got["dice"] == pytest.approx(10 / 11)
    assert got["hd95"] == pytest.approx(seg_metrics.hd95(pred > 0, truth > 0))
    assert got["hd95"] > 0
    assert (got["tp"], got["fn"], got["fp"]) == (1, 0, 0)


def test_lesions_at_or_under_the_volume_threshold_are_ignored():
    # GT: a 64-voxel cube (found) and a 5x5x2 = 50-voxel slab (missed). At 1 mm the slab
    # has 50 mm^3 <= 50: dropped, so only the found cube counts: Dice 1, HD95 0.
    truth = cube(cube(empty(), 2, 6), 20, 25, 2, 7, 2, 4)
    pred = cube(empty(), 2, 6)
    assert wt(lesionwise.lesion_scores(pred, truth)) == {
        "dice": 1.0, "hd95": 0.0, "tp": 1, "fn": 0, "fp": 0
    }  # fmt: skip
    # One voxel more (51 voxels) and it counts as a missed lesion: (1 + 0) / 2.
    truth[25, 2, 2] = 2
    assert wt(lesionwise.lesion_scores(pred, truth))["dice"] == 0.5
    # The threshold is in mm^3: a 3x3x3 cube (27 voxels) is 216 mm^3 at 2 mm spacing.
    small = cube(cube(empty(), 2, 6), 20, 23, 2, 5, 2, 5)
    assert wt(lesionwise.lesion_scores(pred, small))["fn"] == 0
    assert wt(lesionwise.lesion_scores(pred, small, spacing=2.0))["fn"] == 1


def test_prediction_of_an_ignored_lesion_is_not_a_false_positive():
    # A predicted component touching a dropped (small) GT lesion is matched, so it is
    # neither scored nor a FP; with no kept lesion and no FP the result is 1 / 0.
    truth = cube(empty(), 20, 23, 2, 5, 2, 5)  # 27 voxels
    pred = cube(empty(), 20, 22, 2, 4, 2, 4)
    assert wt(lesionwise.lesion_scores(pred, truth)) == {
        "dice": 1.0, "hd95": 0.0, "tp": 0, "fn": 0, "fp": 0
    }  # fmt: skip


def test_close_lesions_are_merged_by_dilation():
    # Two 4x4x4 GT cubes with g empty x-slabs between them. Dilated 3 times each grows by
    # 3 voxels along x, so the dilations touch (26-connectivity) for g <= 6.
    # Merged (g = 6): one 128-voxel lesion; prediction = the first cube (64 voxels):
    # Dice = 2 * 64 / (128 + 64) = 2 / 3, one TP. Apart (g = 7): Dice (1 + 0) / 2.
    pred = cube(empty(), 2, 6)
    merged = cube(cube(empty(), 2, 6), 12, 16)
    apart = cube(cube(empty(), 2, 6), 13, 17)
    got = wt(lesionwise.lesion_scores(pred, merged))
    assert got["dice"] == pytest.approx(2 / 3)
    assert (got["tp"], got["fn"]) == (1, 0)
    got = wt(lesionwise.lesion_scores(pred, apart))
    assert (got["dice"], got["tp"], got["fn"]) == (0.5, 1, 1)
    # Without dilation, cubes that touch only at a corner are still one 26-connected lesion.
    corner = cube(cube(empty(), 2, 6), 6, 10, 6, 10, 6, 10)
    got = wt(lesionwise.lesion_scores(pred, corner, dilation=0))
    assert got["dice"] == pytest.approx(2 / 3)
    assert (got["tp"], got["fn"]) == (1, 0)


def test_a_prediction_near_but_outside_the_lesion_matches_it():
    # The GT cube spans x = 2..5; dilated 3 times it reaches x = 8. A predicted cube from
    # x = 8 (two empty slabs between) is a TP of Dice 0; from x = 9 (three empty slabs) it
    # is out of reach: a FP, and the lesion a FN.
    truth = cube(empty(), 2, 6)
    near, far = cube(empty(), 8, 12), cube(empty(), 9, 13)
    got = wt(lesionwise.lesion_scores(near, truth))
    assert (got["dice"], got["tp"], got["fn"], got["fp"]) == (0.0, 1, 0, 0)
    assert got["hd95"] == pytest.approx(seg_metrics.hd95(near > 0, truth > 0))
    got = wt(lesionwise.lesion_scores(far, truth))
    assert (got["dice"], got["hd95"], got["tp"], got["fn"], got["fp"]) == (0.0, 374.0, 0, 1, 1)


def test_empty_cases():
    # No GT lesion and no prediction: Dice 1, HD95 0 in every region.
    scores = lesionwise.lesion_scores(empty(), empty())
    for r in ("wt", "tc", "et"):
        assert (scores[f"lw_dice_{r}"], scores[f"lw_hd95_{r}"]) == (1.0, 0.0)
    # No GT but one predicted lesion: one FP, Dice 0 / 1, HD95 374 / 1.
    pred = cube(empty(), 2, 6, value=3)
    scores = lesionwise.lesion_scores(pred, empty())
    for r in ("wt", "tc", "et"):
        assert (scores[f"lw_dice_{r}"], scores[f"lw_hd95_{r}"], scores[f"lw_fp_{r}"]) == (
            0.0, 374.0, 1
        )  # fmt: skip


def test_regions_follow_the_labels():
    # GT: an enhancing cube (3); prediction: the same cube as necrosis (1). WT and TC
    # match exactly; ET is a missed lesion with no prediction: Dice 0, HD95 374.
    truth, pred = cube(empty(), 2, 6, value=3), cube(empty(), 2, 6, value=1)
    scores = lesionwise.lesion_scores(pred, truth)
    assert (scores["lw_dice_wt"], scores["lw_dice_tc"], scores["lw_dice_et"]) == (1.0, 1.0, 0.0)
    assert (scores["lw_hd95_tc"], scores["lw_hd95_et"], scores["lw_fn_et"]) == (0.0, 374.0, 1)


def test_bad_inputs():
    with pytest.raises(ValueError, match="outside 0..3"):
        lesionwise.lesion_scores(cube(empty(), 2, 6, value=4), empty())
    far_off = empty()
    far_off[-1, -1, -1] = -1  # away from the tumour: the crop must still hold it
    with pytest.raises(ValueError, match="outside 0..3"):
        lesionwise.lesion_scores(far_off, cube(empty(), 2, 6))
    with pytest.raises(ValueError, match="3D"):
        lesionwise.lesion_scores(np.zeros((8, 8), int), np.zeros((8, 8), int))
    with pytest.raises(ValueError, match="shape"):
        lesionwise.lesion_scores(empty(), np.zeros((8, 8, 8), int))
    with pytest.raises(ValueError, match="spacing"):
        lesionwise.lesion_scores(empty(), empty(), spacing=(1, 0, 1))
    with pytest.raises(ValueError, match="dilation"):
        lesionwise.lesion_scores(empty(), empty(), dilation=-1)


# ---- brute-force reference, written from the definition -------------------------------

NEIGHBOURS_26 = [d for d in itertools.product((-1, 0, 1), repeat=3) if d != (0, 0, 0)]
ELEMENT_18 = [d for d in itertools.product((-1, 0, 1), repeat=3) if sum(map(abs, d)) <= 2]


def bfs_components(mask):
    """26-connected components by breadth-first search: int array, 1..n."""
    out = np.zeros(mask.shape, np.int64)
    n = 0
    for start in zip(*np.nonzero(mask), strict=True):
        if out[start]:
            continue
        n += 1
        out[start] = n
        queue = collections.deque([start])
        while queue:
            v = queue.popleft()
            for d in NEIGHBOURS_26:
                w = tuple(a + b for a, b in zip(v, d, strict=True))
                if all(0 <= c < s for c, s in zip(w, mask.shape, strict=True)):
                    if mask[w] and not out[w]:
                        out[w] = n
                        queue.append(w)
    return out, n


def shift_dilate(mask, times):
    """Dilation by the 18-neighbourhood via explicit shifts of a zero-padded copy."""
    for _ in range(times):
        padded = np.pad(mask, 1)
        grown = np.zeros_like(mask)
        for dx, dy, dz in ELEMENT_18:
            grown |= padded[1 + dx : 1 + dx + mask.shape[0], 1 + dy : 1 + dy + mask.shape[1],
                            1 + dz : 1 + dz + mask.shape[2]]  # fmt: skip
        mask = grown
    return mask


def reference_region(pred, truth, spacing, dilation, min_volume):
    groups, n_groups = bfs_components(shift_dilate(truth, dilation))
    pred_cc, n_pred = bfs_components(pred)
    used, dices, hds, tp, fn = set(), [], [], 0, 0
    for k in range(1, n_groups + 1):
        lesion = truth & (groups == k)
        touching = set(np.unique(pred_cc[shift_dilate(lesion, dilation)]).tolist()) - {0}
        used |= touching
        if lesion.sum() * np.prod(spacing) <= min_volume:
            continue
        if not touching:
            dices.append(0.0)
            hds.append(374.0)
            fn += 1
            continue
        found = np.isin(pred_cc, sorted(touching))
        dices.append(2 * (found & lesion).sum() / (found.sum() + lesion.sum()))
        hds.append(seg_metrics.hd95(found, lesion, spacing))
        tp += 1
    fp = n_pred - len(used)
    if not dices and not fp:
        return {"dice": 1.0, "hd95": 0.0, "tp": 0, "fn": 0, "fp": 0}
    return {
        "dice": sum(dices) / (len(dices) + fp),
        "hd95": (sum(hds) + 374.0 * fp) / (len(dices) + fp),
        "tp": tp,
        "fn": fn,
        "fp": fp,
    }


def blobby_labels(rng, shape, level):
    """Nested blobs: smoothed noise thresholded at three levels -> labels 2 < 1 < 3."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), 1.6)
    field /= field.std()
    labels = np.zeros(shape, np.int32)
    labels[field > level] = 2
    labels[field > level + 0.6] = 1
    labels[field > level + 1.1] = 3
    return labels


@pytest.mark.parametrize("seed", range(5))
def test_matches_brute_force_reference_on_random_blobs(seed):
    rng = np.random.default_rng(seed)
    shape = (26, 22, 18)
    truth = blobby_labels(rng, shape, 1.5)
    pred = truth.copy()
    # Perturb: drop some blobs, add others, shift a few voxels' labels.
    noise = blobby_labels(rng, shape, 1.9)
    pred[noise > 0] = noise[noise > 0]
    pred[blobby_labels(rng, shape, 1.7) > 0] = 0
    spacing = (1.0, 1.2, 0.9)
    dilation = [1, 2, 3, 0, 3][seed]
    min_volume = [20.0, 10.0, 50.0, 5.0, 0.0][seed]
    got = lesionwise.lesion_scores(pred, truth, spacing, dilation=dilation, min_volume=min_volume)
    n_lesions = 0
    for region, labels in (("wt", (1, 2, 3)), ("tc", (1, 3)), ("et", (3,))):
        ref = reference_region(
            np.isin(pred, labels), np.isin(truth, labels), spacing, dilation, min_volume
        )
        n_lesions += ref["tp"] + ref["fn"] + ref["fp"]
        for m in ("tp", "fn", "fp"):
            assert got[f"lw_{m}_{region}"] == ref[m], (region, m)
        assert got[f"lw_dice_{region}"] == pytest.approx(ref["dice"], abs=1e-12), region
        assert got[f"lw_hd95_{region}"] == pytest.approx(ref["hd95"], abs=1e-9), region
    assert n_lesions >= 6  # the volumes are not trivially empty
