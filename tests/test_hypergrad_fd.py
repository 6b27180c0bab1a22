"""Central finite differences of the outer objective on a tiny fusion + segmentation pair.

The real Fuse4Seg objectives (objectives.build: frequency-decomposition and
gradient fusion losses, CE + soft Dice) on fusion_tiny + unet_tiny in float64,
on 16x16 phantom slices, in both orientations:

- unrolled, K SGD steps from y0: Phi_K(x) = F(x, y_K(x)). Its hypergradient
  must be the exact gradient of Phi_K, so <grad, d> equals the central
  difference (Phi_K(x + eps d) - Phi_K(x - eps d)) / (2 eps) along a random d.
- implicit_cg: Phi*(x) = F(x, y*(x)) with y* the inner minimiser. The networks
  are non-convex, so the inner objective gets a proximal term
  lambda/2 |y - y_anchor|^2 with lambda = 2 |H|_2 + 1 (power iteration on
  HVPs at the anchor), strongly convex near the anchor; y* is solved by
  gradient descent to a gradient norm of 1e-11 (checked), and CG with enough
  steps must give the gradient of Phi*. The networks use GELU here: with
  leaky ReLU's kink the inner minimiser of the segmentation orientation sat on
  a kink (gradient descent stalled at a gradient norm of 0.05 for any step
  size), where the implicit function theorem does not apply. For the same
  reason the fusion loss is the (smooth) SSIM term there, not the L1 terms.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from fuse4seg_jax import bilevel, objectives
from fuse4seg_jax.data import phantom
from fuse4seg_jax.models import get_fusion_model, get_segmentation_model

pytestmark = pytest.mark.slow  # float64 finite differences of whole networks: minutes

F64 = jnp.float64
LR, K, EPS = 0.05, 2, 1e-4


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _problem(inner, smooth_fusion_loss=False):
    smooth = dict(dtype=F64, param_dtype=F64, activation="gelu")
    fusion = get_fusion_model("fusion_tiny", **smooth)
    seg = get_segmentation_model("unet_tiny", num_classes=4, **smooth)
    loss = ml_collections.ConfigDict(
        dict(sigma=1.0, w_freq=1.0, w_grad=1.0, w_ssim=0.0, w_ce=1.0, w_dice=1.0)
    )
    if smooth_fusion_loss:  # the L1 terms have kinks; the SSIM term is smooth
        loss.update(w_freq=0.0, w_grad=0.0, w_ssim=1.0)
    level = ml_collections.ConfigDict(dict(inner=inner, mu=0.5, beta=1.0))
    objs = objectives.build(fusion, seg, loss, level)
    data = phantom.make_slices(3, num_slices=4, image_size=16)
    batch = {k: jnp.asarray(v, F64 if v.dtype.kind == "f" else v.dtype) for k, v in data.items()}
    inner_batch = {k: v[:2] for k, v in batch.items()}
    outer_batch = {k: v[2:] for k, v in batch.items()}
    x0 = jnp.zeros((1, 16, 16, 2), F64)
    theta = fusion.init(jax.random.PRNGKey(0), x0)["params"]
    phi = seg.init(jax.random.PRNGKey(1), x0[..., :1])["params"]
    # The fusion head is zero-initialised; nudge it so every parameter matters.
    theta = jax.tree.map(
        lambda p, k: p + 0.05 * jax.random.normal(k, p.shape, F64),
        theta,
        _keys(theta, 2),
    )
    x, y = (phi, theta) if inner == "fusion" else (theta, phi)
    return objs, x, y, inner_batch, outer_batch


def _keys(tree, seed):
    leaves, treedef = jax.tree.flatten(tree)
    return jax.tree.unflatten(
        treedef, list(jax.random.split(jax.random.PRNGKey(seed), len(leaves)))
    )


def _direction(x, seed):
    flat, unravel = ravel_pytree(x)
    d = jax.random.normal(jax.random.PRNGKey(seed), flat.shape, F64)
    return unravel(d / jnp.linalg.norm(d)), d / jnp.linalg.norm(d)


def _central_difference(phi_fn, x, d):
    plus = phi_fn(jax.tree.map(lambda a, b: a + EPS * b, x, d))
    minus = phi_fn(jax.tree.map(lambda a, b: a - EPS * b, x, d))
    return float((plus - minus) / (2 * EPS))


@pytest.mark.parametrize("inner", objectives.ORIENTATIONS)
def test_unrolled_equals_central_difference(inner):
    objs, x, y0, inner_batch, outer_batch = _problem(inner)
    grad_y = jax.grad(lambda x, y: objs.inner_loss(x, y, inner_batch)[0], argnums=1)

    @jax.jit
    def phi_k(x):  # F(x, y_K(x)) with K plain SGD steps, written out independently
        y = y0
        for _ in range(K):
            y = jax.tree.map(lambda p, g: p - LR * g, y, grad_y(x, y))
        return objs.outer_loss(x, y, outer_batch)[0]

    result = bilevel.hypergradient(
        "unrolled", objs.inner_loss, objs.outer_loss, x, y0, inner_batch, outer_batch,
        inner_optimizer=bilevel.make_inner_optimizer("sgd", LR), inner_steps=K,
    )  # fmt: skip
    d_tree, d = _direction(x, seed=5)
    analytic = float(ravel_pytree(result.grad)[0] @ d)
    numeric = _central_difference(phi_k, x, d_tree)
    assert abs(analytic) > 1e-4  # a meaningful directional derivative
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6)
    # and the path through y_K matters: the first-order estimate misses it
    first = bilevel.hypergradient(
        "first_order", objs.inner_loss, objs.outer_loss, x, y0, inner_batch, outer_batch,
        inner_optimizer=bilevel.make_inner_optimizer("sgd", LR), inner_steps=K,
    )  # fmt: skip
    assert abs(float(ravel_pytree(first.grad)[0] @ d) - numeric) > 1e3 * abs(analytic - numeric)


def _hessian_norm(loss, y, iterations=30):
    """|H|_2 of loss at y by power iteration on Hessian-vector products."""
    flat, unravel = ravel_pytree(y)
    grad = jax.grad(loss)

    @jax.jit
    def hvp(v):
        return ravel_pytree(jax.jvp(grad, (y,), (unravel(v),))[1])[0]

    v = jax.random.normal(jax.random.PRNGKey(7), flat.shape, F64)
    norm = 0.0
    for _ in range(iterations):
        hv = hvp(v / jnp.linalg.norm(v))
        norm, v = float(jnp.linalg.norm(hv)), hv
    return 1.1 * norm  # margin for the power iteration's underestimate


@pytest.mark.parametrize("inner", objectives.ORIENTATIONS)
def test_implicit_cg_equals_central_difference(inner):
    objs, x, anchor, inner_batch, outer_batch = _problem(inner, smooth_fusion_loss=True)
    flat_anchor, unravel = ravel_pytree(anchor)
    lipschitz = _hessian_norm(lambda y: objs.inner_loss(x, y, inner_batch)[0], anchor)
    prox = 2.0 * lipschitz + 1.0

    def prox_inner(x, y, batch):
        value, aux = objs.inner_loss(x, y, batch)
        return value + 0.5 * prox * jnp.sum((ravel_pytree(y)[0] - flat_anchor) ** 2), aux

    grad_y = jax.grad(lambda x, y: prox_inner(x, y, inner_batch)[0], argnums=1)
    step = 1.0 / (prox + 1.5 * lipschitz)  # H + prox I has eigenvalues in [prox - L, prox + L]

    @jax.jit
    def solve(x, y):  # gradient descent to the minimiser of the strongly convex inner problem
        def body(_, y):
            return jax.tree.map(lambda p, g: p - step * g, y, grad_y(x, y))

        y = jax.lax.fori_loop(0, 600, body, y)
        return y, ravel_pytree(grad_y(x, y))[0]

    ystar, residual = solve(x, anchor)
    assert float(jnp.linalg.norm(residual)) < 1e-11

    def phi_star(x):
        y, res = solve(x, ystar)
        assert float(jnp.linalg.norm(res)) < 1e-11
        return objs.outer_loss(x, y, outer_batch)[0]

    result = bilevel.hypergradient(
        "implicit_cg", prox_inner, objs.outer_loss, x, ystar, inner_batch, outer_batch,
        inner_optimizer=bilevel.make_inner_optimizer("sgd", 1e-3), inner_steps=1, cg_steps=40,
    )  # fmt: skip
    assert float(result.aux["cg_residual"]) < 1e-9
    d_tree, d = _direction(x, seed=6)
    analytic = float(ravel_pytree(result.grad)[0] @ d)
    numeric = _central_difference(phi_star, x, d_tree)
    assert abs(analytic) > 1e-6  # a meaningful directional derivative
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6)
    # The implicit term is not negligible: F_x alone (first order at y*) is off.
    first = bilevel.hypergradient(
        "first_order", prox_inner, objs.outer_loss, x, ystar, inner_batch, outer_batch,
        inner_optimizer=bilevel.make_inner_optimizer("sgd", 1e-3), inner_steps=1,
    )  # fmt: skip
    assert abs(float(ravel_pytree(first.grad)[0] @ d) - numeric) > 1e3 * abs(analytic - numeric)
