"""What a run trains and how, resolved once from its config: `recipe.build(config)`.

The kind of run (`run_kind`) comes from `model.kind`, and `model.segmentation = "none"`
for fusion only:

- "fuse4seg": the two networks coupled by the bi-level method (steps.py).
- "fusion_only": the fusion network alone on L_fuse (e.g. Harvard pairs, no labels).
- the baselines (baselines.py): "two_stage", "classical", "single" (image-level) and
  "early_fusion", "dual_encoder" (feature-level, no fused image).

`build` returns a `Recipe`: the networks, their functions, the step functions with every
hyperparameter bound (nothing in a step reads the config), and how to make a fresh state.
The trainer, inference, evaluation and the benchmarks take a Recipe; only this module
decides from the config which pieces a kind of run has.
"""

import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from fuse4seg_jax import baselines, bilevel, objectives, optimizers, steps
from fuse4seg_jax.models import get_fusion_model, get_segmentation_model
from fuse4seg_jax.state import NetState, TrainState

MODEL_KINDS = ("fuse4seg", "two_stage", "classical", "single", "early_fusion", "dual_encoder")
BASELINE_KINDS = MODEL_KINDS[1:]
RUN_KINDS = MODEL_KINDS + ("fusion_only",)
FEATURE_LEVEL = ("early_fusion", "dual_encoder")
TRAINED_FUSION = ("fuse4seg", "fusion_only", "two_stage")
# model.compute_dtype: what the networks compute in. Parameters, optimiser states, losses
# and hypergradient arithmetic stay float32 (dtypes.py) whatever it is.
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def run_kind(config) -> str:
    """One of RUN_KINDS (module docstring)."""
    if config.model.kind == "fuse4seg" and config.model.segmentation == "none":
        return "fusion_only"
    return config.model.kind


def seg_model_name(config) -> str:
    """The model-zoo name of the segmentation network (feature-level kinds add a prefix)."""
    prefix = {"dual_encoder": "dual_", "early_fusion": "early_"}.get(config.model.kind, "")
    return prefix + config.model.segmentation


def two_stage_fusion_steps(config) -> int:
    """two_stage: the number of stage-1 (fusion-only) steps (train.fusion_steps, 0 = half)."""
    n = config.train.fusion_steps
    return n if n > 0 else config.train.num_steps // 2


