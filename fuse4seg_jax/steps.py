"""Pure train and eval steps of Fuse4Seg itself and of fusion-only runs.

Every step is `(state, batch) -> (state, metrics)` (eval steps: `(state, batch) ->
outputs`) with its hyperparameters bound once by fuse4seg_jax.recipe, so it compiles once
and closes over no config. No logging, no host syncs inside a step. The baselines' steps
are in baselines.py.

Which batch feeds which level (config.bilevel.batch_split):
- "halves": even rows of the global batch feed the inner objective f (its
  gradient, Hessian and mixed products), odd rows the outer objective F. The
  interleaved split keeps both halves evenly spread over the devices.
- "same": both levels see the whole batch.

Step metrics are scalars: every `loss_*` is a loss (e.g. `loss_dice` = 1 - soft Dice);
`hypergrad_norm` / `grad_norm` are gradient norms; the hypergradient methods add their own
diagnostics (e.g. `cg_residual`, `bdl_coef`).
"""

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax

from fuse4seg_jax import bilevel, regions
from fuse4seg_jax.state import NetState, TrainState

BATCH_SPLITS = ("halves", "same")


@dataclasses.dataclass(frozen=True)
class Coupling:
    """How the two networks are coupled, bound once from config.bilevel.

    inner: the follower network, "fusion" or "segmentation" (objectives.ORIENTATIONS).
    method / options: the hypergradient method and its own options only
    (bilevel.METHOD_OPTIONS). inner_opt: the follower's differentiable optimiser.
    batch_split: see the module docstring.
    """

    inner: str
    method: str
    options: Mapping
    inner_opt: bilevel.InnerOptimizer
    batch_split: str

    def hypergradient(self, objs, state: TrainState, batch: dict, method=None, options=None):
        """bilevel.hypergradient of this coupling (or of `method` with `options`) for this
        state and batch."""
        inner_batch, outer_batch = split_batch(batch, self.batch_split)
        outer_net, inner_net = state.nets(self.inner)
        return bilevel.hypergradient(
            method or self.method,
            objs.inner_loss,
            objs.outer_loss,
            outer_net.params,
            inner_net.params,
            inner_batch,
            outer_batch,
            inner_optimizer=self.inner_opt,
            inner_opt_state=inner_net.opt_state,
            **(self.options if options is None else options),
        )


def split_batch(batch: dict, how: str):
    """(inner_batch, outer_batch) from one global batch; see the module docstring."""
    if how == "same":
        return batch, batch
    if how != "halves":
        raise ValueError(f"bilevel.batch_split={how!r}: expected one of {BATCH_SPLITS}")
    pairs = {k: v.reshape(v.shape[0] // 2, 2, *v.shape[1:]) for k, v in batch.items()}
    return {k: v[:, 0] for k, v in pairs.items()}, {k: v[:, 1] for k, v in pairs.items()}


def _flat32(tree):
    return jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in jax.tree.leaves(tree)])


def _cosine(a, b):
    return jnp.dot(a, b) / jnp.maximum(jnp.linalg.norm(a) * jnp.linalg.norm(b), 1e-30)


def diagnose_step(state: TrainState, batch: dict, *, objs, coupling: Coupling, reference,
                  max_residual: float):  # fmt: skip
    """The configured hypergradient against a high-accuracy reference on this batch.

    reference: the options of implicit_cg used as the reference (many CG steps, some
    damping), at the same inner point y_K. F_x (first_order at y_K) splits every estimate
    into F_x and its implicit part (estimate - F_x). Returns:
    - hypergrad_cosine, hypergrad_norm_ratio: the whole estimate against the reference;
    - implicit_cosine: the implicit parts against each other (the whole can agree through
      F_x alone when the implicit part is small);
    - implicit_fraction, reference_implicit_fraction: |implicit part| / |estimate| of the
      method and of the reference;
    - reference_cg_residual, reference_min_curvature: the reference's relative CG residual
      and least curvature seen; reference_reliable: 1.0 when the residual is at most
      `max_residual` and no curvature was non-positive, else 0.0 (an unconverged
      reference judges nothing: summaries leave such diagnostics out).
    Nothing is updated.
    """
    method = coupling.hypergradient(objs, state, batch)
    ref = coupling.hypergradient(objs, state, batch, "implicit_cg", reference)
    plain = coupling.hypergradient(
        objs, state, batch, "first_order", {"inner_steps": reference["inner_steps"]}
    )
    a, b, fx = _flat32(method.grad), _flat32(ref.grad), _flat32(plain.grad)
    norm_a, norm_b = jnp.linalg.norm(a), jnp.linalg.norm(b)
    residual, curvature = ref.aux["cg_residual"], ref.aux["cg_min_curvature"]
    reliable = (residual <= max_residual) & (curvature > 0)
    return {
        "hypergrad_cosine": _cosine(a, b),
        "hypergrad_norm_ratio": norm_a / jnp.maximum(norm_b, 1e-30),
        "implicit_cosine": _cosine(a - fx, b - fx),
        "implicit_fraction": jnp.linalg.norm(a - fx) / jnp.maximum(norm_a, 1e-30),
        "reference_implicit_fraction": jnp.linalg.norm(b - fx) / jnp.maximum(norm_b, 1e-30),
        "reference_cg_residual": residual,
        "reference_min_curvature": curvature,
        "reference_reliable": reliable.astype(jnp.float32),
    }


def train_step(state: TrainState, batch: dict, *, objs, outer_tx, coupling: Coupling):
    """One bi-level step. batch: modalities (B,H,W,M) f32, label (B,H,W) i32, mask (B,H,W) f32.

    Metrics: loss_inner, loss_outer (the two objectives), hypergrad_norm, the outer
    batch's loss_fuse / loss_seg and their parts, and the method's diagnostics."""
    outer_net, _ = state.nets(coupling.inner)
    result = coupling.hypergradient(objs, state, batch)
    updates, new_opt_state = outer_tx.update(result.grad, outer_net.opt_state, outer_net.params)
    new_outer = NetState(optax.apply_updates(outer_net.params, updates), new_opt_state)
    new_inner = NetState(result.inner_params, result.inner_opt_state)
    new_state = state.with_nets(coupling.inner, new_outer, new_inner).replace(step=state.step + 1)
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
    """{"fused": (B,H,W) float32 in [0,1], "pred": (B,H,W) int32 labels 0..3, "probs":
    (B,H,W,C) float32 (regions.probabilities: 4 class or 3 region probabilities)} of an
    eval batch (modalities (B,H,W,M) float32 in [0,1]; no label needed). Callers that
    select outputs inside their jitted function pay only for those they keep."""
    fused = objs.fuse(state.fusion.params, batch)
    logits = objs.segment(state.seg.params, fused)
    return {
        "fused": fused[..., 0],
        "pred": regions.logits_to_labels(logits, seg_mode),
        "probs": regions.probabilities(logits, seg_mode),
    }


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
