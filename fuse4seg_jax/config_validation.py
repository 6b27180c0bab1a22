"""Checks a config before anything expensive runs; each error names the key and the problem."""

from fuse4seg_jax import bilevel, objectives, steps
from fuse4seg_jax.data import sources

MODALITY_NAMES = ("t1", "t1ce", "t2", "flair")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key."""


def validate(config, num_devices: int):
    def need(ok, key, problem):
        if not ok:
            raise ConfigError(f"{key}={config_value(config, key)!r}: {problem}")

    need(config.data.name in sources.DATASETS, "data.name", f"expected one of {sources.DATASETS}")
    if config.data.name == "brats_fuse":
        need(
            bool(config.data.manual_dir),
            "data.manual_dir",
            "brats_fuse needs the BraTS folder of case folders",
        )
    need(
        config.data.eval_split in ("validation", "test"),
        "data.eval_split",
        "expected 'validation' or 'test'",
    )
    mods = tuple(config.data.modalities)
    if config.data.name == "harvard_mif":
        sets = {"MRI_CT": ("mri", "ct"), "MRI_PET": ("mri", "pet"), "MRI_SPECT": ("mri", "spect")}
        need(config.data.harvard_set in sets, "data.harvard_set", f"expected one of {list(sets)}")
        need(
            mods == sets[config.data.harvard_set],
            "data.modalities",
            f"must be {sets[config.data.harvard_set]} for {config.data.harvard_set}",
        )
        need(
            bool(config.data.manual_dir),
            "data.manual_dir",
            "harvard_mif needs the folder holding MRI_CT/, MRI_PET/, MRI_SPECT/",
        )
        need(
            config.model.segmentation == "none",
            "model.segmentation",
            "harvard_mif has no labels: set it to 'none' (fusion only)",
        )
    else:
        need(len(mods) >= 2, "data.modalities", "image-level fusion needs at least two modalities")
        need(
            all(m in MODALITY_NAMES for m in mods) and len(set(mods)) == len(mods),
            "data.modalities",
            f"expected distinct names from {MODALITY_NAMES}",
        )
    need(config.data.image_size >= 16, "data.image_size", "must be at least 16")
    need(
        config.bilevel.inner in objectives.ORIENTATIONS,
        "bilevel.inner",
        f"expected one of {objectives.ORIENTATIONS}",
    )
    need(
        config.bilevel.method in bilevel.METHODS,
        "bilevel.method",
        f"expected one of {bilevel.METHODS}",
    )
    need(config.bilevel.inner_steps >= 1, "bilevel.inner_steps", "must be at least 1")
    need(
        config.bilevel.batch_split in steps.BATCH_SPLITS,
        "bilevel.batch_split",
        f"expected one of {steps.BATCH_SPLITS}",
    )
    need(
        config.bilevel.second_order in ("fwd_rev", "grad"),
        "bilevel.second_order",
        "expected 'fwd_rev' or 'grad'",
    )
    need(
        config.model.seg_mode in ("softmax", "regions"),
        "model.seg_mode",
        "expected 'softmax' or 'regions'",
    )
    halves = config.bilevel.batch_split == "halves" and config.model.segmentation != "none"
    rows = 2 * num_devices if halves else num_devices
    need(
        config.train.batch_size % rows == 0,
        "train.batch_size",
        f"must be a multiple of {rows} ({num_devices} devices"
        + (", two halves per device)" if rows != num_devices else ")"),
    )
    need(config.train.num_steps >= 0, "train.num_steps", "must be non-negative")
    for key in ("log_every", "eval_every"):
        need(config.train[key] >= 1, f"train.{key}", "must be at least 1")
    need(
        config.train.checkpoint_every >= 0,
        "train.checkpoint_every",
        "must be >= 0 (0 = only at the end)",
    )


def config_value(config, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node
