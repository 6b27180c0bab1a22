"""The BraTS-like simulator (fuse4seg_jax/sim, fuse4seg_jax.simulate): determinism, label
anatomy, the contrast rules of contrast.py, BraTS folders the reader takes in both namings,
the in-memory dataset source, and a two-step training run. Needs nilearn (its wheel
carries the ICBM152 templates): skipped without it."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import timeouts
from scipy import ndimage

pytest.importorskip("nilearn", reason="the simulator reads the ICBM152 templates in nilearn")

from fuse4seg_jax.data import brats  # noqa: E402
from fuse4seg_jax.sim import case as sim_case  # noqa: E402
from fuse4seg_jax.sim import geometry  # noqa: E402

SEED = 0
ROOT = os.path.join(os.path.dirname(__file__), "..")


def _index_with(predicate, seed=SEED):
    for i in range(40):
        lesions = sim_case.preview_lesions(seed, i)
        if predicate(lesions):
            return i
    raise AssertionError("no case among the first 40 has the wanted lesions")


@pytest.fixture(scope="module")
def full_case():
    """A case with one necrotic, enhancing lesion (all three labels)."""
    index = _index_with(lambda ls: len(ls) == 1 and ls[0].enhancing and ls[0].necrosis_rho > 0)
    return index, sim_case.simulate_case(SEED, index)


def test_same_seed_same_case_and_other_index_other_case(full_case):
    index, case = full_case
    again = sim_case.simulate_case(SEED, index)
    for key in ("modalities", "label", "mask", "tissue"):
        np.testing.assert_array_equal(case[key], again[key], err_msg=key)
    assert case["params"] == again["params"]
    other = sim_case.simulate_case(SEED, index + 1)
    brain_overlap = (case["mask"] * other["mask"]).sum() / max(
        case["mask"].sum(), other["mask"].sum()
    )
    assert brain_overlap < 0.98  # another placement and deformation
    assert case["params"]["lesions"] != other["params"]["lesions"]
    assert not np.array_equal(case["label"] > 0, other["label"] > 0)


def test_grid_and_header_are_brats(full_case):
    _, case = full_case
    assert case["modalities"].shape == (240, 240, 155, 4)
    np.testing.assert_array_equal(case["affine"], geometry.AFFINE)
    mods, mask = case["modalities"], case["mask"] > 0
    assert (mods[~mask] == 0).all() and (mods[mask] > 0).mean() > 0.999  # skull-stripped
    volume_l = mask.sum() / 1e6
    assert 1.2 < volume_l < 2.4, volume_l


def test_labels_are_nested_and_inside_the_brain(full_case):
    _, case = full_case
    label, mask = case["label"], case["mask"] > 0
    assert set(np.unique(label)) == {0, 1, 2, 3}
    assert not (label[~mask] > 0).any()  # no tumour outside the brain
    necrosis, enhancing, core = label == 1, label == 3, (label == 1) | (label == 3)
    # necrosis inside the enhancing rim: its neighbours are necrosis or rim, never oedema or
    # normal tissue
    ring = ndimage.binary_dilation(necrosis) & ~necrosis
    assert ring.sum() > 0 and (enhancing[ring]).mean() > 0.99
    # oedema around the core: most of the core's outer neighbours are oedema
    outside = ndimage.binary_dilation(core, iterations=2) & ~core
    assert (label[outside] == 2).mean() > 0.5
    # and the core is one blob, not scattered
    _, parts = ndimage.label(core)
    assert parts <= 3, parts


def _means(case):
    mods, label, tissue = case["modalities"], case["label"], case["tissue"]
    out = {}
    for k, name in enumerate(case["modality_names"]):
        v = mods[..., k]
        means = {t: float(v[tissue == j].mean()) for j, t in ((1, "gm"), (2, "wm"), (3, "csf"))}
        means |= {t: float(v[label == j].mean()) for j, t in ((1, "ncr"), (2, "ed"), (3, "et"))}
        out[name] = means
    return out


def test_contrast_rules(full_case):
    """docs/simulator.md: the per-contrast rules as inequalities of tissue means."""
    m = _means(full_case[1])
    t1, t1ce, t2, flair = m["t1"], m["t1ce"], m["t2"], m["flair"]
    assert t1["wm"] > t1["gm"] > t1["csf"] and t1["ncr"] < t1["wm"]
    assert t1ce["et"] > 1.3 * t1ce["wm"] and t1ce["ncr"] < t1ce["wm"]
    assert abs(t1ce["ed"] - t1ce["wm"]) < 0.5 * (t1ce["et"] - t1ce["wm"])  # oedema near iso
    assert t2["csf"] > 2 * t2["wm"] and t2["ncr"] > 1.5 * t2["wm"] and t2["ed"] > 1.5 * t2["wm"]
    assert flair["csf"] < 0.3 * flair["wm"] and flair["ed"] > 1.4 * flair["wm"]
    assert flair["ed"] > flair["ncr"]
    # no contrast shows all three tumour parts: each has one within 15 % of WM or GM
    for name, means in m.items():
        hidden = [
            part for part in ("ncr", "ed", "et")
            if min(abs(means[part] / means[t] - 1) for t in ("wm", "gm")) < 0.15
        ]  # fmt: skip
        assert hidden, (name, means)


def test_bad_arguments():
    with pytest.raises(ValueError, match="modalities"):
        sim_case.simulate_case(0, 0, ("t1", "pd"))
    with pytest.raises(ValueError, match="must be >= 0"):
        sim_case.simulate_case(0, -1)


def _simulate(out, *args):
    cmd = [sys.executable, "-m", "fuse4seg_jax.simulate", "--out", str(out), *args]
    return subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeouts.limit(300)
    )


@pytest.mark.slow
@pytest.mark.parametrize("naming", ["2021", "2023"])
def test_cli_folders_read_back_as_brats(tmp_path, full_case, naming):
    index, case = full_case
    out = tmp_path / "sim"
    run = _simulate(
        out, "--cases", "1", "--start", str(index), "--naming", naming, "--workers", "1"
    )
    assert run.returncode == 0, run.stderr
    folder = out / (
        "SimBraTS2021_{:05d}" if naming == "2021" else "SimBraTS-GLI-{:05d}-000"
    ).format(index)
    read = brats.read_case(folder, brats.MODALITIES)
    assert read.convention == naming
    np.testing.assert_array_equal(read.label, case["label"])  # ET 4 (2021) or 3 back to 3
    np.testing.assert_array_equal(read.mask, case["mask"])
    np.testing.assert_array_equal(read.affine, geometry.AFFINE)
    raw = read.paths["t1ce"]
    import nibabel as nib

    stored = np.asarray(nib.load(str(raw)).dataobj)
    assert stored.dtype == np.int16
    np.testing.assert_array_equal(stored, np.rint(case["modalities"][..., 1]).astype(np.int16))
    assert json.loads((out / "simulation.json").read_text())["naming"] == naming
    rows = (out / "cases.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith(folder.name)
    again = _simulate(out, "--cases", "1", "--start", str(index), "--naming", naming)
    assert again.returncode == 0 and "already in" in again.stdout  # kept, not rewritten
    other = _simulate(out, "--cases", "1", "--seed", "1", "--naming", naming)
    assert other.returncode == 1
    assert other.stderr.strip().splitlines()[-1].startswith("error: --out")
    assert [p.name for p in out.iterdir() if p.is_dir()] == [folder.name]  # nothing written


@pytest.mark.slow
def test_in_memory_cases_equal_the_written_folders(tmp_path, full_case):
    """sim/release.py (the brats_sim dataset's source) gives what the BraTS reader gives
    for the folder the simulate command writes."""
    from fuse4seg_jax.sim import release

    index, _ = full_case
    run = _simulate(tmp_path, "--cases", "1", "--start", str(index), "--workers", "1")
    assert run.returncode == 0, run.stderr
    mods = ("t1ce", "flair")
    read = brats.read_case(tmp_path / f"SimBraTS2021_{index:05d}", mods)
    images, label, mask, spacing = release.read_case(SEED, index, mods)
    np.testing.assert_allclose(images, read.modalities, atol=1e-6)
    np.testing.assert_array_equal(label, read.label)
    np.testing.assert_array_equal(mask, read.mask)
    np.testing.assert_array_equal(spacing, read.spacing)


def test_two_mm_blocks_average_images_and_vote_labels():
    from fuse4seg_jax.sim.release import _downsample

    label = np.zeros((4, 2, 3), np.int32)
    label[:2, :, :2] = [[[0, 1], [1, 1]], [[0, 0], [1, 0]]]  # block (0,0,0): 4 zeros, 4 ones
    label[2:, :, :2] = 2  # block (1,0,0): all oedema
    images = np.arange(24, dtype=np.float32).reshape(4, 2, 3, 1)
    small_images, small_label = _downsample(images, label)
    assert small_label.shape == (2, 1, 1)  # the odd last slice dropped
    assert small_label[0, 0, 0] == 1 and small_label[1, 0, 0] == 2  # tie to the higher label
    np.testing.assert_allclose(small_images[0, 0, 0, 0], images[:2, :, :2, 0].mean())


@pytest.mark.slow
def test_two_step_training_and_volume_evaluation_on_the_simulator(tmp_path):
    """data.name = brats_sim through the commands: a TFDS build from simulated cases, two
    training steps, then the volume protocol on a held-out simulated case."""
    sim = [
        "--config", "configs/tiny.py", "--config.data.name=brats_sim",
        "--config.data.num_train_cases=4", "--config.data.num_eval_cases=1",
        "--config.data.sim_spacing_mm=2", "--config.data.min_tumour_area=25",
    ]  # fmt: skip
    workdir = tmp_path / "run"
    train = [sys.executable, "-m", "fuse4seg_jax.train", "--workdir", str(workdir), *sim]
    train += ["--config.train.num_steps=2", "--config.train.eval_every=2"]
    run = subprocess.run(
        train, cwd=ROOT, capture_output=True, text=True, timeout=timeouts.limit(600)
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "data: brats_sim, 16 training and 4 held-out images (1 cases)" in run.stdout
    geometry_json = json.loads((workdir / "geometry.json").read_text())
    assert geometry_json == {"orientation": "LPS", "spacing_mm": [2.0, 2.0, 2.0]}
    evaluate = [sys.executable, "-m", "fuse4seg_jax.evaluate", "--workdir", str(workdir), *sim]
    run = subprocess.run(
        evaluate, cwd=ROOT, capture_output=True, text=True, timeout=timeouts.limit(600)
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "SimBraTS_00004: 77 slices" in run.stdout  # 155 slices at 2 mm, the last dropped
    rows = (workdir / "eval-validation" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2 and "SimBraTS_00004" in rows[1]
