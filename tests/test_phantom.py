"""Tests for the brain-tumour phantom (fuse4seg_jax/data/phantom.py, phantom_nifti.py).

Visibility of a tumour part in a modality is a contrast-to-variability ratio
|median(part) - median(reference)| / pooled std, with the reference chosen per part:
- oedema (ED): the same voxels in the healthy twin (same subject, bias and noise, no
  tumour; `make_case(with_tumour=False)`), after an affine fit of the twin to the case
  on normal brain (normalisation differs between the two). This isolates what the
  oedema changes; a ring of neighbouring brain mixes in CSF and cortex and is only
  used as a coarse check on the 2D slices;
- enhancing rim (ET): the adjacent necrosis and the adjacent oedema (the rim is only
  delineated if both its borders are visible, so the smaller contrast counts);
- necrosis (NCR): the adjacent enhancing rim.
"""

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from fuse4seg_jax.data import phantom, phantom_subject

VISIBLE, INVISIBLE = 1.5, 0.7
IN_PLANE = np.zeros((3, 3, 3), bool)
IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)


def _cnr(x, a, b):
    return abs(np.median(x[a]) - np.median(x[b])) / np.sqrt((x[a].var() + x[b].var()) / 2)


def _near(a, b, structure):
    return a & ndimage.binary_dilation(b, structure=structure, iterations=2)


def _core_visibility(images, label, structure=None):
    """{"ET": (M,), "NCR": (M,)} visibility of the rim and of necrosis against their neighbours."""
    ncr, ed, et = label == 1, label == 2, label == 3
    pairs = {
        "ET": [
            (_near(et, ncr, structure), _near(ncr, et, structure)),
            (_near(et, ed, structure), _near(ed, et, structure)),
        ],
        "NCR": [(ncr, _near(et, ncr, structure))],
    }
    out = {}
    for part, regions in pairs.items():
        assert all(a.sum() >= 10 and b.sum() >= 10 for a, b in regions), part
        out[part] = np.array(
            [min(_cnr(images[..., j], a, b) for a, b in regions) for j in range(images.shape[-1])]
        )
    return out


def _oedema_visibility(case, twin):
    label, mask = case["label"], case["mask"] > 0
    ed, normal = label == 2, mask & (label == 0)
    vis = []
    for j in range(case["modalities"].shape[-1]):
        x, y = case["modalities"][..., j], twin["modalities"][..., j]
        fit = normal & (np.minimum(x, y) > 0.02) & (np.maximum(x, y) < 0.98)  # unclipped voxels
        a, b = np.polyfit(y[fit], x[fit], 1)
        vis.append(abs(np.median(x[ed] - (a * y[ed] + b))) / x[ed].std())
    return np.array(vis)


@pytest.fixture(scope="module")
def cases():
    """Three 3D subjects with necrosis, each with its healthy twin."""
    out = []
    for seed in (0, 1, 3):
        case = phantom.make_case(seed)
        assert (case["label"] == 1).any(), f"seed {seed} was expected to have necrosis"
        out.append((case, phantom.make_case(seed, with_tumour=False)))
    return out


@pytest.fixture(scope="module")
def dataset():
    return phantom.make_dataset(0, num_cases=24, slices_per_case=6, image_size=64)


def test_case_shapes_dtypes_ranges(cases):
    case = cases[0][0]
    assert case["modalities"].shape == (96, 96, 64, 4) and case["modalities"].dtype == np.float32
    assert case["label"].shape == (96, 96, 64) and case["label"].dtype == np.int32
    assert case["mask"].dtype == np.float32 and set(np.unique(case["mask"])) == {0.0, 1.0}
    assert case["spacing"].dtype == np.float32 and case["spacing"].tolist() == [2.0, 2.0, 2.0]
    assert case["affine"].shape == (4, 4) and np.allclose(np.diag(case["affine"])[:3], 2.0)
    assert 0.0 <= case["modalities"].min() and case["modalities"].max() <= 1.0
    assert set(np.unique(case["label"])) == {0, 1, 2, 3}
    outside = case["mask"] == 0
    assert (case["modalities"][outside] == 0).all() and (case["label"][outside] == 0).all()
    brain_ml = case["mask"].sum() * 8e-3
    assert 900 < brain_ml < 1600, brain_ml  # about an adult brain


