"""A PyTorch peer of the project's networks and bi-level train steps, for a speed comparison.

    python benchmarks/torch_peer.py [--config configs/demo.py] [--size 64|192] [--batch 16]
        [--steps 20] [--kinds joint,first_order,unrolled] [--channels-last] [--threads N]
        [--check-only]

What it builds, in PyTorch (NCHW): the config's fusion network (models/fusion.py: Gaussian
base/detail split, per-modality encoders with shared weights, [mean, max] or ordered merge,
bilinear 2x upsampling, 1x1 head, sigmoid around the prior's logit) and U-Net
(models/segmentation.py: 3x3 conv blocks, instance GroupNorm, leaky ReLU, 2x2 stride-2
transposed convs, 1x1 head), with their hyperparameters read from the Flax modules the
model zoo builds; the losses (losses.py: frequency and Sobel gradient losses, softmax
cross-entropy + batch soft Dice) and objectives (objectives.py, inner = "fusion"); and
one train step per kind, as steps.train_step runs it with the config's bilevel keys:
- joint: one backward pass of F(outer half) + f(inner half); the fusion net takes one
  inner SGD step along its gradient, the U-Net an outer Adam step;
- first_order: one inner SGD step on f, then the U-Net's gradient of F at the new fusion;
- unrolled: the same inner step kept differentiable (autograd.grad, create_graph=True),
  then the U-Net's exact gradient of F through it (the implicit term included).
The inner SGD step has the inner schedule and global-norm clipping of optimizers.inner
(inner_schedule "outer"); the outer step is optimizers.outer (clip, then Adam with warm-up
and cosine decay): torch.optim.Adam with the learning rate set every step. Weights are
copied from a Flax-initialised parameter pytree (HWIO kernels to OIHW; transposed-conv
kernels (f, f, Cin, Cout) to (Cin, Cout, f, f), no flip: layers.upsample_transposed is
PyTorch's ConvTranspose2d mapping).

Modes:
- --check-only: float64, a 2-slice 32x32 phantom batch, parameters perturbed off the
  initialisation (the zero-initialised head would otherwise hide every fusion gradient).
  Prints one row per quantity: the largest |reference| and the max relative difference
  max|torch - jax| / max|jax| over all entries of that quantity (all leaves of a network
  for gradients), against the project's own JAX functions; "ok" below 1e-10. Quantities:
  forward outputs, losses, the learning-rate schedules (Python against the project's, at
  float64), and per step kind the outer (U-Net) gradient, the inner (fusion) update, the
  step's two loss values and the U-Net's Adam update for JAX's gradient (Adam divides by
  |g| + 1e-8 and would amplify gradient rounding; the gradients have their own rows);
  "implicit term" is unrolled minus first_order outer gradient. The inner step count is
  set to optim.warmup_steps (inner rate at its peak, 1.0 by default) so the implicit term
  is not scaled down by the warm-up. optax evaluates a schedule at its int32 step count,
  which is float32 arithmetic even under x64 (2e-5 becomes 2.0000152e-5), so the torch
  step is given the rates the JAX step uses. Exits 1 if any row fails.
  Known non-float differences, not exercised: F.leaky_relu's derivative at exactly 0 is
  the slope (jnp.where(x >= 0, ...) gives 1), which only matters where a conv output is
  exactly 0, e.g. zero-bias convs over a flat background at initialisation.
- otherwise (timing): float32, a phantom batch of --batch slices of --size pixels. For
  every kind, the jitted JAX train step (recipe.build, as the trainer runs it, on one
  device) and the torch step run in turn, --steps times after one warm-up step each
  (which includes JAX's compilation), alternating which goes first; JAX is synced with
  jax.block_until_ready. One line per kind and implementation: median ms/step and the
  ratio to JAX's median (> 1: slower than JAX). --channels-last adds the torch step with
  modules and inputs in channels_last memory format.

Threads: torch uses --threads (default: torch's own default); XLA:CPU follows XLA_FLAGS.
For a like-for-like comparison give both the same cores, e.g.
XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" with
--threads 1. (The trainer splits the batch over one XLA device per core instead:
benchmarks/step_speed.py --devices measures that.)

Install (torch is a benchmark-only dependency; the fuse4seg_jax package never imports it):
    python3.11 -m venv .venv-torch
    .venv-torch/bin/pip install -r requirements.txt torch==2.13.0 \\
        --extra-index-url https://download.pytorch.org/whl/cpu
    PYTHONPATH=. .venv-torch/bin/python benchmarks/torch_peer.py --check-only

Only what the demo config uses is implemented: bilevel.inner "fusion", inner_optimizer
"sgd" without momentum, seg_mode "softmax", loss.w_ssim 0, optim.name "adam"; anything
else stops with an error naming the key.
"""

import argparse
import dataclasses
import functools
import importlib.util
import math
import os
import statistics
import sys
import time
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

