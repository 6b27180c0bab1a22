"""Inference on BraTS case folders: the Predictor's batching and padding, predict's NIfTI
outputs against the input's geometry and the model, the CLI's overwrite and error rules."""

import os
import subprocess
import sys

import jax
import nibabel as nib
import numpy as np
import pytest
import timeouts

from configs import tiny
from fuse4seg_jax import atomic_files, case_prediction, inference, recipe
from fuse4seg_jax.checkpointing import Checkpointer
from fuse4seg_jax.data import brats, phantom
from fuse4seg_jax.data.errors import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (44, 40, 10)  # H, W not multiples of 16: padded for the networks and cropped back
CASES = {"BraTS2021_00001": "2021", "BraTS-GLI-00002-000": "2023"}


def _save_checkpoint(config, workdir):
    """A randomly initialised state saved as a run's checkpoint: inference needs a
    checkpoint, not a trained model (tests/test_export.py uses a trained one)."""
    init = jax.jit(recipe.build(config).init_state)
    ckpt = Checkpointer(str(workdir), every=0)
    ckpt.save(0, init(), {"data_position": 0}, force=True)
    ckpt.close()
    return str(workdir)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    config = tiny.get_config()
    workdir = _save_checkpoint(config, tmp_path_factory.mktemp("run"))
    atomic_files.write_json(os.path.join(workdir, "config.json"), config.to_dict())
    return config, workdir


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """One phantom case in each BraTS naming convention."""
    root = tmp_path_factory.mktemp("brats")
    for i, (name, convention) in enumerate(CASES.items()):
        case = phantom.make_case(200 + i, shape=SHAPE, spacing=(4.0, 4.0, 5.0))
        phantom.write_brats_case(root, name, case, convention=convention)
    return root


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "fuse4seg_jax.predict", *map(str, args)],
        cwd=ROOT, capture_output=True, text=True, timeout=timeouts.limit(300),
    )  # fmt: skip


def test_predictor_batches_and_pads_without_changing_the_outputs(run):
    config, workdir = run
    predictor = inference.load_trained(config, workdir, batch_size=4)
    assert predictor.step == 0 and predictor.output_keys(2) == ("pred", "fused")
    x = np.random.default_rng(0).uniform(size=(6, 20, 28, 2)).astype(np.float32)
    out = predictor.predict(x)  # 6 images: two batches of 4, the second padded
    assert out["pred"].shape == out["fused"].shape == (6, 20, 28)
    assert out["pred"].dtype == np.int32 and out["fused"].dtype == np.float32
    assert set(np.unique(out["pred"])) <= {0, 1, 2, 3}
    assert 0.0 <= out["fused"].min() and out["fused"].max() <= 1.0
    one = predictor.predict(x[5:])  # alone in its batch: the images do not interact
    np.testing.assert_array_equal(one["pred"][0], out["pred"][5])
    np.testing.assert_allclose(one["fused"][0], out["fused"][5], atol=1e-6)
    padded = np.zeros((6, 32, 32, 2), np.float32)  # what the predictor pads to
    padded[:, :20, :28] = x
    np.testing.assert_array_equal(predictor.predict(padded)["pred"][:, :20, :28], out["pred"])
    assert list(predictor.executables) == [(4, 32, 32, 2)]  # 6, 1 and 6 images: compiled once


def test_predict_writes_the_models_outputs_on_the_inputs_grid(run, cases, tmp_path):
    config, workdir = run
    lines = []
    out = tmp_path / "out"
    # crop 0: whole slices
    n = case_prediction.predict(config, workdir, cases, out, crop=0, log=lines.append)
    assert n == 2 and lines[-1].startswith("predicted 2 cases, 20 slices")
    assert any(line.startswith("[1/2] BraTS-GLI-00002-000: 10 slices") for line in lines)
    predictor = inference.load_trained(config, workdir)
    et_seen = False
    for name, convention in CASES.items():
        folder = tmp_path / "out" / name
        assert sorted(p.name for p in folder.iterdir()) == [
            f"{name}_fused.nii.gz", f"{name}_preview.png", f"{name}_seg.nii.gz",
        ]  # fmt: skip
        source = nib.load(next((cases / name).glob("*t1c*")))  # t1ce or t1c: first modality
        seg_img = nib.load(folder / f"{name}_seg.nii.gz")
        fused_img = nib.load(folder / f"{name}_fused.nii.gz")
        for img in (seg_img, fused_img):
            assert img.shape == source.shape == SHAPE
            np.testing.assert_array_equal(img.affine, source.affine)
            np.testing.assert_array_equal(img.header.get_zooms(), source.header.get_zooms())
            assert img.header.get_xyzt_units() == source.header.get_xyzt_units()
            for code in ("qform_code", "sform_code"):  # how viewers read the affine
                assert img.header[code] == source.header[code]
        seg = np.asanyarray(seg_img.dataobj)
        fused = np.asanyarray(fused_img.dataobj)
        assert seg.dtype == np.uint8 and fused.dtype == np.float32
        assert set(np.unique(seg)) <= set(brats.LABEL_VALUES[convention])
        assert 0.0 <= fused.min() and fused.max() <= 1.0
        # the written volumes are the model's outputs on the normalised axial slices
        case = brats.read_case(cases / name, config.data.modalities, with_label=False)
        normalised = brats.normalise(source.get_fdata(dtype=np.float32), case.mask)
        np.testing.assert_array_equal(case.modalities[..., 0], normalised)  # file axis order
        expected = predictor.predict(np.moveaxis(case.modalities, 2, 0))
        pred = np.moveaxis(expected["pred"], 0, 2)
        et = 4 if convention == "2021" else 3
        np.testing.assert_array_equal(seg, np.where(pred == 3, et, pred))
        np.testing.assert_allclose(fused, np.moveaxis(expected["fused"], 0, 2), atol=1e-6)
        et_seen |= bool((pred == 3).any())
    assert et_seen, "no enhancing tumour predicted: the label mapping went untested"
    assert not [p for p in (tmp_path / "out").rglob(".tmp-*")]