def test_dataset_batch_convention(dataset):
    n = 24 * 6
    assert (
        dataset["modalities"].shape == (n, 64, 64, 2) and dataset["modalities"].dtype == np.float32
    )
    assert dataset["label"].shape == (n, 64, 64) and dataset["label"].dtype == np.int32
    assert dataset["mask"].shape == (n, 64, 64) and dataset["mask"].dtype == np.float32
    for key in ("case_id", "slice_index"):
        assert dataset[key].shape == (n,) and dataset[key].dtype == np.int32
    assert np.array_equal(dataset["case_id"], np.repeat(np.arange(24), 6))
    assert 0.0 <= dataset["modalities"].min() and dataset["modalities"].max() <= 1.0
    assert set(np.unique(dataset["label"])) <= {0, 1, 2, 3}
    outside = dataset["mask"] == 0
    assert (dataset["modalities"][outside] == 0).all() and (dataset["label"][outside] == 0).all()
    present = np.array([[(lab == p).any() for p in (1, 2, 3)] for lab in dataset["label"]])
    assert present[:, 1:].all(), "every slice goes through the tumour"
    assert present.all(axis=1).mean() > 0.6, present.mean(axis=0)
    for c in range(24):  # distinct planes per case
        idx = dataset["slice_index"][dataset["case_id"] == c]
        assert len(set(idx.tolist())) == 6


def test_dataset_matches_make_slices(dataset):
    one = phantom.make_slices(phantom.case_seed(0, 5), num_slices=6)
    sel = dataset["case_id"] == 5
    for key in ("modalities", "label", "mask", "slice_index"):
        np.testing.assert_array_equal(dataset[key][sel], one[key])


def test_determinism():
    a = phantom.make_slices(7, num_slices=4, image_size=32, modalities=phantom.MODALITIES)
    b = phantom.make_slices(7, num_slices=4, image_size=32, modalities=phantom.MODALITIES)
    c = phantom.make_slices(8, num_slices=4, image_size=32, modalities=phantom.MODALITIES)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["modalities"], c["modalities"])
    d1 = phantom.make_dataset(3, num_cases=2, slices_per_case=2, image_size=32)
    d2 = phantom.make_dataset(3, num_cases=2, slices_per_case=2, image_size=32)
    d3 = phantom.make_dataset(4, num_cases=2, slices_per_case=2, image_size=32)
    for key in d1:
        np.testing.assert_array_equal(d1[key], d2[key])
    assert not np.array_equal(d1["label"], d3["label"])


def test_modality_subsets_are_consistent():
    full = phantom.make_slices(11, num_slices=3, image_size=32, modalities=phantom.MODALITIES)
    sub = phantom.make_slices(11, num_slices=3, image_size=32, modalities=("flair", "t1"))
    np.testing.assert_array_equal(sub["modalities"], full["modalities"][..., [3, 0]])
    np.testing.assert_array_equal(sub["label"], full["label"])


@pytest.mark.parametrize("bad", [("t1ce", "pd"), ("t1ce", "t1ce"), (), "t1ce"])
def test_bad_modalities_raise(bad):
    with pytest.raises(ValueError, match="modalit"):
        phantom.make_slices(0, num_slices=2, image_size=32, modalities=bad)


def test_each_part_visible_in_some_but_not_all_modalities(cases):
    t1, t1ce, t2, flair = range(4)
    for case, twin in cases:
        vis = _core_visibility(case["modalities"], case["label"])
        vis["ED"] = _oedema_visibility(case, twin)
        for part, v in vis.items():
            assert (v > VISIBLE).any() and (v < INVISIBLE).any(), (part, v)
        # the default pair: oedema only in FLAIR, rim and necrosis only in T1ce
        assert vis["ED"][flair] > VISIBLE and vis["ED"][t1ce] < INVISIBLE, vis["ED"]
        for part in ("ET", "NCR"):
            assert vis[part][t1ce] > VISIBLE and vis[part][flair] < INVISIBLE, (part, vis[part])
        # no single modality shows every part
        table = np.stack([vis["ED"], vis["ET"], vis["NCR"]])
        assert not (table > VISIBLE).all(axis=0).any(), table
        assert vis["ET"][t1] < INVISIBLE and vis["ET"][t2] < INVISIBLE, vis["ET"]


def test_default_pair_visibility_on_slices():
    d = phantom.make_slices(1, num_slices=6, image_size=64)  # ("t1ce", "flair")
    vis = _core_visibility(d["modalities"], d["label"], structure=IN_PLANE)
    for part in ("ET", "NCR"):
        assert vis[part][0] > VISIBLE and vis[part][1] < INVISIBLE, (part, vis[part])
    wt = d["label"] > 0
    ring = ndimage.binary_dilation(wt, IN_PLANE, iterations=4) & ~ndimage.binary_dilation(
        wt, IN_PLANE, iterations=1
    )
    ring &= d["mask"] > 0
    ed = [_cnr(d["modalities"][..., j], d["label"] == 2, ring) for j in range(2)]
    assert ed[1] > VISIBLE and ed[1] > 3 * ed[0], ed


