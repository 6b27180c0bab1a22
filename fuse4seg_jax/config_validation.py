"""Checks a config before anything expensive runs; each error names the key and the problem."""

import jax

from fuse4seg_jax import bilevel, classical, objectives, optimizers, recipe, steps
from fuse4seg_jax.data import sources
from fuse4seg_jax.data.brats import MODALITIES
from fuse4seg_jax.models.fusion import MERGES


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key."""


def validate(config, num_devices: int):
    """Raises ConfigError for the first value that cannot work; nothing has been written or
    computed yet. num_devices: the devices on the mesh's data axis (batches split over them)."""

    def need(ok, key, problem):
        if not ok:
            raise ConfigError(f"{key}={config_value(config, key)!r}: {problem}")

    def one_of(key, choices):
        choices = tuple(choices)
        need(config_value(config, key) in choices, key, f"expected one of {choices}")

    need(config.data.name in sources.DATASETS, "data.name", f"expected one of {sources.DATASETS}")
    if config.data.name == "brats_fuse":
        need(
            bool(config.data.manual_dir),
            "data.manual_dir",
            "brats_fuse needs the BraTS folder of case folders",
        )
    if config.data.name == "brats_sim":
        one_of("data.sim_spacing_mm", (1.0, 2.0))
        need(config.data.sim_seed >= 0, "data.sim_seed", "must be >= 0")
        need(
            config.data.image_size <= 240 / config.data.sim_spacing_mm,
            "data.image_size",
            f"larger than the {240 / config.data.sim_spacing_mm:g}-pixel simulated slices",
        )
        for key in ("num_train_cases", "num_eval_cases"):
            need(config.data[key] >= 1, f"data.{key}", "must be at least 1")
    one_of("data.eval_split", sources.HELD_OUT_SPLITS)
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
            all(m in MODALITIES for m in mods) and len(set(mods)) == len(mods),
            "data.modalities",
            f"expected distinct names from {MODALITIES}",
        )
    need(config.data.image_size >= 16, "data.image_size", "must be at least 16")
    _validate_kind(config, need)
    _validate_method_options(config, need)
    one_of("bilevel.inner", objectives.ORIENTATIONS)
    one_of("bilevel.method", bilevel.METHODS)
    need(config.bilevel.inner_steps >= 1, "bilevel.inner_steps", "must be at least 1")
    one_of("bilevel.batch_split", steps.BATCH_SPLITS)
    one_of("bilevel.second_order", bilevel.SECOND_ORDER)
    one_of("model.compute_dtype", recipe.COMPUTE_DTYPES)
    one_of("model.fusion_merge", MERGES)
    one_of("bilevel.inner_schedule", optimizers.INNER_SCHEDULES)
    need(
        config.model.seg_mode in ("softmax", "regions"),
        "model.seg_mode",
        "expected 'softmax' or 'regions'",
    )
    visible = jax.device_count()
    need(
        0 <= config.mesh.num_devices <= visible,
        "mesh.num_devices",
        f"must be between 0 (all) and the {visible} visible devices",
    )
    for key in ("num_train_cases", "num_eval_cases", "slices_per_case"):
        need(config.data[key] >= 1, f"data.{key}", "must be at least 1")
    need(config.optim.learning_rate > 0, "optim.learning_rate", "must be positive")
    need(config.optim.warmup_steps >= 0, "optim.warmup_steps", "must be non-negative")
    need(config.optim.weight_decay >= 0, "optim.weight_decay", "must be non-negative")
    need(config.optim.grad_clip >= 0, "optim.grad_clip", "must be non-negative (0 = off)")
    for key in ("batch_size", "eval_batch_size"):
        need(config.train[key] >= 1, f"train.{key}", "must be at least 1")
    need(
        config.train.eval_batch_size % num_devices == 0,
        "train.eval_batch_size",
        f"must be a multiple of the {num_devices} devices",
    )
    need(config.train.keep_checkpoints >= 1, "train.keep_checkpoints", "must be at least 1")
    need(
        config.train.check_replicas_every >= 0,
        "train.check_replicas_every",
        "must be >= 0 (0 = never)",
    )
    rows = 2 * num_devices if recipe.uses_batch_halves(config) else num_devices
    need(
        config.train.batch_size % rows == 0,
        "train.batch_size",
        f"must be a multiple of {rows} ({num_devices} devices"
        + (", two halves per device)" if rows != num_devices else ")"),
    )
    one_of("optim.name", optimizers.OUTER_NAMES)
    one_of("optim.schedule", optimizers.SCHEDULES)
    need(config.train.num_steps >= 0, "train.num_steps", "must be non-negative")
    for key in ("log_every", "eval_every"):
        need(config.train[key] >= 1, f"train.{key}", "must be at least 1")
    need(
        config.train.checkpoint_every >= 0,
        "train.checkpoint_every",
        "must be >= 0 (0 = only at the end)",
    )


