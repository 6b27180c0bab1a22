"""Where training and evaluation examples come from, by `config.data.name`.

Returns in-memory numpy dicts in the batch convention of METHOD.md section 2;
the tf.data pipeline (pipeline.py) takes it from there.
- "phantom": the built-in synthetic data, generated on the fly.
- "brats_fuse": the BraTS-Fuse TFDS dataset, built on first use from the BraTS
  folder `data.manual_dir` (data/tfds_brats_fuse.py), slices centre-cropped to
  `data.image_size`.
"""

import os

import numpy as np

from fuse4seg_jax.data import phantom
from fuse4seg_jax.data.errors import DataError

DATASETS = ("phantom", "brats_fuse")


def load(data_config, seed: int):
    """(train, eval) example dicts, split by case (no case in both)."""
    if data_config.name == "brats_fuse":
        return _load_brats_fuse(data_config)
    if data_config.name != "phantom":
        raise ValueError(f"data.name={data_config.name!r}: expected one of {DATASETS}")
    num_train, num_eval = data_config.num_train_cases, data_config.num_eval_cases
    examples = phantom.make_dataset(
        seed,
        num_cases=num_train + num_eval,
        slices_per_case=data_config.slices_per_case,
        image_size=data_config.image_size,
        modalities=tuple(data_config.modalities),
    )
    is_train = examples["case_id"] < num_train
    train = {k: v[is_train] for k, v in examples.items()}
    held_out = {k: v[~is_train] for k, v in examples.items()}
    if not len(held_out["label"]):
        raise ValueError("data.num_eval_cases must be at least 1")
    return train, held_out


def check_batch(batch: dict, num_modalities: int):
    """Fail fast on arrays that do not follow the batch convention."""
    mods, label = batch["modalities"], batch["label"]
    if mods.ndim != 4 or mods.shape[-1] != num_modalities:
        raise ValueError(
            f"modalities have shape {mods.shape}, expected (N, H, W, {num_modalities})"
        )
    if not np.isfinite(mods).all():
        raise ValueError("modalities contain NaN or infinite values")
    bad = np.setdiff1d(np.unique(label), np.arange(4))
    if bad.size:
        raise ValueError(f"unexpected label values {bad.tolist()}: expected 0..3")


def _centre_crop(x, size):
    if size is None:
        return x
    h, w = x.shape[1:3]
    if h < size or w < size:
        raise ValueError(f"data.image_size={size} is larger than the {h}x{w} slices")
    top, left = (h - size) // 2, (w - size) // 2
    return x[:, top : top + size, left : left + size]


def _load_brats_fuse(data_config):
    from fuse4seg_jax.data import tfds_brats_fuse  # imports TensorFlow: only when asked

    if not data_config.manual_dir:
        raise ValueError("data.manual_dir is empty: give the BraTS folder of case folders")
    builder = tfds_brats_fuse.make_builder(data_config)
    if not os.path.isdir(os.path.expanduser(data_config.manual_dir)):
        raise DataError(data_config.manual_dir, "BraTS folder (data.manual_dir) not found")
    builder.download_and_prepare(
        download_config=tfds_brats_fuse.download_config(os.path.expanduser(data_config.manual_dir))
    )
    out = []
    for split in ("train", data_config.eval_split):
        rows = list(tfds_brats_fuse.as_numpy(builder, split))
        if not rows:
            raise DataError(data_config.manual_dir, f"the {split!r} split of brats_fuse is empty")
        # training slices stay whole (the pipeline crops them at random); held-out ones
        # are centre-cropped once here
        size = data_config.image_size if split != "train" else None
        arrays = {
            "modalities": _centre_crop(np.stack([r["modalities"] for r in rows]), size),
            "label": _centre_crop(np.stack([r["label"] for r in rows]).astype(np.int32), size),
            "mask": _centre_crop(np.stack([r["mask"] for r in rows]).astype(np.float32), size),
            "case_id": np.array([r["case_id"].decode() for r in rows]),
            "slice_index": np.array([r["slice_index"] for r in rows], np.int32),
        }
        out.append(arrays)
    return tuple(out)
