"""Tests of fuse4seg_jax.bilevel against the closed-form quadratic oracle (docs/hypergradients.md).

Quadratic bilevel problem on pytrees, flattened with ravel_pytree:
f = 1/2 y'Ay - y'(Bx + c) (A SPD), F = 1/2 |Cy - d|^2 + rho/2 |x|^2. With inner
SGD of step alpha, M = I - alpha A: y_K = M^K y0 + (I - M^K) A^-1 (Bx + c) and
dy_K/dx = (I - M^K) A^-1 B, so the unrolled hypergradient is exactly
rho x + (dy_K/dx)' C'(C y_K - d) for every K.

All tests run in float64 inside `jax.enable_x64(True)` (an autouse fixture), so
x64 does not leak into other test modules.
"""

import ast
import functools
import inspect
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from fuse4seg_jax import bilevel
from fuse4seg_jax.bilevel import core, make_inner_optimizer

BIG = {"a": (2,), "b": (2, 2), "c": {"d": (3,)}}  # 9 entries
SMALL = {"u": (3,), "v": (1, 2)}  # 5 entries
ALPHA, RHO = 0.3, 0.1

# Compiled once per configuration: much faster than op-by-op dispatch of the eager call.
hypergradient = jax.jit(
    bilevel.hypergradient,
    static_argnums=(0, 1, 2),
    static_argnames=("inner_optimizer", "inner_steps", "remat", "second_order"),
)


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _tree(shapes, rng):
    return jax.tree.map(
        lambda s: jnp.asarray(rng.normal(size=s)), shapes, is_leaf=lambda s: isinstance(s, tuple)
    )


def _quadratic(x_shapes, y_shapes, seed=0):
    """Returns (f, F, x, y0, arrays) with x, y pytrees of the given shapes."""
    rng = np.random.default_rng(seed)
    x, y0 = _tree(x_shapes, rng), _tree(y_shapes, rng)
    nx, ny = ravel_pytree(x)[0].size, ravel_pytree(y0)[0].size
    q, _ = np.linalg.qr(rng.normal(size=(ny, ny)))
    arr = {
        "A": q @ np.diag(rng.uniform(1.0, 3.0, ny)) @ q.T,  # alpha * lambda in [0.3, 0.9]
        "B": rng.normal(size=(ny, nx)),
        "c": rng.normal(size=ny),
        "C": rng.normal(size=(4, ny)),
        "d": rng.normal(size=4),
    }
    arr = {k: jnp.asarray(v) for k, v in arr.items()}

    def f(x, y, batch):
        xv, yv = ravel_pytree(x)[0], ravel_pytree(y)[0]
        value = 0.5 * yv @ batch["A"] @ yv - yv @ (batch["B"] @ xv + batch["c"])
        return value, {"ynorm": jnp.sum(yv**2)}

    def F(x, y, batch):
        xv, yv = ravel_pytree(x)[0], ravel_pytree(y)[0]
        r = batch["C"] @ yv - batch["d"]
        return 0.5 * r @ r + 0.5 * RHO * xv @ xv, {"residual": r @ r}

    return f, F, x, y0, arr


def _closed_form(x, y0, arr, k):
    """(y_K flat, unrolled hypergradient flat, IFT hypergradient flat) for SGD(ALPHA)."""
    xv, yv = ravel_pytree(x)[0], ravel_pytree(y0)[0]
    A, B, C, c, d = (arr[key] for key in "ABCcd")
    n = A.shape[0]
    mk = jnp.linalg.matrix_power(jnp.eye(n) - ALPHA * A, k)
    ystar = jnp.linalg.solve(A, B @ xv + c)
    yk = mk @ yv + (jnp.eye(n) - mk) @ ystar
    dyk = (jnp.eye(n) - mk) @ jnp.linalg.solve(A, B)
    unrolled = RHO * xv + dyk.T @ C.T @ (C @ yk - d)
    ift = RHO * xv + B.T @ jnp.linalg.solve(A, C.T @ (C @ ystar - d))
    return yk, unrolled, ift


def _flat(tree):
    return ravel_pytree(tree)[0]