def _validate_kind(config, need):
    kind = config.model.kind
    need(kind in recipe.MODEL_KINDS, "model.kind", f"expected one of {recipe.MODEL_KINDS}")
    if kind != "fuse4seg":
        need(
            config.model.segmentation != "none",
            "model.segmentation",
            f"model.kind={kind!r} trains a segmentation network: name one",
        )
    if kind == "classical":
        need(
            config.model.classical in classical.METHODS,
            "model.classical",
            f"expected one of {tuple(classical.METHODS)}",
        )
    if kind == "single":
        need(
            config.model.single_modality in tuple(config.data.modalities),
            "model.single_modality",
            f"expected one of data.modalities {tuple(config.data.modalities)}",
        )
    if kind == "two_stage":
        need(
            0 <= config.train.fusion_steps <= config.train.num_steps,
            "train.fusion_steps",
            "must be between 0 (= num_steps // 2) and train.num_steps",
        )


def _validate_method_options(config, need):
    """The options of the configured hypergradient method (and the diagnostics)."""
    b = config.bilevel
    method = b.method
    need(b.inner_lr > 0, "bilevel.inner_lr", "must be positive")
    need(
        b.inner_optimizer in bilevel.INNER_OPTIMIZERS,
        "bilevel.inner_optimizer",
        f"expected one of {bilevel.INNER_OPTIMIZERS}",
    )
    need(0 <= b.inner_momentum < 1, "bilevel.inner_momentum", "must be in [0, 1)")
    if method == "unrolled":
        need(
            b.truncate_steps == 0 or b.truncate_steps >= b.inner_steps,
            "bilevel.truncate_steps",
            f"must be 0 (off) or at least bilevel.inner_steps={b.inner_steps}",
        )
    if method == "implicit_cg":
        need(b.cg_steps >= 1, "bilevel.cg_steps", "must be at least 1")
        need(b.cg_damping >= 0, "bilevel.cg_damping", "must be non-negative")
    if method == "implicit_neumann":
        need(b.neumann_steps >= 1, "bilevel.neumann_steps", "must be at least 1")
        need(b.neumann_alpha > 0, "bilevel.neumann_alpha", "must be positive (< 2/lambda_max)")
    if method == "darts":
        need(b.darts_xi > 0, "bilevel.darts_xi", "must be positive")
    if method == "bdl":
        need(b.bdl_eps >= 0, "bilevel.bdl_eps", "must be non-negative")
        need(b.bdl_damping >= 0, "bilevel.bdl_damping", "must be non-negative")
    need(b.diagnose_every >= 0, "bilevel.diagnose_every", "must be >= 0 (0 = off)")
    if b.diagnose_every:
        need(b.diagnose_cg_steps >= 1, "bilevel.diagnose_cg_steps", "must be at least 1")
        need(b.diagnose_damping >= 0, "bilevel.diagnose_damping", "must be non-negative")
        need(b.diagnose_max_residual > 0, "bilevel.diagnose_max_residual", "must be positive")
    for key in ("mu", "beta"):
        need(b[key] >= 0, f"bilevel.{key}", "must be non-negative")


def config_value(config, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node