KINDS = ("joint", "first_order", "unrolled")
LEAKY_SLOPE = 0.01  # layers.LEAKY_SLOPE
NORM_EPS = 1e-5  # layers.NORM_EPS
GRAD_EPS = 1e-6  # losses.grad_loss / filters.gradient_magnitude
DICE_SMOOTH = 1e-5  # losses.DICE_SMOOTH
CHECK_SIZE, CHECK_BATCH, CHECK_TOL = 32, 2, 1e-10
FUSION_FIELDS = (
    "sigma", "high_features", "high_depth", "low_features", "low_depth", "low_levels",
    "fuse_features", "prior", "merge", "prior_eps", "norm", "activation",
)  # fmt: skip
UNET_FIELDS = ("features", "num_classes", "num_convs", "norm", "activation")

# --------------------------------------------------------------------------- filters


def gaussian_taps(sigma, radius=None):
    """filters.gaussian_kernel1d: normalised taps, rounded to float32 as there."""
    radius = int(math.ceil(3.0 * sigma)) if radius is None else radius
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return tuple(float(t) for t in (k / k.sum()).astype(np.float32))


@functools.lru_cache(maxsize=64)
def filter_matrix(n, taps, mode, dtype):
    """(n, n) matrix M, (M @ v)[i] = sum_k taps[k] pad(v)[i + k] with numpy pad `mode`
    ("symmetric" or "edge"), rounded to float32 like filters._filter_matrix, then `dtype`."""
    r = len(taps) // 2
    src = np.pad(np.arange(n), r, mode=mode)
    m = np.zeros((n, n))
    for i in range(n):
        for j, t in enumerate(taps):
            m[i, src[i + j]] += t
    return torch.from_numpy(m.astype(np.float32)).to(dtype)


def separable_filter(x, taps_h, taps_w, mode):
    """Correlate every channel of x (B, C, H, W) with outer(taps_h, taps_w)."""
    mh = filter_matrix(x.shape[-2], taps_h, mode, x.dtype)
    mw = filter_matrix(x.shape[-1], taps_w, mode, x.dtype)
    return mh @ x @ mw.T


def gaussian_blur(x, sigma):
    taps = gaussian_taps(sigma)
    return separable_filter(x, taps, taps, "symmetric")


def gradient_magnitude(x, eps=GRAD_EPS):
    """filters.gradient_magnitude: sqrt(gx^2 + gy^2 + eps) of the edge-padded Sobel."""
    smooth, diff = (1.0, 2.0, 1.0), (-1.0, 0.0, 1.0)
    gx = separable_filter(x, smooth, diff, "edge")
    gy = separable_filter(x, diff, smooth, "edge")
    return torch.sqrt(gx * gx + gy * gy + eps)


# --------------------------------------------------------------------------- networks

ACTIVATIONS = {
    "leaky_relu": lambda x: F.leaky_relu(x, LEAKY_SLOPE),
    "gelu": lambda x: F.gelu(x, approximate="tanh"),  # flax nn.gelu's default
}


def make_norm(norm, channels):
    """layers.make_norm: GroupNorm with group size 1 ("instance") or C // 8 ("group")."""
    if norm == "none":
        return None
    groups = {"instance": channels, "group": channels // max(1, channels // 8)}[norm]
    return nn.GroupNorm(groups, channels, eps=NORM_EPS)


class ConvBlock(nn.Module):
    """layers.ConvBlock: 3x3 conv (zero padding 1, bias only without norm), norm, activation."""

    def __init__(self, cin, cout, stride=1, norm="instance", activation="leaky_relu"):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=norm == "none")
        self.norm = make_norm(norm, cout)
        self.activation = ACTIVATIONS[activation]

    def forward(self, x):
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        return self.activation(x)


