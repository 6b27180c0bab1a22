"""Orientation and spacing of volumes (fuse4seg_jax/orientation.py) and the run's training
geometry (fuse4seg_jax/run_geometry.py): exact reorientation both ways, centred resampling
that returns the original grid, the radiological display transform, geometry.json."""

import itertools
import json
import os

import nibabel as nib
import numpy as np
import pytest

from configs import brats_fuse, harvard, tiny
from fuse4seg_jax import orientation, run_geometry
from fuse4seg_jax.data import phantom


def _affine(codes, spacing=(2.0, 3.0, 4.0)):
    """A voxel-to-world affine whose stored axes point as `codes` say (RAS world)."""
    affine = np.zeros((4, 4))
    affine[3, 3] = 1.0
    for i, c in enumerate(codes):
        world = next(j for j, p in enumerate(("LR", "PA", "IS")) if c in p)
        affine[world, i] = spacing[i] * (1 if c in "RAS" else -1)
    return affine


def _all_codes():
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((0, 1), repeat=3):
            yield "".join(("LR", "PA", "IS")[p][s] for p, s in zip(perm, signs, strict=True))


def test_every_orientation_is_brought_to_ras_and_back_exactly():
    rng = np.random.default_rng(0)
    ras = rng.normal(size=(4, 5, 6, 2))
    for codes in _all_codes():  # all 48 axis orders and directions
        # the same voxels stored in `codes` order: RAS -> codes is also a Reorientation
        stored = orientation.Reorientation.between(np.eye(4), codes).apply(ras)
        affine = _affine(codes)
        to_ras = orientation.Reorientation.between(affine, "RAS")
        assert to_ras.source == codes == orientation.axcodes(affine)
        np.testing.assert_array_equal(to_ras.apply(stored), ras)
        np.testing.assert_array_equal(to_ras.undo(to_ras.apply(stored)), stored)
        spacing = to_ras.spacing(np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
        assert sorted(spacing) == [2.0, 3.0, 4.0]
        # each RAS axis gets the voxel size of the stored axis that became it
        canonical = nib.as_closest_canonical(nib.Nifti1Image(stored[..., 0], affine))
        np.testing.assert_allclose(spacing, canonical.header.get_zooms())
        np.testing.assert_array_equal(np.asanyarray(canonical.dataobj), ras[..., 0])
    identity = orientation.Reorientation.between(_affine("LPS"), "LPS")
    assert identity.identity and identity.apply(ras) is not None


def test_orientation_codes_are_checked():
    assert orientation.check_codes("lps") == "LPS"
    for bad in ("RAR", "RA", "XYZ", "RASS"):
        with pytest.raises(ValueError, match="one of each of L/R, P/A, I/S"):
            orientation.check_codes(bad)


def test_resampling_keeps_the_extent_and_returns_the_original_grid():
    x = np.zeros((40, 30, 5, 2), np.float32)
    x[10:30, 5:25] = 1.0
    same = orientation.resample_to(x, (1, 1, 2), (1, 1, 2))
    np.testing.assert_array_equal(same, x)  # same spacing: the identity
    half = orientation.resample_to(x, (1, 1, 2), (2, 2, 2))
    assert half.shape == (20, 15, 5, 2)
    back = orientation.resample_back(half, (2, 2, 2), (1, 1, 2), x.shape)
    assert back.shape == x.shape
    assert np.abs(back - x)[12:28, 7:23].max() < 1e-6  # away from the edges: exact
    labels = (x[..., 0] > 0).astype(np.int32) * 3
    nearest = orientation.resample_back(
        orientation.resample_to(labels, (1, 1, 2), (0.7, 0.7, 2), order=0),
        (0.7, 0.7, 2), (1, 1, 2), labels.shape, order=0,
    )  # fmt: skip
    assert nearest.dtype == np.int32 and set(np.unique(nearest)) == {0, 3}
    assert (nearest != labels).mean() < 0.02  # only boundary voxels may move
    assert orientation.spacing_mismatch((1.0, 1.2, 9.0), (1.0, 1.0, 1.0), 0.1, (0, 1))
    assert not orientation.spacing_mismatch((1.05, 0.95, 9.0), (1.0, 1.0, 1.0), 0.1, (0, 1))


def test_radiological_display_puts_the_patients_right_left_and_anterior_up():
    s = np.zeros((10, 8))  # [x, y] in RAS
    s[9, 4] = 1.0  # the patient's far right
    s[3, 7] = 2.0  # the most anterior row
    shown = orientation.display_radiological(s)
    assert shown.shape == (8, 10)  # rows: y, columns: x
    r, c = np.argwhere(shown == 1.0)[0]
    assert c == 0  # right of the patient: image left
    r, c = np.argwhere(shown == 2.0)[0]
    assert r == 0  # anterior: top row (imshow origin "upper")
    np.testing.assert_array_equal(shown, s[::-1, ::-1].T)


def test_training_geometry_of_each_dataset(tmp_path):
    config = tiny.get_config()
    assert run_geometry.training_geometry(config) == {
        "orientation": "RAS",
        "spacing_mm": [phantom.FOV_MM / 32] * 3,
    }
    config = brats_fuse.get_config()
    case = phantom.make_case(3, shape=(20, 22, 12), spacing=(1.0, 1.5, 2.0))
    lps = orientation.Reorientation.between(np.eye(4), "LPS")
    case["modalities"] = lps.apply(case["modalities"])
    case["label"] = lps.apply(case["label"])
    case["affine"] = _affine("LPS", (1.0, 1.5, 2.0))
    phantom.write_brats_case(tmp_path / "brats", "BraTS2021_00007", case)
    config.data.manual_dir = str(tmp_path / "brats")
    assert run_geometry.training_geometry(config) == {
        "orientation": "LPS",
        "spacing_mm": [1.0, 1.5, 2.0],
    }
    config.data.manual_dir = str(tmp_path / "gone")
    assert run_geometry.training_geometry(config) is None  # data moved: unknown, no error
    assert run_geometry.training_geometry(harvard.get_config()) is None


def test_geometry_file_is_written_and_read_back_with_fallbacks(tmp_path):
    notes = []
    workdir = tmp_path / "run"
    workdir.mkdir()
    assert run_geometry.read(workdir, log=notes.append) is None  # no geometry, no config
    assert len(notes) == 1 and "geometry.json missing" in notes[0]
    config = tiny.get_config()
    with open(workdir / "config.json", "w") as f:
        f.write(config.to_json_best_effort())
    expected = run_geometry.training_geometry(config)
    assert run_geometry.read(workdir, log=notes.append) == expected  # from the config
    geometry = {"orientation": "LPS", "spacing_mm": [1.0, 1.0, 1.5]}
    path = run_geometry.write(str(workdir), geometry)
    assert path == os.path.join(workdir, "geometry.json") and len(notes) == 1
    assert run_geometry.read(workdir) == geometry
    assert run_geometry.write(str(workdir), None) is None  # unknown: nothing written
    (workdir / "geometry.json").write_text(json.dumps({"orientation": "LPQ"}))
    with pytest.raises(ValueError, match="geometry.json: not a run geometry") as e:
        run_geometry.read(workdir)
    assert "\n" not in str(e.value)


def test_three_planes_put_right_left_superior_up_and_anterior_left():
    from fuse4seg_jax.figures import three_planes

    volume = np.zeros((10, 12, 14), np.int32)  # RAS: x to the Right, y Anterior, z Superior
    volume[9, 6, 7] = 1  # the patient's rightmost voxel through the centre
    volume[5, 11, 7] = 2  # most anterior
    volume[5, 6, 13] = 3  # most superior
    axial, coronal, sagittal = three_planes(volume, (5, 6, 7))
    assert axial.shape == (12, 10) and coronal.shape == (14, 10) and sagittal.shape == (14, 12)
    assert np.argwhere(axial == 1)[0][1] == 0  # right on the image's left (radiological)
    assert np.argwhere(axial == 2)[0][0] == 0  # anterior at the top
    assert np.argwhere(coronal == 3)[0][0] == 0 and np.argwhere(coronal == 1)[0][1] == 0
    assert np.argwhere(sagittal == 3)[0][0] == 0  # superior at the top
    assert np.argwhere(sagittal == 2)[0][1] == 0  # anterior on the left
