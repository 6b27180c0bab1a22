"""The follower's optimiser with the outer recipe (bilevel.inner_schedule = "outer"): the
same warm-up and schedule counted in inner steps, and global-norm clipping that stays
differentiable at a zero gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from fuse4seg_jax import optimizers


def _config(optimizer="sgd", how="outer", inner_steps=1):
    config = default.get_config()
    config.bilevel.inner_optimizer, config.bilevel.inner_momentum = optimizer, 0.0
    config.bilevel.inner_lr, config.bilevel.inner_schedule = 0.5, how
    config.bilevel.inner_steps = inner_steps
    config.optim.warmup_steps, config.optim.schedule, config.optim.grad_clip = 4, "cosine", 1.0
    return config


def _steps(opt, grads, n):
    """Parameter changes of n updates with the same gradient, from zero parameters."""
    params, state, changes = {"w": jnp.zeros(2)}, None, []
    state = opt.init(params)
    for _ in range(n):
        new, state = opt.update(grads, state, params)
        changes.append(np.asarray(new["w"] - params["w"]))
        params = new
    return changes


@pytest.mark.parametrize("inner_steps", [1, 3])
def test_the_inner_rate_warms_up_like_the_outer_one_in_inner_steps(inner_steps):
    config = _config(inner_steps=inner_steps)
    opt = optimizers.inner(config.bilevel, config.optim, num_steps=100)
    grads = {"w": jnp.array([0.3, -0.4])}  # norm 0.5: under the clip
    changes = _steps(opt, grads, 2)
    warmup = 4 * inner_steps  # the outer warm-up of 4 steps, in inner steps
    rates = [0.5 / warmup, 0.5 / warmup + (0.5 - 0.5 / warmup) / warmup]  # linear ramp
    for change, rate in zip(changes, rates, strict=True):
        np.testing.assert_allclose(change, -rate * np.array([0.3, -0.4]), rtol=1e-6)
    outer = optimizers.schedule(config.optim, 100, peak=0.5)
    assert float(outer(0)) == pytest.approx(0.5 / 4)  # what the outer optimiser starts at


def test_the_inner_gradient_is_clipped_and_the_constant_recipe_is_unchanged():
    grads = {"w": jnp.array([6.0, 8.0])}  # norm 10, clipped to 1
    config = _config()
    (change,) = _steps(optimizers.inner(config.bilevel, config.optim, 100), grads, 1)
    np.testing.assert_allclose(change, -(0.5 / 4) * np.array([0.6, 0.8]), rtol=1e-6)
    config = _config(how="constant")
    (change,) = _steps(optimizers.inner(config.bilevel, config.optim, 100), grads, 1)
    np.testing.assert_allclose(change, -0.5 * np.array([6.0, 8.0]), rtol=1e-6)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_clipping_is_differentiable_at_a_zero_gradient(optimizer):
    """Unrolled methods differentiate through the update: d(new params)/d(params) of
    f(y) = |y|^2 / 2 at y = 0 (gradient exactly 0) is finite."""
    config = _config(optimizer)
    opt = optimizers.inner(config.bilevel, config.optim, num_steps=100)

    def step(y):
        g = jax.grad(lambda p: 0.5 * jnp.sum(p["w"] ** 2))(y)
        return opt.update(g, opt.init(y), y)[0]["w"]

    jac = jax.jacobian(step)({"w": jnp.zeros(2)})["w"]
    assert np.all(np.isfinite(np.asarray(jac)))


def test_an_unknown_inner_schedule_is_refused():
    config = _config(how="linear")
    with pytest.raises(ValueError, match="bilevel.inner_schedule='linear': expected one of"):
        optimizers.inner(config.bilevel, config.optim, 100)
