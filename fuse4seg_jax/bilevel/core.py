"""Shared machinery of the hypergradient methods (`bilevel.hypergradient` is the entry point).

Owns: the result type `Hypergradient`, the problem bundle `Problem`, pytree
helpers, the loop helper `scan` (Python-unrolled for short loops), the product
kernels (Hessian-vector product H v and mixed product f_xy v, both
forward-over-reverse or vjp) and the inner optimiser loop `run_inner`.

Kernels: for several products at one point, `linearize_inner_grads` runs
`jax.linearize` once and returns a linear map v -> (f_xy v, H v). Every
differentiable input is an explicit argument; nothing closes over parameters
inside a differentiated function.
"""

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from fuse4seg_jax.bilevel.inner_optim import InnerOptimizer

# Inner loops of at most this many steps are unrolled in Python instead of `lax.scan`:
# XLA:CPU ran a convolutional inner step about 20x slower inside a while loop (one SGD step of
# a small conv net: 290 ms straight-line, 5.2 s inside a length-1 scan; `unroll=True` did not
# help at length 1). Longer loops keep `lax.scan` to bound compile time. The same holds for
# the conjugate-gradient and Neumann loops, whose bodies are Hessian-vector products.
UNROLL_MAX_STEPS = 16


class Hypergradient(NamedTuple):
    """Result of one hypergradient evaluation.

    grad: pytree like outer_params, the (approximate) hypergradient dPhi/dx.
    inner_params: y after the inner steps (warm start for the next outer step).
    inner_opt_state: the inner optimiser state after those steps.
    aux: dict of scalars: "inner_loss" (f at the first inner step's point),
      "outer_loss" (F where the hypergradient is evaluated: y_K for
      first_order / unrolled / implicit_* / bdl, the virtual step y' for
      darts, the current y for joint), plus the inner loss's aux entries
      prefixed "inner/" and the outer loss's prefixed "outer/" at those same
      points, plus method diagnostics (e.g. "cg_residual").
    """

    grad: Any
    inner_params: Any
    inner_opt_state: Any
    aux: dict


class Problem(NamedTuple):
    inner_loss: Callable
    outer_loss: Callable
    inner_optimizer: InnerOptimizer
    x: Any
    y: Any
    opt_state: Any
    inner_batch: Any
    outer_batch: Any


# --------------------------------------------------------------------------- helpers


def tree_add(a, b):
    return jax.tree.map(jnp.add, a, b)


def tree_sub(a, b):
    return jax.tree.map(jnp.subtract, a, b)


def tree_scale(s, a):
    """s * a, in each leaf's dtype (the scalar s is cast to it)."""
    return jax.tree.map(lambda u: jnp.asarray(s, u.dtype) * u, a)


def tree_axpy(s, a, b):
    """s * a + b, in each leaf's dtype (the scalar s is cast to it)."""
    return jax.tree.map(lambda u, w: jnp.asarray(s, u.dtype) * u + w, a, b)


def tree_vdot(a, b):
    """Sum over leaves of <a, b>, accumulated in float32 or wider."""
    parts = [
        jnp.vdot(upcast(u), upcast(w)) for u, w in zip(*map(jax.tree.leaves, (a, b)), strict=True)
    ]
    return functools.reduce(jnp.add, parts)


def _wide(dtype):
    """float32 for floating dtypes narrower than 32 bits; the dtype itself otherwise."""
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 4:
        return jnp.dtype(jnp.float32)
    return dtype


def upcast(tree):
    """Cast floating leaves narrower than float32 (bfloat16, float16) up to float32; never down."""
    return jax.tree.map(lambda a: a.astype(_wide(jnp.result_type(a))), tree)


def cast_like(tree, like):
    return jax.tree.map(lambda a, b: a.astype(jnp.result_type(b)), tree, like)


def value_only(loss):
    """loss(x, y, batch) -> scalar (drops aux), for nested differentiation."""
    return lambda x, y, batch: loss(x, y, batch)[0]


def implicit_fraction(direct, total):
    """|total - direct| / |total| (0 when total is 0), not differentiated: the share of an
    estimate `total` that is its implicit term, `direct` being F_x (or, for darts, F_x at
    the virtual step)."""
    implicit = tree_sub(total, direct)
    num, den = tree_vdot(implicit, implicit), tree_vdot(total, total)
    return lax.stop_gradient(jnp.sqrt(jnp.where(den > 0, num / jnp.where(den > 0, den, 1), 0)))


def make_aux(inner_value, inner_aux, outer_value, outer_aux):
    aux = {"inner_loss": inner_value, "outer_loss": outer_value}
    aux.update({f"inner/{k}": v for k, v in inner_aux.items()})
    aux.update({f"outer/{k}": v for k, v in outer_aux.items()})
    return aux


