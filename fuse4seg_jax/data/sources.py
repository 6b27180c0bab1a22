"""Where training and evaluation examples come from, by `config.data.name`.

Both datasets are TFDS datasets, built on first use into `data.tfds_dir` and
read back into in-memory numpy dicts in the batch convention of docs/method.md
section 2; the tf.data pipeline (pipeline.py) takes it from there.
- "phantom": the built-in synthetic data (data/tfds_phantom.py), generated.
- "harvard_mif": Harvard atlas pairs of set `data.harvard_set` from the folder
  `data.manual_dir` (data/tfds_harvard.py); no labels (fusion only). Pairs are
  split by a seeded permutation (`data.split_seed`): a fifth held out.
- "brats_fuse": BraTS-Fuse (data/tfds_brats_fuse.py), built from the BraTS
  folder `data.manual_dir`. Training slices stay whole (the pipeline crops
  them at random to `data.image_size`); held-out slices are centre-cropped.
- "brats_sim": simulated BraTS-like cases (data/tfds_brats_sim.py, fuse4seg_jax/sim),
  generated, no folder needed; slices as brats_fuse's.
Splits (`DATASET_SPLITS`): phantom and harvard_mif have train and validation only,
brats_fuse also test; asking for a split a dataset lacks (data.eval_split, or
evaluate's --split) is a one-line ValueError naming the splits it has. A built
dataset's name includes a fingerprint of its source folder (path, file list, sizes,
mtimes; see tfds_brats_fuse.py), so a changed data.manual_dir is never served from
the dataset built from the old folder.
TensorFlow is imported only when a dataset is loaded.
"""

import os

import numpy as np

from fuse4seg_jax.data.errors import DataError

DATASETS = ("phantom", "brats_fuse", "brats_sim", "harvard_mif")
SPLITS = ("train", "validation", "test")
HELD_OUT_SPLITS = SPLITS[1:]  # what data.eval_split may name
# The splits each dataset has: the phantom is generated as train + validation; the Harvard
# pairs are cut into train + one held-out fifth, called validation; only brats_fuse has test.
DATASET_SPLITS = {
    "phantom": ("train", "validation"),
    "brats_fuse": SPLITS,
    "brats_sim": SPLITS,
    "harvard_mif": ("train", "validation"),
}


def check_split(data_config, split: str):
    """ValueError (one line) if dataset data.name has no split `split`, naming those it has
    (never another split's examples under this name)."""
    have = DATASET_SPLITS.get(data_config.name)
    if have is not None and split not in have:
        raise ValueError(
            f"split {split!r}: dataset {data_config.name} has no such split; "
            f"its splits are {', '.join(have)}"
        )


def load(data_config, seed: int):
    """(train, eval) example dicts, split by case (no case in both); the eval part is
    split data.eval_split (ValueError if the dataset does not have it)."""
    check_split(data_config, data_config.eval_split)
    if data_config.name in ("brats_fuse", "brats_sim"):
        return _load_brats_fuse(data_config)
    if data_config.name == "harvard_mif":
        return _load_harvard(data_config)
    if data_config.name != "phantom":
        raise ValueError(f"data.name={data_config.name!r}: expected one of {DATASETS}")
    if data_config.num_eval_cases < 1:
        raise ValueError("data.num_eval_cases must be at least 1")
    from fuse4seg_jax.data.phantom import FOV_MM

    builder = prepared_builder(data_config, seed)
    train, held_out = _read(builder, "train", None), _read(builder, "validation", None)
    for part in (train, held_out):  # square pixels of FOV_MM / image_size mm
        part["spacing"] = np.full(
            (len(part["label"]), 2), FOV_MM / data_config.image_size, np.float32
        )
    return train, held_out


