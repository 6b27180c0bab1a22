"""Pure train and eval steps built from the models, losses and the bi-level core.

Hyperparameters are bound once (`make_steps` returns
plain functions of arrays), so each step compiles once. No logging, no host
syncs, no global config inside a step.

Which batch feeds which level (config.bilevel.batch_split):
- "halves": even rows of the global batch feed the inner objective f (its
  gradient, Hessian and mixed products), odd rows the outer objective F. The
  interleaved split keeps both halves evenly spread over the devices.
- "same": both levels see the whole batch.
"""

import functools

import jax
import jax.numpy as jnp
import optax

from fuse4seg_jax import baselines, bilevel, objectives, regions
from fuse4seg_jax.models import get_fusion_model, get_segmentation_model
from fuse4seg_jax.state import NetState, TrainState

BATCH_SPLITS = ("halves", "same")
# model.compute_dtype: what the networks compute in. Parameters, optimiser states, losses
# and hypergradient arithmetic stay float32 (dtypes.py) whatever it is.
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def fusion_only(config) -> bool:
    """`model.segmentation = "none"` switches the segmentation side off (e.g. Harvard pairs,
    which have no labels): the fusion network alone is trained on L_fuse."""
    return config.model.segmentation == "none"


def bilevel_kind(config) -> bool:
    """True for Fuse4Seg itself (the bi-level steps here); False for the baselines."""
    return baselines.kind_of(config) == "fuse4seg"


def build_models(config):
    """(fusion_model, seg_model) named in config.model; seg_model is None when fusion-only,
    fusion_model None for baselines without a trained fusion network."""
    kind = baselines.kind_of(config)
    dtype = {"dtype": COMPUTE_DTYPES[config.model.get("compute_dtype", "float32")]}
    fusion = None
    if kind in baselines.TRAINED_FUSION:
        fusion = get_fusion_model(config.model.fusion, **dtype)
    if fusion_only(config):
        return fusion, None
    num_out = 4 if config.model.seg_mode == "softmax" else 3
    seg = get_segmentation_model(baselines.seg_model_name(config), num_classes=num_out, **dtype)
    return fusion, seg


def make_outer_optimizer(optim_config, num_steps: int) -> optax.GradientTransformation:
    """The optax optimiser of the outer network: warmup, schedule, clipping."""
    lr, warmup = optim_config.learning_rate, optim_config.warmup_steps
    if optim_config.schedule == "cosine":
        main = optax.cosine_decay_schedule(lr, max(num_steps - warmup, 1), alpha=0.01)
    elif optim_config.schedule == "constant":
        main = optax.constant_schedule(lr)
    else:
        raise ValueError(f"optim.schedule={optim_config.schedule!r}: expected cosine or constant")
    schedule = main
    if warmup > 0:  # linear warmup from lr / warmup, so even the first step moves
        schedule = optax.join_schedules(
            [optax.linear_schedule(lr / warmup, lr, warmup), main], [warmup]
        )
    makers = {
        "adam": lambda: optax.adam(schedule),
        "adamw": lambda: optax.adamw(schedule, weight_decay=optim_config.weight_decay),
        "sgd": lambda: optax.sgd(schedule, momentum=0.9),
    }
    if optim_config.name not in makers:
        raise ValueError(f"optim.name={optim_config.name!r}: expected one of {sorted(makers)}")
    chain = [optax.clip_by_global_norm(optim_config.grad_clip)] if optim_config.grad_clip else []
    return optax.chain(*chain, makers[optim_config.name]())


def make_inner_optimizer(bilevel_config) -> bilevel.InnerOptimizer:
    kwargs = {}
    if bilevel_config.inner_optimizer == "sgd":
        kwargs["momentum"] = bilevel_config.inner_momentum
    return bilevel.make_inner_optimizer(
        bilevel_config.inner_optimizer, bilevel_config.inner_lr, **kwargs
    )


