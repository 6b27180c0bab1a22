"""Hypergradients of a bi-level problem on arbitrary pytrees and loss functions.

The problem (HYPERGRAD.md notation):

    min_x Phi(x) = F(x, y*(x)),   y*(x) = argmin_y f(x, y),

with leader (outer) parameters x and follower (inner) parameters y, inner
objective f and outer objective F. By the implicit function theorem, with
H = d2f/dy2 at y*, grad Phi = F_x - f_xy H^-1 F_y. This module only ever sees
x, y, f and F: it knows nothing about images or networks. Which network is x
and which is y is the trainer's decision (METHOD.md section 5: inner =
"fusion" or inner = "segmentation"); both orientations go through the same
code and are tested on a closed-form quadratic problem.

Losses have the signature `loss(outer_params, inner_params, batch) ->
(scalar, aux_dict)` (aux: a possibly empty dict of scalars). Every
differentiable input is an explicit argument; nothing here closes over
parameters inside a differentiated function.

Batches: `inner_batch` feeds f and therefore everything derived from it (the
inner gradient steps, the Hessian-vector products H v and the mixed products
f_xy v); `outer_batch` feeds F (F_x, F_y and the reported outer loss).

Methods (`hypergradient(method, ...)`; costs from HYPERGRAD.md, G = one
gradient evaluation, K = inner_steps, P = inner parameter count):

- "first_order": K inner optimiser steps on f (not differentiated), then
  F_x at (x, y_K). Drops the implicit term; in the fusion-leads orientation
  F_x still carries the segmentation loss through the fused image. Cost
  (K + 1) G, no extra memory.
- "unrolled": y_K(x) from K inner optimiser steps in `lax.scan`, and the exact
  derivative d/dx F(x, y_K(x)) in reverse mode, implicit path included. Cost
  about K (G + HVP + mixed). Two implementations (`second_order`):
  * "grad": plain `jax.grad` through the scan (reverse-over-reverse), the
    readable reference; `remat=True` checkpoints each step (memory
    O(K P + activations) instead of O(K (P + activations))).
  * "fwd_rev" (default): a hand-written reverse scan. The forward scan stores
    only y_k and the optimiser states (O(K P)); the backward scan, step by
    step in reverse, takes the first-order vjp of the elementwise optimiser
    update U(g, s, y), then obtains the mixed product f_xy gbar and the HVP
    H gbar from one forward-over-reverse linearisation of
    y -> (grad_x f, grad_y f). It recomputes each step's activations, so it
    is rematerialised by construction and ignores `remat`. STACK.md measured
    forward-over-reverse about 6x faster than reverse-over-reverse through
    convolutions on CPU; on a small conv pair (batch 8, 128x128, 48
    channels, K = 1) this path took 0.63 s against 2.2 s for "grad".
  Both agree to float rounding (tested in float64 to 1e-9 with SGD, heavy
  ball and Adam).
- Loops of K <= UNROLL_MAX_STEPS steps (forward and backward) are unrolled in
  Python rather than run by `lax.scan`: XLA:CPU ran convolutions inside a
  while loop about 20x slower (see UNROLL_MAX_STEPS). Longer loops use
  `lax.scan` (compile time stays flat in K).
- "joint" (single-level baseline): J = F(x, y; outer_batch) + f(x, y;
  inner_batch); grad = J_x at the current y, and y takes ONE inner-optimiser
  step along J_y. `inner_steps` is ignored.

Warm starting: the returned `inner_params` and `inner_opt_state` are y and the
optimiser state after the inner steps; the trainer passes them back in at the
next outer step. `inner_opt_state=None` initialises a fresh state.

Second-order approximations (options are keyword arguments of `hypergradient`):
- "unrolled" with `truncate_steps = T > inner_steps = K`: T - K undifferentiated
  steps in one scan, `lax.stop_gradient`, then the K differentiated steps in a
  second scan; memory flat in T (hypergrad_unrolled).
- "implicit_cg": (H + cg_damping I) v = F_y by `cg_steps` plain CG iterations in
  `lax.custom_linear_solve` (differentiable); grad = F_x - f_xy v; aux
  "cg_residual", "cg_min_curvature", "cg_nonpositive" (hypergrad_implicit).
- "implicit_neumann": v = neumann_alpha sum_{k<neumann_steps} (I - alpha H)^k F_y
  (hypergrad_implicit).
- "darts": one virtual step of size `darts_xi`, exact or (`darts_fd`) finite-
  difference mixed product (hypergrad_onestep).
- "bdl": BDLFusion-style surrogate F_x - <F_y, f_y>/|f_y|^2 grad_x f, a
  heuristic, guarded by `bdl_eps` (hypergrad_onestep).
The implicit, darts and bdl methods first take `inner_steps` real inner steps
(not differentiated) and evaluate at the resulting y_K, which they return.
"two_stage" is a training schedule, not a hypergradient, and is not here.

Module layout: `hypergrad_core` (result type, kernels, inner loop),
`hypergrad_unrolled`, `hypergrad_implicit`, `hypergrad_onestep` (methods);
this module owns the registry `METHODS` and the one public entry point.
Adding a method: write `method(problem, **options) -> Hypergradient` and
register it in `_IMPLS`.
"""

from collections.abc import Callable

from fuse4seg_jax import hypergrad_core as _core
from fuse4seg_jax.hypergrad_core import UNROLL_MAX_STEPS, Hypergradient, Problem
from fuse4seg_jax.hypergrad_implicit import implicit_cg, implicit_neumann
from fuse4seg_jax.hypergrad_onestep import bdl, darts
from fuse4seg_jax.hypergrad_unrolled import first_order, joint, unrolled
from fuse4seg_jax.inner_optim import INNER_OPTIMIZERS, InnerOptimizer, make_inner_optimizer

