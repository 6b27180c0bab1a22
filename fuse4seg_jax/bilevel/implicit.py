"""Implicit-function hypergradients: implicit_cg and implicit_neumann.

Both run `inner_steps` inner optimiser steps from the warm start to y_K (not
differentiated: y_K is a constant for the hypergradient), approximate
v = H^-1 F_y at (x, y_K) and return grad = F_x - f_xy v.

- implicit_cg: v solves (H + cg_damping I) v = F_y by `cg_steps` iterations of
  plain conjugate gradient on the damped Hessian (not CG on the normal
  equations, which converges far slower; docs/hypergradients.md), started at v = 0 and
  wrapped in `lax.custom_linear_solve(..., symmetric=True)` so that the result
  is itself differentiable (by implicit differentiation of the linear system,
  not through the iterations). Cost: cg_steps + 1 HVPs (the last one for the
  reported residual) + 1 mixed product. aux: "cg_residual" = |b - (H + delta I) v|
  / |b| (true residual, not CG's recursive one), "cg_min_curvature" = min over
  iterations of the Rayleigh quotient p'(H + delta I)p / p'p of the search
  directions (the curvature CG actually sees; <= 0 means the damped Hessian is
  not positive definite along p and the solve is unreliable: raise the damping)
  and "cg_nonpositive" (1.0 if that happened, else 0.0).
- implicit_neumann: v = alpha sum_{k<K} (I - alpha H)^k F_y with K =
  `neumann_steps` terms (K - 1 HVPs; converges when 0 < alpha < 2 / lambda_max(H)
  and H is positive definite). With SGD of step alpha started at y*, reverse
  mode through K unrolled steps gives exactly this estimate with K terms
  (tested). aux: "neumann_residual" = |b - H v| / |b| (one more HVP).

All Hessian-vector products come from one `jax.linearize` of y -> (grad_x f,
grad_y f) at (x, y_K) per call, applied many times (forward-over-reverse); the
mixed product f_xy v comes from the same linearisation. HVPs, CG inner products
and the Neumann sums run in float32 at least: narrower float leaves of x, y and
F_y (bfloat16, float16) are cast up, never down; the final gradient is cast to
the dtype of x. The inner batch feeds H and f_xy, the outer batch F_x and F_y.
"""

import jax
import jax.numpy as jnp
from jax import lax

from fuse4seg_jax.bilevel import core
from fuse4seg_jax.bilevel.core import Hypergradient


def _safe_div(num, den):
    ok = den != 0
    return jnp.where(ok, num / jnp.where(ok, den, 1), jnp.zeros_like(num))


def conjugate_gradient(matvec, b, steps):
    """Plain CG for a symmetric positive-definite `matvec` on pytrees, from v = 0.

    Returns (v, min Rayleigh quotient p'Ap / p'p over the search directions).
    Divisions are guarded: once the residual is exactly zero the iterate stops
    moving (no NaN).
    """
    zeros = jax.tree.map(jnp.zeros_like, b)
    rs = core.tree_vdot(b, b)

    def body(carry, _):
        v, r, p, rs, curvature = carry
        ap = matvec(p)
        pap, pp = core.tree_vdot(p, ap), core.tree_vdot(p, p)
        alpha = _safe_div(rs, pap)
        v = core.tree_axpy(alpha, p, v)
        r = core.tree_axpy(-alpha, ap, r)
        rs_new = core.tree_vdot(r, r)
        p = core.tree_axpy(_safe_div(rs_new, rs), p, r)
        rayleigh = jnp.where(pp > 0, _safe_div(pap, pp), jnp.inf)
        return (v, r, p, rs_new, jnp.minimum(curvature, rayleigh)), None

    init = (zeros, b, b, rs, jnp.asarray(jnp.inf, rs.dtype))
    (v, _, _, _, curvature), _ = core.scan(body, init, None, steps)
    return v, curvature


def _setup(problem, inner_steps):
    """Warm start, outer gradients and the wide-precision product map at (x, y_K)."""
    y, state, inner_value, inner_aux = core.warm_start(problem, inner_steps)
    (outer_value, outer_aux), (grad_x, grad_y) = core.outer_value_and_grads(problem, y)
    x_wide, y_wide = core.upcast(problem.x), core.upcast(y)
    _, products = core.linearize_inner_grads(
        problem.inner_loss, x_wide, y_wide, problem.inner_batch
    )
    b = core.cast_like(core.upcast(grad_y), y_wide)
    aux = core.make_aux(inner_value, inner_aux, outer_value, outer_aux)
    return y, state, aux, grad_x, b, products


def _finish(grad_x, products, v):
    """F_x - f_xy v, in the dtype of x."""
    mixed = products(v)[0]
    return jax.tree.map(lambda g, m: (g - m).astype(g.dtype), grad_x, mixed)


def _relative_residual(b, hv):
    r = core.tree_sub(b, hv)
    return lax.stop_gradient(jnp.sqrt(_safe_div(core.tree_vdot(r, r), core.tree_vdot(b, b))))


def implicit_cg(problem, *, inner_steps, cg_steps, cg_damping):
    y, state, aux, grad_x, b, products = _setup(problem, inner_steps)

    def matvec(v):
        return core.tree_axpy(cg_damping, v, products(v)[1])

    def solve(matvec, rhs):
        return conjugate_gradient(matvec, rhs, cg_steps)

    v, curvature = lax.custom_linear_solve(matvec, b, solve, symmetric=True, has_aux=True)
    curvature = lax.stop_gradient(curvature)
    aux = dict(
        aux,
        cg_residual=_relative_residual(b, matvec(v)),
        cg_min_curvature=curvature,
        cg_nonpositive=(curvature <= 0).astype(curvature.dtype),
    )
    grad = _finish(grad_x, products, v)
    aux["implicit_fraction"] = core.implicit_fraction(grad_x, grad)
    return Hypergradient(grad, y, state, aux)


def implicit_neumann(problem, *, inner_steps, neumann_steps, neumann_alpha):
    y, state, aux, grad_x, b, products = _setup(problem, inner_steps)

    def body(carry, _):
        p, total = carry
        p = core.tree_axpy(-neumann_alpha, products(p)[1], p)  # (I - alpha H) p
        return (p, core.tree_add(total, p)), None

    total = b
    if neumann_steps > 1:
        (_, total), _ = core.scan(body, (b, b), None, neumann_steps - 1)
    v = core.tree_scale(neumann_alpha, total)
    aux = dict(aux, neumann_residual=_relative_residual(b, products(v)[1]))
    grad = _finish(grad_x, products, v)
    aux["implicit_fraction"] = core.implicit_fraction(grad_x, grad)
    return Hypergradient(grad, y, state, aux)
