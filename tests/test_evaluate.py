"""`python -m fuse4seg_jax.evaluate`: metrics of a trained run agree with the trainer's own
held-out Dice and with metric functions applied independently; classical fusion and the
Harvard pairs get fusion metrics; outputs are never overwritten without --overwrite."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import timeouts

from configs import harvard as harvard_config
from configs import tiny
from fuse4seg_jax import evaluation, trainer
from fuse4seg_jax.metrics import fusion

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARVARD = os.path.join(os.path.dirname(ROOT), "shared", "data", "harvard")


def _evaluate_cli(*args):
    """`python -m fuse4seg_jax.evaluate --config configs/tiny.py ARGS` from the root."""
    return subprocess.run(
        [sys.executable, "-m", "fuse4seg_jax.evaluate", "--config", "configs/tiny.py",
         *map(str, args)],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
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
    summary = evaluation.evaluate(config, str(out), workdir=str(workdir))
    rows = _rows(out / "metrics.csv")
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
    assert "Per 3D case" in text and "Per 2D slice" in text and "`mmif` convention" in text
    assert "| dice_wt |" in text and "| hd95_et |" in text and "| Qabf |" in text
    for name in ("cases.png", "best_worst.png", "dice_boxplot.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".eval.partial")]


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


def test_classical_fusion_gets_fusion_metrics(tmp_path):
    config = _config(tmp_path)
    out = tmp_path / "max"
    evaluation.evaluate(config, str(out), classical="max", convention="standard")
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
