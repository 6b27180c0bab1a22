"""benchmarks/step_profile.py: the categories its per-op breakdown rests on.

A convolution's forward pass, input gradient and weight gradient, compiled on CPU, must
land in their own categories, and the profiler's thunk events must name instructions of
the compiled HLO (otherwise the breakdown would silently count them as "other").
"""

import importlib.util
import os
import tempfile

import jax
import jax.numpy as jnp
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def step_profile():
    spec = importlib.util.spec_from_file_location(
        "step_profile", os.path.join(ROOT, "benchmarks", "step_profile.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _conv(x, k):
    return jax.lax.conv_general_dilated(
        x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@pytest.fixture(scope="module")
def compiled_grad():
    x = jnp.linspace(0.0, 1.0, 2 * 16 * 16 * 4).reshape(2, 16, 16, 4)
    k = jnp.linspace(-1.0, 1.0, 3 * 3 * 4 * 8).reshape(3, 3, 4, 8)

    def loss(x, k):
        return jnp.sum(jnp.tanh(_conv(x, k)) ** 2)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, k).compile()
    return grad, (x, k)


def test_convolutions_fall_in_forward_input_and_weight_gradient(step_profile, compiled_grad):
    grad, _ = compiled_grad
    instructions, computations = step_profile.parse_hlo(grad.as_text())
    categories = {
        name: step_profile.categorise(name, instructions, computations) for name in instructions
    }
    conv_categories = {c for name, c in categories.items() if c.startswith("conv")}
    assert conv_categories == {"conv forward", "conv input-grad", "conv weight-grad"}
    assert set(categories.values()) <= set(step_profile.CATEGORIES)


def test_profiled_thunks_name_compiled_instructions(step_profile, compiled_grad):
    grad, args = compiled_grad
    jax.block_until_ready(grad(*args))
    instructions, computations = step_profile.parse_hlo(grad.as_text())
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
        for _ in range(3):
            jax.block_until_ready(grad(*args))
        jax.profiler.stop_trace()
        total, count = step_profile.thunk_times(trace_dir, instructions)
    timed = {step_profile.categorise(name, instructions, computations) for name in total}
    # The three convolutions ran, were traced under their instruction names, once per call.
    assert {"conv forward", "conv input-grad", "conv weight-grad"} <= timed
    assert all(count[name] == 3 for name in total)
