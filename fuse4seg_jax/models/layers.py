"""Building blocks shared by the fusion and segmentation networks (Flax Linen, NHWC).

All blocks are stateless (no BatchNorm, no dropout, no mutable collections),
so `apply` is a pure function that can be differentiated twice, as the
bi-level trainer needs. Every module takes `dtype` (computation) and
`param_dtype` (storage, float32).

Normalisation choices (`norm`):
- "instance": nn.GroupNorm(num_groups=None, group_size=1), i.e. per-sample,
  per-channel statistics over H, W (nnU-Net's InstanceNorm, affine).
- "group": nn.GroupNorm with group size max(1, C // 8) (at most 8 groups).
- "none": no normalisation; the convolution then carries a bias.
Norms use epsilon 1e-5 and the two-pass variance (use_fast_variance=False):
E[(x - mu)^2] has no cancellation and no clipping at 0, which keeps second
derivatives smooth.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

NORMS = ("instance", "group", "none")
LEAKY_SLOPE = 0.01  # nnU-Net's LeakyReLU slope
# Nonlinearity after each conv block. "leaky_relu" is nnU-Net's; "gelu" is smooth (C^2),
# for analyses that need twice-differentiable losses (the implicit function theorem).
ACTIVATIONS = {"leaky_relu": lambda x: nn.leaky_relu(x, LEAKY_SLOPE), "gelu": nn.gelu}
NORM_EPS = 1e-5


def make_norm(norm, features, dtype, param_dtype, name=None):
    """The normalisation layer named by `norm` (see module docstring), or None for "none"."""
    if norm == "instance":
        return nn.GroupNorm(
            num_groups=None,
            group_size=1,
            epsilon=NORM_EPS,
            use_fast_variance=False,
            dtype=dtype,
            param_dtype=param_dtype,
            name=name,
        )
    if norm == "group":
        return nn.GroupNorm(
            num_groups=None,
            group_size=max(1, features // 8),
            epsilon=NORM_EPS,
            use_fast_variance=False,
            dtype=dtype,
            param_dtype=param_dtype,
            name=name,
        )
    if norm == "none":
        return None
    raise ValueError(f"unknown norm {norm!r}: expected one of {NORMS}")


def block_for(module, features, strides=1, name=None):
    """A ConvBlock with the norm and dtypes of `module` (a model with those fields)."""
    return ConvBlock(
        features,
        strides=strides,
        norm=module.norm,
        activation=module.activation,
        dtype=module.dtype,
        param_dtype=module.param_dtype,
        name=name,
    )


class ConvBlock(nn.Module):
    """Conv (kernel x kernel, zero 'same'-style padding) -> norm -> activation.

    (B, H, W, Cin) -> (B, H / s, W / s, features) for stride s (H, W divisible
    by s). With stride 2 this is nnU-Net's strided-conv downsampling.
    """

    features: int
    kernel: int = 3
    strides: int = 1
    norm: str = "instance"
    act: bool = True
    activation: str = "leaky_relu"  # a key of ACTIVATIONS
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        pad = (self.kernel - 1) // 2
        x = nn.Conv(
            self.features,
            (self.kernel, self.kernel),
            strides=(self.strides, self.strides),
            padding=((pad, pad), (pad, pad)),
            use_bias=self.norm == "none",  # a bias before a norm is cancelled by it
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )(x)
        norm = make_norm(self.norm, self.features, self.dtype, self.param_dtype)
        if norm is not None:
            x = norm(x)
        if self.act:
            x = ACTIVATIONS[self.activation](x)
        return x


def upsample_transposed(x, kernel, bias=None):
    """Transposed convolution with kernel size == stride == f, as einsum + reshape.

    Every input pixel is scattered to its own f x f output block without
    overlap: out[b, f*h + i, f*w + j, o] = sum_c x[b, h, w, c] kernel[i, j, c, o]
    (+ bias[o]), the PyTorch ConvTranspose2d(kernel=f, stride=f) mapping.
    Equals nn.ConvTranspose(kernel_size=(f, f), strides=(f, f),
    padding="VALID") given the spatially flipped kernel kernel[::-1, ::-1]
    (Flax's default transpose_kernel=False flips), but avoids XLA:CPU's slow
    conv-transpose path (docs/stack.md).

    Args:
      x: (B, H, W, Cin). kernel: (f, f, Cin, Cout). bias: (Cout,) or None.
    Returns:
      (B, f*H, f*W, Cout).
    """
    b, h, w, _ = x.shape
    f1, f2, _, cout = kernel.shape
    y = jnp.einsum("bhwc,ijco->bhiwjo", x, kernel)
    y = y.reshape(b, h * f1, w * f2, cout)
    if bias is not None:
        y = y + bias
    return y


class UpConv(nn.Module):
    """Learned f x upsampling: f x f stride-f transposed conv (einsum) with bias.

    (B, H, W, Cin) -> (B, f*H, f*W, features). The kernel init is LeCun-normal
    with fan-in Cin (each output pixel sees one tap of Cin inputs).
    """

    features: int
    factor: int = 2
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        f = self.factor
        kernel = self.param(
            "kernel",
            nn.initializers.variance_scaling(
                1.0, "fan_in", "truncated_normal", in_axis=2, out_axis=3, batch_axis=(0, 1)
            ),
            (f, f, x.shape[-1], self.features),
            self.param_dtype,
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return upsample_transposed(x, kernel, bias)


def upsample_bilinear2x(x):
    """Fixed 2x bilinear upsampling, half-pixel centres: (B, H, W, C) -> (B, 2H, 2W, C).

    out[2i] = 0.75 x[i] + 0.25 x[i-1], out[2i+1] = 0.75 x[i] + 0.25 x[i+1],
    per axis, edges clamped; matches jax.image.resize(..., "linear") / PyTorch
    align_corners=False. Smooth, so it adds no blocky high frequencies.
    """

    def along(x, axis):
        n = x.shape[axis]
        # Shifted copies by slicing (not gather: its transpose is a slow scatter on CPU).
        first = jax.lax.slice_in_dim(x, 0, 1, axis=axis)
        last = jax.lax.slice_in_dim(x, n - 1, n, axis=axis)
        prev = jnp.concatenate([first, jax.lax.slice_in_dim(x, 0, n - 1, axis=axis)], axis=axis)
        nxt = jnp.concatenate([jax.lax.slice_in_dim(x, 1, n, axis=axis), last], axis=axis)
        even = 0.75 * x + 0.25 * prev
        odd = 0.75 * x + 0.25 * nxt
        y = jnp.stack([even, odd], axis=axis + 1)
        shape = list(x.shape)
        shape[axis] = 2 * n
        return y.reshape(shape)

    return along(along(x, 1), 2)


def check_divisible(h, w, factor, what):
    """Raise ValueError unless H and W are divisible by `factor`."""
    if h % factor or w % factor:
        raise ValueError(
            f"{what}: input height and width must be divisible by {factor}, got H={h}, W={w}"
        )
