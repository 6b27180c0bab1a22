"""Where training and evaluation examples come from, by `config.data.name`.

Returns in-memory numpy dicts in the batch convention of METHOD.md section 2;
the tf.data pipeline (pipeline.py) takes it from there. Built-in: "phantom".
"""

import numpy as np

from fuse4seg_jax.data import phantom

DATASETS = ("phantom",)


def load(data_config, seed: int):
    """(train, eval) example dicts, split by case (no case in both)."""
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