def _off_centre_case():
    """A phantom brain (0 outside, as brats.normalise leaves it) placed off-centre in a
    larger empty field of view, with empty slices above and below: (80, 72, 14, 2)."""
    case = phantom.make_case(210, shape=SHAPE, spacing=(4, 4, 5), modalities=("t1ce", "flair"))
    volume = np.zeros((80, 72, 14, 2), np.float32)
    volume[30:74, 4:44, 2:12] = case["modalities"] * (case["mask"][..., None] > 0)
    return volume


def _extent(mask, axis):
    """(first, last + 1) index along `axis` where the 3D mask has any voxel."""
    on = np.flatnonzero(mask.any(axis=tuple({0, 1, 2} - {axis})))
    return int(on[0]), int(on[-1]) + 1


def test_brain_window_holds_the_brain_and_outside_it_is_background(run):
    config, workdir = run
    volume = _off_centre_case()
    brain = volume.max(axis=-1) > 0
    window = case_prediction.brain_window(volume, crop=32)
    x, y, z = window
    assert (z.start, z.stop) == _extent(brain, 2)  # exactly the slices with brain
    for axis, s in ((0, x), (1, y)):
        lo, hi = _extent(brain, axis)
        assert s.start <= lo and hi <= s.stop  # every brain voxel is inside
        side = s.stop - s.start
        assert side >= max(32, hi - lo) and (side == 32 or side % 16 == 0)
    assert (x.stop - x.start) * (y.stop - y.start) < 80 * 72  # the window saves work
    predictor = inference.load_trained(config, workdir, batch_size=4)
    out = case_prediction._predict_volume(predictor, volume, crop=32)
    inside = np.zeros(volume.shape[:3], bool)
    inside[window] = True
    assert not out["pred"][~inside].any() and not out["fused"][~inside].any()
    expected = predictor.predict(np.moveaxis(volume[window], 2, 0))
    np.testing.assert_array_equal(out["pred"][window], np.moveaxis(expected["pred"], 0, 2))
    np.testing.assert_allclose(out["fused"][window], np.moveaxis(expected["fused"], 0, 2))
    assert case_prediction.brain_window(volume, crop=0) == (
        slice(0, 80),
        slice(0, 72),
        slice(0, 14),
    )
    empty = case_prediction._predict_volume(predictor, np.zeros_like(volume), crop=32)
    assert not empty["pred"].any() and not empty["fused"].any()


@pytest.mark.slow
def test_cli_refuses_existing_outputs_and_overwrites_when_asked(run, cases, tmp_path):
    _, workdir = run
    out = tmp_path / "out"
    case_dir = cases / "BraTS-GLI-00002-000"  # a single case folder as --input
    args = ["--config", "configs/tiny.py", "--workdir", workdir, "--input", case_dir,
            "--out", out]  # fmt: skip
    proc = _cli(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[1/1] BraTS-GLI-00002-000: 10 slices" in proc.stdout
    assert "predicted 1 cases, 10 slices" in proc.stdout
    before = _snapshot(out)
    assert len(before) == 3
    proc = _cli(*args)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    seg_path = out / "BraTS-GLI-00002-000" / "BraTS-GLI-00002-000_seg.nii.gz"
    assert last == f"error: {seg_path} exists: pass --overwrite to replace it"
    assert "Traceback" not in proc.stderr
    assert _snapshot(out) == before
    inode = seg_path.stat().st_ino
    proc = _cli(*args, "--overwrite")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert seg_path.stat().st_ino != inode  # replaced by a new file ...
    after = _snapshot(out)
    assert after.keys() == before.keys() and after[seg_path.name] == before[seg_path.name]
    # ... with the same bytes: same checkpoint and input, deterministic writer
    assert (
        case_prediction.predict(run[0], workdir, case_dir, out, skip_existing=True, log=print) == 0
    )


@pytest.mark.slow
def test_missing_modality_is_a_one_line_error_and_nothing_is_written(run, cases, tmp_path):
    _, workdir = run
    root = tmp_path / "in"
    for name in CASES:  # the second case (by name) lacks its FLAIR
        (root / name).mkdir(parents=True)
        for f in (cases / name).iterdir():
            if not f.name.endswith("_flair.nii.gz"):
                (root / name / f.name).write_bytes(f.read_bytes())
    proc = _cli("--config", "configs/tiny.py", "--workdir", workdir, "--input", root,
                "--out", tmp_path / "out")  # fmt: skip
    assert proc.returncode == 1
    missing = root / "BraTS2021_00001" / "BraTS2021_00001_flair.nii.gz"
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {missing}: missing flair modality file (BraTS 2021 naming)"
    )
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()  # not even the first, complete case


