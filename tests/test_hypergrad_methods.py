"""Closed-form quadratic oracles for implicit_cg, implicit_neumann, darts, bdl and truncation.

Same problem as tests/test_bilevel.py (docs/hypergradients.md oracle 1): f = 1/2 y'Ay - y'(Bx + c),
F = 1/2 |Cy - d|^2 + rho/2 |x|^2, so H = A, f_xy v = -B'v, F_x = rho x, F_y = C'(Cy - d),
y* = A^-1 (Bx + c) and grad Phi = rho x + B' A^-1 C'(C y* - d). Every method evaluated at
y_K gives the matching formula with y_K in place of y* (checked exactly), and converges to
grad Phi as its budget grows. All in float64 (autouse fixture).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from test_bilevel import ALPHA, BIG, ORIENTATIONS, RHO, SMALL, _closed_form, _flat, _mlp_problem
from test_bilevel import _quadratic as _quadratic_problem

from fuse4seg_jax import bilevel
from fuse4seg_jax.bilevel import core, make_inner_optimizer, onestep

hypergradient = jax.jit(
    bilevel.hypergradient,
    static_argnums=(0, 1, 2),
    static_argnames=(
        "inner_optimizer", "inner_steps", "remat", "second_order", "truncate_steps",
        "cg_steps", "neumann_steps", "darts_fd",
    ),
)  # fmt: skip
SGD = make_inner_optimizer("sgd", ALPHA)


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _quadratic(orientation, seed):
    return _quadratic_problem(*ORIENTATIONS[orientation], seed=seed)


def _at(x, y, arr):
    """(F_y flat at y, formula rho x + B' M C'(Cy - d) as a function of M)."""
    xv, yv = _flat(x), _flat(y)
    fy = arr["C"].T @ (arr["C"] @ yv - arr["d"])
    return fy, lambda m: RHO * xv + arr["B"].T @ (m @ fy)


def _ystar(x, y0, arr):
    ystar = jnp.linalg.solve(arr["A"], arr["B"] @ _flat(x) + arr["c"])
    return ravel_pytree(y0)[1](ystar)


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_cg_closed_form_and_convergence(orientation):
    f, F, x, y0, arr = _quadratic(orientation, seed=10)
    A, n = arr["A"], arr["A"].shape[0]
    # At y_K (3 SGD steps from a random y0) with n = dim(y) steps: exactly A^-1, any damping.
    yk = _closed_form(x, y0, arr, 3)[0]
    expected = _at(x, ravel_pytree(y0)[1](yk), arr)[1]
    for damping in (0.0, 0.5):
        out = hypergradient(
            "implicit_cg", f, F, x, y0, arr, arr, inner_optimizer=SGD, inner_steps=3,
            cg_steps=n, cg_damping=damping,
        )  # fmt: skip
        want = expected(jnp.linalg.inv(A + damping * jnp.eye(n)))
        np.testing.assert_allclose(_flat(out.grad), want, rtol=0, atol=1e-10)
        np.testing.assert_allclose(_flat(out.inner_params), yk, atol=1e-12)
        assert float(out.aux["cg_residual"]) < 1e-10
        assert float(out.aux["cg_nonpositive"]) == 0.0
        # Rayleigh quotients of A + delta I lie in [lambda_min, lambda_max].
        assert float(out.aux["cg_min_curvature"]) >= float(jnp.linalg.eigvalsh(A)[0]) - 1e-9
    # Started at y*, the error to grad Phi shrinks with the CG budget.
    ystar, ift = _ystar(x, y0, arr), _closed_form(x, y0, arr, 1)[2]
    errors, residuals = [], []
    for steps in (1, 2, 4, n):
        out = hypergradient(
            "implicit_cg", f, F, x, ystar, arr, arr, inner_optimizer=SGD, cg_steps=steps
        )
        errors.append(float(jnp.linalg.norm(_flat(out.grad) - ift)))
        residuals.append(float(out.aux["cg_residual"]))
    assert errors[-1] < 1e-10 * float(jnp.linalg.norm(ift)), errors
    assert errors[0] > 1e3 * errors[-1] and errors[2] < errors[0], errors
    assert all(b < a for a, b in zip(residuals, residuals[1:], strict=False)), residuals


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_neumann_closed_form_and_convergence(orientation):
    f, F, x, y0, arr = _quadratic(orientation, seed=11)
    n = arr["A"].shape[0]
    m = jnp.eye(n) - ALPHA * arr["A"]
    yk = _closed_form(x, y0, arr, 2)[0]
    expected = _at(x, ravel_pytree(y0)[1](yk), arr)[1]
    series = ALPHA * sum(jnp.linalg.matrix_power(m, k) for k in range(5))
    out = hypergradient(
        "implicit_neumann", f, F, x, y0, arr, arr, inner_optimizer=SGD, inner_steps=2,
        neumann_steps=5, neumann_alpha=ALPHA,
    )  # fmt: skip
    np.testing.assert_allclose(_flat(out.grad), expected(series), rtol=0, atol=1e-11)
    np.testing.assert_allclose(_flat(out.inner_params), yk, atol=1e-12)
    ystar, ift = _ystar(x, y0, arr), _closed_form(x, y0, arr, 1)[2]
    errors = []
    for terms in (1, 5, 20, 100):  # 100 > UNROLL_MAX_STEPS: the lax.scan path
        out = hypergradient(
            "implicit_neumann", f, F, x, ystar, arr, arr, inner_optimizer=SGD,
            neumann_steps=terms, neumann_alpha=ALPHA,
        )  # fmt: skip
        errors.append(float(jnp.linalg.norm(_flat(out.grad) - ift)))
    assert all(b < a for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 1e-10 * float(jnp.linalg.norm(ift)), errors
    assert float(out.aux["neumann_residual"]) < 1e-10


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_unrolled_from_ystar_equals_neumann(orientation):
    """Reverse mode through K SGD(alpha) steps started AT y* = Neumann with K terms.

    y_k = y* for all k, so dy_K/dx = alpha sum_{j<K} M^j B with M = I - alpha A and the
    unrolled hypergradient is rho x + B' alpha sum_{j<K} M^j F_y: the Neumann estimate with
    neumann_steps = K terms (powers 0..K-1, i.e. K - 1 HVPs beyond the identity term;
    docs/hypergradients.md, oracle 1).
    """
    f, F, x, y0, arr = _quadratic(orientation, seed=12)
    ystar = _ystar(x, y0, arr)
    for k in (1, 3, 12):
        unrolled = hypergradient(
            "unrolled", f, F, x, ystar, arr, arr, inner_optimizer=SGD, inner_steps=k
        )
        neumann = hypergradient(
            "implicit_neumann", f, F, x, ystar, arr, arr, inner_optimizer=SGD,
            neumann_steps=k, neumann_alpha=ALPHA,
        )  # fmt: skip
        np.testing.assert_allclose(_flat(unrolled.grad), _flat(neumann.grad), rtol=0, atol=1e-12)


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_darts_closed_form(orientation):
    f, F, x, y0, arr = _quadratic(orientation, seed=13)
    xi = 0.05
    yk = _closed_form(x, y0, arr, 2)[0]
    yv = yk - xi * (arr["A"] @ yk - arr["B"] @ _flat(x) - arr["c"])  # the virtual step
    expected = RHO * _flat(x) + xi * arr["B"].T @ arr["C"].T @ (arr["C"] @ yv - arr["d"])
    grads = {}
    for fd in (False, True):
        out = hypergradient(
            "darts", f, F, x, y0, arr, arr, inner_optimizer=SGD, inner_steps=2,
            darts_xi=xi, darts_fd=fd,
        )  # fmt: skip
        np.testing.assert_allclose(_flat(out.grad), expected, rtol=0, atol=1e-11)
        np.testing.assert_allclose(_flat(out.inner_params), yk, atol=1e-12)  # real steps only
        np.testing.assert_allclose(out.aux["outer_loss"], F(x, ravel_pytree(y0)[1](yv), arr)[0])
        grads[fd] = _flat(out.grad)
    np.testing.assert_allclose(grads[True], grads[False], rtol=1e-12, atol=1e-13)


@pytest.mark.slow
def test_fd_mixed_product_matches_vjp():
    # Quadratic: f_xy is constant, so the central difference is exact up to rounding.
    f, _, x, y0, arr = _quadratic_problem(SMALL, BIG, seed=14)
    v = jax.tree.map(lambda a: jnp.cos(3 * a), y0)
    fd = onestep.fd_mixed_product(f, x, y0, arr, v)
    exact = core.mixed_product(f, x, y0, arr, v)
    np.testing.assert_allclose(_flat(fd), _flat(exact), rtol=1e-12, atol=1e-13)
    # Non-quadratic MLP: agreement to O(eps^2) with eps = 0.01 / |v|.
    f, _, x, y, inner_batch, _ = _mlp_problem(seed=15)
    v = jax.tree.map(lambda a: jnp.sin(a), y)
    fd = onestep.fd_mixed_product(f, x, y, inner_batch, v)
    exact = core.mixed_product(f, x, y, inner_batch, v)
    np.testing.assert_allclose(_flat(fd), _flat(exact), rtol=1e-4, atol=1e-8)
    zero = jax.tree.map(jnp.zeros_like, v)
    assert float(jnp.abs(_flat(onestep.fd_mixed_product(f, x, y, inner_batch, zero))).max()) == 0


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_bdl_closed_form_and_guard(orientation):
    f, F, x, y0, arr = _quadratic(orientation, seed=16)
    yk = _closed_form(x, y0, arr, 2)[0]
    fy_outer = arr["C"].T @ (arr["C"] @ yk - arr["d"])
    fy_inner = arr["A"] @ yk - arr["B"] @ _flat(x) - arr["c"]
    coef = fy_outer @ fy_inner / (fy_inner @ fy_inner)
    expected = RHO * _flat(x) - coef * (-arr["B"].T @ yk)  # F_x - c f_x
    out = hypergradient("bdl", f, F, x, y0, arr, arr, inner_optimizer=SGD, inner_steps=2)
    np.testing.assert_allclose(_flat(out.grad), expected, rtol=0, atol=1e-11)
    np.testing.assert_allclose(out.aux["bdl_coef"], coef, rtol=1e-12)
    assert float(out.aux["bdl_defined"]) == 1.0
    # At y* f_y vanishes: the correction is dropped (first-order estimate), no NaN.
    out = hypergradient("bdl", f, F, x, _ystar(x, y0, arr), arr, arr, inner_optimizer=SGD)
    assert float(out.aux["bdl_defined"]) == 0.0
    np.testing.assert_allclose(_flat(out.grad), RHO * _flat(x), atol=1e-14)


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_damped_bdl_is_bounded_near_the_followers_optimum(orientation):
    """On the path y0 = y* + t d, t -> 0: undamped, the coefficient grows as 1/t (BDLFusion's
    form); damped (lambda = 1e-4), the closed form <F_y, f_y> / (|f_y|^2 + lambda) holds,
    |c| stays under |F_y| / (2 sqrt(lambda)) and the correction vanishes with t (linearly
    once |f_y|^2 << lambda)."""
    f, F, x, y0, arr = _quadratic(orientation, seed=18)
    ystar = _ystar(x, y0, arr)
    flat_star, unravel = ravel_pytree(ystar)
    d = np.random.default_rng(0).standard_normal(flat_star.shape)
    coefs, corrections = {0.0: [], 1e-4: []}, []
    for t in (1e-1, 1e-3, 1e-5, 1e-7):
        start = unravel(flat_star + t * d)
        for lam in coefs:
            out = hypergradient("bdl", f, F, x, start, arr, arr, inner_optimizer=SGD,
                                inner_steps=1, bdl_damping=lam)  # fmt: skip
            coefs[lam].append(abs(float(out.aux["bdl_coef"])))
            if lam:
                yk = _closed_form(x, start, arr, 1)[0]
                fy_outer = arr["C"].T @ (arr["C"] @ yk - arr["d"])
                fy_inner = arr["A"] @ yk - arr["B"] @ _flat(x) - arr["c"]
                coef = fy_outer @ fy_inner / (fy_inner @ fy_inner + lam)
                np.testing.assert_allclose(float(out.aux["bdl_coef"]), coef, rtol=1e-8, atol=1e-9)
                assert abs(coef) <= np.linalg.norm(fy_outer) / (2 * np.sqrt(lam))
                corrections.append(np.linalg.norm(_flat(out.grad) - RHO * _flat(x)))
    assert coefs[0.0][2] > 1e3 * coefs[0.0][0]  # 1/t: unbounded (t = 1e-7 falls under bdl_eps)
    assert corrections[3] < 1e-3 * corrections[0]  # damped: the correction goes to 0 (as t)
    assert corrections[3] < 0.1 * corrections[2]


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_truncated_unroll_closed_form(orientation):
    f, F, x, y0, arr = _quadratic(orientation, seed=17)
    total, k = 12, 3  # 9 undifferentiated steps in lax.scan, 3 differentiated
    y_mid = ravel_pytree(y0)[1](_closed_form(x, y0, arr, total - k)[0])
    y_end, expected, _ = _closed_form(x, y_mid, arr, k)
    for second_order in bilevel.SECOND_ORDER:
        out = hypergradient(
            "unrolled", f, F, x, y0, arr, arr, inner_optimizer=SGD, inner_steps=k,
            truncate_steps=total, second_order=second_order,
        )  # fmt: skip
        np.testing.assert_allclose(_flat(out.grad), expected, rtol=0, atol=1e-10)
        np.testing.assert_allclose(_flat(out.inner_params), y_end, atol=1e-10)
        assert int(out.inner_opt_state["count"]) == total
        np.testing.assert_allclose(out.aux["inner_loss"], f(x, y0, arr)[0], rtol=1e-12)
    # truncate_steps == inner_steps is the plain unroll.
    plain = hypergradient("unrolled", f, F, x, y0, arr, arr, inner_optimizer=SGD, inner_steps=k)
    same = hypergradient(
        "unrolled", f, F, x, y0, arr, arr, inner_optimizer=SGD, inner_steps=k, truncate_steps=k
    )
    np.testing.assert_allclose(_flat(same.grad), _flat(plain.grad), atol=1e-14)


def test_options_validated():
    f, F, x, y, arr = _quadratic_problem(SMALL, SMALL)
    call = lambda method, **kw: bilevel.hypergradient(  # noqa: E731
        method, f, F, x, y, arr, arr, inner_optimizer=SGD, **kw
    )
    with pytest.raises(ValueError, match="truncate_steps"):
        call("unrolled", inner_steps=4, truncate_steps=2)
    with pytest.raises(ValueError, match="truncate_steps"):
        call("implicit_cg", truncate_steps=8)
    with pytest.raises(ValueError, match="cg_steps"):
        call("implicit_cg", cg_steps=0)
    with pytest.raises(ValueError, match="neumann_steps"):
        call("implicit_neumann", neumann_steps=0)
    assert {"implicit_cg", "implicit_neumann", "darts", "bdl"} <= set(bilevel.METHODS)


SECOND_ORDER_CALLS = {
    "unrolled": ("unrolled", {}),
    "truncated": ("unrolled", {"truncate_steps": 12}),
    "implicit_cg": ("implicit_cg", {"cg_damping": 1.0}),
    "implicit_neumann": ("implicit_neumann", {"neumann_alpha": 0.1}),
    "darts": ("darts", {"darts_xi": 0.1}),
    "darts_fd": ("darts", {"darts_xi": 0.1, "darts_fd": True}),
    "bdl": ("bdl", {}),
}


@pytest.mark.slow
@pytest.mark.parametrize("problem", ["quadratic", "mlp"])
def test_implicit_term_nonzero_every_method(problem):
    if problem == "quadratic":
        f, F, x, y, arr = _quadratic_problem(BIG, SMALL, seed=18)
        inner_batch = outer_batch = arr
    else:
        f, F, x, y, inner_batch, outer_batch = _mlp_problem(seed=19)
    args = (f, F, x, y, inner_batch, outer_batch)
    kw = dict(inner_optimizer=SGD, inner_steps=3)
    first = hypergradient("first_order", *args, **kw)
    scale = float(jnp.linalg.norm(_flat(first.grad)))
    for name, (method, options) in SECOND_ORDER_CALLS.items():
        out = hypergradient(method, *args, **kw, **options)
        assert bool(jnp.all(jnp.isfinite(_flat(out.grad)))), name
        implicit = float(jnp.linalg.norm(_flat(out.grad) - _flat(first.grad)))
        assert implicit > 1e-3 * scale, (name, implicit, scale)
        if name != "truncated":  # the same real inner steps as first_order
            np.testing.assert_allclose(
                _flat(out.inner_params), _flat(first.inner_params), atol=1e-14, err_msg=name
            )


@pytest.mark.parametrize(
    "method, options",
    [("unrolled", {}), ("implicit_cg", {"cg_steps": 8}), ("implicit_neumann", {}),
     ("darts", {}), ("bdl", {})],
)  # fmt: skip
def test_implicit_fraction_is_the_share_of_the_implicit_term(method, options):
    """aux implicit_fraction = |grad - F_x| / |grad|, F_x the partial derivative of F at the
    method's inner point (darts: at its virtual step y')."""
    f, F, x, y0, arr = _quadratic("x_small", seed=19)
    out = hypergradient(method, f, F, x, y0, arr, arr, inner_optimizer=SGD, inner_steps=2,
                        **options)  # fmt: skip
    y = out.inner_params
    if method == "darts":  # y' = y_K - xi f_y(x, y_K)
        y = jax.tree.map(lambda a, g: a - 0.01 * g, y, jax.grad(lambda b: f(x, b, arr)[0])(y))
    direct = _flat(jax.grad(lambda a: F(a, y, arr)[0])(x))
    total = _flat(out.grad)
    expected = np.linalg.norm(total - direct) / np.linalg.norm(total)
    np.testing.assert_allclose(float(out.aux["implicit_fraction"]), expected, rtol=1e-9)
    assert 1e-6 < expected  # the quadratic problem has an implicit term