__all__ = [
    "INNER_OPTIMIZERS",
    "METHODS",
    "SECOND_ORDER",
    "UNROLL_MAX_STEPS",
    "Hypergradient",
    "InnerOptimizer",
    "hypergradient",
    "make_inner_optimizer",
]

SECOND_ORDER = ("fwd_rev", "grad")

# Product kernels, re-exported under their historical names (tests use them).
_hvp = _core.hvp
_mixed_product = _core.mixed_product
_hvp_and_mixed = _core.hvp_and_mixed
_linearize_inner_grads = _core.linearize_inner_grads

_IMPLS = {
    "first_order": first_order,
    "unrolled": unrolled,
    "joint": joint,
    "implicit_cg": implicit_cg,
    "implicit_neumann": implicit_neumann,
    "darts": darts,
    "bdl": bdl,
}
METHODS = tuple(_IMPLS)


def hypergradient(
    method: str,
    inner_loss: Callable,
    outer_loss: Callable,
    outer_params,
    inner_params,
    inner_batch,
    outer_batch,
    *,
    inner_optimizer: InnerOptimizer,
    inner_opt_state=None,
    inner_steps: int = 1,
    remat: bool = False,
    second_order: str = "fwd_rev",
    truncate_steps: int = 0,
    cg_steps: int = 10,
    cg_damping: float = 0.0,
    neumann_steps: int = 10,
    neumann_alpha: float = 0.01,
    darts_xi: float = 0.01,
    darts_fd: bool = False,
    bdl_eps: float = 1e-12,
) -> Hypergradient:
    """Hypergradient dPhi/dx of the bi-level problem by `method` (see module docstring).

    Args:
      method: one of METHODS (static).
      inner_loss: f(outer_params, inner_params, inner_batch) -> (scalar, aux dict).
      outer_loss: F(outer_params, inner_params, outer_batch) -> (scalar, aux dict).
      outer_params: x, any pytree of float arrays.
      inner_params: y, any pytree of float arrays (the warm start).
      inner_batch: feeds f: the inner steps, HVPs and mixed products.
      outer_batch: feeds F.
      inner_optimizer: from `make_inner_optimizer`; its update is differentiated
        through by "unrolled".
      inner_opt_state: state of `inner_optimizer` for `inner_params`; None
        initialises a fresh one.
      inner_steps: K >= 1 inner steps (static; ignored by "joint"). For
        "unrolled" the differentiated steps; for implicit_*, darts and bdl the
        undifferentiated steps to y_K where the estimate is formed.
      remat: checkpoint each inner step in the "unrolled"/"grad" path (static).
      second_order: "fwd_rev" (fast, default) or "grad" (reference) for
        "unrolled" (static).
      truncate_steps: "unrolled" only: T total inner steps of which the last
        `inner_steps` are differentiated; 0 (default) or T = K: no truncation
        (static).
      cg_steps: "implicit_cg": number of CG iterations (HVPs), >= 1 (static).
      cg_damping: "implicit_cg": delta in (H + delta I) v = F_y (default 0.0;
        use > 0 for non-convex followers).
      neumann_steps: "implicit_neumann": number of series terms K >= 1 (K - 1
        HVPs; static).
      neumann_alpha: "implicit_neumann": series step alpha, needs
        0 < alpha < 2 / lambda_max(H) (default 0.01).
      darts_xi: "darts": virtual step size xi (default 0.01).
      darts_fd: "darts": finite-difference mixed product instead of the exact
        one (default False; static).
      bdl_eps: "bdl": the correction is dropped where |f_y|^2 <= bdl_eps
        (default 1e-12).

    Returns:
      Hypergradient(grad, inner_params, inner_opt_state, aux).

    Raises:
      ValueError: unknown method or second_order, inner_steps / cg_steps /
        neumann_steps < 1, or truncate_steps set (> 0) below inner_steps or
        for a method other than "unrolled".
    """
    if method not in _IMPLS:
        raise ValueError(f"Unknown bi-level method {method!r}; valid methods: {METHODS}")
    if second_order not in SECOND_ORDER:
        raise ValueError(f"Unknown second_order {second_order!r}; valid: {SECOND_ORDER}")
    inner_steps, truncate_steps = int(inner_steps), int(truncate_steps)
    for name, value in (
        ("inner_steps", inner_steps), ("cg_steps", cg_steps), ("neumann_steps", neumann_steps)
    ):  # fmt: skip
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if truncate_steps and (truncate_steps < inner_steps or method != "unrolled"):
        raise ValueError(
            f"truncate_steps={truncate_steps} needs method='unrolled' (got {method!r}) and "
            f"truncate_steps >= inner_steps={inner_steps} (0 disables truncation)"
        )
    if inner_opt_state is None:
        inner_opt_state = inner_optimizer.init(inner_params)
    problem = Problem(
        inner_loss,
        outer_loss,
        inner_optimizer,
        outer_params,
        inner_params,
        inner_opt_state,
        inner_batch,
        outer_batch,
    )
    return _IMPLS[method](
        problem,
        inner_steps=inner_steps,
        remat=bool(remat),
        second_order=second_order,
        truncate_steps=truncate_steps,
        cg_steps=int(cg_steps),
        cg_damping=cg_damping,
        neumann_steps=int(neumann_steps),
        neumann_alpha=neumann_alpha,
        darts_xi=darts_xi,
        darts_fd=bool(darts_fd),
        bdl_eps=bdl_eps,
    )
