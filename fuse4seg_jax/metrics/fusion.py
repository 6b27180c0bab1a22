"""Fusion-quality metrics (EN, SD, SF, AG, MI, SCD, VIF, Qabf, SSIM, CC, MSE, PSNR) on host numpy.

Each metric's definition is in its function's docstring, in two conventions:

- `"mmif"` reproduces the de-facto medical-fusion evaluation code behind the
  published tables, quirks included: MI in nats, SSIM with data_range = 2.0
  (an old library default for float images), Qabf relative edge strength
  G_AF = gF where gA == gF.
- `"standard"` fixes those quirks: MI in bits, SSIM with data_range = 255,
  Qabf G_AF = 1 where gA == gF. All other metrics are the same in both.

Inputs are 2-D float arrays of equal shape holding grey levels 0..255 (never
uint8: integer arithmetic changes SD, SF, VIF and SCD); they are used as
given. Turning a network output into F is the caller's job: `to_mmif_grey`
(min-max to [0,1], x255, rounded, as a saved 8-bit PNG), `source_to_grey`
(a [0,1] source stored as 8 bits) and `luma_bt601` (RGB sources). Metrics of
F against both sources report metric(F,A) + metric(F,B); CC and MSE report
the mean of the two. Everything runs in float64 with numpy / scipy.

    f = to_mmif_grey(fused01)                       # (H, W) network output in [0, 1]
    a, b = source_to_grey(t1ce01), source_to_grey(flair01)
    scores = fusion_metrics(f, a, b, convention="mmif")   # {"EN": .., ..., "PSNR": ..}
"""

import numpy as np
from scipy import ndimage

METRIC_NAMES = ("EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM", "CC", "MSE", "PSNR")
CONVENTIONS = ("mmif", "standard")
_EPS = 1e-10  # VIF's variance threshold and floor
_SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
_SOBEL_Y = np.array([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])
_SSIM_WIN = 7


def _finite(x, name: str = "image01") -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or inf values")
    return x


def _image(x, name: str) -> np.ndarray:
    x = _finite(x, name)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D grey image, got shape {x.shape}")
    if min(x.shape) < 2:
        raise ValueError(f"{name} must be at least 2x2 pixels, got shape {x.shape}")
    return x


def _images(f, a, b) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    f, a, b = _image(f, "fused"), _image(a, "a"), _image(b, "b")
    if not f.shape == a.shape == b.shape:
        raise ValueError(f"shapes differ: fused {f.shape}, a {a.shape}, b {b.shape}")
    return f, a, b


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}: expected one of {CONVENTIONS}")


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    with np.errstate(divide="ignore", invalid="ignore"):  # constant input -> NaN, not a warning
        return float(np.sum(x * y) / np.sqrt(np.sum(x * x) * np.sum(y * y)))


def entropy(f) -> float:
    """EN: Shannon entropy (bits) of the 256-bin histogram of round(F); empty bins skipped.

    Grey levels outside 0..255 are clipped into the end bins (the reference's
    uint8 cast would wrap them instead; 0..255 inputs never reach either).
    Same in both conventions."""
    f = _image(f, "fused")
    levels = np.clip(np.round(f), 0, 255).astype(np.int64).ravel()
    counts = np.bincount(levels, minlength=256)
    p = counts[counts > 0] / levels.size
    return float(np.sum(p * np.log2(1.0 / p)))


def standard_deviation(f) -> float:
    """SD: population standard deviation of F (ddof 0). Same in both conventions."""
    return float(np.std(_image(f, "fused")))


def spatial_frequency(f) -> float:
    """SF: sqrt(mean(horizontal fwd diff^2) + mean(vertical fwd diff^2)); same in both."""
    f = _image(f, "fused")
    return float(np.sqrt(np.mean(np.diff(f, axis=1) ** 2) + np.mean(np.diff(f, axis=0) ** 2)))


def _central_diff(x: np.ndarray, axis: int) -> np.ndarray:
    x = np.moveaxis(x, axis, 0)
    d = np.empty_like(x)
    d[1:-1] = (x[2:] - x[:-2]) / 2.0
    d[0], d[-1] = x[1] - x[0], x[-1] - x[-2]
    return np.moveaxis(d, 0, axis)


def average_gradient(f) -> float:
    """AG: mean of sqrt((Gx^2 + Gy^2) / 2), with central differences inside and
    one-sided differences on the border rows/columns. Same in both conventions."""
    f = _image(f, "fused")
    gx, gy = _central_diff(f, 1), _central_diff(f, 0)
    return float(np.mean(np.sqrt((gx * gx + gy * gy) / 2.0)))


