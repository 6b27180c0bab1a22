"""Inference on BraTS case folders: the Predictor's batching and padding, predict's NIfTI
outputs against the input's geometry and the model, the CLI's overwrite and error rules;
predicting from the run alone (saved config, best checkpoint), the layouts, test-time
flips, probabilities, orientation and spacing, and the preview."""

import json
import os
import shutil
import subprocess
import sys

import jax
import nibabel as nib
import numpy as np
import pytest
import timeouts
from matplotlib.backends.backend_agg import FigureCanvasAgg
from nibabel import orientations

from configs import tiny
from fuse4seg_jax import (
    atomic_files,
    case_prediction,
    figures,
    inference,
    orientation,
    recipe,
    regions,
    volume_prediction,
)
from fuse4seg_jax import workdir as workdirs
from fuse4seg_jax.checkpointing import Checkpointer
from fuse4seg_jax.config_validation import ConfigError
from fuse4seg_jax.data import brats, phantom
from fuse4seg_jax.data.errors import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (44, 40, 10)  # H, W not multiples of 16: padded for the networks and cropped back
# tiny's phantom was trained at 200 mm / 32 px = 6.25 mm (run_geometry): cases in-plane too
SPACING = (6.25, 6.25, 5.0)
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
        case = phantom.make_case(200 + i, shape=SHAPE, spacing=SPACING)
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


def test_last_partial_batch_is_padded_to_the_devices_not_the_batch(run):
    config, workdir = run
    big = inference.load_trained(config, workdir, batch_size=16)
    small = inference.load_trained(config, workdir, batch_size=8)
    devices = big.mesh.size
    assert devices == small.mesh.size == 8  # the tests' fake CPU devices
    x = np.random.default_rng(1).uniform(size=(19, 20, 28, 2)).astype(np.float32)
    a, b = big.predict(x), small.predict(x)
    # 19 images: one batch of 16, then 3 padded to 8 (not to 16); 8 + 8 + 3 padded to 8.
    assert sorted(big.executables) == [(8, 32, 32, 2), (16, 32, 32, 2)]
    assert list(small.executables) == [(8, 32, 32, 2)]
    assert np.mean(a["pred"] != b["pred"]) < 1e-3  # labels at float ties may flip
    np.testing.assert_allclose(a["fused"], b["fused"], atol=1e-6)


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
    window = volume_prediction.brain_window(volume, crop=32)
    x, y, z = window
    assert (z.start, z.stop) == _extent(brain, 2)  # exactly the slices with brain
    for axis, s in ((0, x), (1, y)):
        lo, hi = _extent(brain, axis)
        assert s.start <= lo and hi <= s.stop  # every brain voxel is inside
        side = s.stop - s.start
        assert side >= max(32, hi - lo) and (side == 32 or side % 16 == 0)
    assert (x.stop - x.start) * (y.stop - y.start) < 80 * 72  # the window saves work
    predictor = inference.load_trained(config, workdir, batch_size=4)
    out = volume_prediction.predict_volume(predictor, volume, crop=32)
    inside = np.zeros(volume.shape[:3], bool)
    inside[window] = True
    assert not out["pred"][~inside].any() and not out["fused"][~inside].any()
    expected = predictor.predict(np.moveaxis(volume[window], 2, 0))
    np.testing.assert_array_equal(out["pred"][window], np.moveaxis(expected["pred"], 0, 2))
    np.testing.assert_allclose(out["fused"][window], np.moveaxis(expected["fused"], 0, 2))
    assert volume_prediction.brain_window(volume, crop=0) == (
        slice(0, 80),
        slice(0, 72),
        slice(0, 14),
    )
    empty = volume_prediction.predict_volume(predictor, np.zeros_like(volume), crop=32)
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


# --- probabilities, test-time flips, the run alone, layouts, orientation and spacing ------