ORIENTATIONS = {"x_big": (BIG, SMALL), "x_small": (SMALL, BIG)}


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_unrolled_matches_closed_form(orientation):
    f, F, x, y0, arr = _quadratic(*ORIENTATIONS[orientation])
    sgd = make_inner_optimizer("sgd", ALPHA)
    long_k = bilevel.UNROLL_MAX_STEPS + 2  # exercises the lax.scan path, 1 and 3 the Python loop
    for k in (1, 3, long_k):
        yk, expected, _ = _closed_form(x, y0, arr, k)
        results = {}
        for second_order, remat in (("fwd_rev", False), ("grad", False), ("grad", True)):
            out = hypergradient(
                "unrolled", f, F, x, y0, arr, arr, inner_optimizer=sgd, inner_steps=k,
                second_order=second_order, remat=remat,
            )  # fmt: skip
            assert jax.tree.structure(out.grad) == jax.tree.structure(x)
            np.testing.assert_allclose(_flat(out.grad), expected, rtol=0, atol=1e-10)
            np.testing.assert_allclose(_flat(out.inner_params), yk, rtol=0, atol=1e-10)
            results[(second_order, remat)] = _flat(out.grad)
        np.testing.assert_allclose(results["fwd_rev", False], results["grad", False], atol=1e-12)


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_unrolled_converges_to_ift(orientation):
    f, F, x, y0, arr = _quadratic(*ORIENTATIONS[orientation], seed=1)
    sgd = make_inner_optimizer("sgd", ALPHA)
    ift = _closed_form(x, y0, arr, 1)[2]
    errors = []
    for k in (1, 3, 10, 30, 100):
        out = hypergradient("unrolled", f, F, x, y0, arr, arr, inner_optimizer=sgd, inner_steps=k)
        errors.append(float(jnp.linalg.norm(_flat(out.grad) - ift)))
    assert all(b < a for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 1e-8 * max(1.0, float(jnp.linalg.norm(ift))), errors


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_first_order_and_joint_closed_form(orientation):
    f, F, x, y0, arr = _quadratic(*ORIENTATIONS[orientation], seed=2)
    sgd = make_inner_optimizer("sgd", ALPHA)
    xv, yv = _flat(x), _flat(y0)
    yk = _closed_form(x, y0, arr, 4)[0]
    out = hypergradient("first_order", f, F, x, y0, arr, arr, inner_optimizer=sgd, inner_steps=4)
    np.testing.assert_allclose(_flat(out.grad), RHO * xv, atol=1e-12)
    np.testing.assert_allclose(_flat(out.inner_params), yk, atol=1e-10)
    assert int(out.inner_opt_state["count"]) == 4
    f0 = f(x, y0, arr)[0]
    np.testing.assert_allclose(out.aux["inner_loss"], f0, atol=1e-12)
    np.testing.assert_allclose(out.aux["outer_loss"], F(x, out.inner_params, arr)[0], atol=1e-12)
    assert set(out.aux) == {"inner_loss", "outer_loss", "inner/ynorm", "outer/residual"}

    # joint: J = F + f; grad_x J = rho x - B'y; y <- y - alpha (C'(Cy - d) + Ay - Bx - c).
    A, B, C, c, d = (arr[key] for key in "ABCcd")
    out = hypergradient("joint", f, F, x, y0, arr, arr, inner_optimizer=sgd, inner_steps=7)
    np.testing.assert_allclose(_flat(out.grad), RHO * xv - B.T @ yv, atol=1e-12)
    y1 = yv - ALPHA * (C.T @ (C @ yv - d) + A @ yv - B @ xv - c)
    np.testing.assert_allclose(_flat(out.inner_params), y1, atol=1e-12)
    assert int(out.inner_opt_state["count"]) == 1
    np.testing.assert_allclose(out.aux["outer_loss"], F(x, y0, arr)[0], atol=1e-12)


def test_implicit_term_is_nonzero():
    f, F, x, y0, arr = _quadratic(BIG, SMALL, seed=3)
    sgd = make_inner_optimizer("sgd", ALPHA)
    kw = dict(inner_optimizer=sgd, inner_steps=5)
    unrolled = hypergradient("unrolled", f, F, x, y0, arr, arr, **kw)
    first = hypergradient("first_order", f, F, x, y0, arr, arr, **kw)
    implicit = _flat(unrolled.grad) - _flat(first.grad)
    assert float(jnp.linalg.norm(implicit)) > 1e-2 * float(jnp.linalg.norm(_flat(first.grad)))
    np.testing.assert_allclose(_flat(unrolled.inner_params), _flat(first.inner_params), atol=1e-14)


def test_product_kernels_match_quadratic():
    f, _, x, y0, arr = _quadratic(SMALL, BIG, seed=4)
    v = jax.tree.map(lambda a: jnp.cos(a + 1.0), y0)
    hv = core.hvp(f, x, y0, arr, v)
    mixed = core.mixed_product(f, x, y0, arr, v)
    mixed_fwd, hv_fwd = core.hvp_and_mixed(f, x, y0, arr, v)
    np.testing.assert_allclose(_flat(hv), arr["A"] @ _flat(v), atol=1e-12)
    np.testing.assert_allclose(_flat(mixed), -arr["B"].T @ _flat(v), atol=1e-12)
    np.testing.assert_allclose(_flat(hv_fwd), _flat(hv), atol=1e-12)
    np.testing.assert_allclose(_flat(mixed_fwd), _flat(mixed), atol=1e-12)


def _mlp_problem(zero_head=False, seed=5):
    """Tiny tanh MLP follower y; leader x scales/shifts the inputs and weights a penalty."""
    rng = np.random.default_rng(seed)
    x = {"scale": jnp.asarray(rng.normal(size=3)), "shift": {"s": jnp.asarray(0.3)}}
    y = {
        "w1": jnp.asarray(rng.normal(size=(3, 4))),
        "b1": jnp.asarray(rng.normal(size=4) * 0.1),
        "w2": jnp.zeros((4, 1)) if zero_head else jnp.asarray(rng.normal(size=(4, 1))),
    }

    def batch(n):
        inputs = jnp.asarray(rng.normal(size=(n, 3)))
        return {"inputs": inputs, "targets": jnp.sin(inputs.sum(-1, keepdims=True))}

    def predict(x, y, inputs):
        h = jnp.tanh((inputs * x["scale"] + x["shift"]["s"]) @ y["w1"] + y["b1"])
        return h @ y["w2"]

    def f(x, y, b):
        mse = jnp.mean((predict(x, y, b["inputs"]) - b["targets"]) ** 2)
        reg = jnp.exp(x["shift"]["s"]) * jnp.sum(y["w2"] ** 2)
        return mse + 0.01 * reg, {"mse": mse}

    def F(x, y, b):
        mse = jnp.mean((predict(x, y, b["inputs"]) - b["targets"]) ** 2)
        return mse + 0.05 * jnp.sum(x["scale"] ** 2), {}

    return f, F, x, y, batch(8), batch(6)


OPTIMIZERS = {
    "sgd_momentum": ("sgd", 0.1, {"momentum": 0.9}),
    "adam": ("adam", 0.05, {}),
}


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("problem", ["quadratic", "mlp"])
def test_fwd_rev_matches_grad_reference(opt, problem):
    name, lr, kwargs = OPTIMIZERS[opt]
    optimizer = make_inner_optimizer(name, lr, **kwargs)
    # Both inner-loop implementations: Python-unrolled (short) and lax.scan (long).
    if problem == "quadratic":
        f, F, x, y, arr = _quadratic(BIG, SMALL, seed=6)
        inner_batch = outer_batch = arr
        steps = bilevel.UNROLL_MAX_STEPS - 2
    else:
        f, F, x, y, inner_batch, outer_batch = _mlp_problem()
        steps = bilevel.UNROLL_MAX_STEPS + 2
    kw = dict(inner_optimizer=optimizer, inner_steps=steps)
    fast = hypergradient("unrolled", f, F, x, y, inner_batch, outer_batch, **kw)
    ref = hypergradient("unrolled", f, F, x, y, inner_batch, outer_batch, second_order="grad", **kw)
    np.testing.assert_allclose(_flat(fast.grad), _flat(ref.grad), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(_flat(fast.inner_params), _flat(ref.inner_params), atol=1e-14)
    first = hypergradient("first_order", f, F, x, y, inner_batch, outer_batch, **kw)
    assert float(jnp.linalg.norm(_flat(fast.grad) - _flat(first.grad))) > 1e-6


def test_adam_differentiable_at_zero_gradient():
    # With the output layer at zero, grad_{w1, b1} f is exactly 0 at the first step (v = 0 there).
    f, F, x, y, inner_batch, outer_batch = _mlp_problem(zero_head=True)
    grads0 = jax.grad(lambda y_: f(x, y_, inner_batch)[0])(y)
    assert float(jnp.max(jnp.abs(grads0["w1"]))) == 0.0
    adam = make_inner_optimizer("adam", 0.05)
    kw = dict(inner_optimizer=adam, inner_steps=4)
    fast = hypergradient("unrolled", f, F, x, y, inner_batch, outer_batch, **kw)
    ref = hypergradient("unrolled", f, F, x, y, inner_batch, outer_batch, second_order="grad", **kw)
    assert bool(jnp.all(jnp.isfinite(_flat(fast.grad))))
    np.testing.assert_allclose(_flat(fast.grad), _flat(ref.grad), rtol=1e-9, atol=1e-11)

    # The trap this guards against: eps outside the square root (optax's form) gives NaN here.
    def naive_update(grads, state, params):
        new_params, new_state = adam.update(grads, state, params)
        t = new_state["count"].astype(jnp.float64)
        step = jax.tree.map(
            lambda m, v: 0.05 * (m / (1 - 0.9**t)) / (jnp.sqrt(v / (1 - 0.999**t)) + 1e-8),
            new_state["mu"],
            new_state["nu"],
        )
        return jax.tree.map(jnp.subtract, params, step), new_state

    naive = bilevel.InnerOptimizer(adam.init, naive_update)
    out = hypergradient("unrolled", f, F, x, y, inner_batch, outer_batch, inner_optimizer=naive)
    assert not bool(jnp.all(jnp.isfinite(_flat(out.grad))))


def test_inner_opt_state_round_trip():
    f, F, x, y, inner_batch, outer_batch = _mlp_problem(seed=7)
    adam = make_inner_optimizer("adam", 0.05)
    kw = dict(inner_optimizer=adam)
    a = hypergradient("unrolled", f, F, x, y, inner_batch, outer_batch, inner_steps=3, **kw)
    assert int(a.inner_opt_state["count"]) == 3
    b = hypergradient(
        "unrolled", f, F, x, a.inner_params, inner_batch, outer_batch,
        inner_opt_state=a.inner_opt_state, inner_steps=3, **kw,
    )  # fmt: skip
    assert int(b.inner_opt_state["count"]) == 6
    both = hypergradient("first_order", f, F, x, y, inner_batch, outer_batch, inner_steps=6, **kw)
    np.testing.assert_allclose(_flat(b.inner_params), _flat(both.inner_params), atol=1e-13)
    for key in ("mu", "nu"):
        np.testing.assert_allclose(
            _flat(b.inner_opt_state[key]), _flat(both.inner_opt_state[key]), atol=1e-13
        )


@pytest.mark.slow
def test_jit_matches_eager():
    f, F, x, y, inner_batch, outer_batch = _mlp_problem(seed=8)
    adam = make_inner_optimizer("adam", 0.05)
    for method in bilevel.METHODS:
        # The MLP's Hessian is indefinite here (CG's cg_min_curvature < 0 even at damping 2):
        # CG then amplifies rounding differences between jit and eager to ~1e-9; damp it.
        fn = functools.partial(
            bilevel.hypergradient, method, f, F, inner_optimizer=adam, inner_steps=3,
            cg_damping=5.0,
        )  # fmt: skip
        eager = fn(x, y, inner_batch, outer_batch)
        jitted = jax.jit(fn)(x, y, inner_batch, outer_batch)
        np.testing.assert_allclose(_flat(jitted.grad), _flat(eager.grad), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(
            _flat(jitted.inner_params), _flat(eager.inner_params), atol=1e-14
        )
        for key, value in eager.aux.items():
            np.testing.assert_allclose(jitted.aux[key], value, rtol=1e-12, atol=1e-14)


def test_float32_runs_and_keeps_dtype():
    with jax.enable_x64(False):
        f, F, x, y, inner_batch, outer_batch = _mlp_problem(seed=9)
        x, y, inner_batch, outer_batch = jax.tree.map(
            lambda a: jnp.asarray(a, jnp.float32), (x, y, inner_batch, outer_batch)
        )
        adam = make_inner_optimizer("adam", 0.05)
        out = hypergradient("unrolled", f, F, x, y, inner_batch, outer_batch, inner_optimizer=adam)
        assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(out.grad))
        assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(out.inner_params))
        assert bool(jnp.all(jnp.isfinite(_flat(out.grad))))


def test_unknown_names_raise():
    sgd = make_inner_optimizer("sgd", 0.1)
    f, F, x, y, arr = _quadratic(SMALL, SMALL)
    with pytest.raises(ValueError, match="first_order"):
        bilevel.hypergradient("nope", f, F, x, y, arr, arr, inner_optimizer=sgd)
    with pytest.raises(ValueError, match="fwd_rev"):
        bilevel.hypergradient(
            "unrolled", f, F, x, y, arr, arr, inner_optimizer=sgd, second_order="x"
        )
    with pytest.raises(ValueError, match="adam"):
        make_inner_optimizer("rmsprop", 0.1)


def test_method_options_match_signatures():
    assert set(bilevel.METHOD_OPTIONS) == set(bilevel.METHODS)
    for method in bilevel.METHODS:
        params = inspect.signature(bilevel._IMPLS[method]).parameters.values()
        assert not any(p.kind is p.VAR_KEYWORD for p in params), method
        keyword_only = tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY)
        assert keyword_only == bilevel.METHOD_OPTIONS[method], method
    union = {name for names in bilevel.METHOD_OPTIONS.values() for name in names}
    assert union == set(bilevel.OPTION_DEFAULTS)


