"""BraTS reader: phantom cases written as BraTS folders (both conventions) read back, and
one test per kind of bad input (DataError naming the file and the problem)."""

import pathlib
import shutil

import nibabel as nib
import numpy as np
import pytest

from fuse4seg_jax.data import brats, phantom
from fuse4seg_jax.data.errors import DataError

SHAPE, SPACING = (48, 48, 24), (4.0, 4.0, 6.0)


@pytest.fixture(scope="module")
def case():
    return phantom.make_case(0, shape=SHAPE, spacing=SPACING)


def write(root, case, convention="2021", name=None):
    name = name or f"Case{convention}_001"
    return phantom.write_brats_case(root, name, case, convention=convention)


def path_of(folder: pathlib.Path, convention, name):
    return folder / brats.file_name(folder.name, convention, name)


def rewrite(path, data, affine=None):
    """Replace a file's data (and optionally affine), keeping its affine otherwise."""
    old = nib.load(str(path))
    aff = old.affine if affine is None else affine
    nib.save(nib.Nifti1Image(np.asarray(data), aff), str(path))


def load(path):
    return np.asanyarray(nib.load(str(path)).dataobj)


# --- reading good cases ---------------------------------------------------------------


@pytest.mark.parametrize("convention", ["2021", "2023"])
def test_read_back(tmp_path, case, convention):
    folder = write(tmp_path, case, convention)
    assert brats.detect_convention(folder) == convention
    c = brats.read_case(folder, ("flair", "t1"))
    assert c.case_id == folder.name and c.convention == convention
    assert c.modality_names == ("flair", "t1")
    assert c.modalities.shape == SHAPE + (2,) and c.modalities.dtype == np.float32
    assert c.label.dtype == np.int32 and c.mask.dtype == np.float32
    np.testing.assert_array_equal(c.label, case["label"])  # ET 4 -> 3 (2021), 3 stays (2023)
    np.testing.assert_allclose(c.spacing, SPACING)
    assert c.spacing.dtype == np.float32 and c.affine.dtype == np.float64
    np.testing.assert_allclose(c.affine, case["affine"], atol=1e-4)
    # values in [0, 1], background exactly 0, mask = the phantom's brain (up to voxels
    # that are 0 in both modalities read)
    assert c.modalities.min() == 0.0 and c.modalities.max() == 1.0
    assert not c.modalities[c.mask == 0].any()
    assert not c.mask[case["mask"] == 0].any()
    assert (c.mask == case["mask"]).mean() > 0.999
    # subset and order: same normalisation as the phantom's own, channel by channel
    for j, m in enumerate(("flair", "t1")):
        ref = case["modalities"][..., phantom.MODALITIES.index(m)]
        assert np.abs(c.modalities[..., j] - ref).max() < 0.02, m
    assert set(c.paths) == {"flair", "t1", "seg"}
    assert c.paths["seg"] == path_of(folder, convention, "seg")


def test_label_files_on_disk_use_convention_values(tmp_path, case):
    seg21 = load(path_of(write(tmp_path, case, "2021"), "2021", "seg"))
    seg23 = load(path_of(write(tmp_path, case, "2023"), "2023", "seg"))
    assert 4 in seg21 and 3 not in seg21 and 3 in seg23 and 4 not in seg23
    assert (brats.read_case(tmp_path / "Case2021_001").label == 3).sum() == (seg21 == 4).sum()


def test_default_modalities_and_without_label(tmp_path, case):
    folder = write(tmp_path, case, "2023")
    path_of(folder, "2023", "seg").unlink()
    c = brats.read_case(folder, with_label=False)
    assert c.label is None and c.modality_names == ("t1ce", "flair")
    assert c.modalities.shape == SHAPE + (2,) and "seg" not in c.paths