def test_sizes_and_geometry():
    for seed in range(20):
        t = phantom_subject.sample_subject(np.random.default_rng(seed))["tumour"]
        assert 6.5 <= t["r_tc"] - max(t["r_ncr"], 0.0) or not t["necrotic"]
        if t["necrotic"]:
            assert 0.35 - 1e-9 <= t["r_ncr"] / t["r_tc"] <= 0.65 + 1e-9
            assert 6.5 - 1e-9 <= t["r_tc"] - t["r_ncr"] <= 9.0 + 1e-9
        assert 6.0 - 1e-9 <= t["r_wt"] - t["r_tc"] <= 20.0 + 1e-9
        assert 16.0 <= t["r_wt"] <= 40.0 + 1e-9


@pytest.mark.parametrize("convention", ["2021", "2023"])
def test_write_brats_case(tmp_path, convention):
    case = phantom.make_case(1, shape=(40, 48, 32), spacing=(4.0, 4.0, 4.0))
    assert set(np.unique(case["label"])) == {0, 1, 2, 3}
    folder = phantom.write_brats_case(tmp_path, "Phantom_002", case, convention=convention)
    sep, names, et = {
        "2021": ("_", ("t1", "t1ce", "t2", "flair"), 4),
        "2023": ("-", ("t1n", "t1c", "t2w", "t2f"), 3),
    }[convention]
    expected = {f"Phantom_002{sep}{n}.nii.gz" for n in names + ("seg",)}
    assert {p.name for p in folder.iterdir()} == expected  # no temporary files left
    for i, n in enumerate(names):
        img = nib.load(folder / f"Phantom_002{sep}{n}.nii.gz")
        data = np.asarray(img.dataobj)
        assert data.shape == (40, 48, 32) and data.dtype == np.float32
        np.testing.assert_allclose(img.affine, case["affine"])
        np.testing.assert_allclose(img.header.get_zooms(), (4.0, 4.0, 4.0))
        np.testing.assert_allclose(data, case["modalities"][..., i] * 1000.0, rtol=1e-6)
    seg_img = nib.load(folder / f"Phantom_002{sep}seg.nii.gz")
    seg = np.asarray(seg_img.dataobj)
    assert seg.dtype == np.uint8
    np.testing.assert_allclose(seg_img.affine, case["affine"])
    assert set(np.unique(seg)) == {0, 1, 2, et}
    np.testing.assert_array_equal(np.where(seg == et, 3, seg), case["label"])


def test_write_brats_case_needs_all_modalities(tmp_path):
    case = phantom.make_case(
        2, shape=(16, 16, 16), spacing=(8.0, 8.0, 8.0), modalities=("t1ce", "flair")
    )
    with pytest.raises(ValueError, match="all four modalities"):
        phantom.write_brats_case(tmp_path, "c", case)
    case = phantom.make_case(2, shape=(16, 16, 16), spacing=(8.0, 8.0, 8.0))
    with pytest.raises(ValueError, match="convention"):
        phantom.write_brats_case(tmp_path, "c", case, convention="2019")


def test_a_volume_normalised_on_its_slice_planes_looks_like_its_training_slices():
    """Demo case 167: rendered whole and normalised over its volume, its T1ce is over 20%
    brighter at the planes of its training slices than those slices; normalised on those
    planes (what the volume protocol does) the two agree within 2% (noise samples differ)."""
    seed = phantom.case_seed(0, 167)
    slices = phantom.make_slices(seed, num_slices=8, image_size=64)
    planes = phantom.slice_planes(seed, num_slices=8, image_size=64)
    np.testing.assert_array_equal(planes, slices["slice_index"])
    brain = slices["mask"] > 0
    ratios = []
    for reference in (None, planes):
        case = phantom.make_case(
            seed, shape=(64,) * 3, spacing=(200 / 64,) * 3, modalities=("t1ce", "flair"),
            reference_planes=reference,
        )  # fmt: skip
        same_planes = np.moveaxis(case["modalities"][:, :, planes], 2, 0)
        np.testing.assert_array_equal(np.moveaxis(case["label"][:, :, planes], 2, 0),
                                      slices["label"])  # fmt: skip
        ratios.append(
            same_planes[..., 0][brain].mean() / slices["modalities"][..., 0][brain].mean()
        )
    assert ratios[0] > 1.2 and abs(ratios[1] - 1) < 0.02
