"""Benchmark export: paired originals, ground truth and fused images as plain files."""

import csv

import file_modes
import numpy as np
import pytest
from PIL import Image

from configs import tiny
from fuse4seg_jax import benchmark_export, trainer


def _config(tmp_path):
    config = tiny.get_config()
    config.data.tfds_dir = str(tmp_path / "tfds")
    return config


def test_classical_export_writes_every_record_and_refuses_to_overwrite(tmp_path, umask_022):
    config = _config(tmp_path)
    n = benchmark_export.export(config, str(tmp_path / "out"), benchmark_export.CLASSICAL["max"])
    assert file_modes.unusual_modes(tmp_path / "out") == []  # group-readable, every file
    per_split = {"train": 8 * 4, "validation": 2 * 4}  # tiny: cases x slices per case
    assert n == sum(per_split.values())
    with open(tmp_path / "out" / "index.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n
    assert {s: sum(r["split"] == s for r in rows) for s in per_split} == per_split
    row = rows[0]
    stem = str(tmp_path / "out" / row["fused"]).removesuffix("_fused.png")
    t1ce, flair = np.load(stem + "_t1ce.npy"), np.load(stem + "_flair.npy")
    np.testing.assert_array_equal(np.load(stem + "_fused.npy"), np.maximum(t1ce, flair))
    label_png = np.asarray(Image.open(tmp_path / "out" / row["label"]))
    np.testing.assert_array_equal(label_png, np.load(stem + "_label.npy"))
    assert set(np.unique(label_png)) <= {0, 1, 2, 3}
    assert np.asarray(Image.open(stem + "_fused.png")).dtype == np.uint8
    with pytest.raises(FileExistsError, match="--overwrite"):
        benchmark_export.export(config, str(tmp_path / "out"), benchmark_export.CLASSICAL["mean"])
    benchmark_export.export(
        config, str(tmp_path / "out"), benchmark_export.CLASSICAL["mean"], overwrite=True
    )
    np.testing.assert_allclose(np.load(stem + "_fused.npy"), (t1ce + flair) / 2, atol=1e-6)
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name or p.name.endswith(".old")]


@pytest.mark.slow
def test_checkpoint_export_uses_the_trained_fusion_network(tmp_path):
    config = _config(tmp_path)
    config.train.num_steps, config.train.checkpoint_every = 2, 1
    trainer.train_and_evaluate(config, str(tmp_path / "run"))
    fuser = benchmark_export.checkpoint_fuser(config, str(tmp_path / "run"))
    benchmark_export.export(config, str(tmp_path / "out"), fuser)
    with open(tmp_path / "out" / "index.csv") as f:
        row = next(csv.DictReader(f))
    stem = str(tmp_path / "out" / row["fused"]).removesuffix("_fused.png")
    fused = np.load(stem + "_fused.npy")
    sources = np.stack([np.load(stem + "_t1ce.npy"), np.load(stem + "_flair.npy")], -1)
    np.testing.assert_allclose(fused, fuser(sources[None])[0], atol=1e-6)
    assert 0.0 <= fused.min() and fused.max() <= 1.0
    assert not np.allclose(fused, sources.max(-1))  # it is the network's, not a classical rule
    # --step: checkpoint 1 fuses differently; "best" is step 2 (its only evaluation, the last)
    by_step = {s: benchmark_export.checkpoint_fuser(config, str(tmp_path / "run"), step=s)
               for s in (1, 2, "best")}  # fmt: skip
    np.testing.assert_array_equal(by_step["best"](sources[None]), fuser(sources[None]))
    np.testing.assert_array_equal(by_step[2](sources[None]), fuser(sources[None]))
    assert not np.allclose(by_step[1](sources[None]), fuser(sources[None]), atol=1e-6)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        benchmark_export.checkpoint_fuser(_config(tmp_path), str(tmp_path / "empty"))