def _mi_nats(x: np.ndarray, y: np.ndarray) -> float:
    # Sparse joint histogram of the exact values: only occupied (x, y) cells are
    # materialised, so non-integer images with many distinct values stay cheap.
    xi = np.unique(x.ravel(), return_inverse=True)[1].ravel()
    yi = np.unique(y.ravel(), return_inverse=True)[1].ravel()
    ny, n = int(yi.max()) + 1, x.size
    cells, counts = np.unique(xi * ny + yi, return_counts=True)
    px, py, pxy = np.bincount(xi) / n, np.bincount(yi) / n, counts / n
    mi = np.sum(pxy * (np.log(pxy) - np.log(px[cells // ny]) - np.log(py[cells % ny])))
    return float(max(mi, 0.0))  # MI >= 0; clip rounding noise (as sklearn does)


def mutual_information(f, a, b, convention: str = "mmif") -> float:
    """MI: MI(F,A) + MI(F,B) from the joint histogram of the exact grey values,
    MI(X,Y) = sum_xy p(x,y) log(p(x,y) / (p(x) p(y))).

    `mmif`: natural log (nats). `standard`: log2 (bits); MI_mmif = MI_standard * ln 2."""
    _check_convention(convention)
    f, a, b = _images(f, a, b)
    mi = _mi_nats(f, a) + _mi_nats(f, b)
    return float(mi if convention == "mmif" else mi / np.log(2.0))


def scd(f, a, b) -> float:
    """SCD: corr(F - B, A) + corr(F - A, B), Pearson correlation; NaN when F equals a
    source (a constant difference has no correlation). Same in both conventions."""
    f, a, b = _images(f, a, b)
    return _pearson(f - b, a) + _pearson(f - a, b)


def _gaussian_window(n: int) -> np.ndarray:
    t, sd = np.arange(n) - (n - 1) / 2.0, n / 5.0
    h = np.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / (2.0 * sd * sd))
    h[h < np.finfo(np.float64).eps * h.max()] = 0.0
    return h / h.sum()


def _valid(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    # 'valid' filtering (window fully inside); w is symmetric, so this is also convolution.
    r = w.shape[0] // 2
    return ndimage.correlate(x, w, mode="constant")[r:-r, r:-r]


def _vif_fits(shape) -> bool:
    """Whether all 4 VIF scales have at least one 'valid' pixel (smallest side 41)."""
    side = min(shape)
    for scale in range(1, 5):
        n = 2 ** (5 - scale) + 1
        if scale > 1:
            side = (side - n + 2) // 2  # 'valid' filtering then every second pixel
        if side < n:
            return False
    return True


def _vifp(ref: np.ndarray, dist: np.ndarray) -> float:
    num = den = np.float64(0.0)
    for scale in range(1, 5):
        w = _gaussian_window(2 ** (5 - scale) + 1)
        if scale > 1:
            ref, dist = _valid(ref, w)[::2, ::2], _valid(dist, w)[::2, ::2]
        mu1, mu2 = _valid(ref, w), _valid(dist, w)
        var1 = np.maximum(_valid(ref * ref, w) - mu1 * mu1, 0.0)
        var2 = np.maximum(_valid(dist * dist, w) - mu2 * mu2, 0.0)
        cov = _valid(ref * dist, w) - mu1 * mu2
        g = cov / (var1 + _EPS)
        sv2 = var2 - g * cov
        # The order of these corrections matters and is the reference's.
        flat = var1 < _EPS
        g, sv2, var1 = np.where(flat, 0.0, g), np.where(flat, var2, sv2), np.where(flat, 0.0, var1)
        flat = var2 < _EPS
        g, sv2 = np.where(flat, 0.0, g), np.where(flat, 0.0, sv2)
        neg = g < 0
        sv2, g = np.where(neg, var2, sv2), np.where(neg, 0.0, g)
        sv2 = np.maximum(sv2, _EPS)
        num += np.sum(np.log10(1.0 + g * g * var1 / (sv2 + 2.0)))
        den += np.sum(np.log10(1.0 + var1 / 2.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = float(num / den)
    return 1.0 if np.isnan(out) else out


def vif(f, a, b) -> float:
    """VIF: pixel-domain multi-scale VIF, vifp(A,F) + vifp(B,F).

    4 scales; at scale s a Gaussian window of N = 2^(5-s)+1 (17, 9, 5, 3)
    pixels, sigma N/5 (values under eps*max zeroed, normalised); for s > 1 the
    images are 'valid'-filtered and subsampled by 2 first. Local means,
    variances (clipped at 0) and covariance by 'valid' filtering; gain
    g = cov/(var_ref + 1e-10) and distortion sv2 = var_dist - g cov, corrected
    for flat windows and negative gains as docs/metrics.md lists; noise variance 2;
    vifp = sum log10(1 + g^2 var_ref/(sv2 + 2)) / sum log10(1 + var_ref/2),
    NaN -> 1. Needs both sides >= 41 pixels (ValueError otherwise).
    Same in both conventions."""
    f, a, b = _images(f, a, b)
    if not _vif_fits(f.shape):
        raise ValueError(f"VIF needs images of at least 41x41 pixels, got {f.shape}")
    return _vifp(a, f) + _vifp(b, f)


def _sobel(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sx = ndimage.convolve(x, _SOBEL_X, mode="constant", cval=0.0)
    sy = ndimage.convolve(x, _SOBEL_Y, mode="constant", cval=0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        angle = np.where(sx == 0, np.pi / 2, np.arctan(sy / sx))
    return np.sqrt(sx * sx + sy * sy), angle


def _edge_preservation(g_src, a_src, g_f, a_f, convention: str) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):  # the 0/0 cells are overwritten
        strength = np.where(g_src > g_f, g_f / g_src, g_src / g_f)
    strength = np.where(g_src == g_f, g_f if convention == "mmif" else 1.0, strength)
    orientation = 1.0 - np.abs(a_src - a_f) / (np.pi / 2)
    q_g = 0.9994 / (1.0 + np.exp(-15.0 * (strength - 0.5)))
    q_a = 0.9879 / (1.0 + np.exp(-22.0 * (orientation - 0.8)))
    return q_g * q_a


def qabf(f, a, b, convention: str = "mmif") -> float:
    """Qabf (Xydeas-Petrovic): sum(Q_AF gA + Q_BF gB) / sum(gA + gB).

    Sobel Sx = [[-1,0,1],[-2,0,2],[-1,0,1]], Sy = [[1,2,1],[0,0,0],[-1,-2,-1]],
    'same' 2-D convolution with zero fill; g = sqrt(Sx^2 + Sy^2); angle =
    arctan(Sy/Sx), pi/2 where Sx = 0. Relative strength G_AF = gF/gA if gA > gF,
    gA/gF if gA < gF; orientation A_AF = 1 - |angA - angF|/(pi/2);
    Q_AF = 0.9994/(1+exp(-15(G_AF-0.5))) * 0.9879/(1+exp(-22(A_AF-0.8))).

    Where gA == gF: `mmif` sets G_AF = gF (the reference's quirk), `standard`
    sets G_AF = 1 (equal strengths are perfectly preserved). NaN when both
    sources have no edges at all."""
    _check_convention(convention)
    f, a, b = _images(f, a, b)
    (g_a, ang_a), (g_b, ang_b), (g_f, ang_f) = _sobel(a), _sobel(b), _sobel(f)
    q_af = _edge_preservation(g_a, ang_a, g_f, ang_f, convention)
    q_bf = _edge_preservation(g_b, ang_b, g_f, ang_f, convention)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.sum(q_af * g_a + q_bf * g_b) / np.sum(g_a + g_b))


def _ssim_pair(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    mx, my = ndimage.uniform_filter(x, _SSIM_WIN), ndimage.uniform_filter(y, _SSIM_WIN)
    cov_norm = _SSIM_WIN**2 / (_SSIM_WIN**2 - 1.0)  # sample (co)variance over the window
    vx = cov_norm * (ndimage.uniform_filter(x * x, _SSIM_WIN) - mx * mx)
    vy = cov_norm * (ndimage.uniform_filter(y * y, _SSIM_WIN) - my * my)
    vxy = cov_norm * (ndimage.uniform_filter(x * y, _SSIM_WIN) - mx * my)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = (2 * mx * my + c1) * (2 * vxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    r = _SSIM_WIN // 2  # windows reaching past the border are dropped
    return float(s[r:-r, r:-r].mean())


def ssim(f, a, b, convention: str = "mmif") -> float:
    """SSIM: SSIM(F,A) + SSIM(F,B); 7x7 uniform window, K1 = 0.01, K2 = 0.03,
    sample covariance (N/(N-1)), mean over the image with a 3-pixel border
    cropped (skimage's structural_similarity defaults).

    `mmif`: data_range = 2.0 (the old skimage default for float images that the
    published numbers carry; C1, C2 are then negligible). `standard`:
    data_range = 255. Needs both sides >= 7 pixels."""
    _check_convention(convention)
    f, a, b = _images(f, a, b)
    if min(f.shape) < _SSIM_WIN:
        raise ValueError(f"SSIM needs images of at least 7x7 pixels, got {f.shape}")
    data_range = 2.0 if convention == "mmif" else 255.0
    return _ssim_pair(f, a, data_range) + _ssim_pair(f, b, data_range)


def correlation_coefficient(f, a, b) -> float:
    """CC: mean of Pearson r(F,A) and r(F,B). Same in both conventions."""
    f, a, b = _images(f, a, b)
    return (_pearson(f, a) + _pearson(f, b)) / 2.0


def mse(f, a, b) -> float:
    """MSE: mean of mean((F-A)^2) and mean((F-B)^2). Same in both conventions."""
    f, a, b = _images(f, a, b)
    return float((np.mean((f - a) ** 2) + np.mean((f - b) ** 2)) / 2.0)


def psnr(f, a, b) -> float:
    """PSNR: 10 log10(max(F)^2 / MSE) with MSE as `mse` (peak = max(F), not 255,
    in both conventions as docs/metrics.md defines it); inf when MSE is 0."""
    f, a, b = _images(f, a, b)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(10.0 * np.log10(np.max(f) ** 2 / mse(f, a, b)))


def fusion_metrics(fused, a, b, convention: str = "mmif") -> dict[str, float]:
    """All of METRIC_NAMES for one fused image F (`fused`) and its sources A, B.

    fused, a, b: 2-D float arrays of equal shape, grey levels 0..255, used as
    given. Images under 41 pixels on a side (too small for VIF's 4 scales)
    get VIF = NaN; the other metrics are still computed."""
    _check_convention(convention)
    f, a, b = _images(fused, a, b)
    return {
        "EN": entropy(f),
        "SD": standard_deviation(f),
        "SF": spatial_frequency(f),
        "AG": average_gradient(f),
        "MI": mutual_information(f, a, b, convention),
        "SCD": scd(f, a, b),
        "VIF": vif(f, a, b) if _vif_fits(f.shape) else float("nan"),
        "Qabf": qabf(f, a, b, convention),
        "SSIM": ssim(f, a, b, convention),
        "CC": correlation_coefficient(f, a, b),
        "MSE": mse(f, a, b),
        "PSNR": psnr(f, a, b),
    }


def fusion_metrics_batch(fused_stack, a_stack, b_stack, convention="mmif") -> dict:
    """`fusion_metrics` per image of (N, H, W) stacks: {name: float64 array (N,)}."""
    stacks = [np.asarray(x, np.float64) for x in (fused_stack, a_stack, b_stack)]
    shapes = [x.shape for x in stacks]
    if len(shapes[0]) != 3 or len(set(shapes)) != 1:
        raise ValueError(f"expected three (N, H, W) stacks of equal shape, got {shapes}")
    rows = [fusion_metrics(f, a, b, convention) for f, a, b in zip(*stacks, strict=True)]
    return {k: np.array([r[k] for r in rows], np.float64) for k in METRIC_NAMES}


def network_fusion_metrics(fused01, modalities01, convention="mmif") -> list[dict]:
    """Per image, `fusion_metrics` of a network's fused outputs against their two sources,
    on 8-bit grey levels as the published tables use them: fused (N, H, W) floats through
    `to_mmif_grey`, modalities (N, H, W, 2) in [0, 1] through `source_to_grey`."""
    modalities01 = np.asarray(modalities01)
    if modalities01.ndim != 4 or modalities01.shape[-1] != 2:
        raise ValueError(f"expected (N, H, W, 2) sources, got shape {modalities01.shape}")
    return [
        fusion_metrics(
            to_mmif_grey(f), source_to_grey(m[..., 0]), source_to_grey(m[..., 1]), convention
        )  # fmt: skip
        for f, m in zip(fused01, modalities01, strict=True)
    ]


def to_mmif_grey(image01) -> np.ndarray:
    """A network's fused output (any shape, float) -> float64 grey levels 0..255:
    min-max normalised to [0,1], x255, rounded (what a saved 8-bit PNG holds).

    A constant output (max == min) has no range to normalise and becomes all 0."""
    x = _finite(image01)
    lo, hi = x.min(), x.max()
    if hi == lo:
        return np.zeros_like(x)
    return np.round((x - lo) / (hi - lo) * 255.0)


def source_to_grey(image01) -> np.ndarray:
    """A source in [0,1] (any shape) -> float64 round(255 clip(x, 0, 1)), as stored in 8 bits."""
    return np.round(np.clip(_finite(image01), 0.0, 1.0) * 255.0)


def luma_bt601(rgb) -> np.ndarray:
    """(..., 3) RGB grey levels 0..255 -> float64 round(0.299 R + 0.587 G + 0.114 B)."""
    rgb = np.asarray(rgb, np.float64)
    if rgb.ndim < 1 or rgb.shape[-1] != 3:
        raise ValueError(f"rgb must have 3 channels last, got shape {rgb.shape}")
    return np.round(rgb @ np.array([0.299, 0.587, 0.114]))
