"""Fusion-only training (Harvard pairs, segmentation side switched off by config)."""

import json

import numpy as np
import pytest
from PIL import Image

from configs import harvard as harvard_config
from fuse4seg_jax import trainer
from fuse4seg_jax.config_validation import ConfigError
from fuse4seg_jax.metric_writer import read_jsonl


def _write_pairs(root, n=10, size=32):
    """MRI (grey) + PET (colour) pairs with structure: blobs bright in one or the other."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        cy, cx = rng.integers(8, size - 8, 2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 20.0)
        mri = 200 * (xx > size // 2) * 0.5 + 50 * blob + rng.normal(0, 3, (size, size))
        pet = np.stack([255 * blob, 80 * blob, 30 + 0 * blob], -1)
        for sub, img in (("MRI", np.stack([mri] * 3, -1)), ("PET", pet)):
            folder = root / "MRI_PET" / sub
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{i + 11}.png")


def _config(tmp_path):
    config = harvard_config.get_config()
    config.data.manual_dir = str(tmp_path / "harvard")
    config.data.tfds_dir = str(tmp_path / "tfds")
    config.data.image_size = 32
    config.data.shuffle_buffer = 16
    config.model.fusion = "fusion_tiny"
    config.optim.learning_rate = 1e-2
    config.optim.warmup_steps = 0
    config.train.num_steps = 30
    config.train.batch_size = 8
    config.train.log_every = 10
    config.train.eval_every = 1000
    config.train.checkpoint_every = 0
    config.report.num_figure_cases = 2
    return config


@pytest.mark.slow
def test_fusion_only_training_lowers_the_fusion_loss(tmp_path):
    _write_pairs(tmp_path / "harvard")
    config = _config(tmp_path)
    scores = trainer.train_and_evaluate(config, str(tmp_path / "run"))
    rows = [
        r for r in read_jsonl(str(tmp_path / "run" / "metrics.jsonl")) if "train/loss_fuse" in r
    ]
    assert rows[-1]["train/loss_fuse"] < 0.9 * rows[0]["train/loss_fuse"]
    assert not any("train/loss_seg" in r for r in rows)  # no segmentation side at all
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["num_pairs"] == 2  # a fifth of 10 pairs held out
    assert results["eval"]["loss_fuse"] == pytest.approx(scores["loss_fuse"])
    png = (tmp_path / "run" / "figure.png").read_bytes()
    assert png[:4] == b"\x89PNG"


def test_harvard_needs_the_segmentation_side_off(tmp_path):
    config = _config(tmp_path)
    config.model.segmentation = "unet_tiny"
    with pytest.raises(ConfigError, match="model.segmentation='unet_tiny'"):
        trainer.train_and_evaluate(config, str(tmp_path / "run"))
    config = _config(tmp_path)
    config.data.modalities = ("mri", "ct")
    with pytest.raises(ConfigError, match="data.modalities"):
        trainer.train_and_evaluate(config, str(tmp_path / "run"))
