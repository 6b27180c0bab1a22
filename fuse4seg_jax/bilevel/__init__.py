"""Hypergradients of a bi-level problem on arbitrary pytrees and loss functions.

The problem (docs/hypergradients.md notation):

    min_x Phi(x) = F(x, y*(x)),   y*(x) = argmin_y f(x, y),

with leader (outer) parameters x and follower (inner) parameters y, inner
objective f and outer objective F. By the implicit function theorem, with
H = d2f/dy2 at y*, grad Phi = F_x - f_xy H^-1 F_y. This package only ever sees
x, y, f and F: it knows nothing about images or networks. Which network is x
and which is y is the trainer's decision (docs/method.md section 5: inner =
"fusion" or inner = "segmentation"); both orientations go through the same
code and are tested on a closed-form quadratic problem.

Losses have the signature `loss(outer_params, inner_params, batch) ->
(scalar, aux_dict)` (aux: a possibly empty dict of scalars). Every
differentiable input is an explicit argument; nothing here closes over
parameters inside a differentiated function.

Batches: `inner_batch` feeds f and therefore everything derived from it (the
inner gradient steps, the Hessian-vector products H v and the mixed products
f_xy v); `outer_batch` feeds F (F_x, F_y and the reported outer loss).

Methods (`hypergradient(method, ...)`; costs from docs/hypergradients.md, G = one
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
    is rematerialised by construction and ignores `remat`. docs/stack.md measured
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
  second scan; memory flat in T (`bilevel.unrolled`).
- "implicit_cg": (H + cg_damping I) v = F_y by `cg_steps` plain CG iterations in
  `lax.custom_linear_solve` (differentiable); grad = F_x - f_xy v; aux
  "cg_residual", "cg_min_curvature", "cg_nonpositive" (`bilevel.implicit`).
- "implicit_neumann": v = neumann_alpha sum_{k<neumann_steps} (I - alpha H)^k F_y
  (`bilevel.implicit`).
- "darts": one virtual step of size `darts_xi`, exact or (`darts_fd`) finite-
  difference mixed product (`bilevel.onestep`).
- "bdl": BDLFusion-style surrogate F_x - <F_y, f_y>/(|f_y|^2 + lambda) grad_x f, a
  heuristic; unbounded near the follower's optimum with lambda = `bdl_damping` = 0
  (guarded by `bdl_eps`), bounded with lambda > 0 (`bilevel.onestep`).
The implicit, darts and bdl methods first take `inner_steps` real inner steps
(not differentiated) and evaluate at the resulting y_K, which they return.
Every second-order method except unrolled with second_order="grad" reports aux
"implicit_fraction" = |grad - F_x| / |grad| (for darts F_x at the virtual step): how much
of its estimate the implicit term is, at no extra cost (it computes both parts).
"two_stage" is a training schedule, not a hypergradient, and is not here.

Options: every method takes exactly the keyword options named for it in
`METHOD_OPTIONS` (`joint` none, `first_order` only `inner_steps`, ...).
`hypergradient` accepts any option of any method (defaults in
`OPTION_DEFAULTS`), validates them all and passes each method only its own;
an option no method knows is a TypeError. `method_options(method, mapping)`
picks one method's options out of a mapping holding all of them (e.g. the
`config.bilevel` ConfigDict), so a caller can bind them once.

Package layout (a leaf: imports nothing else of fuse4seg_jax):
`bilevel.core` (result type `Hypergradient`, problem bundle, product kernels,
inner loop), `bilevel.inner_optim` (differentiable inner optimisers),
`bilevel.unrolled` (first_order, unrolled, joint), `bilevel.implicit`
(implicit_cg, implicit_neumann), `bilevel.onestep` (darts, bdl); this
`__init__` owns the registries `METHODS` / `METHOD_OPTIONS` and the one public
entry point `hypergradient`.
Adding a method: write `method(problem, *, <its options>) -> Hypergradient`
(keyword-only options, no `**kwargs`) in a submodule, register it in `_IMPLS`
and list its option names in `METHOD_OPTIONS` (a test checks the two agree);
a new option also needs a default in `OPTION_DEFAULTS`.
"""

from collections.abc import Callable, Mapping

from fuse4seg_jax.bilevel import implicit, onestep, unrolled
from fuse4seg_jax.bilevel.core import UNROLL_MAX_STEPS, Hypergradient, Problem
from fuse4seg_jax.bilevel.inner_optim import INNER_OPTIMIZERS, InnerOptimizer, make_inner_optimizer

__all__ = [
    "INNER_OPTIMIZERS",
    "METHODS",
    "METHOD_OPTIONS",
    "OPTION_DEFAULTS",
    "SECOND_ORDER",
    "UNROLL_MAX_STEPS",
    "Hypergradient",
    "InnerOptimizer",
    "hypergradient",
    "make_inner_optimizer",
    "method_options",
]

SECOND_ORDER = ("fwd_rev", "grad")

_IMPLS = {
    "first_order": unrolled.first_order,
    "unrolled": unrolled.unrolled,
    "joint": unrolled.joint,
    "implicit_cg": implicit.implicit_cg,
    "implicit_neumann": implicit.implicit_neumann,
    "darts": onestep.darts,
    "bdl": onestep.bdl,
}
METHODS = tuple(_IMPLS)

