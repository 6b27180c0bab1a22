"""Differentiable inner (follower) optimisers for the bi-level layer.

`bilevel.hypergradient` differentiates *through* the inner optimiser's update
(the unrolled method), so the update must be a pure, smooth function of the
gradient, the optimiser state and the parameters. optax's transformations are
not written with that in mind (its Adam has eps outside the square root, whose
derivative is infinite at v = 0 and turns a zero cotangent into NaN), hence
this small module.

An `InnerOptimizer` is a pair of pure functions:
- `init(params) -> state`,
- `update(grads, state, params) -> (new_params, new_state)`.
The state is a dict of jnp arrays only (so it can be checkpointed and carried
through `lax.scan`). Every state has an int32 scalar "count" of the steps
taken; it is not differentiable and `bilevel` leaves it out of the reverse
pass. Hyperparameters are Python constants bound at construction (they are not
differentiated). The learning rate is a constant or a schedule, a function of that
count (e.g. an optax schedule: lr(count) for the step count + 1 being taken), and the
gradient may be clipped to a global norm first (`clip_norm` > 0): g * min(1, c / |g|),
with |g| computed safely at g = 0 (no NaN in its derivative).

Arithmetic is done in each parameter leaf's own dtype (float32 or float64); no
downcasting.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class InnerOptimizer(NamedTuple):
    """A pure, differentiable optimiser for the inner variable y (a pytree)."""

    init: Callable[[Any], Any]
    update: Callable[[Any, Any, Any], tuple[Any, Any]]


def _zeros_like(tree):
    return jax.tree.map(jnp.zeros_like, tree)


def _rate(learning_rate):
    """count (int32, steps taken before this one) -> the step's learning rate."""
    if callable(learning_rate):
        return learning_rate
    lr = float(learning_rate)
    return lambda count: lr


def _clip(grads, clip_norm: float):
    """grads scaled to global norm at most clip_norm (0: unchanged)."""
    if not clip_norm:
        return grads
    sumsq = sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads))
    safe = jnp.sqrt(jnp.where(sumsq > 0, sumsq, 1.0))  # finite derivative at g = 0
    scale = jnp.where(safe > clip_norm, clip_norm / safe, 1.0)
    return jax.tree.map(lambda g: g * scale.astype(g.dtype), grads)


def sgd(learning_rate, momentum: float = 0.0, clip_norm: float = 0.0) -> InnerOptimizer:
    """(Heavy-ball) SGD: v <- momentum v + g; y <- y - lr v (plain SGD when momentum = 0).

    State: {"count": int32 scalar} plus {"velocity": tree like params} if momentum != 0.
    """
    rate, mu = _rate(learning_rate), float(momentum)

    def init(params):
        state = {"count": jnp.zeros((), jnp.int32)}
        if mu:
            state["velocity"] = _zeros_like(params)
        return state

    def update(grads, state, params):
        grads = _clip(grads, clip_norm)
        lr = rate(state["count"])
        new_state = {"count": state["count"] + 1}
        if mu:
            step = jax.tree.map(lambda v, g: mu * v + g, state["velocity"], grads)
            new_state["velocity"] = step
        else:
            step = grads
        new_params = jax.tree.map(lambda p, s: p - jnp.asarray(lr, p.dtype) * s, params, step)
        return new_params, new_state

    return InnerOptimizer(init, update)


def adam(
    learning_rate, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, clip_norm: float = 0.0
) -> InnerOptimizer:
    """Adam with eps inside the square root: y <- y - lr m_hat / sqrt(v_hat + eps^2).

    With eps inside, the update is smooth at v = 0 (optax's `m / (sqrt(v) + eps)` has an
    infinite derivative there). Bias correction uses the int32 step count in the state.
    State: {"count": int32 scalar, "mu": tree like params, "nu": tree like params}.
    """
    rate, b1, b2, eps2 = _rate(learning_rate), float(b1), float(b2), float(eps) ** 2

    def init(params):
        return {
            "count": jnp.zeros((), jnp.int32),
            "mu": _zeros_like(params),
            "nu": _zeros_like(params),
        }

    def update(grads, state, params):
        grads = _clip(grads, clip_norm)
        lr = rate(state["count"])
        count = state["count"] + 1
        mu = jax.tree.map(lambda m, g: b1 * m + (1.0 - b1) * g, state["mu"], grads)
        nu = jax.tree.map(lambda v, g: b2 * v + (1.0 - b2) * g * g, state["nu"], grads)

        def leaf(p, m, v):
            t = count.astype(p.dtype)
            m_hat = m / (1.0 - b1**t)
            v_hat = v / (1.0 - b2**t)
            return p - jnp.asarray(lr, p.dtype) * m_hat / jnp.sqrt(v_hat + eps2)

        new_params = jax.tree.map(leaf, params, mu, nu)
        return new_params, {"count": count, "mu": mu, "nu": nu}

    return InnerOptimizer(init, update)


_OPTIMIZERS = {"sgd": sgd, "adam": adam}
INNER_OPTIMIZERS = tuple(_OPTIMIZERS)


def make_inner_optimizer(name: str, learning_rate: float, **kwargs) -> InnerOptimizer:
    """Build an inner optimiser by name.

    Args:
      name: "sgd" (kwargs: momentum=0.0) or "adam" (kwargs: b1=0.9, b2=0.999, eps=1e-8).
      learning_rate: a Python float (constant step size) or a schedule, count -> step
        size (count: the int32 number of steps taken before this one); not differentiated.
      **kwargs: optimiser hyperparameters, see above, and clip_norm (both; 0.0: off):
        the gradient is first scaled to global norm at most clip_norm.

    Raises:
      ValueError: unknown name.
    """
    if name not in _OPTIMIZERS:
        raise ValueError(f"Unknown inner optimiser {name!r}; valid names: {sorted(_OPTIMIZERS)}")
    return _OPTIMIZERS[name](learning_rate, **kwargs)
