"""Dice per region against hand-made cases and an independent computation."""

import numpy as np

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
