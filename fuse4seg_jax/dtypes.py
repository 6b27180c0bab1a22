"""Precision policy: networks may compute in bfloat16, everything numeric stays >= float32.

Losses, fused images, logits and hypergradient arithmetic are at least
float32. float64 passes through unchanged, so the whole stack can be checked
in float64 (`jax.enable_x64`) against finite differences.
"""

import jax.numpy as jnp


def at_least_f32(x):
    """x as an array of its own dtype promoted to at least float32 (bf16/f16 -> f32)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))