def split_state(state):
    """Optimiser state -> (float leaves or None, other leaves or None, treedef).

    The reverse pass carries cotangents only for floating leaves; integer leaves
    (the step count) are held fixed.
    """
    leaves, treedef = jax.tree.flatten(state)
    is_float = [jnp.issubdtype(jnp.result_type(leaf), jnp.inexact) for leaf in leaves]
    diff = [leaf if f else None for leaf, f in zip(leaves, is_float, strict=True)]
    fixed = [None if f else leaf for leaf, f in zip(leaves, is_float, strict=True)]
    return diff, fixed, treedef


def merge_state(diff, fixed, treedef):
    return treedef.unflatten([f if d is None else d for d, f in zip(diff, fixed, strict=True)])


def scan(body, carry, xs, length, reverse=False):
    """`lax.scan` semantics; a Python loop when length <= UNROLL_MAX_STEPS (see there)."""
    if length > UNROLL_MAX_STEPS:
        return lax.scan(body, carry, xs, length=length, reverse=reverse)
    outputs = [None] * length
    for i in reversed(range(length)) if reverse else range(length):
        carry, outputs[i] = body(carry, jax.tree.map(lambda a, i=i: a[i], xs))
    return carry, jax.tree.map(lambda *a: jnp.stack(a), *outputs)


# --------------------------------------------------------------------------- kernels


def hvp(inner_loss, x, y, batch, v):
    """H v with H = d2f/dy2 at (x, y), by forward-over-reverse (jvp of grad_y f)."""
    grad_y = jax.grad(value_only(inner_loss), argnums=1)
    return jax.jvp(lambda y_: grad_y(x, y_, batch), (y,), (v,))[1]


def mixed_product(inner_loss, x, y, batch, v):
    """f_xy v = d/dx <grad_y f(x, y), v> (a pytree like x), by vjp of x -> grad_y f."""
    grad_y = jax.grad(value_only(inner_loss), argnums=1)
    _, vjp = jax.vjp(lambda x_: grad_y(x_, y, batch), x)
    return vjp(v)[0]


def linearize_inner_grads(inner_loss, x, y, batch):
    """Linearise y -> (grad_x f, grad_y f) at (x, y) (forward-over-reverse).

    Returns (grad_y f at (x, y), products) with products(v) = (f_xy v, H v).
    By symmetry of second derivatives, the y-directional derivative of grad_x f
    along v is d2f/(dx dy) v = f_xy v (the same vector `mixed_product` gets by
    a vjp), and that of grad_y f is H v: one pass gives both.
    """
    grads = jax.grad(value_only(inner_loss), argnums=(0, 1))
    (_, grad_y), products = jax.linearize(lambda y_: grads(x, y_, batch), y)
    return grad_y, products


def hvp_and_mixed(inner_loss, x, y, batch, v):
    """(f_xy v, H v) at (x, y) in one forward-over-reverse pass."""
    return linearize_inner_grads(inner_loss, x, y, batch)[1](v)


# --------------------------------------------------------------------------- inner loop


def inner_step(inner_loss, inner_optimizer, x, y, opt_state, batch):
    """One inner optimiser step on f; returns (y', state', f(x, y), aux of f)."""
    (value, aux), grads = jax.value_and_grad(inner_loss, argnums=1, has_aux=True)(x, y, batch)
    new_y, new_state = inner_optimizer.update(grads, opt_state, y)
    return new_y, new_state, value, aux


def run_inner(problem, steps, *, remat=False, keep_trajectory=False):
    """`steps` inner steps in `lax.scan` (differentiable w.r.t. x through the scan).

    Returns (y_K, state_K, f at y_0, aux of f at y_0, trajectory) where the
    trajectory is (stacked y_0..y_{K-1}, stacked states 0..K-1) or None.
    """
    step = functools.partial(inner_step, problem.inner_loss, problem.inner_optimizer)
    if remat:
        step = jax.checkpoint(step)

    def body(carry, _):
        y, state = carry
        new_y, new_state, value, aux = step(problem.x, y, state, problem.inner_batch)
        return (new_y, new_state), (value, aux, (y, state) if keep_trajectory else None)

    (y, state), (values, auxes, trajectory) = scan(
        body, (problem.y, problem.opt_state), None, steps
    )
    first_aux = jax.tree.map(lambda a: a[0], auxes)
    return y, state, values[0], first_aux, trajectory


def warm_start(problem, steps):
    """`steps` undifferentiated inner steps: (y_K, state_K, f at y_0, aux of f at y_0).

    y_K and state_K are wrapped in `lax.stop_gradient`: the methods that start
    from them (implicit_*, darts, bdl, the truncated prefix of unrolled) treat
    them as constants.
    """
    y, state, value, aux, _ = run_inner(problem, steps)
    return lax.stop_gradient(y), lax.stop_gradient(state), value, aux


def outer_value_and_grads(problem, y):
    """((F, aux of F), (F_x, F_y)) at (x, y) on the outer batch."""
    return jax.value_and_grad(problem.outer_loss, argnums=(0, 1), has_aux=True)(
        problem.x, y, problem.outer_batch
    )