def prepared_builder(data_config, seed: int):
    """The built TFDS builder of a labelled dataset (phantom, brats_fuse or brats_sim), built
    if needed."""
    from fuse4seg_jax.data import brats, building, tfds_brats_fuse, tfds_phantom  # TensorFlow

    building.quiet_tfds()  # before the builders are made: they log their configs

    if data_config.name in ("phantom", "brats_sim"):
        if data_config.name == "phantom":
            builder = tfds_phantom.make_builder(data_config, seed)
        else:
            from fuse4seg_jax.data import tfds_brats_sim

            builder = tfds_brats_sim.make_builder(data_config)
        what = "phantom" if data_config.name == "phantom" else "simulated BraTS-like"
        return building.prepare(builder, tfds_brats_fuse.download_config(None), what)
    if data_config.name != "brats_fuse":
        raise ValueError(
            f"data.name={data_config.name!r}: expected phantom, brats_fuse or brats_sim"
        )
    if not data_config.manual_dir:
        raise ValueError("data.manual_dir is empty: give the BraTS folder of case folders")
    manual_dir = os.path.expanduser(data_config.manual_dir)
    if not os.path.isdir(manual_dir):
        raise DataError(data_config.manual_dir, "BraTS folder (data.manual_dir) not found")
    brats.find_cases(manual_dir)  # an empty folder: our DataError, not TFDS's AssertionError
    builder = tfds_brats_fuse.make_builder(data_config)
    config = tfds_brats_fuse.download_config(manual_dir)
    return building.prepare(builder, config, f"BraTS-Fuse ({data_config.manual_dir})")


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


def _read(builder, split: str, crop):
    """A built split as one numpy dict sorted by (case id, slice index), whatever order
    TFDS stored it in (its writer shuffles by key hash); `crop` centre-crops (None: whole)."""
    from fuse4seg_jax.data.tfds_brats_fuse import as_numpy

    rows = list(as_numpy(builder, split))
    if not rows:
        raise DataError(builder.data_dir, f"the {split!r} split is empty")
    rows.sort(key=lambda r: (r["case_id"], r["slice_index"]))
    case_ids = [r["case_id"] for r in rows]
    extra = {}
    if "spacing" in rows[0]:  # BraTS-Fuse: in-plane voxel size in mm
        extra["spacing"] = np.stack([r["spacing"] for r in rows]).astype(np.float32)
    return extra | {
        "modalities": _centre_crop(np.stack([r["modalities"] for r in rows]), crop),
        "label": _centre_crop(np.stack([r["label"] for r in rows]).astype(np.int32), crop),
        "mask": _centre_crop(np.stack([r["mask"] for r in rows]).astype(np.float32), crop),
        "case_id": np.array([c.decode() if isinstance(c, bytes) else c for c in case_ids]),
        "slice_index": np.array([r["slice_index"] for r in rows], np.int32),
    }


def _load_brats_fuse(data_config):
    builder = prepared_builder(data_config, 0)
    return _read(builder, "train", None), _read(
        builder, data_config.eval_split, data_config.image_size
    )


def _load_harvard(data_config):
    from fuse4seg_jax.data import harvard, tfds_harvard  # imports TensorFlow: only when asked

    root = os.path.expanduser(data_config.manual_dir)
    rows = list(
        tfds_harvard.tfds.as_numpy(
            tfds_harvard.build(root, data_config.harvard_set, data_config.tfds_dir).as_dataset(
                split="test", shuffle_files=False
            )
        )
    )
    rows.sort(key=lambda r: (len(r["pair_id"]), r["pair_id"]))  # numeric ids in order
    first = rows[0]["modalities"].shape
    for r in rows:
        if r["modalities"].shape != first:
            mri = os.path.join(
                root, data_config.harvard_set, harvard.SETS[data_config.harvard_set][0], "{}.png"
            )
            (h0, w0), (h, w) = first[:2], r["modalities"].shape[:2]
            raise DataError(
                mri.format(r["pair_id"].decode()),
                f"size {w}x{h} (WxH) differs from {w0}x{h0} of "
                f"{mri.format(rows[0]['pair_id'].decode())}; a set must have one image size",
            )
    mods = np.stack([r["modalities"] for r in rows])
    examples = {
        "modalities": mods,
        "label": np.zeros(mods.shape[:3], np.int32),  # no labels: fusion only
        "mask": (mods.max(axis=-1) > 0).astype(np.float32),
        "chroma": np.stack([r["chroma"] for r in rows]),
        "case_id": np.array([r["pair_id"].decode() for r in rows]),
        "slice_index": np.zeros(len(rows), np.int32),
    }
    order = np.random.default_rng(data_config.split_seed).permutation(len(rows))
    n_eval = max(1, len(rows) // 5)
    held_out, train = np.sort(order[:n_eval]), np.sort(order[n_eval:])
    size = data_config.image_size
    eval_part = {k: v[held_out] for k, v in examples.items()}
    for key in ("modalities", "label", "mask", "chroma"):
        eval_part[key] = _centre_crop(eval_part[key], size)
    return {k: v[train] for k, v in examples.items()}, eval_part