@pytest.fixture(scope="module")
def prob_predictor(run):
    config, workdir = run
    return inference.load_trained(config, workdir, batch_size=4, keys=inference.PROB_KEYS)


def test_labels_from_probabilities_equal_logits_to_labels():
    rng = np.random.default_rng(1)
    for mode, channels in (("softmax", 4), ("regions", 3)):
        logits = rng.normal(scale=3.0, size=(2, 9, 7, channels)).astype(np.float32)
        probs = regions.probabilities(logits, mode)
        assert probs.shape == logits.shape and probs.dtype == np.float32
        assert len(regions.channel_names(mode)) == channels
        expected = np.asarray(regions.logits_to_labels(logits, mode))
        for p in (probs, np.asarray(probs)):  # on device or host
            np.testing.assert_array_equal(regions.probabilities_to_labels(p, mode), expected)
    np.testing.assert_allclose(np.asarray(probs).max(), 1.0, atol=0.05)
    with pytest.raises(ValueError, match="unknown segmentation mode 'sigmoid'"):
        regions.probabilities(logits, "sigmoid")


def test_every_eval_step_returns_probabilities():
    batch = {"modalities": jax.ShapeDtypeStruct((2, 32, 32, 2), np.float32)}
    for kind, seg_mode, channels in (
        ("fuse4seg", "softmax", 4),
        ("fuse4seg", "regions", 3),
        ("classical", "softmax", 4),
        ("early_fusion", "regions", 3),
    ):
        config = tiny.get_config()
        config.model.kind, config.model.seg_mode = kind, seg_mode
        run = recipe.build(config)
        out = jax.eval_shape(run.eval_step, jax.eval_shape(run.init_state), batch)
        assert out["probs"].shape == (2, 32, 32, channels), kind
        assert out["probs"].dtype == np.float32 and out["pred"].shape == (2, 32, 32)