def init_state(config, fusion_model, seg_model, outer_tx, inner_opt) -> TrainState:
    """A fresh TrainState: both networks initialised from config.seed.

    For the baselines `outer_tx` is the (fusion_tx, seg_tx) pair of make_steps."""
    if not bilevel_kind(config):
        return baselines.init_state(config, fusion_model, seg_model, outer_tx)
    rng = jax.random.PRNGKey(config.seed)
    k_fuse, k_seg, k_state = jax.random.split(rng, 3)
    size = config.data.image_size
    x = jnp.zeros((1, size, size, len(config.data.modalities)), jnp.float32)
    theta = fusion_model.init(k_fuse, x)["params"]
    if seg_model is None:  # fusion-only: the fusion network is trained by optax
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            rng=k_state,
            fusion=NetState(theta, outer_tx.init(theta)),
            seg=NetState({}, ()),
        )
    phi = seg_model.init(k_seg, jnp.zeros((1, size, size, 1), jnp.float32))["params"]
    if config.bilevel.inner == "fusion":
        fusion_net = NetState(theta, inner_opt.init(theta))
        seg_net = NetState(phi, outer_tx.init(phi))
    else:
        fusion_net = NetState(theta, outer_tx.init(theta))
        seg_net = NetState(phi, inner_opt.init(phi))
    return TrainState(step=jnp.zeros((), jnp.int32), rng=k_state, fusion=fusion_net, seg=seg_net)


def split_batch(batch: dict, how: str):
    """(inner_batch, outer_batch) from one global batch; see the module docstring."""
    if how == "same":
        return batch, batch
    if how != "halves":
        raise ValueError(f"bilevel.batch_split={how!r}: expected one of {BATCH_SPLITS}")
    pairs = {k: v.reshape(v.shape[0] // 2, 2, *v.shape[1:]) for k, v in batch.items()}
    return {k: v[:, 0] for k, v in pairs.items()}, {k: v[:, 1] for k, v in pairs.items()}


def _hypergradient(method, state, batch, objs, inner_opt, bilevel_config, **overrides):
    """bilevel.hypergradient for this state and batch, options from the config."""
    inner_batch, outer_batch = split_batch(batch, bilevel_config.batch_split)
    outer_net, inner_net = state.nets(bilevel_config.inner)
    options = dict(
        inner_steps=bilevel_config.inner_steps,
        remat=bilevel_config.remat,
        second_order=bilevel_config.second_order,
        truncate_steps=bilevel_config.truncate_steps if method == "unrolled" else 0,
        cg_steps=bilevel_config.cg_steps,
        cg_damping=bilevel_config.cg_damping,
        neumann_steps=bilevel_config.neumann_steps,
        neumann_alpha=bilevel_config.neumann_alpha,
        darts_xi=bilevel_config.darts_xi,
        darts_fd=bilevel_config.darts_fd,
        bdl_eps=bilevel_config.bdl_eps,
    )
    return bilevel.hypergradient(
        method,
        objs.inner_loss,
        objs.outer_loss,
        outer_net.params,
        inner_net.params,
        inner_batch,
        outer_batch,
        inner_optimizer=inner_opt,
        inner_opt_state=inner_net.opt_state,
        **(options | overrides),
    )


def diagnose_step(state: TrainState, batch: dict, *, objs, inner_opt, bilevel_config):
    """The configured hypergradient against a high-accuracy reference on this batch.

    Reference: implicit_cg with `diagnose_cg_steps` CG steps (damping
    `diagnose_damping`) at the same inner point. Returns cosine similarity,
    norm ratio (method / reference) and the reference's relative CG residual.
    Nothing is updated.
    """
    method = _hypergradient(bilevel_config.method, state, batch, objs, inner_opt, bilevel_config)
    reference = _hypergradient(
        "implicit_cg", state, batch, objs, inner_opt, bilevel_config,
        cg_steps=bilevel_config.diagnose_cg_steps, cg_damping=bilevel_config.diagnose_damping,
    )  # fmt: skip
    a = jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in jax.tree.leaves(method.grad)])
    b = jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in jax.tree.leaves(reference.grad)])
    norm_a, norm_b = jnp.linalg.norm(a), jnp.linalg.norm(b)
    return {
        "hypergrad_cosine": jnp.dot(a, b) / jnp.maximum(norm_a * norm_b, 1e-30),
        "hypergrad_norm_ratio": norm_a / jnp.maximum(norm_b, 1e-30),
        "reference_cg_residual": reference.aux["cg_residual"],
    }


def train_step(state: TrainState, batch: dict, *, objs, outer_tx, inner_opt, bilevel_config):
    """One bi-level step. batch: modalities (B,H,W,M) f32, label (B,H,W) i32, mask (B,H,W) f32."""
    inner = bilevel_config.inner
    outer_net, inner_net = state.nets(inner)
    result = _hypergradient(bilevel_config.method, state, batch, objs, inner_opt, bilevel_config)
    updates, new_opt_state = outer_tx.update(result.grad, outer_net.opt_state, outer_net.params)
    new_outer = NetState(optax.apply_updates(outer_net.params, updates), new_opt_state)
    new_inner = NetState(result.inner_params, result.inner_opt_state)
    new_state = state.with_nets(inner, new_outer, new_inner).replace(step=state.step + 1)
    metrics = {
        "loss_inner": result.aux["inner_loss"],
        "loss_outer": result.aux["outer_loss"],
        "hypergrad_norm": optax.tree.norm(result.grad),
    }
    for key, value in result.aux.items():
        if key.startswith("outer/"):
            metrics[key.removeprefix("outer/")] = value
        elif "/" not in key and key not in ("inner_loss", "outer_loss"):
            metrics[key] = value  # method diagnostics, e.g. cg_residual, bdl_coef
    return new_state, metrics


