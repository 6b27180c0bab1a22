"""The baselines Fuse4Seg is measured against, from the same code, data and budget.

`config.model.kind` chooses what is trained (docs/method.md section 6; which kind a config
is, and how its step is put together, is resolved once by recipe.py):

- "fuse4seg" (default): image-level fusion, the two networks coupled by the
  bi-level method `config.bilevel.method` (steps.py; `joint` is there too).
- "two_stage": image-level without coupling. Stage 1 trains the fusion
  network alone on L_fuse for `train.fusion_steps` steps (0 = half of
  `train.num_steps`); stage 2 freezes it and trains the segmentation network
  on its output. One compiled step computes both stages' updates and keeps
  the current one's (by the state's step count), so checkpoints and resume
  behave as for any other run.
- "classical": a fixed classical fusion (`model.classical`: mean, max, pca,
  laplacian; fuse4seg_jax/classical.py), then the same segmentation network.
- "single": one modality only (`model.single_modality`), same network.
- "early_fusion": feature-level; the U-Net `model.segmentation` takes all M
  modalities as input channels (`early_` + its name). No fused image exists.
- "dual_encoder": feature-level; one encoder per modality merged at every
  level (`dual_` + `model.segmentation`, models/feature_level.py).

Each optimised network has its own optax state (the `optim` settings, with
the schedule spanning that network's own number of steps). Every step
reports `loss_seg` and, when a fused image exists, `loss_fuse` of the
current fused image (for the frozen side a forward-only monitor), so curves
compare across kinds.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from fuse4seg_jax import classical, losses, objectives, regions
from fuse4seg_jax.dtypes import at_least_f32
from fuse4seg_jax.state import NetState, TrainState


class Pipeline(NamedTuple):
    fuse: object  # (theta, batch) -> fused (B, H, W, 1) in [0, 1]; None for feature-level
    seg_input: object  # (theta, batch) -> the segmentation network's input
    segment: object  # (phi, x) -> logits (B, H, W, C) float32
    fusion_loss: object  # (fused, batch) -> (L_fuse, parts)
    seg_loss: object  # (logits, batch) -> (L_seg, parts)


def build(kind: str, config, fusion_model, seg_model) -> Pipeline:
    """The functions of baseline `kind` (recipe.BASELINE_KINDS) for these networks."""
    if kind == "two_stage":

        def fuse(theta, batch):
            return at_least_f32(fusion_model.apply({"params": theta}, batch["modalities"]))

    elif kind == "classical":
        method = classical.get(config.model.classical)

        def fuse(theta, batch):
            return at_least_f32(method(batch["modalities"]))

    elif kind == "single":
        index = tuple(config.data.modalities).index(config.model.single_modality)

        def fuse(theta, batch):
            return at_least_f32(batch["modalities"][..., index : index + 1])

    elif kind in ("early_fusion", "dual_encoder"):  # feature-level: no fused image
        fuse = None
    else:
        raise ValueError(f"model.kind={kind!r}: not a baseline kind")

    def segment(phi, x):
        return at_least_f32(seg_model.apply({"params": phi}, x))

    seg_mode, w_ce, w_dice = config.model.seg_mode, config.loss.w_ce, config.loss.w_dice

    def seg_loss(logits, batch):
        return losses.segmentation_loss(
            logits, batch["label"], mode=seg_mode, w_ce=w_ce, w_dice=w_dice
        )

    def seg_input(theta, batch):
        return at_least_f32(batch["modalities"]) if fuse is None else fuse(theta, batch)

    return Pipeline(fuse, seg_input, segment, objectives.fusion_loss_fn(config.loss), seg_loss)


def _monitor(pipe, fused, logits, batch):
    """loss_fuse (when a fused image exists) and loss_seg with their parts."""
    l_seg, seg_parts = pipe.seg_loss(logits, batch)
    metrics = {"loss_seg": l_seg, **seg_parts}
    if fused is not None:
        l_fuse, fuse_parts = pipe.fusion_loss(fused, batch)
        metrics |= {"loss_fuse": l_fuse, **fuse_parts}
    return metrics


def segmentation_phase(state: TrainState, batch: dict, *, pipe, seg_tx):
    """optax step of the segmentation network on its (frozen) input."""
    x = jax.lax.stop_gradient(pipe.seg_input(state.fusion.params, batch))

    def loss(phi):
        logits = pipe.segment(phi, x)
        return pipe.seg_loss(logits, batch)[0], logits

    (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(state.seg.params)
    updates, opt_state = seg_tx.update(grads, state.seg.opt_state, state.seg.params)
    seg = NetState(optax.apply_updates(state.seg.params, updates), opt_state)
    fused = None if pipe.fuse is None else x
    metrics = _monitor(pipe, fused, logits, batch) | {"grad_norm": optax.tree.norm(grads)}
    return state.replace(seg=seg, step=state.step + 1), metrics


def fusion_phase(state: TrainState, batch: dict, *, pipe, fusion_tx):
    """optax step of the fusion network alone on L_fuse (two_stage, stage 1)."""

    def loss(theta):
        fused = pipe.fuse(theta, batch)
        return pipe.fusion_loss(fused, batch)[0], fused

    (_, fused), grads = jax.value_and_grad(loss, has_aux=True)(state.fusion.params)
    updates, opt_state = fusion_tx.update(grads, state.fusion.opt_state, state.fusion.params)
    fusion = NetState(optax.apply_updates(state.fusion.params, updates), opt_state)
    logits = pipe.segment(state.seg.params, fused)
    metrics = _monitor(pipe, fused, logits, batch) | {"grad_norm": optax.tree.norm(grads)}
    return state.replace(fusion=fusion, step=state.step + 1), metrics


def make_train_step(kind: str, pipe, fusion_tx, seg_tx, fusion_steps: int = 0):
    """The jittable (state, batch) -> (state, metrics) of baseline `kind`; metrics add
    `stage`. two_stage: `fusion_steps` stage-1 steps by `fusion_tx`, then `seg_tx`."""

    def seg_step(state, batch):
        new_state, metrics = segmentation_phase(state, batch, pipe=pipe, seg_tx=seg_tx)
        return new_state, metrics | {"stage": jnp.float32(2.0)}

    if kind != "two_stage":
        return seg_step

    def fuse_step(state, batch):
        new_state, metrics = fusion_phase(state, batch, pipe=pipe, fusion_tx=fusion_tx)
        return new_state, metrics | {"stage": jnp.float32(1.0)}

    def two_stage_step(state, batch):
        # Both phases run and the current stage's result is kept. A lax.cond would run only
        # one, but XLA:CPU runs convolutions inside conditional branches (as inside loops,
        # docs/stack.md) several times slower: 0.5 steps/s against 4.1 for this form in the
        # comparison setting; the two phases together cost about one `joint` step.
        first = state.step < fusion_steps
        stage1, stage2 = fuse_step(state, batch), seg_step(state, batch)
        return jax.tree.map(lambda a, b: jnp.where(first, a, b), stage1, stage2)

    return two_stage_step


def eval_step(state: TrainState, batch: dict, *, pipe, seg_mode: str):
    """pred (B, H, W) int32, probs (B, H, W, C) float32 (regions.probabilities) and, when
    the kind has one, fused (B, H, W) in [0, 1]."""
    x = pipe.seg_input(state.fusion.params, batch)
    logits = pipe.segment(state.seg.params, x)
    out = {
        "pred": regions.logits_to_labels(logits, seg_mode),
        "probs": regions.probabilities(logits, seg_mode),
    }
    if pipe.fuse is not None:
        out["fused"] = x[..., 0]
    return out