def test_predictor_computes_probabilities_only_when_asked(run, prob_predictor):
    config, workdir = run
    plain = inference.load_trained(config, workdir, batch_size=4)
    assert plain.output_keys(2) == ("pred", "fused")  # the default: nothing more to pay
    assert prob_predictor.output_keys(2) == ("pred", "fused", "probs")
    x = np.random.default_rng(2).uniform(size=(5, 20, 28, 2)).astype(np.float32)
    out = prob_predictor.predict(x)
    assert out["probs"].shape == (5, 20, 28, 4) and out["probs"].dtype == np.float32
    np.testing.assert_allclose(out["probs"].sum(axis=-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(out["pred"], plain.predict(x)["pred"])
    np.testing.assert_array_equal(out["pred"], out["probs"].argmax(axis=-1))
    with pytest.raises(ValueError, match=r"keys \['logits'\]: expected a subset of"):
        inference.Predictor(None, {}, keys=("pred", "logits"))


def test_tta_is_the_mean_of_the_four_flipped_predictions(run, prob_predictor):
    volume = _off_centre_case()
    out = volume_prediction.predict_volume(prob_predictor, volume, 32, tta=True)
    window = volume_prediction.brain_window(volume, 32)
    slices = np.moveaxis(volume[window], 2, 0)
    sums = {}
    for axes in ((), (1,), (2,), (1, 2)):  # none, flip x, flip y, both
        flipped = prob_predictor.predict(np.flip(slices, axes))
        for k in ("probs", "fused"):
            back = np.flip(flipped[k], axes)
            sums[k] = back if k not in sums else sums[k] + back
    mean = {k: np.moveaxis(v / 4, 0, 2) for k, v in sums.items()}
    np.testing.assert_allclose(out["probs"][window], mean["probs"], atol=1e-6)
    np.testing.assert_allclose(out["fused"][window], mean["fused"], atol=1e-6)
    np.testing.assert_array_equal(out["pred"][window], mean["probs"].argmax(axis=-1))
    plain = volume_prediction.predict_volume(prob_predictor, volume, 32)
    assert (out["pred"][window] != plain["pred"][window]).any()  # the flips do change things
    inside = np.zeros(volume.shape[:3], bool)
    inside[window] = True
    for o in (out, plain):  # outside the window: certainly background
        np.testing.assert_array_equal(o["probs"][~inside], [[1.0, 0.0, 0.0, 0.0]] * (~inside).sum())
    default = inference.load_trained(*run, batch_size=4)
    with pytest.raises(ValueError, match="tta needs a predictor that computes 'probs'"):
        volume_prediction.predict_volume(default, volume, 32, tta=True)


class _Regions:
    """A stand-in Predictor of a model.seg_mode "regions" run: region probabilities v,
    v**2, v**3 of each pixel's first modality v (so every label occurs, and a flipped
    input flipped back gives the same probabilities)."""

    seg_mode = "regions"

    def output_keys(self, num_modalities):
        return ("pred", "probs")

    def predict(self, slices):
        v = slices[..., :1]
        probs = np.concatenate([v, v**2, v**3], axis=-1)
        return {
            "pred": np.asarray(regions.probabilities_to_labels(probs, "regions")),
            "probs": probs,
        }


def test_tta_of_a_regions_run_uses_the_nested_region_rule():
    volume = _off_centre_case()
    out = volume_prediction.predict_volume(_Regions(), volume, 32, tta=True)
    window = volume_prediction.brain_window(volume, 32)
    v = volume[window][..., :1]
    np.testing.assert_allclose(
        out["probs"][window], np.concatenate([v, v**2, v**3], -1), atol=1e-6
    )  # each flip undone in place
    expected = regions.probabilities_to_labels(out["probs"], "regions")
    np.testing.assert_array_equal(out["pred"], expected)
    assert set(np.unique(out["pred"])) == {0, 1, 2, 3}
    outside = np.ones(volume.shape[:3], bool)
    outside[window] = False
    assert outside.any() and not out["probs"][outside].any()  # no region outside the window


def test_predicting_from_the_run_alone_equals_predicting_with_its_config(run, cases, tmp_path):
    config, workdir = run
    quiet = {"log": lambda _: None}
    case_dir = cases / "BraTS2021_00001"
    assert case_prediction.predict(None, workdir, case_dir, tmp_path / "alone", **quiet) == 1
    case_prediction.predict(config, workdir, case_dir, tmp_path / "given", **quiet)
    alone, given = _snapshot(tmp_path / "alone"), _snapshot(tmp_path / "given")
    assert len(alone) == 3 and alone == given  # byte for byte, previews included
    bare = tmp_path / "bare"
    (bare / "checkpoints").mkdir(parents=True)
    with pytest.raises(ConfigError) as e:
        case_prediction.predict(None, bare, cases, tmp_path / "out")
    assert str(e.value) == (
        f"{bare / 'config.json'}: no such file: the run's config is needed (or pass --config)"
    )
    # a run saved before the newer bilevel keys existed still predicts from its config.json
    older = tmp_path / "older"
    shutil.copytree(workdir, older)
    saved = json.loads((older / "config.json").read_text())
    for key in ("inner_schedule", "bdl_damping", "diagnose_max_residual"):
        del saved["bilevel"][key]
    del saved["model"]["fusion_merge"]
    (older / "config.json").write_text(json.dumps(saved))
    case_prediction.predict(None, older, case_dir, tmp_path / "older_out", **quiet)
    assert _snapshot(tmp_path / "older_out") == alone
    (bare / "config.json").write_text('{"data": {"name": "phant')
    with pytest.raises(ConfigError, match=r"config.json: cannot be read as JSON: JSONDecodeError"):
        workdirs.saved_config(bare)


def test_brats_layout_and_probabilities_on_the_inputs_grid(run, cases, prob_predictor, tmp_path):
    config, workdir = run
    out = tmp_path / "out"
    case_prediction.predict(
        None, workdir, cases, out, layout="brats", save_probabilities=True, log=lambda _: None
    )
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*(f"{c}.nii.gz" for c in CASES), "extras"]
    )
    assert sorted(p.name for p in (out / "extras").iterdir()) == sorted(
        f"{c}_{what}"
        for c in CASES
        for what in ("fused.nii.gz", "preview.png", "probabilities.nii.gz")
    )
    for name, convention in CASES.items():
        source = nib.load(next((cases / name).glob("*t1c*")))
        img = nib.load(out / "extras" / f"{name}_probabilities.nii.gz")
        assert img.shape == SHAPE + (4,) and img.get_data_dtype() == np.uint16
        np.testing.assert_array_equal(img.affine, source.affine)
        assert img.header.get_zooms()[:3] == source.header.get_zooms()
        assert img.header["descrip"].tobytes().rstrip(b"\0").decode() == (
            "fuse4seg_jax probabilities: background,necrotic_core,oedema,enhancing"
        )
        probs = img.get_fdata(dtype=np.float32)
        case = brats.read_case(cases / name, config.data.modalities, with_label=False)
        expected = volume_prediction.predict_volume(prob_predictor, case.modalities, 32)
        np.testing.assert_allclose(probs, expected["probs"], atol=1e-5)  # 16 bits over [0, 1]
        outside = np.ones(SHAPE, bool)  # outside the brain window: certainly background
        outside[volume_prediction.brain_window(case.modalities, 32)] = False
        assert outside.any()
        assert (probs[outside][:, 0] == 1.0).all() and (probs[outside][:, 1:] == 0.0).all()
        seg = np.asanyarray(nib.load(out / f"{name}.nii.gz").dataobj)
        et = 4 if convention == "2021" else 3
        np.testing.assert_array_equal(seg, np.where(expected["pred"] == 3, et, expected["pred"]))