def eval_step(state: TrainState, batch: dict, *, objs, seg_mode: str):
    """Fused images, predicted labels and the segmentation loss on an eval batch.

    Returns fused (B,H,W) float32 in [0,1], pred (B,H,W) int32 labels.
    """
    fused = objs.fuse(state.fusion.params, batch)
    logits = objs.segment(state.seg.params, fused)
    return {"fused": fused[..., 0], "pred": regions.logits_to_labels(logits, seg_mode)}


def fusion_train_step(state: TrainState, batch: dict, *, objs, outer_tx):
    """Fusion-only step: optax on grad L_fuse(theta); the segmentation side is absent."""

    def loss(theta):
        fused = objs.fuse(theta, batch)
        return objs.fusion_loss(fused, batch)

    (l_fuse, parts), grads = jax.value_and_grad(loss, has_aux=True)(state.fusion.params)
    updates, opt_state = outer_tx.update(grads, state.fusion.opt_state, state.fusion.params)
    fusion = NetState(optax.apply_updates(state.fusion.params, updates), opt_state)
    metrics = {"loss_fuse": l_fuse, "grad_norm": optax.tree.norm(grads), **parts}
    return state.replace(fusion=fusion, step=state.step + 1), metrics


def fusion_eval_step(state: TrainState, batch: dict, *, objs):
    """Fused images (B,H,W) and the per-example fusion loss (B,) of an eval batch."""
    fused = objs.fuse(state.fusion.params, batch)
    per_example = jax.vmap(lambda f, m: objs.fusion_loss(f[None], {"modalities": m[None]})[0])(
        fused, batch["modalities"]
    )
    return {"fused": fused[..., 0], "loss_fuse": per_example}


def make_steps(config):
    """(models, objectives, outer_tx, inner_opt, train_step, eval_step) bound to `config`.

    Baselines (model.kind != "fuse4seg", baselines.py) return their Pipeline in place of
    the objectives and the (fusion_tx, seg_tx) pair in place of outer_tx; inner_opt None."""
    fusion_model, seg_model = build_models(config)
    if not bilevel_kind(config) and seg_model is not None:
        pipe = baselines.build(config, fusion_model, seg_model)
        txs = baselines.make_optimizers(config, make_outer_optimizer)
        train = baselines.make_train_step(config, pipe, txs)
        evaluate = functools.partial(baselines.eval_step, pipe=pipe, seg_mode=config.model.seg_mode)
        return (fusion_model, seg_model), pipe, txs, None, train, evaluate
    if seg_model is None:
        objs = objectives.build_fusion_only(fusion_model, config.loss)
        outer_tx = make_outer_optimizer(config.optim, config.train.num_steps)
        train = functools.partial(fusion_train_step, objs=objs, outer_tx=outer_tx)
        evaluate = functools.partial(fusion_eval_step, objs=objs)
        return (fusion_model, None), objs, outer_tx, None, train, evaluate
    objs = objectives.build(
        fusion_model, seg_model, config.loss, config.bilevel, config.model.seg_mode
    )
    outer_tx = make_outer_optimizer(config.optim, config.train.num_steps)
    inner_opt = make_inner_optimizer(config.bilevel)
    train = functools.partial(
        train_step,
        objs=objs,
        outer_tx=outer_tx,
        inner_opt=inner_opt,
        bilevel_config=config.bilevel,
    )
    evaluate = functools.partial(eval_step, objs=objs, seg_mode=config.model.seg_mode)
    return (fusion_model, seg_model), objs, outer_tx, inner_opt, train, evaluate


def make_diagnose_step(config):
    """diagnose_step bound to `config` (bi-level configs only)."""
    fusion_model, seg_model = build_models(config)
    objs = objectives.build(
        fusion_model, seg_model, config.loss, config.bilevel, config.model.seg_mode
    )
    return functools.partial(
        diagnose_step, objs=objs, inner_opt=make_inner_optimizer(config.bilevel),
        bilevel_config=config.bilevel,
    )  # fmt: skip
