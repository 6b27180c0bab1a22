"""Compiled-memory regression for truncated unrolling, and differentiability / dtype of CG.

Memory (docs/hypergradients.md oracle 4): with K differentiated steps fixed, the truncated unroll's
temporary buffers (`memory_analysis().temp_size_in_bytes`) must not grow with the total T,
since the T - K undifferentiated steps run in their own scan behind `lax.stop_gradient`;
the untruncated unroll over T steps stores its trajectory and grows.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from test_bilevel import ALPHA, BIG, RHO, SMALL, _flat, _mlp_problem, _quadratic

from fuse4seg_jax import bilevel
from fuse4seg_jax.bilevel import make_inner_optimizer

WIDTH = 64  # inner parameters: 2 * 64 * 64 = 8192 float32 (32 KiB per stored step)


def _wide_mlp():
    rng = np.random.default_rng(0)
    x = {"scale": jnp.asarray(rng.normal(size=WIDTH), jnp.float32)}
    y = {k: jnp.asarray(rng.normal(size=(WIDTH, WIDTH)) / 8, jnp.float32) for k in ("w1", "w2")}

    def batch(n):
        inputs = jnp.asarray(rng.normal(size=(n, WIDTH)), jnp.float32)
        return {"inputs": inputs, "targets": jnp.sin(inputs)}

    def predict(x, y, inputs):
        return jnp.tanh((inputs * x["scale"]) @ y["w1"]) @ y["w2"]

    def f(x, y, b):
        mse = jnp.mean((predict(x, y, b["inputs"]) - b["targets"]) ** 2)
        return mse + 1e-3 * sum(jnp.sum(w**2) for w in y.values()), {}

    def F(x, y, b):
        mse = jnp.mean((predict(x, y, b["inputs"]) - b["targets"]) ** 2)
        return mse + 1e-2 * jnp.sum(x["scale"] ** 2), {}

    return f, F, x, y, batch(16), batch(16)


def _temp_bytes(second_order, inner_steps, truncate_steps):
    f, F, x, y, inner_batch, outer_batch = _wide_mlp()
    fn = functools.partial(
        bilevel.hypergradient, "unrolled", f, F,
        inner_optimizer=make_inner_optimizer("sgd", 0.1, momentum=0.9),
        inner_steps=inner_steps, truncate_steps=truncate_steps, second_order=second_order,
    )  # fmt: skip
    compiled = jax.jit(fn).lower(x, y, inner_batch, outer_batch).compile()
    return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.slow
def test_truncated_unroll_memory_flat_in_total_steps():
    k, totals = 2, (32, 64, 128)  # prefixes of 30+ steps exceed UNROLL_MAX_STEPS: lax.scan
    assert totals[0] - k > bilevel.UNROLL_MAX_STEPS
    for second_order in bilevel.SECOND_ORDER:
        truncated = [_temp_bytes(second_order, k, t) for t in totals]
        full = [_temp_bytes(second_order, t, 0) for t in totals]
        assert max(truncated) - min(truncated) <= 0.05 * min(truncated), (second_order, truncated)
        # The full unroll stores two parameter-sized arrays per step (y_k and state_k).
        grown = 0.9 * (totals[-1] - totals[0]) * 2 * WIDTH * WIDTH * 4
        assert full[-1] - full[0] > grown, (second_order, full)
        assert full[-1] > 4 * truncated[-1], (second_order, full, truncated)


def test_implicit_cg_is_differentiable():
    """jax.grad through implicit_cg (custom_linear_solve) w.r.t. the problem data A, C, d."""
    with jax.enable_x64(True):
        f, F, x, y0, arr = _quadratic(BIG, SMALL, seed=20)
        sgd = make_inner_optimizer("sgd", ALPHA)
        n = arr["A"].shape[0]
        yk = bilevel.hypergradient("first_order", f, F, x, y0, arr, arr, inner_optimizer=sgd,
                                   inner_steps=2).inner_params  # fmt: skip
        yk = jax.lax.stop_gradient(_flat(yk))  # y_K is a constant of implicit_cg

        def method(data):
            data = dict(arr, **data)
            out = bilevel.hypergradient(
                "implicit_cg", f, F, x, y0, data, data, inner_optimizer=sgd, inner_steps=2,
                cg_steps=n,
            )  # fmt: skip
            return jnp.sum(_flat(out.grad) ** 2)

        def reference(data):
            A, C, d = data["A"], data["C"], data["d"]
            grad = RHO * _flat(x) + arr["B"].T @ jnp.linalg.solve(A, C.T @ (C @ yk - d))
            return jnp.sum(grad**2)

        data = {key: arr[key] for key in ("A", "C", "d")}
        got = jax.jit(jax.grad(method))(data)
        want = jax.grad(reference)(data)
        # A enters only through H (symmetric); compare the symmetric parts of dA.
        sym = lambda a: 0.5 * (a + a.T)  # noqa: E731
        np.testing.assert_allclose(sym(got["A"]), sym(want["A"]), rtol=1e-7, atol=1e-9)
        for key in ("C", "d"):
            np.testing.assert_allclose(got[key], want[key], rtol=1e-7, atol=1e-9)
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(got))


@pytest.mark.slow
def test_bfloat16_params_solve_in_float32():
    f, F, x, y, inner_batch, outer_batch = _mlp_problem(seed=21)
    x, y = jax.tree.map(lambda a: jnp.asarray(a, jnp.bfloat16), (x, y))
    inner_batch, outer_batch = jax.tree.map(
        lambda a: jnp.asarray(a, jnp.float32), (inner_batch, outer_batch)
    )
    sgd = make_inner_optimizer("sgd", 0.1)
    for method, options in (
        ("implicit_cg", {"cg_damping": 1.0}), ("implicit_neumann", {}), ("darts", {}),
        ("darts", {"darts_fd": True}), ("bdl", {}),
    ):  # fmt: skip
        out = bilevel.hypergradient(
            method, f, F, x, y, inner_batch, outer_batch, inner_optimizer=sgd, **options
        )
        assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(out.grad)), method
        assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(out.inner_params))
        assert bool(jnp.all(jnp.isfinite(ravel_pytree(out.grad)[0].astype(jnp.float32))))
        if method == "implicit_cg":
            assert out.aux["cg_residual"].dtype == jnp.float32