def test_uncompressed_nii_is_accepted(tmp_path, case):
    folder = write(tmp_path, case, "2021")
    for name in ("t1ce", "flair", "seg"):
        gz = path_of(folder, "2021", name)
        img = nib.load(str(gz))
        nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine), str(gz)[:-3])
        gz.unlink()
    c = brats.read_case(folder)
    np.testing.assert_array_equal(c.label, case["label"])
    assert c.paths["flair"].name == "Case2021_001_flair.nii"


def test_bad_modality_arguments(tmp_path, case):
    folder = write(tmp_path, case)
    for bad in (("t1ce", "pd"), ("flair", "flair"), (), "flair"):
        with pytest.raises(ValueError):
            brats.read_case(folder, bad)


# --- finding cases ----------------------------------------------------------------------


def test_find_cases(tmp_path, case):
    write(tmp_path, case, "2023", "b_case")
    write(tmp_path, case, "2021", "a_case")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("x")
    (tmp_path / "survival.csv").write_text("x")
    assert [p.name for p in brats.find_cases(tmp_path)] == ["a_case", "b_case"]
    assert [brats.detect_convention(p) for p in brats.find_cases(str(tmp_path))] == [
        "2021",
        "2023",
    ]


def test_find_cases_bad_roots(tmp_path, case):
    with pytest.raises(DataError, match="nowhere.*does not exist"):
        brats.find_cases(tmp_path / "nowhere")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match="file.txt.*not a folder"):
        brats.find_cases(tmp_path / "file.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty.*no BraTS case folders"):
        brats.find_cases(tmp_path / "empty")
    (tmp_path / "wrong" / "sub").mkdir(parents=True)
    (tmp_path / "wrong" / "sub" / "image.nii.gz").write_bytes(b"x")
    with pytest.raises(DataError, match="wrong.*no BraTS case folders"):
        brats.find_cases(tmp_path / "wrong")
    folder = write(tmp_path / "data", case)
    with pytest.raises(DataError, match="Case2021_001.*single case folder"):
        brats.find_cases(folder)


def test_detect_convention_errors(tmp_path, case):
    (tmp_path / "empty_case").mkdir()
    with pytest.raises(DataError, match="empty_case.*no BraTS files"):
        brats.detect_convention(tmp_path / "empty_case")
    with pytest.raises(DataError, match="empty_case.*no BraTS files"):
        brats.read_case(tmp_path / "empty_case")
    folder = write(tmp_path, case, "2021", "both")
    shutil.copy(path_of(folder, "2021", "flair"), folder / "both-t2f.nii.gz")
    with pytest.raises(DataError, match="both.*ambiguous"):
        brats.detect_convention(folder)
    with pytest.raises(DataError, match="missing.*not a folder"):
        brats.detect_convention(tmp_path / "missing")


# --- bad files ----------------------------------------------------------------------------


@pytest.mark.parametrize("convention", ["2021", "2023"])
def test_missing_modality_file(tmp_path, case, convention):
    folder = write(tmp_path, case, convention)
    target = path_of(folder, convention, "flair")
    target.unlink()
    with pytest.raises(DataError, match=rf"{target.name}.*missing flair.*{convention}"):
        brats.read_case(folder)
    brats.read_case(folder, ("t1", "t2"))  # other modalities still readable


def test_missing_seg(tmp_path, case):
    folder = write(tmp_path, case, "2023")
    path_of(folder, "2023", "seg").unlink()
    with pytest.raises(DataError, match=r"Case2023_001-seg\.nii\.gz.*missing segmentation"):
        brats.read_case(folder)


