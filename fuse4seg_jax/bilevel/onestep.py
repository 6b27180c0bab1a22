"""One-step hypergradient approximations: darts and bdl.

Both first run `inner_steps` real inner optimiser steps from the warm start to
y_K (not differentiated); the returned `inner_params` / `inner_opt_state` are
y_K and its optimiser state, as for every other method. The estimate is then
formed at (x, y_K):

- darts (DARTS, Liu et al. 2019, second-order variant): one virtual SGD step
  y' = y_K - xi f_y(x, y_K) (xi = `darts_xi`, a constant, not the inner
  optimiser's step), and grad = F_x(x, y') - xi f_xy(x, y_K) F_y(x, y'), the
  exact derivative of x -> F(x, y'(x)) with y_K held fixed. Not convergent to
  the true hypergradient in general (one step of look-ahead). The mixed product
  f_xy v (v = F_y(x, y')) is exact by default (forward-over-reverse, from the
  same linearisation that gives f_y), or with `darts_fd=True` DARTS's central
  difference (grad_x f(x, y + eps v) - grad_x f(x, y - eps v)) / (2 eps) with
  eps = 0.01 / |v| (4 gradients, no second derivatives; 0 if v = 0). Cost 2 G +
  1 mixed, or 4 G. aux: "outer_loss" is F at y'.
- bdl (BDLFusion-style one-sample Gauss-Newton surrogate; a heuristic, no
  convergence guarantee): grad = F_x - c grad_x f with
  c = <F_y, f_y> / (|f_y|^2 + lambda), all at (x, y_K), lambda = `bdl_damping`.
  Derivation: the implicit term -f_xy H^-1 F_y with the one-sample Gauss-Newton
  approximations f_xy ~ f_x f_y^T and H ~ f_y f_y^T + lambda I (Levenberg-Marquardt
  damping; by Sherman-Morrison f_y^T H^-1 = f_y^T / (|f_y|^2 + lambda)) is
  -f_x <f_y, F_y> / (|f_y|^2 + lambda). With lambda = 0 (BDLFusion's form, the
  pseudo-inverse) c grows as 1/|f_y| near the follower's optimum: unbounded, the
  correction measured 14 to 3,000 times the true implicit term on the demo networks;
  where |f_y|^2 + lambda <= `bdl_eps` the correction is then dropped (c = 0, the
  first-order estimate) and aux "bdl_defined" is 0.0. With lambda > 0 the
  coefficient is bounded, |c| <= |F_y| / (2 sqrt(lambda)), and the correction goes
  to 0 with f_y (at the optimum the one-sample model says nothing). Cost 3 G. aux:
  "bdl_coef" (c), "bdl_defined" and "bdl_grad_norm2" (|f_y|^2, to choose lambda
  against).

Products and finite differences run in float32 at least (narrower leaves of x
and y are cast up, never down: a bf16 finite-difference product was measured with
cosine 0.14 to the truth, docs/hypergradients.md). The inner batch feeds f and its
derivatives, the outer batch F.
"""

import jax
import jax.numpy as jnp

from fuse4seg_jax.bilevel import core
from fuse4seg_jax.bilevel.core import Hypergradient


def fd_mixed_product(inner_loss, x, y, batch, v):
    """DARTS central-difference f_xy v, eps = 0.01 / |v|, in float32 or wider."""
    x, y, v = core.upcast(x), core.upcast(y), core.cast_like(core.upcast(v), core.upcast(y))
    norm = jnp.sqrt(core.tree_vdot(v, v))
    eps = 0.01 / jnp.where(norm > 0, norm, 1.0)
    grad_x = jax.grad(core.value_only(inner_loss), argnums=0)
    plus = grad_x(x, core.tree_axpy(eps, v, y), batch)
    minus = grad_x(x, core.tree_axpy(-eps, v, y), batch)
    return jax.tree.map(
        lambda p, m: jnp.where(norm > 0, (p - m) / jnp.asarray(2 * eps, p.dtype), 0), plus, minus
    )


def darts(problem, *, inner_steps, darts_xi, darts_fd):
    y, state, inner_value, inner_aux = core.warm_start(problem, inner_steps)
    x, inner_loss, batch = problem.x, problem.inner_loss, problem.inner_batch
    if darts_fd:
        grad_y = jax.grad(core.value_only(inner_loss), argnums=1)(x, y, batch)
    else:
        grad_y, products = core.linearize_inner_grads(
            inner_loss, core.upcast(x), core.upcast(y), batch
        )
    y_virtual = jax.tree.map(lambda a, g: (a - darts_xi * g).astype(a.dtype), y, grad_y)
    (outer_value, outer_aux), (grad_x, v) = core.outer_value_and_grads(problem, y_virtual)
    if darts_fd:
        mixed = fd_mixed_product(inner_loss, x, y, batch, v)
    else:
        mixed = products(core.cast_like(core.upcast(v), core.upcast(y)))[0]
    grad = jax.tree.map(lambda g, m: (g - darts_xi * m).astype(g.dtype), grad_x, mixed)
    aux = core.make_aux(inner_value, inner_aux, outer_value, outer_aux)
    aux["implicit_fraction"] = core.implicit_fraction(grad_x, grad)
    return Hypergradient(grad, y, state, aux)


def bdl(problem, *, inner_steps, bdl_eps, bdl_damping):
    y, state, inner_value, inner_aux = core.warm_start(problem, inner_steps)
    (outer_value, outer_aux), (outer_x, outer_y) = core.outer_value_and_grads(problem, y)
    inner_x, inner_y = jax.grad(core.value_only(problem.inner_loss), argnums=(0, 1))(
        problem.x, y, problem.inner_batch
    )
    norm2 = core.tree_vdot(inner_y, inner_y)
    denominator = norm2 + bdl_damping
    defined = denominator > bdl_eps
    coef = jnp.where(
        defined, core.tree_vdot(outer_y, inner_y) / jnp.where(defined, denominator, 1), 0
    )
    grad = jax.tree.map(
        lambda g, h: (g - jnp.asarray(coef, core.upcast(g).dtype) * h).astype(g.dtype),
        outer_x,
        inner_x,
    )
    aux = core.make_aux(inner_value, inner_aux, outer_value, outer_aux)
    aux.update(bdl_coef=coef, bdl_defined=defined.astype(coef.dtype), bdl_grad_norm2=norm2)
    aux["implicit_fraction"] = core.implicit_fraction(outer_x, grad)
    return Hypergradient(grad, y, state, aux)