@pytest.mark.slow
def test_feature_level_model_writes_only_the_segmentation(cases, tmp_path):
    config = tiny.get_config()
    config.model.kind = "early_fusion"
    workdir = _save_checkpoint(config, tmp_path / "run")
    case_prediction.predict(config, workdir, cases, tmp_path / "out", log=lambda _: None)
    for name in CASES:
        files = sorted(p.name for p in (tmp_path / "out" / name).iterdir())
        assert files == [f"{name}_preview.png", f"{name}_seg.nii.gz"]


def test_checkpoint_and_config_errors_are_one_line(run, tmp_path):
    config, workdir = run
    with pytest.raises(FileNotFoundError, match="no checkpoint found") as e:
        inference.load_trained(config, str(tmp_path / "nowhere"))
    assert "\n" not in str(e.value) and not (tmp_path / "nowhere").exists()
    with pytest.raises(FileNotFoundError, match=r"no checkpoint of step 7 \(found \[0\]\)"):
        inference.load_trained(config, workdir, step=7)
    other = tiny.get_config()
    other.model.segmentation = "unet_small"
    with pytest.raises(ValueError, match="model.segmentation is 'unet_tiny' in the run"):
        inference.load_trained(other, workdir)
    bare = tmp_path / "bare"  # a checkpoint without config.json: the restore itself fails
    (bare / "checkpoints").mkdir(parents=True)
    os.symlink(os.path.join(workdir, "checkpoints", "0"), bare / "checkpoints" / "0")
    with pytest.raises(ValueError, match="does not restore into the networks") as e:
        inference.load_trained(other, str(bare))
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="input folder does not exist"):
        case_prediction.predict(config, workdir, tmp_path / "missing", tmp_path / "out")


def _copy_cases(cases, root):
    for name in CASES:
        (root / name).mkdir(parents=True)
        for f in (cases / name).iterdir():
            (root / name / f.name).write_bytes(f.read_bytes())


def test_truncated_input_is_refused_before_any_case_is_written(run, cases, tmp_path):
    config, workdir = run
    root = tmp_path / "in"
    _copy_cases(cases, root)
    flair = root / "BraTS2021_00001" / "BraTS2021_00001_flair.nii.gz"
    flair.write_bytes(flair.read_bytes()[:-300])  # a download cut short: header still reads
    out = tmp_path / "out"
    with pytest.raises(DataError, match="truncated or corrupt") as e:
        case_prediction.predict(config, workdir, root, out, log=lambda _: None)
    assert str(e.value).startswith(str(flair)) and "\n" not in str(e.value)
    assert not out.exists()  # not even the other, readable case


def test_corrupt_voxels_stop_the_run_and_leave_no_part_of_that_case(run, cases, tmp_path):
    config, workdir = run
    root = tmp_path / "in"
    _copy_cases(cases, root)
    flair = root / "BraTS2021_00001" / "BraTS2021_00001_flair.nii.gz"
    data = bytearray(flair.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)  # same length: only reading the voxels finds it
    flair.write_bytes(bytes(data))
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"\(1 of 2 cases written\)") as e:
        case_prediction.predict(config, workdir, root, out, log=lambda _: None)
    assert str(e.value).startswith(str(flair)) and "\n" not in str(e.value)
    assert sorted(p.name for p in out.iterdir()) == ["BraTS-GLI-00002-000"]  # the first case
    assert not [p for p in out.rglob(".tmp-*")]


def test_skip_existing_redoes_partial_cases_and_clears_stray_temporary_files(run, cases, tmp_path):
    config, workdir = run
    out = tmp_path / "out"
    quiet = {"log": lambda _: None}
    assert case_prediction.predict(config, workdir, cases, out, **quiet) == 2
    complete = _snapshot(out)
    case = "BraTS2021_00001"
    (out / case / f"{case}_preview.png").unlink()  # as if stopped between two renames
    (out / case / ".tmp-abc123.gz").write_bytes(b"left by a killed run")
    assert case_prediction.predict(config, workdir, cases, out, skip_existing=True, **quiet) == 1
    assert _snapshot(out) == complete  # the case redone, byte for byte; the stray file gone
    assert case_prediction.predict(config, workdir, cases, out, skip_existing=True, **quiet) == 0