def uses_batch_halves(config) -> bool:
    """True when each level of the bi-level step sees half of every global batch."""
    return run_kind(config) == "fuse4seg" and config.bilevel.batch_split == "halves"


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A kind of run, resolved from a config (module docstring).

    kind: one of RUN_KINDS. fusion_model / seg_model: Flax modules (None when the kind has
    no such trained network). parts: the pure functions of the networks and losses,
    objectives.Objectives (fuse4seg, fusion_only) or baselines.Pipeline; both have
    `fuse(theta, batch)` (None for feature-level kinds) and `segment(phi, x)`.
    train_step(state, batch) -> (state, metrics); eval_step(state, batch) -> outputs with
    "fused" (B, H, W) and/or "pred" (B, H, W) int32 (fusion-only: "fused", "loss_fuse").
    init_state() -> a fresh TrainState from config.seed (jit it with the shardings wanted).
    diagnose_step(state, batch) -> hypergradient diagnostics against a reference (fuse4seg
    only, else None; the trainer runs it every bilevel.diagnose_every steps).
    description: one line saying what is trained and how (`describe` adds parameter counts).
    """

    kind: str
    fusion_model: Any
    seg_model: Any
    parts: Any
    train_step: Callable
    eval_step: Callable
    init_state: Callable[[], TrainState]
    diagnose_step: Callable | None
    description: str

    def describe(self, state: TrainState) -> str:
        """`description` with the parameter count of each network of `state`."""
        count = lambda net: sum(x.size for x in jax.tree.leaves(net.params))
        return self.description.format(n_fuse=count(state.fusion), n_seg=count(state.seg))


def build(config) -> Recipe:
    """The Recipe of `config` (validated first: config_validation.validate)."""
    kind = run_kind(config)
    dtype = COMPUTE_DTYPES[config.model.compute_dtype]
    fusion_model = None
    if kind in TRAINED_FUSION:
        fusion_model = get_fusion_model(
            config.model.fusion, dtype=dtype, merge=config.model.get("fusion_merge", "symmetric")
        )  # (.get: configs saved by runs older than the key)
    seg_model = None
    if kind != "fusion_only":
        num_out = 4 if config.model.seg_mode == "softmax" else 3
        seg_model = get_segmentation_model(seg_model_name(config), num_classes=num_out, dtype=dtype)
    make = {"fuse4seg": _bilevel, "fusion_only": _fusion_only}.get(kind, _baseline)
    return make(kind, config, fusion_model, seg_model)


def bilevel_coupling(config) -> steps.Coupling:
    """How config.bilevel couples the two networks in the bi-level train step."""
    b = config.bilevel
    return steps.Coupling(
        inner=b.inner,
        method=b.method,
        options=bilevel.method_options(b.method, b),
        inner_opt=optimizers.inner(b, config.optim, config.train.num_steps),
        batch_split=b.batch_split,
    )


def _bilevel(kind, config, fusion_model, seg_model) -> Recipe:
    b = config.bilevel
    objs = objectives.build(fusion_model, seg_model, config.loss, b, config.model.seg_mode)
    outer_tx = optimizers.outer(config.optim, config.train.num_steps)
    coupling = bilevel_coupling(config)
    reference = bilevel.method_options("implicit_cg", b)
    reference |= {"cg_steps": b.diagnose_cg_steps, "cg_damping": b.diagnose_damping}
    diagnose = partial(steps.diagnose_step, objs=objs, coupling=coupling, reference=reference,
                       max_residual=b.get("diagnose_max_residual", 0.1))  # fmt: skip
    # (.get: configs saved by runs older than the key, which predict rebuilds from)
    inits = {"outer": outer_tx.init, "inner": coupling.inner_opt.init}
    roles = ("inner", "outer") if b.inner == "fusion" else ("outer", "inner")
    return Recipe(
        kind=kind,
        fusion_model=fusion_model,
        seg_model=seg_model,
        parts=objs,
        train_step=partial(steps.train_step, objs=objs, outer_tx=outer_tx, coupling=coupling),
        eval_step=partial(steps.eval_step, objs=objs, seg_mode=config.model.seg_mode),
        init_state=partial(
            _init_state, config, fusion_model, seg_model, inits[roles[0]], inits[roles[1]]
        ),
        diagnose_step=diagnose,
        description=(
            f"fusion {config.model.fusion} ({{n_fuse:,}} params), segmentation "
            f"{seg_model_name(config)} ({{n_seg:,}} params); bi-level: inner={b.inner}, "
            f"method={b.method}, inner_steps={b.inner_steps}"
        ),
    )


def _fusion_only(kind, config, fusion_model, seg_model) -> Recipe:
    objs = objectives.build_fusion_only(fusion_model, config.loss)
    outer_tx = optimizers.outer(config.optim, config.train.num_steps)
    return Recipe(
        kind=kind,
        fusion_model=fusion_model,
        seg_model=None,
        parts=objs,
        train_step=partial(steps.fusion_train_step, objs=objs, outer_tx=outer_tx),
        eval_step=partial(steps.fusion_eval_step, objs=objs),
        init_state=partial(_init_state, config, fusion_model, None, outer_tx.init, None),
        diagnose_step=None,
        description=f"fusion {config.model.fusion} ({{n_fuse:,}} params); fusion only "
        "(L_fuse, optax)",
    )


def _baseline(kind, config, fusion_model, seg_model) -> Recipe:
    pipe = baselines.build(kind, config, fusion_model, seg_model)
    total, fusion_tx, n_fuse = config.train.num_steps, None, 0
    seg_tx = optimizers.outer(config.optim, total)
    if kind == "two_stage":  # each network's schedule spans its own steps
        n_fuse = two_stage_fusion_steps(config)
        fusion_tx = optimizers.outer(config.optim, n_fuse)
        seg_tx = optimizers.outer(config.optim, max(total - n_fuse, 1))
    seg = f"segmentation {seg_model_name(config)} ({{n_seg:,}} params)"
    fusion = f"fusion {config.model.fusion} ({{n_fuse:,}} params)"
    how = {
        "two_stage": f"{fusion}, {seg}; two_stage: fusion alone for {n_fuse} steps, then frozen",
        "classical": f"classical fusion '{config.model.classical}', {seg}",
        "single": f"single modality '{config.model.single_modality}', {seg}",
        "early_fusion": f"feature-level early fusion: {seg} on all modalities",
        "dual_encoder": f"feature-level dual-encoder {seg}",
    }
    return Recipe(
        kind=kind,
        fusion_model=fusion_model,
        seg_model=seg_model,
        parts=pipe,
        train_step=baselines.make_train_step(kind, pipe, fusion_tx, seg_tx, n_fuse),
        eval_step=partial(baselines.eval_step, pipe=pipe, seg_mode=config.model.seg_mode),
        init_state=partial(
            _init_state,
            config,
            fusion_model,
            seg_model,
            fusion_tx.init if fusion_tx else None,
            seg_tx.init,
        ),  # fmt: skip
        diagnose_step=None,
        description=f"baseline {kind}: {how[kind]}",
    )


def _init_state(config, fusion_model, seg_model, fusion_opt_init, seg_opt_init) -> TrainState:
    """A fresh TrainState: each network initialised from config.seed, each optimiser state
    by the optimiser of that network's role; absent networks are NetState({}, ())."""
    # Three keys, as when the state also held a PRNG key: parameters stay as they were.
    k_fuse, k_seg, _ = jax.random.split(jax.random.PRNGKey(config.seed), 3)
    size, m = config.data.image_size, len(config.data.modalities)
    fusion = seg = NetState({}, ())
    if fusion_model is not None:
        theta = fusion_model.init(k_fuse, jnp.zeros((1, size, size, m), jnp.float32))["params"]
        fusion = NetState(theta, fusion_opt_init(theta))
    if seg_model is not None:
        channels = m if config.model.kind in FEATURE_LEVEL else 1
        x = jnp.zeros((1, size, size, channels), jnp.float32)
        phi = seg_model.init(k_seg, x)["params"]
        seg = NetState(phi, seg_opt_init(phi))
    return TrainState(step=jnp.zeros((), jnp.int32), fusion=fusion, seg=seg)