def test_best_checkpoint_is_chosen_by_step_best(tmp_path):
    config = tiny.get_config()
    workdir = _save_checkpoint(config, tmp_path / "run")  # latest: step 0, seed 0
    other = tiny.get_config()
    other.seed = 1
    best_state = jax.jit(recipe.build(other).init_state)()
    ckpt = Checkpointer(workdir, every=0, best=True)
    ckpt.save(5, best_state, {"data_position": 5}, force=True)
    ckpt.close()
    best = inference.load_trained(config, workdir, step="best")
    latest = inference.load_trained(config, workdir)
    assert best.step == 5 and latest.step == 0
    for a, b in zip(
        jax.tree.leaves(best.state.seg.params), jax.tree.leaves(best_state.seg.params), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    empty = _save_checkpoint(config, tmp_path / "no_best")
    with pytest.raises(FileNotFoundError) as e:
        inference.load_trained(config, empty, step="best")
    assert str(e.value) == (
        f"{tmp_path / 'no_best' / 'checkpoint_best'}: no best checkpoint "
        "(the trainer saves one there when it evaluates on held-out data)"
    )
    with pytest.raises(ValueError, match="step='last': expected a checkpoint step"):
        inference.load_trained(config, workdir, step="last")
    with pytest.raises(case_prediction.UsageError) as e:
        case_prediction.predict(config, workdir, tmp_path, tmp_path / "out", step="last")
    assert str(e.value) == "--step=last: expected a checkpoint step (an integer >= 0) or 'best'"


def _stored_as(case, codes):
    """The phantom case (RAS, diagonal affine) stored with its axes in `codes` orientation:
    the same voxels at the same world positions."""
    to = orientation.Reorientation.between(case["affine"], codes)
    shape = case["label"].shape
    affine = case["affine"] @ orientations.inv_ornt_aff(to.ornt, shape)
    return dict(
        case, modalities=to.apply(case["modalities"]), label=to.apply(case["label"]), affine=affine
    )


def test_reoriented_inputs_give_the_canonical_outputs_voxel_for_voxel(run, tmp_path):
    """An LPS copy and an axes-permuted copy (stored z, x, y) of a RAS case: each output is
    written on its own input's grid (shape, affine) and, brought to RAS, equals the RAS
    case's output exactly: the geometry and the labels stay in place."""
    config, workdir = run
    case = phantom.make_case(220, shape=SHAPE, spacing=SPACING)
    root = tmp_path / "in"
    names = {"RAS": "BraTS2021_00010", "LPS": "BraTS2021_00011", "SRA": "BraTS2021_00012"}
    for codes, name in names.items():
        phantom.write_brats_case(root, name, _stored_as(case, codes))
    case_prediction.predict(None, workdir, root, tmp_path / "out", log=lambda _: None)
    ras = {
        k: nib.load(tmp_path / "out" / names["RAS"] / f"{names['RAS']}_{k}.nii.gz")
        for k in ("seg", "fused")
    }
    assert (np.asanyarray(ras["seg"].dataobj) > 0).any()
    for codes in ("LPS", "SRA"):
        name = names[codes]
        source = nib.load(root / name / f"{name}_t1ce.nii.gz")
        assert (
            orientation.axcodes(source.affine) == codes and source.shape != SHAPE or codes == "LPS"
        )
        for k in ("seg", "fused"):
            img = nib.load(tmp_path / "out" / name / f"{name}_{k}.nii.gz")
            assert img.shape == source.shape
            np.testing.assert_array_equal(img.affine, source.affine)
            canonical = nib.as_closest_canonical(img)
            np.testing.assert_allclose(canonical.affine, ras[k].affine, atol=1e-5)
            np.testing.assert_array_equal(
                np.asanyarray(canonical.dataobj), np.asanyarray(ras[k].dataobj)
            )


def test_input_at_another_spacing_is_refused_in_one_line(run, tmp_path):
    _, workdir = run
    case = phantom.make_case(221, shape=SHAPE, spacing=(4.0, 4.0, 5.0))
    phantom.write_brats_case(tmp_path / "in", "BraTS2021_00020", case)
    out = tmp_path / "out"
    with pytest.raises(DataError) as e:
        case_prediction.predict(None, workdir, tmp_path / "in", out, log=lambda _: None)
    path = tmp_path / "in" / "BraTS2021_00020" / "BraTS2021_00020_t1ce.nii.gz"
    assert str(e.value) == (
        f"{path}: voxel spacing 4 x 4 x 5 mm (in the training orientation RAS) differs "
        "in-plane from the training spacing 6.25 x 6.25 x 6.25 mm by more than 10%: pass "
        "--resample to resample it (or raise --spacing_tolerance)"
    )
    assert not out.exists()


class _FlairThreshold:
    """A stand-in for a trained Predictor: whole tumour where FLAIR > 0.7 (the phantom's
    tumour is the brightest FLAIR tissue), so labels are good at any spacing; it records
    the slice sizes it is given."""

    seg_mode = "softmax"

    def __init__(self):
        self.seen = []

    def output_keys(self, num_modalities):
        return ("pred", "fused")

    def predict(self, slices):
        self.seen.append(slices.shape[1:3])
        return {
            "pred": np.where(slices[..., 1] > 0.7, 2, 0).astype(np.int32),
            "fused": slices[..., 1].copy(),
        }


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_resample_predicts_at_the_training_spacing_onto_the_inputs_grid(tmp_path):
    geometry = {"orientation": "RAS", "spacing_mm": [6.25, 6.25, 6.25]}
    dice = {}
    for spacing, size in ((6.25, 32), (4.0, 50)):  # the same 200 mm field of view
        name = f"BraTS2021_{size:05d}"
        case = phantom.make_case(230, shape=(size, size, 24), spacing=(spacing, spacing, 5.0))
        phantom.write_brats_case(tmp_path / "in", name, case)
        predictor = _FlairThreshold()
        case_prediction.predict_case(
            predictor,
            tmp_path / "in" / name,
            tmp_path / "out",
            ("t1ce", "flair"),
            32,
            geometry=geometry,
            resample=True,
        )
        assert predictor.seen == [(32, 32)]  # the networks saw 6.25 mm pixels either way
        seg = nib.load(tmp_path / "out" / name / f"{name}_seg.nii.gz")
        assert seg.shape == (size, size, 24)
        np.testing.assert_array_equal(seg.affine, case["affine"].astype(np.float32))
        fused = nib.load(tmp_path / "out" / name / f"{name}_fused.nii.gz")
        assert fused.shape == (size, size, 24)
        dice[spacing] = _dice(np.asanyarray(seg.dataobj) > 0, case["label"] > 0)
    # the bound: the truth at the training spacing brought onto the 4 mm grid (nearest)
    coarse = phantom.make_case(230, shape=(32, 32, 24), spacing=(6.25, 6.25, 5.0))["label"]
    back = orientation.resample_back(coarse, (6.25, 6.25, 5), (4, 4, 5), (50, 50, 24), order=0)
    bound = _dice(back > 0, case["label"] > 0)
    assert dice[6.25] > 0.9 and dice[4.0] > 0.95 * bound > 0.8, (dice, bound)


def test_preview_is_radiological_with_legend_and_orientation_marks():
    """A lesion on the patient's right and anterior, stored LPS: in the segmentation panel
    it is drawn on the image's left and top."""
    ras = np.zeros((32, 32, 4, 2), np.float32)
    ras[4:28, 4:28] = 0.5
    lesion = np.zeros((32, 32, 4), np.int32)
    lesion[22:28, 20:27, 1:3] = 1  # x high: right; y high: anterior (red: necrotic core)
    lps = _stored_as({"affine": np.eye(4), "label": lesion, "modalities": ras}, "LPS")
    fig = figures.case_preview(
        lps["modalities"], ("t1ce", "flair"), None, lps["label"], affine=lps["affine"]
    )
    assert [t.get_text() for t in fig.texts] == [figures.OVERLAY_LEGEND]
    seg_panels = fig.axes[2::3]  # each row: T1CE | FLAIR | segmentation
    assert sorted(t.get_text() for t in seg_panels[0].texts) == ["A", "L", "P", "R"]
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3].astype(int)
    height, found = pixels.shape[0], 0
    for ax in seg_panels:
        x0, y0, x1, y1 = np.round(ax.get_window_extent().extents).astype(int)
        panel = pixels[height - y1 : height - y0, x0:x1]
        red = (panel[..., 0] > 150) & (panel[..., 1] < 100) & (panel[..., 2] < 100)
        if red.sum() > 20:
            rows, cols = np.nonzero(red)
            assert cols.mean() < 0.5 * panel.shape[1] and rows.mean() < 0.5 * panel.shape[0]
            found += 1
    assert found == 2  # the lesion's two slices


@pytest.mark.slow
def test_cli_from_the_run_alone_with_the_new_flags(run, cases, tmp_path):
    _, workdir = run
    out = tmp_path / "out"
    proc = _cli(
        "--workdir",
        workdir,
        "--input",
        cases,
        "--out",
        out,
        "--layout",
        "brats",
        "--tta",
        "--save_probabilities",
        "--step",
        "0",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "checkpoint step 0 of" in proc.stdout and "flip-averaged" in proc.stdout
    assert sorted(p.name for p in out.glob("*.nii.gz")) == sorted(f"{c}.nii.gz" for c in CASES)
    assert len(list((out / "extras").iterdir())) == 6
    proc = _cli("--workdir", workdir, "--input", cases, "--out", out, "--step", "best")
    assert proc.returncode == 1
    best = os.path.join(workdir, "checkpoint_best")
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {best}: no best checkpoint (the trainer saves one there when it evaluates "
        "on held-out data)"
    )
