"""`python -m fuse4seg_jax.evaluate`: metrics of a trained run agree with the trainer's own
held-out Dice and with metric functions applied independently; classical fusion and the
Harvard pairs get fusion metrics; outputs are never overwritten without --overwrite."""

import csv
import json
import os
import subprocess
import sys

import file_modes
import numpy as np
import pytest
import timeouts

from configs import harvard as harvard_config
from configs import tiny
from fuse4seg_jax import evaluation, trainer
from fuse4seg_jax.metrics import fusion

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARVARD = os.path.join(os.path.dirname(ROOT), "shared", "data", "harvard")


def _evaluate_cli(*args, config="configs/tiny.py", cwd=ROOT):
    """`python -m fuse4seg_jax.evaluate --config CONFIG ARGS` in `cwd` (config None: no
    --config)."""
    config_args = [] if config is None else ["--config", config]
    return subprocess.run(
        [sys.executable, "-m", "fuse4seg_jax.evaluate", *config_args, *map(str, args)],
        cwd=cwd, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
        timeout=timeouts.limit(300),
    )  # fmt: skip


def _config(tmp_path):
    config = tiny.get_config()
    config.data.image_size = 48  # VIF needs 41 px
    config.data.tfds_dir = str(tmp_path / "tfds")
    config.train.num_steps, config.train.eval_every = 4, 100
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("evaluate")
    config = _config(tmp_path)
    workdir = tmp_path / "run"
    trainer.train_and_evaluate(config, str(workdir))
    return config, workdir


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_evaluate_a_trained_run(trained, tmp_path):
    config, workdir = trained
    out = tmp_path / "eval"
    summary = evaluation.evaluate(config, str(out), workdir=str(workdir), protocol="slices")
    rows = _rows(out / "metrics.csv")
    assert {r["protocol"] for r in rows} == {"slices"}
    slices = [r for r in rows if r["level"] == "slice"]
    cases = [r for r in rows if r["level"] == "case"]
    examples = evaluation.load_split(config, "validation")
    assert len(slices) == len(examples["label"]) and len(cases) == 2
    # per-case Dice equals the trainer's own held-out evaluation of the same checkpoint
    results = json.loads((workdir / "results.json").read_text())
    for region in ("wt", "tc", "et"):
        mean = np.mean([float(r[f"dice_{region}"]) for r in cases])
        assert mean == pytest.approx(results["dice_mean"][region], abs=1e-9)
        assert summary[f"dice_{region}"] == pytest.approx(mean)
        assert all(float(r[f"hd95_{region}"]) >= 0 for r in cases + slices)
    # fusion metrics of every slice, on 8-bit grey levels, the trainer's numbers too
    assert all(float(r["EN"]) > 0 and np.isfinite(float(r["VIF"])) for r in slices)
    assert np.mean([float(r["Qabf"]) for r in slices]) == pytest.approx(
        results["fusion_metrics"]["Qabf"]
    )
    text = (out / "summary.md").read_text()
    assert text.count("Slice protocol (BraTS-Fuse)") == 2 and "`mmif` convention" in text
    assert "per 3D case (slices stacked back" in text and "per 2D slice" in text
    assert "| dice_wt |" in text and "| hd95_et |" in text and "| Qabf |" in text
    for name in ("cases.png", "best_worst.png", "dice_boxplot.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".eval.partial")]


@pytest.mark.slow
def test_without_config_a_run_is_evaluated_with_its_saved_config(trained, tmp_path):
    config, workdir = trained
    out = tmp_path / "eval"
    cli = _evaluate_cli("--workdir", workdir, "--out", out, "--protocol", "slices",
                        config=None, cwd=tmp_path)  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    cases = [r for r in _rows(out / "metrics.csv") if r["level"] == "case"]
    results = json.loads((workdir / "results.json").read_text())
    assert len(cases) == config.data.num_eval_cases
    for region in ("wt", "tc", "et"):  # the trainer's held-out Dice of the same checkpoint
        mean = np.mean([float(r[f"dice_{region}"]) for r in cases])
        assert mean == pytest.approx(results["dice_mean"][region], abs=1e-9)
    no_run = tmp_path / "empty"
    no_run.mkdir()
    cli = _evaluate_cli("--workdir", no_run, config=None, cwd=tmp_path)
    assert cli.returncode == 1
    assert cli.stderr.strip().splitlines()[-1] == (
        f"error: {no_run}/config.json: no such file: the run's config is needed (or pass --config)"
    )


@pytest.mark.slow
def test_existing_output_is_refused_without_overwrite(trained, tmp_path):
    config, workdir = trained
    out = tmp_path / "eval"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        evaluation.evaluate(config, str(out), workdir=str(workdir))
    assert (out / "keep.txt").read_text() == "mine"
    cli = _evaluate_cli(
        "--workdir", workdir, "--out", out, f"--config.data.tfds_dir={config.data.tfds_dir}",
        "--config.data.image_size=48",
    )  # fmt: skip
    assert cli.returncode == 1
    assert cli.stderr.strip().splitlines()[-1].startswith(f"error: {out} exists")
    evaluation.evaluate(config, str(out), workdir=str(workdir), overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "metrics.csv").exists()


def test_classical_fusion_gets_fusion_metrics(tmp_path, umask_022):
    config = _config(tmp_path)
    out = tmp_path / "max"
    evaluation.evaluate(config, str(out), classical="max", convention="standard")
    assert file_modes.unusual_modes(out) == []  # the folder and its files: group-readable
    rows = _rows(out / "metrics.csv")
    examples = evaluation.load_split(config, "validation")
    assert len(rows) == len(examples["label"]) and "dice_wt" not in rows[0]
    m = examples["modalities"][0]
    expected = fusion.fusion_metrics(
        fusion.to_mmif_grey(m.max(axis=-1)),
        fusion.source_to_grey(m[..., 0]),
        fusion.source_to_grey(m[..., 1]),
        convention="standard",
    )
    for key in ("EN", "MI", "SSIM", "Qabf"):
        assert float(rows[0][key]) == pytest.approx(expected[key], rel=1e-9)
    assert "`standard` convention" in (out / "summary.md").read_text()


@pytest.mark.skipif(not os.path.isdir(HARVARD), reason=f"Harvard test pairs not found at {HARVARD}")
def test_harvard_pairs_get_fusion_metrics_and_a_colour_figure(tmp_path):
    config = harvard_config.get_config()
    config.data.manual_dir = HARVARD
    config.data.tfds_dir = str(tmp_path / "tfds")
    out = tmp_path / "harvard"
    evaluation.evaluate(config, str(out), classical="mean")
    rows = _rows(out / "metrics.csv")
    assert rows and all(float(r["EN"]) > 0 for r in rows)
    assert (out / "pairs.png").read_bytes()[:4] == b"\x89PNG"


def test_a_split_the_dataset_lacks_is_refused(tmp_path):
    """The phantom has train and validation only: `--split test` is one `error:` line naming
    the splits it has, not the validation cases written out as "test"."""
    config = _config(tmp_path)
    with pytest.raises(ValueError, match="phantom has no such split; its splits are train, val"):
        evaluation.evaluate(config, str(tmp_path / "direct"), classical="mean", split="test")
    out = tmp_path / "eval-test"
    cli = _evaluate_cli(
        "--classical", "mean", "--split", "test", "--out", out,
        f"--config.data.tfds_dir={config.data.tfds_dir}",
    )  # fmt: skip
    assert cli.returncode == 1, cli.stderr[-2000:]
    last = cli.stderr.strip().splitlines()[-1]
    assert last.startswith("error: split 'test'") and "train, validation" in last
    assert not out.exists()


def _oracle_dice(p, t):
    total = p.sum() + t.sum()
    return 1.0 if total == 0 else 2.0 * (p & t).sum() / total


def _oracle_hd95(p, t, spacing):
    """HD95 from scratch: face-connected boundaries, nearest-neighbour distances by a
    k-d tree over the boundary voxels' mm coordinates, 95th percentile of both ways."""
    from scipy import ndimage, spatial

    if not p.any() and not t.any():
        return 0.0
    if not (p.any() and t.any()):
        return 373.0
    cross = ndimage.generate_binary_structure(3, 1)
    edge = [np.argwhere(m & ~ndimage.binary_erosion(m, cross)) * spacing for m in (p, t)]
    d_pt = spatial.cKDTree(edge[1]).query(edge[0])[0]
    d_tp = spatial.cKDTree(edge[0]).query(edge[1])[0]
    return float(np.percentile(np.concatenate([d_pt, d_tp]), 95))


@pytest.mark.slow
def test_volume_protocol_equals_a_direct_computation(trained, tmp_path):
    """Default protocol for the phantom: each held-out case rendered whole, every brain
    slice through the networks (checked against the Predictor run on the axial slices
    directly), and Dice and HD95 of the 3D volume equal a from-scratch computation."""
    from fuse4seg_jax import inference
    from fuse4seg_jax.data import volumes

    config, workdir = trained
    out = tmp_path / "eval"
    summary = evaluation.evaluate(config, str(out), workdir=str(workdir))
    rows = _rows(out / "metrics.csv")
    assert [r["case_id"] for r in rows] == ["8", "9"]  # validation: after 8 training cases
    assert {r["protocol"] for r in rows} == {"volume"}
    predictor = inference.load_trained(config, str(workdir))
    for row, case in zip(rows, volumes.split_cases(config.data, config.seed, "validation"),
                         strict=True):  # fmt: skip
        modalities, label, spacing = case.load()
        assert label.shape == (48, 48, 48) and np.allclose(spacing, 200.0 / 48)
        brain = (modalities.max(axis=-1) > 0).any(axis=(0, 1))
        pred = np.zeros(label.shape, np.int64)
        direct = predictor.predict(np.moveaxis(modalities[:, :, brain], 2, 0))["pred"]
        pred[:, :, brain] = np.moveaxis(direct, 0, 2)
        assert int(row["brain_slices"]) == brain.sum() < 48
        for region, labels in (("wt", (1, 2, 3)), ("tc", (1, 3)), ("et", (3,))):
            p, t = np.isin(pred, labels), np.isin(label, labels)
            assert float(row[f"dice_{region}"]) == pytest.approx(_oracle_dice(p, t), abs=1e-9)
            assert float(row[f"hd95_{region}"]) == pytest.approx(
                _oracle_hd95(p, t, np.asarray(spacing, np.float64)), abs=1e-4
            )
    assert summary["dice_wt"] == pytest.approx(np.mean([float(r["dice_wt"]) for r in rows]))
    record = json.loads((out / "evaluation.json").read_text())
    assert (record["checkpoint_step"], record["split"], record["cases"]) == (4, "validation", 2)
    assert record["protocol"] == "volume" and record["means"] == pytest.approx(summary)
    text = (out / "summary.md").read_text()
    assert "Volume protocol: whole 3D cases" in text and "lesion-wise (BraTS 2023)" in text
    assert "| lw_dice_wt |" in text and (out / "cases.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_evaluate_picks_a_checkpoint_by_step(trained, tmp_path):
    """--step 4 and --step best (the final evaluation at step 4 is the only one, so the
    best) give the latest checkpoint's numbers; a step without a checkpoint is refused."""
    config, workdir = trained
    latest = evaluation.evaluate(config, str(tmp_path / "a"), workdir=str(workdir),
                                 protocol="slices")  # fmt: skip
    for step in (4, "best"):
        again = evaluation.evaluate(config, str(tmp_path / f"s{step}"), workdir=str(workdir),
                                    protocol="slices", step=step)  # fmt: skip
        assert again == pytest.approx(latest)
        record = json.loads((tmp_path / f"s{step}" / "evaluation.json").read_text())
        assert (record["checkpoint_step"], record["protocol"]) == (4, "slices")
        assert (
            f"{'best' if step == 'best' else 'checkpoint 4'}"
            in (tmp_path / f"s{step}" / "summary.md").read_text()
        )
    with pytest.raises(FileNotFoundError, match=r"checkpoints: no checkpoint of step 2 \(found"):
        evaluation.evaluate(config, str(tmp_path / "b"), workdir=str(workdir), step=2)
    cli = _evaluate_cli("--workdir", workdir, "--step", "last", "--out", tmp_path / "c")
    assert cli.returncode == 2 and cli.stderr.strip().splitlines()[-1] == (
        "error: --step=last: expected a checkpoint step (an integer >= 0) or 'best'"
    )
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


class _FakeCase:
    """A 3D case with two tumour blobs; load() -> (modalities, label, spacing)."""

    def __init__(self, case_id):
        self.case_id = case_id
        label = np.zeros((32, 32, 24), np.int32)
        label[8:14, 8:14, 4:9] = 2
        label[10:12, 10:12, 5:8] = 3
        self.label = label
        modalities = np.zeros((32, 32, 24, 2), np.float32)
        modalities[2:30, 2:30, 1:23] = 0.5
        self.modalities = modalities

    def load(self):
        return self.modalities, self.label, np.array([1.0, 1.0, 2.0], np.float32)


def test_false_positives_on_healthy_slices_lower_the_volume_dice(tmp_path, monkeypatch):
    """Predictions equal to the truth except a planted blob on healthy slices far from the
    tumour: the volume protocol sees it (WT Dice 2|G| / (2|G| + |FP|), one lesion-wise
    false positive), where the selected tumour slices never would."""
    from fuse4seg_jax import inference, volume_prediction
    from fuse4seg_jax.data import volumes

    cases = [_FakeCase("a"), _FakeCase("b")]
    blob = (slice(20, 27), slice(20, 26), slice(16, 20))  # 7 * 6 * 4 = 168 voxels, slices 16-19

    def predict_volume(predictor, modalities, crop, **_):
        case = next(c for c in cases if c.modalities is modalities)
        pred = case.label.copy()
        if case.case_id == "b":
            pred[blob] = 2
        return {"pred": pred}

    class Predictor:
        step = 7

    monkeypatch.setattr(volumes, "split_cases", lambda data, seed, split: cases)
    monkeypatch.setattr(volume_prediction, "predict_volume", predict_volume)
    monkeypatch.setattr(inference, "load_trained", lambda *a, **k: Predictor())
    monkeypatch.setattr(evaluation.checkpointing, "available_steps", lambda *a, **k: [7])
    config = _config(tmp_path)
    out = tmp_path / "eval"
    evaluation.evaluate(config, str(out), workdir=str(tmp_path))
    rows = {r["case_id"]: r for r in _rows(out / "metrics.csv")}
    wt = int((cases[0].label > 0).sum())
    assert float(rows["a"]["dice_wt"]) == 1.0 and float(rows["a"]["lw_dice_wt"]) == 1.0
    assert float(rows["b"]["dice_wt"]) == pytest.approx(2 * wt / (2 * wt + 168))
    assert float(rows["b"]["dice_et"]) == 1.0  # the blob is oedema: ET untouched
    assert int(rows["b"]["lw_fp_wt"]) == 1 and float(rows["b"]["lw_dice_wt"]) == 0.5
    assert float(rows["b"]["spec_wt"]) < 1.0 == float(rows["a"]["spec_wt"])


@pytest.mark.slow
def test_volume_protocol_on_a_brats_folder_with_odd_geometry(trained, tmp_path):
    """BraTS-named phantom cases of 52 x 44 x 30 voxels of 1.2 x 1.0 x 2.5 mm (not 240^3,
    anisotropic): the held-out cases of the BraTS-Fuse split are scored whole, HD95 in mm
    with the header's spacing, equal to the metrics of the Predictor's own volume."""
    import copy

    from fuse4seg_jax import inference, volume_prediction
    from fuse4seg_jax.data import brats, phantom, phantom_nifti, tfds_brats_fuse
    from fuse4seg_jax.metrics import segmentation as seg_metrics

    config, workdir = trained
    root = tmp_path / "brats"
    spacing = (1.2, 1.0, 2.5)
    for i in range(5):
        case = phantom.make_case(100 + i, shape=(52, 44, 30), spacing=spacing)
        phantom_nifti.write_brats_case(root, f"Case{i:03d}", case, convention="2023")
    config = copy.deepcopy(config)
    config.data.name, config.data.manual_dir = "brats_fuse", str(root)
    config.data.slices_per_case, config.data.min_tumour_area = 4, 10
    out = tmp_path / "eval"
    evaluation.evaluate(config, str(out), workdir=str(workdir))
    rows = _rows(out / "metrics.csv")
    protocol = tfds_brats_fuse.make_builder(config.data).builder_config
    held_out = tfds_brats_fuse.split_cases(brats.find_cases(root), protocol)["validation"]
    assert [r["case_id"] for r in rows] == [p.name for p in held_out]
    predictor = inference.load_trained(config, str(workdir))
    for row, folder in zip(rows, held_out, strict=True):
        case = brats.read_case(folder, config.data.modalities)
        assert case.modalities.shape[:3] == (52, 44, 30) and np.allclose(case.spacing, spacing)
        pred = volume_prediction.predict_volume(predictor, case.modalities, 48)["pred"]
        expected = seg_metrics.region_scores(pred, case.label, case.spacing)  # header's
        for key in ("dice_wt", "hd95_wt", "hd95_tc", "sens_et"):
            assert float(row[key]) == pytest.approx(expected[key], abs=1e-9)


def test_the_volume_protocol_refuses_what_it_cannot_score(tmp_path):
    """A classical fusion (no segmentation) and the Harvard pairs (2D, no labels) have no
    volume protocol: one line each saying to use --protocol slices, nothing written."""
    config = _config(tmp_path)
    with pytest.raises(ValueError, match="classical fusion does not segment: use --protocol sl"):
        evaluation.evaluate(config, str(tmp_path / "a"), classical="max", protocol="volume")
    config = harvard_config.get_config()
    with pytest.raises(ValueError, match="'harvard_mif' has no 3D cases: .* --protocol slices"):
        evaluation.evaluate(config, str(tmp_path / "b"), workdir=str(tmp_path), protocol="volume")
    assert evaluation.default_protocol(config) == "slices"
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
