"""A 3 x 3 convolution three ways on this backend: XLA's own, im2col + one matmul, nine matmuls.

    .venv/bin/python benchmarks/conv_forms.py [--runs 30]

XLA:CPU runs a convolution on one thread but a matmul on all cores (benchmarks/RESULTS.md,
issue 16), so a convolution rewritten as matmuls might use both cores of a 2-core
machine. Two rewrites, both exact up to float rounding (checked): "im2col" gathers the
nine shifted copies of the zero-padded input into one (N*H*W, 9*Cin) matrix and
multiplies it by the (9*Cin, Cout) kernel; "sum of 9" adds nine (N*H*W, Cin) x (Cin, Cout)
products. Prints the median forward and forward+backward (input and weight gradients)
milliseconds of each form at the networks' shapes (per-device batch 8 or 16).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

# (batch, height = width, in channels, out channels, stride)
SHAPES = (
    (8, 64, 32, 16, 1),
    (8, 64, 16, 16, 1),
    (8, 64, 16, 32, 2),
    (8, 32, 32, 32, 1),
    (8, 16, 64, 64, 1),
    (8, 8, 128, 128, 1),
    (16, 96, 16, 16, 1),
)


def conv_xla(x, k, stride):
    return lax.conv_general_dilated(
        x, k, (stride, stride), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _shifted(x, k, stride):
    """The nine shifted, strided views of the zero-padded input, one per kernel tap."""
    _, h, w, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    ho, wo = h // stride, w // stride
    return [
        xp[:, i : i + stride * ho : stride, j : j + stride * wo : stride, :]
        for i in range(k.shape[0])
        for j in range(k.shape[1])
    ]


def conv_im2col(x, k, stride):
    patches = jnp.concatenate(_shifted(x, k, stride), axis=-1)
    b, ho, wo, taps_c = patches.shape
    y = jnp.dot(patches.reshape(-1, taps_c), k.reshape(taps_c, k.shape[-1]))
    return y.reshape(b, ho, wo, k.shape[-1])


def conv_sum_of_9(x, k, stride):
    taps = k.reshape(-1, k.shape[2], k.shape[3])
    views = _shifted(x, k, stride)
    return sum(jnp.einsum("bhwc,co->bhwo", v, t) for v, t in zip(views, taps, strict=True))


FORMS = {"xla": conv_xla, "im2col": conv_im2col, "sum of 9": conv_sum_of_9}


def median_ms(fn, *args, runs):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} cores")
    print("| shape (N x H x W x Cin -> Cout, stride) | form | forward ms | fwd+bwd ms | max diff |")
    print("| --- | --- | --- | --- | --- |")
    rng = np.random.default_rng(0)
    for b, h, cin, cout, stride in SHAPES:
        x = jnp.asarray(rng.standard_normal((b, h, h, cin)), jnp.float32)
        k = jnp.asarray(0.1 * rng.standard_normal((3, 3, cin, cout)), jnp.float32)
        reference = conv_xla(x, k, stride)
        for name, form in FORMS.items():
            fwd = jax.jit(lambda x, k, form=form, s=stride: form(x, k, s))
            loss = lambda x, k, form=form, s=stride: jnp.sum(form(x, k, s) ** 2)  # noqa: E731
            grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
            diff = float(jnp.max(jnp.abs(fwd(x, k) - reference)))
            shape = f"{b} x {h} x {h} x {cin} -> {cout}, s{stride}"
            print(
                f"| {shape} | {name} | {median_ms(fwd, x, k, runs=args.runs):.2f}"
                f" | {median_ms(grad, x, k, runs=args.runs):.2f} | {diff:.1e} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
