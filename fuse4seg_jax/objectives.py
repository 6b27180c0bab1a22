"""The Fuse4Seg bi-level objectives, in the orientation the config chooses (docs/method.md s. 5).

Two networks: fusion F_theta (modalities -> one fused image) and segmentation
S_phi (fused image -> logits). `bilevel.hypergradient` works on (outer x,
inner y) and loss functions `loss(x, y, batch) -> (scalar, aux)`; this module
says which network is which and what each level minimises:

- inner = "fusion" (default; inner fusion gradients, outer segmentation
  gradients): x = phi, y = theta.
  inner  f(phi, theta) = L_fuse(theta) + mu * L_seg(phi; F_theta)
  outer  F(phi, theta) = L_seg(phi; F_theta)
  Segmentation knowledge shapes the fusion through the mu term; the outer
  hypergradient accounts for how the fusion reacts to phi.
- inner = "segmentation" (fusion leads, the paper's v3 wording): x = theta, y = phi.
  inner  f(theta, phi) = L_seg(phi; F_theta)
  outer  F(theta, phi) = L_fuse(theta) + beta * L_seg(phi; F_theta)
  "Semantic gradients" flow from the segmentation loss back into the fusion.

Every aux dict reports `loss_fuse` and `loss_seg` and their parts, whatever
the orientation, so runs can be compared.
"""

from typing import NamedTuple

from fuse4seg_jax import losses
from fuse4seg_jax.dtypes import at_least_f32

ORIENTATIONS = ("fusion", "segmentation")


class Objectives(NamedTuple):
    inner_loss: object  # (x, y, batch) -> (scalar, aux)
    outer_loss: object
    fuse: object  # (fusion_params, batch) -> fused (B, H, W, 1) float32 in [0, 1]
    segment: object  # (seg_params, fused) -> logits (B, H, W, C) float32
    fusion_loss: object  # (fused, batch) -> (L_fuse, parts)


def fusion_loss_fn(loss_config):
    """(fused, batch) -> (L_fuse, parts), with the weights of `loss_config` read once."""
    weights = {k: loss_config[k] for k in ("sigma", "w_freq", "w_grad", "w_ssim")}

    def fusion_loss(fused, batch):
        return losses.fusion_loss(fused, batch["modalities"], **weights)

    return fusion_loss


def build_fusion_only(fusion_model, loss_config) -> Objectives:
    """Objectives with the segmentation side switched off (model.segmentation = "none")."""

    def fuse(theta, batch):
        return at_least_f32(fusion_model.apply({"params": theta}, batch["modalities"]))

    return Objectives(None, None, fuse, None, fusion_loss_fn(loss_config))


def build(fusion_model, seg_model, loss_config, bilevel_config, seg_mode="softmax") -> Objectives:
    """Objectives for the orientation `bilevel_config.inner` (weights read once here).

    Batches are dicts with `modalities` (B, H, W, M) float32 in [0, 1] and
    `label` (B, H, W) int32 (docs/method.md section 2).
    """
    inner = bilevel_config.inner
    if inner not in ORIENTATIONS:
        raise ValueError(f"bilevel.inner={inner!r}: expected one of {ORIENTATIONS}")

    def fuse(theta, batch):
        return at_least_f32(fusion_model.apply({"params": theta}, batch["modalities"]))

    def segment(phi, fused):
        return at_least_f32(seg_model.apply({"params": phi}, fused))

    fusion_loss = fusion_loss_fn(loss_config)
    w_ce, w_dice = loss_config.w_ce, loss_config.w_dice

    def fusion_terms(theta, batch):
        fused = fuse(theta, batch)
        l_fuse, parts = fusion_loss(fused, batch)
        return fused, l_fuse, parts

    def seg_terms(phi, fused, batch):
        return losses.segmentation_loss(
            segment(phi, fused),
            batch["label"],
            mode=seg_mode,
            w_ce=w_ce,
            w_dice=w_dice,
        )

    def report(l_fuse, fuse_parts, l_seg, seg_parts):
        return {"loss_fuse": l_fuse, "loss_seg": l_seg, **fuse_parts, **seg_parts}

    def both(theta, phi, batch):
        fused, l_fuse, fuse_parts = fusion_terms(theta, batch)
        l_seg, seg_parts = seg_terms(phi, fused, batch)
        return l_fuse, l_seg, report(l_fuse, fuse_parts, l_seg, seg_parts)

    if inner == "fusion":
        mu = bilevel_config.mu

        def inner_loss(phi, theta, batch):
            l_fuse, l_seg, aux = both(theta, phi, batch)
            return l_fuse + mu * l_seg, aux

        def outer_loss(phi, theta, batch):
            l_fuse, l_seg, aux = both(theta, phi, batch)
            return l_seg, aux

    else:
        beta = bilevel_config.beta

        def inner_loss(theta, phi, batch):
            l_fuse, l_seg, aux = both(theta, phi, batch)
            return l_seg, aux

        def outer_loss(theta, phi, batch):
            l_fuse, l_seg, aux = both(theta, phi, batch)
            return l_fuse + beta * l_seg, aux

    return Objectives(inner_loss, outer_loss, fuse, segment, fusion_loss)