def merge_modalities(x, m, how):
    """(B * M, C, h, w) -> (B, 2C, h, w) [mean, max] over M, or (B, M * C, h, w) ordered."""
    bm, c, h, w = x.shape
    x = x.reshape(bm // m, m, c, h, w)
    if how == "ordered":
        return x.reshape(bm // m, m * c, h, w)
    return torch.cat([x.mean(dim=1), x.amax(dim=1)], dim=1)  # amax splits ties like jnp.max


class FusionNet(nn.Module):
    """models.fusion.FrequencyFusionNet: (B, M, H, W) in [0, 1] -> (B, 1, H, W) in [0, 1].

    Submodules carry the Flax module names (high_0, low_down_0, ..., head).
    """

    def __init__(self, num_modalities, *, sigma, high_features, high_depth, low_features,
                 low_depth, low_levels, fuse_features, prior, merge, prior_eps, norm,
                 activation):  # fmt: skip
        super().__init__()
        self.m, self.sigma, self.low_levels = num_modalities, sigma, low_levels
        self.prior, self.merge, self.prior_eps = prior, merge, prior_eps
        width = (lambda c: 2 * c) if merge == "symmetric" else (lambda c: num_modalities * c)
        block = functools.partial(ConvBlock, norm=norm, activation=activation)
        self.high_names = [f"high_{i}" for i in range(high_depth)]
        cin = 1
        for name in self.high_names:
            self.add_module(name, block(cin, high_features))
            cin = high_features
        self.high_merge = block(width(cin), high_features)
        self.low_names = [f"low_down_{i}" for i in range(low_levels)]
        self.low_names += [f"low_{i}" for i in range(low_depth)]
        cin = 1
        for name in self.low_names:
            self.add_module(name, block(cin, low_features, 2 if "down" in name else 1))
            cin = low_features
        self.low_merge = block(width(cin), low_features)
        self.low_proj = nn.Conv2d(low_features, fuse_features, 1)
        self.fuse = block(high_features + fuse_features, fuse_features)
        self.head = nn.Conv2d(fuse_features, 1, 1)

    def _branch(self, x, names, merge_block):
        b, m, h, w = x.shape
        x = x.reshape(b * m, 1, h, w)  # modality-major within each sample
        for name in names:
            x = self.get_submodule(name)(x)
        return merge_block(merge_modalities(x, m, self.merge))

    def forward(self, x):
        base = gaussian_blur(x, self.sigma)
        hi = self._branch(x - base, self.high_names, self.high_merge)
        lo = self.low_proj(self._branch(base, self.low_names, self.low_merge))
        for _ in range(self.low_levels):
            lo = F.interpolate(lo, scale_factor=2, mode="bilinear", align_corners=False)
        y = self.head(self.fuse(torch.cat([hi, lo], dim=1)))
        if self.prior == "none":
            return torch.sigmoid(y)
        if self.prior == "max":
            prior = x.amax(dim=1, keepdim=True)
        else:
            prior = x.mean(dim=1, keepdim=True)
        prior = prior.clamp(self.prior_eps, 1.0 - self.prior_eps)
        return torch.sigmoid(y + torch.log(prior) - torch.log1p(-prior))


class UNet(nn.Module):
    """models.segmentation.UNet: (B, C, H, W) -> logits (B, num_classes, H, W)."""

    def __init__(self, in_channels, *, features, num_classes, num_convs, norm, activation):
        super().__init__()
        self.stages, self.num_convs = len(features), num_convs
        block = functools.partial(ConvBlock, norm=norm, activation=activation)
        cin = in_channels
        for s, f in enumerate(features):
            for i in range(num_convs):
                self.add_module(f"enc{s}_{i}", block(cin, f, 2 if s > 0 and i == 0 else 1))
                cin = f
        for s in range(len(features) - 2, -1, -1):
            f = features[s]
            self.add_module(f"up{s}", nn.ConvTranspose2d(cin, f, 2, stride=2))
            cin = 2 * f
            for i in range(num_convs):
                self.add_module(f"dec{s}_{i}", block(cin, f))
                cin = f
        self.head = nn.Conv2d(cin, num_classes, 1)

    def forward(self, x):
        skips = []
        for s in range(self.stages):
            for i in range(self.num_convs):
                x = self.get_submodule(f"enc{s}_{i}")(x)
            skips.append(x)
        x = skips[-1]
        for s in range(self.stages - 2, -1, -1):
            x = torch.cat([self.get_submodule(f"up{s}")(x), skips[s]], dim=1)
            for i in range(self.num_convs):
                x = self.get_submodule(f"dec{s}_{i}")(x)
        return self.head(x)


def torch_models(config):
    """(FusionNet, UNet) with the fields of the Flax modules the project builds for config."""
    from fuse4seg_jax.models import get_fusion_model, get_segmentation_model

    fusion = get_fusion_model(config.model.fusion, merge=config.model.fusion_merge)
    seg = get_segmentation_model(config.model.segmentation, num_classes=4)
    m = len(config.data.modalities)
    return (
        FusionNet(m, **{k: getattr(fusion, k) for k in FUSION_FIELDS}),
        UNet(1, **{k: getattr(seg, k) for k in UNET_FIELDS}),
    )


# --------------------------------------------------------------------------- weights

RENAMES = {"Conv_0": "conv", "GroupNorm_0": "norm", "kernel": "weight", "scale": "weight"}


def flat_items(tree, prefix=()):
    """(path, leaf) pairs of a nested mapping, depth first."""
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from flat_items(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def torch_layout(owner, leaf):
    """A Flax leaf as a torch tensor of `owner`'s layout: conv kernels HWIO -> OIHW,
    transposed-conv kernels (f, f, Cin, Cout) -> (Cin, Cout, f, f)."""
    a = np.asarray(leaf)
    if a.ndim == 4:
        a = a.transpose((2, 3, 0, 1) if isinstance(owner, nn.ConvTranspose2d) else (3, 2, 0, 1))
    return torch.from_numpy(np.array(a, order="C"))


def torch_state(module, params):
    """A Flax parameter pytree (or a gradient of one) as `module`'s state dict."""
    state = {}
    for path, leaf in flat_items(params):
        key = ".".join(RENAMES.get(p, p) for p in path)
        state[key] = torch_layout(module.get_submodule(key.rpartition(".")[0]), leaf)
    return state


# --------------------------------------------------------------------------- losses


def fusion_loss(fused, sources, sigma, w_freq, w_grad):
    """losses.fusion_loss without SSIM: (total, {"loss_freq", "loss_grad"}); NCHW."""
    base_f, base_s = gaussian_blur(fused, sigma), gaussian_blur(sources, sigma)
    detail_s = sources - base_s
    idx = torch.argmax(detail_s.abs(), dim=1, keepdim=True)
    detail_sel = torch.gather(detail_s, 1, idx)
    low = torch.mean(torch.abs(base_f - base_s.amax(dim=1, keepdim=True)))
    high = torch.mean(torch.abs((fused - base_f) - detail_sel))
    g_f = gradient_magnitude(fused)
    g_s = gradient_magnitude(sources).amax(dim=1, keepdim=True)
    parts = {"loss_freq": low + high, "loss_grad": torch.mean(torch.abs(g_f - g_s))}
    return w_freq * parts["loss_freq"] + w_grad * parts["loss_grad"], parts


def segmentation_loss(logits, labels, w_ce, w_dice):
    """losses.segmentation_loss, mode "softmax", no mask: (total, {"loss_ce", "loss_dice"})."""
    logp = F.log_softmax(logits, dim=1)
    onehot = F.one_hot(labels, logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
    probs, targets = logp.exp()[:, 1:], onehot[:, 1:]
    inter = torch.sum(probs * targets, dim=(0, 2, 3))
    denom = torch.sum(probs, dim=(0, 2, 3)) + torch.sum(targets, dim=(0, 2, 3))
    dice = (2.0 * inter + DICE_SMOOTH) / (denom + DICE_SMOOTH)
    parts = {"loss_ce": F.nll_loss(logp, labels), "loss_dice": 1.0 - dice.mean()}
    return w_ce * parts["loss_ce"] + w_dice * parts["loss_dice"], parts


# --------------------------------------------------------------------------- optimisers


def schedule(peak, warmup, total, shape):
    """optimizers.schedule as a Python function of the step count: linear warm-up from
    peak / warmup over `warmup` steps, then cosine decay to 0.01 peak or constant."""

    def rate(count):
        if warmup > 0 and count < warmup:
            return peak / warmup + (peak - peak / warmup) * count / warmup
        if shape == "constant":
            return peak
        decay = max(total - warmup, 1)
        t = min(count - max(warmup, 0), decay)
        return peak * (0.99 * 0.5 * (1.0 + math.cos(math.pi * t / decay)) + 0.01)

    return rate


def inner_rule(config):
    """(rate(count), clip_norm) of optimizers.inner for bilevel.inner_optimizer "sgd"."""
    b, optim = config.bilevel, config.optim
    if b.inner_optimizer != "sgd" or b.inner_momentum:
        raise ValueError("bilevel.inner_optimizer: only plain 'sgd' (no momentum) is ported")
    if b.get("inner_schedule", "constant") == "constant":
        return (lambda count: b.inner_lr), 0.0
    k, total = max(int(b.inner_steps), 1), config.train.num_steps
    rate = schedule(b.inner_lr, optim.warmup_steps * k, total * k, optim.schedule)
    return rate, float(optim.grad_clip)


def clip_scale(grads, clip_norm):
    """bilevel.inner_optim._clip's factor min(1, c / |g|), differentiable (1.0 if c == 0)."""
    if not clip_norm:
        return 1.0
    sumsq = sum(torch.sum(g * g) for g in grads)
    safe = torch.sqrt(torch.where(sumsq > 0, sumsq, torch.ones_like(sumsq)))
    return torch.where(safe > clip_norm, clip_norm / safe, torch.ones_like(safe))


def sgd_update(params, grads, lr, clip_norm):
    """bilevel.inner_optim.sgd: y - lr * clip(g), a new {name: tensor} (differentiable)."""
    scale = clip_scale(grads, clip_norm)
    return {k: p - lr * (g * scale) for (k, p), g in zip(params.items(), grads, strict=True)}


def clip_by_global_norm(grads, max_norm):
    """optax.clip_by_global_norm: g unchanged if |g| < max_norm, else g / |g| * max_norm."""
    if not max_norm:
        return grads
    norm = torch.sqrt(sum(torch.sum(g * g) for g in grads))
    if norm < max_norm:
        return grads
    return [g / norm * max_norm for g in grads]


# --------------------------------------------------------------------------- steps


def split_batch(batch, how):
    """steps.split_batch: (inner, outer) = (even rows, odd rows), or the batch twice."""
    if how == "same":
        return batch, batch
    return {k: v[0::2] for k, v in batch.items()}, {k: v[1::2] for k, v in batch.items()}


@dataclasses.dataclass
class StepResult:
    outer_grad: list  # gradient of the U-Net, in seg.parameters() order
    inner_params: dict  # the fusion net's parameters after the inner step
    inner_loss: torch.Tensor
    outer_loss: torch.Tensor


def supported(config):
    """ValueError naming the first config key this port does not implement."""
    unsupported = {
        "bilevel.inner": config.bilevel.inner != "fusion",
        "model.seg_mode": config.model.seg_mode != "softmax",
        "loss.w_ssim": config.loss.w_ssim != 0,
        "optim.name": config.optim.name != "adam",
        "model.kind": config.model.kind != "fuse4seg",
    }
    for key, bad in unsupported.items():
        if bad:
            raise ValueError(f"{key}: this value is not ported to torch (see docstring)")


class TorchPeer:
    """Both networks, their optimisers and the three step kinds of steps.train_step."""

    def __init__(self, config, theta, phi, dtype=torch.float32, channels_last=False):
        supported(config)
        self.fusion, self.seg = torch_models(config)
        for module, params in ((self.fusion, theta), (self.seg, phi)):
            module.to(dtype)
            module.load_state_dict(torch_state(module, params), strict=True)
            if channels_last:
                module.to(memory_format=torch.channels_last)
        loss = config.loss
        self.fuse_weights = {k: loss[k] for k in ("sigma", "w_freq", "w_grad")}
        self.seg_weights = {"w_ce": loss.w_ce, "w_dice": loss.w_dice}
        self.mu, self.batch_split = config.bilevel.mu, config.bilevel.batch_split
        self.inner_rate, self.inner_clip = inner_rule(config)
        self.inner_count = self.outer_count = 0
        optim = config.optim
        self.outer_rate = schedule(
            optim.learning_rate, optim.warmup_steps, config.train.num_steps, optim.schedule
        )
        self.outer_clip = optim.grad_clip
        self.outer_opt = torch.optim.Adam(self.seg.parameters(), lr=self.outer_rate(0))

    def params(self):
        return dict(self.fusion.named_parameters()), dict(self.seg.named_parameters())

    def losses(self, theta, phi, batch):
        """(L_fuse, L_seg) of fusion parameters theta and U-Net parameters phi on batch."""
        fused = torch.func.functional_call(self.fusion, theta, (batch["modalities"],))
        l_fuse, _ = fusion_loss(fused, batch["modalities"], **self.fuse_weights)
        logits = torch.func.functional_call(self.seg, phi, (fused,))
        l_seg, _ = segmentation_loss(logits, batch["label"], **self.seg_weights)
        return l_fuse, l_seg

    def inner_loss(self, theta, phi, batch):
        l_fuse, l_seg = self.losses(theta, phi, batch)
        return l_fuse + self.mu * l_seg

    def outer_loss(self, theta, phi, batch):
        return self.losses(theta, phi, batch)[1]

    def inner_step(self, theta, grads):
        return sgd_update(theta, grads, self.inner_rate(self.inner_count), self.inner_clip)

    def hypergradient(self, kind, inner_batch, outer_batch):
        """The outer gradient and the inner step of `kind` (bilevel.hypergradient)."""
        theta, phi = self.params()
        if kind == "joint":
            outer = self.outer_loss(theta, phi, outer_batch)
            inner = self.inner_loss(theta, phi, inner_batch)
            grads = torch.autograd.grad(outer + inner, [*theta.values(), *phi.values()])
            with torch.no_grad():
                new_theta = self.inner_step(theta, grads[: len(theta)])
            return StepResult(list(grads[len(theta) :]), new_theta, inner.detach(), outer.detach())
        inner = self.inner_loss(theta, phi, inner_batch)
        unrolled = kind == "unrolled"
        grads = torch.autograd.grad(inner, list(theta.values()), create_graph=unrolled)
        with torch.set_grad_enabled(unrolled):
            new_theta = self.inner_step(theta, grads)
        outer = self.outer_loss(new_theta, phi, outer_batch)
        outer_grad = torch.autograd.grad(outer, list(phi.values()))
        new_theta = {k: v.detach() for k, v in new_theta.items()}
        return StepResult(list(outer_grad), new_theta, inner.detach(), outer.detach())

    def outer_update(self, grads):
        """optimizers.outer on the U-Net: global-norm clip, then Adam at the scheduled rate."""
        for p, g in zip(self.seg.parameters(), clip_by_global_norm(grads, self.outer_clip),
                        strict=True):  # fmt: skip
            p.grad = g
        for group in self.outer_opt.param_groups:
            group["lr"] = self.outer_rate(self.outer_count)
        self.outer_opt.step()
        self.outer_opt.zero_grad(set_to_none=True)
        self.outer_count += 1

    def train_step(self, kind, batch):
        """One step of `kind` on a batch dict (modalities (B, M, H, W), label (B, H, W))."""
        result = self.hypergradient(kind, *split_batch(batch, self.batch_split))
        with torch.no_grad():
            for p, new in zip(self.fusion.parameters(), result.inner_params.values(),
                              strict=True):  # fmt: skip
                p.copy_(new)
        self.inner_count += 1
        self.outer_update(result.outer_grad)
        return result


def torch_batch(batch, dtype, channels_last=False):
    """A numpy NHWC batch dict as torch tensors: modalities (B, M, H, W), label int64."""
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(batch["modalities"], -1, 1)))
    x = x.to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return {"modalities": x, "label": torch.from_numpy(batch["label"]).long()}


# --------------------------------------------------------------------------- shared set-up


def load_config(path, size=None, batch=None):
    spec = importlib.util.spec_from_file_location("torch_peer_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    if size:
        config.data.image_size = size
    if batch:
        config.train.batch_size = batch
    return config


def phantom_batch(config, n, dtype):
    """n phantom slices of one subject at config.data.image_size: modalities, label."""
    from fuse4seg_jax.data import phantom

    data = phantom.make_slices(
        phantom.case_seed(config.seed, 0),
        num_slices=n,
        image_size=config.data.image_size,
        modalities=config.data.modalities,
    )
    return {"modalities": data["modalities"].astype(dtype), "label": data["label"]}


def numpy_tree(tree):
    """A pytree of arrays as nested dicts of numpy arrays (a copy, safe from donation)."""
    if isinstance(tree, Mapping):
        return {k: numpy_tree(v) for k, v in tree.items()}
    return np.array(tree)


# --------------------------------------------------------------------------- check


def rel_diff(got, want):
    """max|got - want| / max|want| over lists of arrays; and max|want|."""
    got = [np.asarray(g, dtype=np.float64) for g in got]
    want = [np.asarray(w, dtype=np.float64) for w in want]
    scale = max(float(np.max(np.abs(w))) for w in want)
    err = max(float(np.max(np.abs(g - w))) for g, w in zip(got, want, strict=True))
    return err / scale if scale else err, scale


def as_torch_list(module, tree):
    """A Flax-layout pytree as numpy arrays in module.named_parameters() order."""
    state = torch_state(module, tree)
    return [state[name].numpy() for name, _ in module.named_parameters()]


def jax_float64_parts(config):
    """The project's networks, objectives, coupling and outer optimiser in float64 (as
    recipe._bilevel builds them; recipe.build knows only float32 and bfloat16)."""
    import jax.numpy as jnp

    from fuse4seg_jax import objectives, optimizers, recipe
    from fuse4seg_jax.models import get_fusion_model, get_segmentation_model

    f64 = {"dtype": jnp.float64, "param_dtype": jnp.float64}
    fusion = get_fusion_model(config.model.fusion, merge=config.model.fusion_merge, **f64)
    seg = get_segmentation_model(config.model.segmentation, num_classes=4, **f64)
    b = config.bilevel
    objs = objectives.build(fusion, seg, config.loss, b, config.model.seg_mode)
    coupling = recipe.bilevel_coupling(config)
    return fusion, seg, objs, coupling, optimizers.outer(config.optim, config.train.num_steps)


def perturbed_init(model, key, shape, rng, scale=0.05):
    """model's float64 Flax init, every leaf moved by scale * N(0, 1) (numpy tree)."""
    import jax.numpy as jnp

    params = numpy_tree(model.init(key, jnp.zeros(shape, jnp.float64))["params"])
    return _map_leaves(params, lambda a: a + scale * rng.standard_normal(a.shape))


def _map_leaves(tree, fn):
    if isinstance(tree, Mapping):
        return {k: _map_leaves(v, fn) for k, v in tree.items()}
    return fn(tree)


class Table:
    def __init__(self):
        self.rows = []

    def add(self, name, got, want):
        err, scale = rel_diff(got, want)
        self.rows.append((name, scale, err))

    def print(self):
        print(f"{'quantity':<44} {'max|ref|':>10} {'max rel diff':>13}")
        for name, scale, err in self.rows:
            flag = "ok" if err <= CHECK_TOL else "FAIL"
            print(f"{name:<44} {scale:10.3e} {err:13.2e}  {flag}")
        return all(err <= CHECK_TOL for _, _, err in self.rows)


def check_forward(table, peer, objs, theta, phi, batch, batch_t):
    from fuse4seg_jax import losses

    fused = objs.fuse(theta, batch)
    logits = objs.segment(phi, fused)
    l_fuse, fuse_parts = objs.fusion_loss(fused, batch)
    l_seg, seg_parts = losses.segmentation_loss(logits, batch["label"])
    with torch.no_grad():
        fused_t = peer.fusion(batch_t["modalities"])
        logits_t = peer.seg(fused_t)
        l_fuse_t, fuse_parts_t = fusion_loss(fused_t, batch_t["modalities"], **peer.fuse_weights)
        l_seg_t, seg_parts_t = segmentation_loss(logits_t, batch_t["label"], **peer.seg_weights)
    table.add("forward: fused image", [fused_t.permute(0, 2, 3, 1)], [fused])
    table.add("forward: U-Net logits", [logits_t.permute(0, 2, 3, 1)], [logits])
    for name in ("loss_freq", "loss_grad"):
        table.add(f"loss: {name}", [fuse_parts_t[name]], [fuse_parts[name]])
    for name in ("loss_ce", "loss_dice"):
        table.add(f"loss: {name}", [seg_parts_t[name]], [seg_parts[name]])
    table.add("loss: L_fuse + L_seg", [l_fuse_t + l_seg_t], [l_fuse + l_seg])


def jax_schedules(config):
    """(outer, inner) learning-rate schedules of optimizers.outer / optimizers.inner
    (inner: bilevel.inner_schedule "outer", counted in inner steps)."""
    from fuse4seg_jax import optimizers

    optim, b, n = config.optim, config.bilevel, config.train.num_steps
    k = max(int(b.inner_steps), 1)
    scaled = optim.copy_and_resolve_references()
    with scaled.unlocked():
        scaled.warmup_steps = optim.warmup_steps * k
    return optimizers.schedule(optim, n), optimizers.schedule(scaled, n * k, peak=b.inner_lr)


def int32_rate(rate):
    """rate(count) as optax and the inner optimiser evaluate it: at an int32 count, which
    makes the arithmetic float32 even with x64 enabled (2e-5 becomes 2.0000152e-5)."""
    return lambda count: float(rate(np.int32(count)))


def check_schedules(table, config, peer):
    """The Python schedules against the project's, at Python int counts (float64)."""
    counts = [0, 1, 50, 99, 100, 101, 700, 1499, 1500, 3000]
    outer, inner = jax_schedules(config)
    table.add("schedule: outer rate", [[peer.outer_rate(c) for c in counts]],
              [[float(outer(c)) for c in counts]])  # fmt: skip
    if config.bilevel.inner_schedule == "outer":
        table.add("schedule: inner rate", [[peer.inner_rate(c) for c in counts]],
                  [[float(inner(c)) for c in counts]])  # fmt: skip


def jax_step(kind, config, parts, theta, phi, batch, count):
    """The project's hypergradient of `kind` and its outer (optax) update of the U-Net for
    fed gradients, as steps.train_step composes them; inner step count `count`."""
    import jax
    import optax

    from fuse4seg_jax import bilevel
    from fuse4seg_jax.state import NetState, TrainState

    _, _, objs, coupling, outer_tx = parts
    coupling = dataclasses.replace(
        coupling, method=kind, options=bilevel.method_options(kind, config.bilevel)
    )
    inner_state = jax.tree.map(lambda c: c + count, coupling.inner_opt.init(theta))
    seg_state = NetState(phi, outer_tx.init(phi))
    state = TrainState(step=np.int32(0), fusion=NetState(theta, inner_state), seg=seg_state)
    hg = jax.jit(lambda s, b: coupling.hypergradient(objs, s, b))(state, batch)

    def outer_step(grad):
        updates, _ = outer_tx.update(grad, seg_state.opt_state, phi)
        return jax.tree.map(lambda a, b: np.asarray(a) - b, optax.apply_updates(phi, updates), phi)

    return hg, outer_step


def check_kind(table, kind, config, parts, theta, phi, batch, count):
    """One step kind, torch against JAX: the U-Net's gradient, the fusion net's inner step,
    the two losses, and the U-Net's Adam step (both fed JAX's gradient: Adam divides by
    |g| + 1e-8, which would turn 1e-15 gradient rounding into 1e-7 step differences).
    Returns (torch, JAX) outer gradients in torch layout."""
    import jax

    hg, outer_step = jax_step(kind, config, parts, theta, phi, batch, count)
    peer = TorchPeer(config, theta, phi, torch.float64)
    peer.inner_count = count
    outer_rate, inner_rate = jax_schedules(config)
    peer.outer_rate = int32_rate(outer_rate)  # the rates JAX's step uses (int32_rate)
    if config.bilevel.inner_schedule == "outer":
        peer.inner_rate = int32_rate(inner_rate)
    fusion_t, seg_t = peer.fusion, peer.seg
    theta0 = [p.detach().clone() for p in fusion_t.parameters()]
    phi0 = [p.detach().clone() for p in seg_t.parameters()]
    inner_t, outer_t = split_batch(torch_batch(batch, torch.float64), peer.batch_split)
    result = peer.hypergradient(kind, inner_t, outer_t)
    grad_j = as_torch_list(seg_t, hg.grad)
    peer.outer_update([torch.from_numpy(g) for g in grad_j])
    inner_delta = jax.tree.map(lambda a, b: np.asarray(a) - b, hg.inner_params, theta)

    table.add(f"{kind}: outer grad (U-Net)", result.outer_grad, grad_j)
    table.add(f"{kind}: inner step (fusion)",
              [n - p for n, p in zip(result.inner_params.values(), theta0, strict=True)],
              as_torch_list(fusion_t, inner_delta))  # fmt: skip
    table.add(f"{kind}: inner loss, outer loss",
              [[float(result.inner_loss), float(result.outer_loss)]],
              [[float(hg.aux["inner_loss"]), float(hg.aux["outer_loss"])]])  # fmt: skip
    table.add(f"{kind}: Adam step (U-Net, JAX's grad)",
              [p.detach() - p0 for p, p0 in zip(seg_t.parameters(), phi0, strict=True)],
              as_torch_list(seg_t, outer_step(hg.grad)))  # fmt: skip
    return [g.numpy() for g in result.outer_grad], grad_j


def run_check(args):
    import jax

    jax.config.update("jax_enable_x64", True)
    torch.set_num_threads(1)
    config = load_config(args.config, CHECK_SIZE, CHECK_BATCH)
    parts = jax_float64_parts(config)
    fusion, seg, objs, _, _ = parts
    k_fuse, k_seg, _ = jax.random.split(jax.random.PRNGKey(config.seed), 3)
    rng = np.random.default_rng(0)
    m = len(config.data.modalities)
    theta = perturbed_init(fusion, k_fuse, (1, CHECK_SIZE, CHECK_SIZE, m), rng)
    phi = perturbed_init(seg, k_seg, (1, CHECK_SIZE, CHECK_SIZE, 1), rng)
    batch = phantom_batch(config, CHECK_BATCH, np.float64)
    count = config.optim.warmup_steps
    peer = TorchPeer(config, theta, phi, torch.float64)
    print(
        f"float64 check: fusion {config.model.fusion}, segmentation "
        f"{config.model.segmentation}, batch {CHECK_BATCH} x {CHECK_SIZE}x{CHECK_SIZE}, "
        f"inner step count {count} (inner rate {peer.inner_rate(count):g})"
    )
    table = Table()
    check_forward(table, peer, objs, theta, phi, batch, torch_batch(batch, torch.float64))
    check_schedules(table, config, peer)
    grads = {}
    for kind in args.kinds:
        grads[kind] = check_kind(table, kind, config, parts, theta, phi, batch, count)
        print(f"  {kind} done", flush=True)
    if "first_order" in grads and "unrolled" in grads:
        implicit = [
            [u - f for u, f in zip(grads["unrolled"][i], grads["first_order"][i], strict=True)]
            for i in (0, 1)
        ]
        table.add("implicit term (unrolled - first_order)", *implicit)
    return 0 if table.print() else 1


# --------------------------------------------------------------------------- timing


def time_kind(kind, config, args, data):
    """Median seconds per step of JAX and the torch variants for one step kind."""
    import jax

    from fuse4seg_jax import recipe

    config.bilevel.method = kind
    run = recipe.build(config)
    state = run.init_state()
    theta, phi = numpy_tree(state.fusion.params), numpy_tree(state.seg.params)
    step = jax.jit(run.train_step, donate_argnums=0)
    batch = jax.device_put(data)

    def jax_step():
        nonlocal state
        state, metrics = step(state, batch)
        jax.block_until_ready((state, metrics))

    variants = {"jax": jax_step}
    layouts = (
        {"torch": False, "torch_channels_last": True} if args.channels_last else {"torch": False}
    )
    for name, channels_last in layouts.items():
        peer = TorchPeer(config, theta, phi, torch.float32, channels_last)
        batch_t = torch_batch(data, torch.float32, channels_last)
        variants[name] = functools.partial(peer.train_step, kind, batch_t)
    times = {name: [] for name in variants}
    for fn in variants.values():
        fn()  # warm-up; JAX compiles here
    names = list(variants)
    for i in range(args.steps):
        for name in names if i % 2 == 0 else names[::-1]:
            t = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def run_timing(args):
    import jax

    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(args.config, args.size, args.batch)
    data = phantom_batch(config, args.batch, np.float32)
    print(
        f"float32, batch {args.batch} x {args.size}x{args.size}, fusion {config.model.fusion}, "
        f"segmentation {config.model.segmentation}; jax {jax.__version__} on "
        f"{jax.devices()[0].platform}, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads; median of {args.steps} steps"
    )
    for kind in args.kinds:
        medians = time_kind(kind, config, args, data)
        for name, med in medians.items():
            print(
                f"{kind:>12} {name:>20}: {med * 1e3:9.1f} ms/step  "
                f"{med / medians['jax']:5.2f}x jax",
                flush=True,
            )
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.py")
    parser.add_argument("--size", type=int, default=64, help="image size of the timed batch")
    parser.add_argument("--batch", type=int, default=16, help="timed global batch")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per kind")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--channels-last", action="store_true", help="also time channels_last")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--check-only", action="store_true", help="float64 agreement check")
    args = parser.parse_args()
    args.kinds = args.kinds.split(",")
    unknown = sorted(set(args.kinds) - set(KINDS))
    if unknown:
        parser.error(f"unknown kinds {unknown}; valid: {', '.join(KINDS)}")
    sys.exit(run_check(args) if args.check_only else run_timing(args))


if __name__ == "__main__":
    main()