@pytest.mark.parametrize("how", ["truncated", "random", "empty"])
def test_corrupt_file(tmp_path, case, how):
    folder = write(tmp_path, case)
    target = path_of(folder, "2021", "t1ce")
    raw = target.read_bytes()
    rng = np.random.default_rng(0)
    data = {"truncated": raw[: len(raw) // 2], "random": rng.bytes(4000), "empty": b""}[how]
    target.write_bytes(data)
    with pytest.raises(DataError, match=r"Case2021_001_t1ce\.nii\.gz.*cannot be read"):
        brats.read_case(folder)


def test_corrupt_seg(tmp_path, case):
    folder = write(tmp_path, case)
    target = path_of(folder, "2021", "seg")
    target.write_bytes(target.read_bytes()[:200])
    with pytest.raises(DataError, match=r"_seg\.nii\.gz.*cannot be read"):
        brats.read_case(folder)


def test_4d_volume(tmp_path, case):
    folder = write(tmp_path, case)
    target = path_of(folder, "2021", "flair")
    rewrite(target, np.stack([load(target)] * 2, axis=-1))
    with pytest.raises(DataError, match=r"_flair\.nii\.gz.*4D.*expected a 3D"):
        brats.read_case(folder)
    rewrite(target, load(target)[..., :1])  # (H, W, D, 1) is a 3D volume
    assert brats.read_case(folder).modalities.shape == SHAPE + (2,)
    rewrite(target, load(target)[:, :, 0, 0])
    with pytest.raises(DataError, match=r"_flair\.nii\.gz.*2D"):
        brats.read_case(folder)


def test_mismatched_shape(tmp_path, case):
    folder = write(tmp_path, case)
    target = path_of(folder, "2021", "flair")
    rewrite(target, load(target)[:, :, :-1])
    with pytest.raises(DataError, match=r"_flair\.nii\.gz.*shape.*differs.*_t1ce"):
        brats.read_case(folder)
    folder = write(tmp_path, case, name="seg_shape")
    target = path_of(folder, "2021", "seg")
    rewrite(target, load(target)[1:])
    with pytest.raises(DataError, match=r"_seg\.nii\.gz.*shape"):
        brats.read_case(folder)


def test_mismatched_affine(tmp_path, case):
    folder = write(tmp_path, case)
    target = path_of(folder, "2021", "seg")
    affine = nib.load(str(target)).affine.copy()
    rewrite(target, load(target), affine + np.diag([0, 0, 1e-5, 0]))  # within tolerance
    brats.read_case(folder)
    affine[0, 3] += 2.0
    rewrite(target, load(target), affine)
    with pytest.raises(DataError, match=r"_seg\.nii\.gz.*affine differs"):
        brats.read_case(folder)


@pytest.mark.parametrize("value, word", [(np.nan, "3 non-finite.*3 NaN"), (np.inf, "3 non-")])
def test_non_finite_voxels(tmp_path, case, value, word):
    folder = write(tmp_path, case)
    target = path_of(folder, "2021", "t1ce")
    data = load(target).copy()
    data[20, 20, 10:13] = value
    rewrite(target, data)
    with pytest.raises(DataError, match=rf"_t1ce\.nii\.gz.*{word}"):
        brats.read_case(folder)


def test_all_zero_and_constant_modality(tmp_path, case):
    folder = write(tmp_path, case)
    target = path_of(folder, "2021", "flair")
    rewrite(target, np.zeros(SHAPE, np.float32))
    with pytest.raises(DataError, match=r"_flair\.nii\.gz.*all zero"):
        brats.read_case(folder)
    rewrite(target, np.full(SHAPE, 7.0, np.float32))
    with pytest.raises(DataError, match=r"_flair\.nii\.gz.*single intensity"):
        brats.read_case(folder)


@pytest.mark.parametrize(
    "convention, bad, found",
    [("2021", 5, r"\[5\].*0, 1, 2, 4, 5"), ("2021", 3, r"\[3\]"), ("2023", 4, r"\[4\]")],
)
def test_unexpected_label_values(tmp_path, case, convention, bad, found):
    folder = write(tmp_path, case, convention)
    target = path_of(folder, convention, "seg")
    seg = load(target).copy()
    seg[0, 0, 0] = bad
    rewrite(target, seg)
    allowed = "0, 1, 2, 4" if convention == "2021" else "0, 1, 2, 3"
    with pytest.raises(
        DataError, match=rf"{target.name}.*unexpected label values {found}.*allows \[{allowed}\]"
    ):
        brats.read_case(folder)


def test_float_labels(tmp_path, case):
    folder = write(tmp_path, case)
    target = path_of(folder, "2021", "seg")
    seg = load(target).astype(np.float32)
    rewrite(target, seg)  # integer-valued floats are fine
    np.testing.assert_array_equal(brats.read_case(folder).label, case["label"])
    seg[0, 0, 0] = 1.5
    rewrite(target, seg)
    with pytest.raises(DataError, match=r"_seg\.nii\.gz.*non-integer label values.*1\.5"):
        brats.read_case(folder)
    seg[0, 0, 0] = np.nan
    rewrite(target, seg)
    with pytest.raises(DataError, match=r"_seg\.nii\.gz.*1 non-finite"):
        brats.read_case(folder)


# --- normalise and select_slices --------------------------------------------------------


def test_normalise():
    rng = np.random.default_rng(0)
    vol = np.zeros((20, 20, 10), np.float32)
    mask = np.zeros(vol.shape, bool)
    mask[3:17, 3:17, 2:8] = True
    vol[mask] = rng.normal(500.0, 50.0, mask.sum())
    vol[5, 5, 5] = 1e6  # outlier: clipped to 1, does not squash the rest
    out = brats.normalise(vol, mask.astype(np.float32))
    assert out.dtype == np.float32 and out.shape == vol.shape
    assert out.min() == 0.0 and out.max() == 1.0 and not out[~mask].any()
    assert out[5, 5, 5] == 1.0 and 0.3 < np.median(out[mask]) < 0.7
    assert np.isclose((out[mask] == 1.0).mean(), 0.005, atol=0.002)
    assert not brats.normalise(vol, np.zeros_like(mask)).any()
    with pytest.raises(ValueError):
        brats.normalise(vol, mask[:-1])


def test_select_slices():
    label = np.zeros((10, 10, 30), np.int32)
    areas = [0] * 5 + [3, 8, 12, 20, 30, 40, 50, 60, 50, 40, 30, 20, 12, 8, 3] + [0] * 10
    for z, a in enumerate(areas):
        label[:, :, z].flat[:a] = 1 + z % 3
    eligible = [z for z, a in enumerate(areas) if a >= 10]  # 7..17
    s = brats.select_slices(label, slices_per_case=4, min_tumour_area=10)
    assert s.tolist() == [8, 11, 13, 16]  # centres of 4 equal runs of 11 eligible slices
    assert s.dtype == np.int64 and all(areas[z] >= 10 for z in s)
    np.testing.assert_array_equal(
        s, brats.select_slices(label, slices_per_case=4, min_tumour_area=10)
    )
    assert brats.select_slices(label, slices_per_case=50, min_tumour_area=10).tolist() == eligible
    assert brats.select_slices(label, slices_per_case=1, min_tumour_area=10).tolist() == [12]
    assert len(brats.select_slices(label, slices_per_case=15, min_tumour_area=0)) == 15
    assert brats.select_slices(label, slices_per_case=3, min_tumour_area=61).size == 0
    for n in range(1, 12):
        got = brats.select_slices(label, slices_per_case=n, min_tumour_area=10)
        assert len(got) == n and len(set(got.tolist())) == n and np.all(np.diff(got) > 0)
    with pytest.raises(ValueError):
        brats.select_slices(label, slices_per_case=0, min_tumour_area=10)
    with pytest.raises(ValueError):
        brats.select_slices(label[..., 0], slices_per_case=2, min_tumour_area=10)


def test_select_slices_on_read_case(tmp_path, case):
    c = brats.read_case(write(tmp_path, case, "2023"))
    s = brats.select_slices(c.label, slices_per_case=5, min_tumour_area=50)
    area = (case["label"] > 0).sum(axis=(0, 1))
    assert len(s) == 5 and (area[s] >= 50).all()
