"""Hypergradients through the inner optimiser: first_order, unrolled (optionally truncated), joint.

Registered in `bilevel._IMPLS` and `bilevel.METHOD_OPTIONS`; see the `bilevel`
package docstring for the methods and `bilevel.core` for the shared kernels.

Truncation (`truncate_steps = T > inner_steps = K`): T - K inner steps run in
one undifferentiated scan, their result goes through `lax.stop_gradient`, and
only the last K steps are differentiated in a second scan. Two scans are what
saves memory: a `stop_gradient` inside one scan still stores every step's
residuals for the reverse pass (docs/hypergradients.md). Memory is then O(K P), flat in T
(tested with `memory_analysis()`).
"""

import jax
import jax.numpy as jnp

from fuse4seg_jax.bilevel import core
from fuse4seg_jax.bilevel.core import Hypergradient


def first_order(problem, *, inner_steps):
    y, state, inner_value, inner_aux, _ = core.run_inner(problem, inner_steps)
    (outer_value, outer_aux), grad = jax.value_and_grad(
        problem.outer_loss, argnums=0, has_aux=True
    )(problem.x, y, problem.outer_batch)
    aux = core.make_aux(inner_value, inner_aux, outer_value, outer_aux)
    return Hypergradient(grad, y, state, aux)


def _unrolled_grad(problem, *, inner_steps, remat):
    """Reference: jax.grad of x -> F(x, y_K(x)) through the scan (reverse-over-reverse)."""

    def objective(x, y0, state0, inner_batch, outer_batch):
        p = problem._replace(x=x, y=y0, opt_state=state0, inner_batch=inner_batch)
        y, state, inner_value, inner_aux, _ = core.run_inner(p, inner_steps, remat=remat)
        outer_value, outer_aux = problem.outer_loss(x, y, outer_batch)
        aux = core.make_aux(inner_value, inner_aux, outer_value, outer_aux)
        return outer_value, (y, state, aux)

    (_, (y, state, aux)), grad = jax.value_and_grad(objective, has_aux=True)(
        problem.x, problem.y, problem.opt_state, problem.inner_batch, problem.outer_batch
    )
    return Hypergradient(grad, y, state, aux)


def _unrolled_fwd_rev(problem, *, inner_steps):
    """Fast path: forward scan storing (y_k, s_k), hand-written reverse scan.

    Step k: g_k = grad_y f(x, y_k), (y_{k+1}, s_{k+1}) = U(g_k, s_k, y_k).
    Given cotangents (ybar_{k+1}, sbar_{k+1}):
      (gbar_k, sbar_k, ybar_k^U) = vjp of U at (g_k, s_k, y_k),
      xbar += f_xy gbar_k   (since dg_k/dx = f_yx, transposed),
      ybar_k = ybar_k^U + H gbar_k   (H symmetric).
    Start: ybar_K = F_y(x, y_K), sbar_K = 0; result F_x(x, y_K) + xbar.
    """
    x, inner_loss, optimizer = problem.x, problem.inner_loss, problem.inner_optimizer
    y_final, state_final, inner_value, inner_aux, trajectory = core.run_inner(
        problem, inner_steps, keep_trajectory=True
    )
    (outer_value, outer_aux), (grad_x, ybar) = core.outer_value_and_grads(problem, y_final)
    sbar_diff = jax.tree.map(jnp.zeros_like, core.split_state(state_final)[0])
    xbar = jax.tree.map(jnp.zeros_like, x)

    def backward(carry, step_k):
        xbar, ybar, sbar = carry
        y_k, state_k = step_k
        s_diff, s_fixed, treedef = core.split_state(state_k)
        g_k, products = core.linearize_inner_grads(inner_loss, x, y_k, problem.inner_batch)

        def update(g, s, y):
            new_y, new_state = optimizer.update(g, core.merge_state(s, s_fixed, treedef), y)
            return new_y, core.split_state(new_state)[0]

        _, update_vjp = jax.vjp(update, g_k, s_diff, y_k)
        gbar, sbar_k, ybar_update = update_vjp((ybar, sbar))
        mixed, hvp = products(gbar)
        return (core.tree_add(xbar, mixed), core.tree_add(ybar_update, hvp), sbar_k), None

    (xbar, _, _), _ = core.scan(
        backward, (xbar, ybar, sbar_diff), trajectory, inner_steps, reverse=True
    )
    aux = core.make_aux(inner_value, inner_aux, outer_value, outer_aux)
    grad = core.tree_add(grad_x, xbar)
    aux["implicit_fraction"] = core.implicit_fraction(grad_x, grad)
    return Hypergradient(grad, y_final, state_final, aux)


def unrolled(problem, *, inner_steps, remat, second_order, truncate_steps):
    """Reverse mode through the last `inner_steps` of max(truncate_steps, inner_steps) steps."""
    prefix = max(int(truncate_steps), inner_steps) - inner_steps
    if prefix:
        y, state, first_value, first_aux = core.warm_start(problem, prefix)
        problem = problem._replace(y=y, opt_state=state)
    if second_order == "grad":
        out = _unrolled_grad(problem, inner_steps=inner_steps, remat=remat)
    else:
        out = _unrolled_fwd_rev(problem, inner_steps=inner_steps)
    if prefix:  # report f at the first of all T steps, like the untruncated unroll
        aux = dict(out.aux, inner_loss=first_value)
        aux.update({f"inner/{k}": v for k, v in first_aux.items()})
        out = out._replace(aux=aux)
    return out


def joint(problem):
    def objective(x, y, inner_batch, outer_batch):
        outer_value, outer_aux = problem.outer_loss(x, y, outer_batch)
        inner_value, inner_aux = problem.inner_loss(x, y, inner_batch)
        aux = core.make_aux(inner_value, inner_aux, outer_value, outer_aux)
        return outer_value + inner_value, aux

    (_, aux), (grad_x, grad_y) = jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)(
        problem.x, problem.y, problem.inner_batch, problem.outer_batch
    )
    y, state = problem.inner_optimizer.update(grad_y, problem.opt_state, problem.y)
    return Hypergradient(grad_x, y, state, aux)