# The keyword options each method takes (exactly its keyword-only parameters).
METHOD_OPTIONS: dict[str, tuple[str, ...]] = {
    "first_order": ("inner_steps",),
    "unrolled": ("inner_steps", "remat", "second_order", "truncate_steps"),
    "joint": (),
    "implicit_cg": ("inner_steps", "cg_steps", "cg_damping"),
    "implicit_neumann": ("inner_steps", "neumann_steps", "neumann_alpha"),
    "darts": ("inner_steps", "darts_xi", "darts_fd"),
    "bdl": ("inner_steps", "bdl_eps", "bdl_damping"),
}

# Defaults of every option `hypergradient` accepts (the union of METHOD_OPTIONS).
OPTION_DEFAULTS = {
    "inner_steps": 1,
    "remat": False,
    "second_order": "fwd_rev",
    "truncate_steps": 0,
    "cg_steps": 10,
    "cg_damping": 0.0,
    "neumann_steps": 10,
    "neumann_alpha": 0.01,
    "darts_xi": 0.01,
    "darts_fd": False,
    "bdl_eps": 1e-12,
    "bdl_damping": 0.0,
}


def _check_method(method):
    if method not in _IMPLS:
        raise ValueError(f"Unknown bi-level method {method!r}; valid methods: {METHODS}")


def method_options(method: str, options: Mapping) -> dict:
    """The options of `method` (METHOD_OPTIONS[method]) present in `options`.

    `options` may hold the options of every method and other keys besides (e.g.
    the `config.bilevel` ConfigDict); only the method's own are returned, as
    plain values, ready for `hypergradient(method, ..., **method_options(...))`.
    Options missing from `options` are left out (`hypergradient` uses
    OPTION_DEFAULTS for them).

    Raises:
      ValueError: unknown method.
    """
    _check_method(method)
    return {name: options[name] for name in METHOD_OPTIONS[method] if name in options}


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
    **options,
) -> Hypergradient:
    """Hypergradient dPhi/dx of the bi-level problem by `method` (see package docstring).

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
      **options: keyword options of any method (defaults in OPTION_DEFAULTS);
        all are validated, and `method` receives only those listed in
        METHOD_OPTIONS[method] (the others are ignored). They are:
        inner_steps: K >= 1 inner steps (static; default 1; not used by
          "joint"). For "unrolled" the differentiated steps; for implicit_*,
          darts and bdl the undifferentiated steps to y_K where the estimate is
          formed.
        remat: checkpoint each inner step in the "unrolled"/"grad" path
          (static; default False).
        second_order: "fwd_rev" (fast, default) or "grad" (reference) for
          "unrolled" (static).
        truncate_steps: "unrolled" only: T total inner steps of which the last
          `inner_steps` are differentiated; 0 (default) or T = K: no truncation
          (static).
        cg_steps: "implicit_cg": number of CG iterations (HVPs), >= 1 (static;
          default 10).
        cg_damping: "implicit_cg": delta in (H + delta I) v = F_y (default 0.0;
          use > 0 for non-convex followers).
        neumann_steps: "implicit_neumann": number of series terms K >= 1 (K - 1
          HVPs; static; default 10).
        neumann_alpha: "implicit_neumann": series step alpha, needs
          0 < alpha < 2 / lambda_max(H) (default 0.01).
        darts_xi: "darts": virtual step size xi (default 0.01).
        darts_fd: "darts": finite-difference mixed product instead of the exact
          one (default False; static).
        bdl_eps: "bdl": the correction is dropped where |f_y|^2 + bdl_damping <=
          bdl_eps (default 1e-12).
        bdl_damping: "bdl": Levenberg-Marquardt damping lambda of the Gauss-Newton
          model, c = <F_y, f_y> / (|f_y|^2 + lambda); 0 (default, BDLFusion's form)
          is unbounded near the follower's optimum, lambda > 0 bounds |c| by
          |F_y| / (2 sqrt(lambda)) (`bilevel.onestep`).

    Returns:
      Hypergradient(grad, inner_params, inner_opt_state, aux).

    Raises:
      TypeError: an option that no method takes.
      ValueError: unknown method or second_order, inner_steps / cg_steps /
        neumann_steps < 1, or truncate_steps set (> 0) below inner_steps or
        for a method other than "unrolled".
    """
    unknown = sorted(set(options) - set(OPTION_DEFAULTS))
    if unknown:
        raise TypeError(
            f"hypergradient() got unexpected keyword option(s) {unknown}; "
            f"valid options: {sorted(OPTION_DEFAULTS)}"
        )
    _check_method(method)
    opts = {**OPTION_DEFAULTS, **options}
    if opts["second_order"] not in SECOND_ORDER:
        raise ValueError(f"Unknown second_order {opts['second_order']!r}; valid: {SECOND_ORDER}")
    for name in ("inner_steps", "truncate_steps", "cg_steps", "neumann_steps"):
        opts[name] = int(opts[name])
    for name in ("remat", "darts_fd"):
        opts[name] = bool(opts[name])
    for name in ("inner_steps", "cg_steps", "neumann_steps"):
        if opts[name] < 1:
            raise ValueError(f"{name} must be >= 1, got {opts[name]}")
    inner_steps, truncate_steps = opts["inner_steps"], opts["truncate_steps"]
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
    return _IMPLS[method](problem, **{name: opts[name] for name in METHOD_OPTIONS[method]})