def test_unknown_option_raises_and_method_options_picks():
    sgd = make_inner_optimizer("sgd", 0.1)
    f, F, x, y, arr = _quadratic(SMALL, SMALL)
    with pytest.raises(TypeError, match="bogus_option"):
        bilevel.hypergradient("joint", f, F, x, y, arr, arr, inner_optimizer=sgd, bogus_option=1)
    settings = dict(bilevel.OPTION_DEFAULTS, cg_steps=3, inner_lr=0.5)  # plus a non-option key
    assert bilevel.method_options("joint", settings) == {}
    assert bilevel.method_options("implicit_cg", settings) == {
        "inner_steps": 1, "cg_steps": 3, "cg_damping": 0.0,
    }  # fmt: skip
    assert bilevel.method_options("bdl", {"bdl_eps": 0.5}) == {"bdl_eps": 0.5}  # missing: default
    with pytest.raises(ValueError, match="first_order"):
        bilevel.method_options("nope", settings)
    picked = bilevel.method_options("first_order", settings)
    out = bilevel.hypergradient("first_order", f, F, x, y, arr, arr, inner_optimizer=sgd, **picked)
    ref = bilevel.hypergradient("first_order", f, F, x, y, arr, arr, inner_optimizer=sgd)
    np.testing.assert_array_equal(_flat(out.grad), _flat(ref.grad))


def _absolute_imports(path):
    """Module names imported by the file at `path`; relative imports must stay in its package."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level <= 1, f"{path.name}: relative import leaves the package"
            if node.level:
                continue
            if node.module == "fuse4seg_jax":
                yield from (f"fuse4seg_jax.{alias.name}" for alias in node.names)
            else:
                yield node.module


def test_bilevel_package_is_a_leaf():
    package = pathlib.Path(bilevel.__file__).parent
    files = sorted(package.glob("*.py"))
    assert {p.name for p in files} >= {"__init__.py", "core.py", "inner_optim.py"}
    for path in files:
        for name in _absolute_imports(path):
            if name == "fuse4seg_jax" or name.startswith("fuse4seg_jax."):
                assert name == "fuse4seg_jax.bilevel" or name.startswith("fuse4seg_jax.bilevel."), (
                    f"{path.name} imports {name}"
                )
