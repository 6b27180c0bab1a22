"""Fusion metrics (metrics/fusion.py) against hand cases, skimage, sklearn and
independent straightforward reimplementations written here."""

import collections
import math

import numpy as np
import pytest
from scipy import ndimage, signal
from skimage.metrics import structural_similarity
from sklearn.metrics import mutual_info_score

from fuse4seg_jax.metrics import fusion

LN2 = math.log(2.0)


def _triple(seed, shape=(48, 44)):
    """Smooth random sources A, B (integer grey levels) and a fused F = rounded
    blend plus noise. A black background strip (as medical slices have), a block
    of F inverted against A and a constant block of F drive VIF through all of
    its flat-window and negative-gain corrections."""
    rng = np.random.default_rng(seed)

    def field():
        x = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
        return (x - x.min()) / (x.max() - x.min())

    a, b = np.round(255 * field()), np.round(255 * field() ** 2)
    a[:, :18] = b[:, :18] = 0.0
    f = np.clip(np.round(0.5 * a + 0.5 * b + rng.normal(0, 4, shape)), 0, 255)
    f[:, :18] = 0.0
    f[:22, 24:] = 255.0 - a[:22, 24:]
    f[26:, 24:] = 128.0
    return f, a, b


# ----------------------------------------------------------------------------- hand cases


def test_constant_image_has_zero_entropy_sd_sf_ag():
    c = np.full((48, 44), 117.0)
    assert fusion.entropy(c) == 0.0
    assert fusion.standard_deviation(c) == 0.0
    assert fusion.spatial_frequency(c) == 0.0
    assert fusion.average_gradient(c) == 0.0


@pytest.mark.parametrize("convention", fusion.CONVENTIONS)
def test_fused_equal_to_source(convention):
    _, a, b = _triple(1)
    assert math.isnan(fusion.scd(a, a, b))
    assert math.isnan(fusion.fusion_metrics(a, a, b, convention)["SCD"])
    # F = A = B: MI(F,A) + MI(F,B) = 2 H(A), in the convention's log base.
    base = LN2 if convention == "mmif" else 1.0
    want = 2 * fusion.entropy(a) * base
    assert fusion.mutual_information(a, a, a, convention) == pytest.approx(want, rel=1e-12)
    # vifp(A, A) = 1 up to the noise-variance floor 1e-10.
    assert fusion.vif(a, a, a) == pytest.approx(2.0, abs=1e-8)


def test_mse_and_psnr_from_definition():
    f = np.full((48, 44), 10.0)
    a, b = f + 2.0, f - 4.0
    assert fusion.mse(f, a, b) == pytest.approx((4.0 + 16.0) / 2)
    assert fusion.psnr(f, a, b) == pytest.approx(10 * math.log10(10.0**2 / 10.0))
    assert fusion.psnr(f, f, f) == math.inf


def test_input_helpers():
    out = np.array([[-0.3, 0.1], [0.2, 0.7]])
    grey = fusion.to_mmif_grey(out)
    np.testing.assert_array_equal(grey, np.round((out + 0.3) / 1.0 * 255))
    assert grey.min() == 0.0 and grey.max() == 255.0 and grey.dtype == np.float64
    np.testing.assert_array_equal(fusion.to_mmif_grey(np.full((3, 3), 0.4)), np.zeros((3, 3)))
    np.testing.assert_array_equal(
        fusion.source_to_grey([0.0, 0.5, 1.0, 1.0000001]), [0, 128, 255, 255]
    )
    rgb = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]], np.float64)
    np.testing.assert_array_equal(fusion.luma_bt601(rgb), [76, 150, 29, 255])


# ----------------------------------------------------------------------------- invariances


@pytest.mark.parametrize("convention", fusion.CONVENTIONS)
def test_swapping_sources_changes_nothing(convention):
    f, a, b = _triple(2)
    ab, ba = fusion.fusion_metrics(f, a, b, convention), fusion.fusion_metrics(f, b, a, convention)
    assert tuple(ab) == fusion.METRIC_NAMES
    for name in fusion.METRIC_NAMES:
        assert type(ab[name]) is float and np.isfinite(ab[name]), name
        assert ab[name] == pytest.approx(ba[name], rel=1e-12), name


def test_mi_conventions_differ_by_ln2():
    f, a, b = _triple(3)
    for fab in [(f, a, b), (f + 0.25, a * 0.7, b)]:  # non-integer values too
        std = fusion.mutual_information(*fab, convention="standard")
        assert fusion.mutual_information(*fab, convention="mmif") == pytest.approx(std * LN2, 1e-12)


def test_conventions_differ_only_in_mi_ssim_qabf():
    f, a, b = _triple(4)
    f[20:, 20:] = a[20:, 20:]  # equal edge strengths, where Qabf's quirk acts
    mmif, std = fusion.fusion_metrics(f, a, b, "mmif"), fusion.fusion_metrics(f, a, b, "standard")
    differ = {k for k in fusion.METRIC_NAMES if mmif[k] != std[k]}
    assert differ == {"MI", "SSIM", "Qabf"}


# ----------------------------------------------------------------------------- references


@pytest.mark.parametrize("convention,data_range", [("standard", 255.0), ("mmif", 2.0)])
def test_ssim_matches_skimage(convention, data_range):
    f, a, b = _triple(5)
    want = sum(structural_similarity(f, s, data_range=data_range) for s in (a, b))
    assert fusion.ssim(f, a, b, convention) == pytest.approx(want, abs=1e-6)


def test_mi_mmif_matches_sklearn():
    f, a, b = _triple(6)
    lab = lambda x: x.astype(np.int64).ravel()
    want = mutual_info_score(lab(f), lab(a)) + mutual_info_score(lab(f), lab(b))
    assert fusion.mutual_information(f, a, b, "mmif") == pytest.approx(want, abs=1e-6)


def test_single_image_metrics_match_straightforward_versions():
    f, _, _ = _triple(7)
    h, w = f.shape
    counts = collections.Counter(int(v) for v in np.round(f).ravel())
    en = -sum(c / f.size * math.log2(c / f.size) for c in counts.values())
    assert fusion.entropy(f) == pytest.approx(en, rel=1e-12)
    mean = sum(f.ravel()) / f.size
    assert fusion.standard_deviation(f) == pytest.approx(
        math.sqrt(sum((v - mean) ** 2 for v in f.ravel()) / f.size), rel=1e-12
    )
    rf = sum((f[i, j + 1] - f[i, j]) ** 2 for i in range(h) for j in range(w - 1)) / (h * (w - 1))
    cf = sum((f[i + 1, j] - f[i, j]) ** 2 for i in range(h - 1) for j in range(w)) / ((h - 1) * w)
    assert fusion.spatial_frequency(f) == pytest.approx(math.sqrt(rf + cf), rel=1e-12)
    gy, gx = np.gradient(f)
    assert fusion.average_gradient(f) == pytest.approx(
        np.mean(np.sqrt((gx**2 + gy**2) / 2)), rel=1e-12
    )


def test_correlation_metrics_match_corrcoef():
    f, a, b = _triple(8)
    r = lambda x, y: np.corrcoef(x.ravel(), y.ravel())[0, 1]
    assert fusion.correlation_coefficient(f, a, b) == pytest.approx((r(f, a) + r(f, b)) / 2, 1e-12)
    assert fusion.scd(f, a, b) == pytest.approx(r(f - b, a) + r(f - a, b), rel=1e-12)


def _qabf_loop(f, a, b, quirk):
    sx_k = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float64)
    sy_k = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], np.float64)
    sob = {k: (signal.convolve2d(x, sx_k, "same"), signal.convolve2d(x, sy_k, "same"))
           for k, x in (("a", a), ("b", b), ("f", f))}  # fmt: skip
    num = den = 0.0
    for i in range(f.shape[0]):
        for j in range(f.shape[1]):
            g, ang = {}, {}
            for k, (sx, sy) in sob.items():
                g[k] = math.sqrt(sx[i, j] ** 2 + sy[i, j] ** 2)
                ang[k] = math.pi / 2 if sx[i, j] == 0 else math.atan(sy[i, j] / sx[i, j])
            for s in ("a", "b"):
                if g[s] > g["f"]:
                    strength = g["f"] / g[s]
                elif g[s] < g["f"]:
                    strength = g[s] / g["f"]
                else:
                    strength = g["f"] if quirk else 1.0
                orient = 1 - abs(ang[s] - ang["f"]) / (math.pi / 2)
                q = 0.9994 / (1 + math.exp(-15 * (strength - 0.5)))
                q *= 0.9879 / (1 + math.exp(-22 * (orient - 0.8)))
                num += q * g[s]
                den += g[s]
    return num / den


@pytest.mark.parametrize("convention", fusion.CONVENTIONS)
def test_qabf_matches_per_pixel_loop(convention):
    f, a, b = (x[30:42, 14:24] for x in _triple(9))
    f[6:, :] = a[6:, :]  # equal strengths inside: the two conventions part here
    got = fusion.qabf(f, a, b, convention)
    assert got == pytest.approx(_qabf_loop(f, a, b, quirk=convention == "mmif"), rel=1e-12)
    assert got != fusion.qabf(f, a, b, "standard" if convention == "mmif" else "mmif")


def _vifp_reference(ref, dist):
    num = den = 0.0
    for scale in (1, 2, 3, 4):
        n = 2 ** (5 - scale) + 1
        sd = n / 5.0
        xs = np.arange(n) - (n - 1) / 2
        win = np.array([[math.exp(-(x * x + y * y) / (2 * sd * sd)) for x in xs] for y in xs])
        win[win < np.finfo(float).eps * win.max()] = 0
        win /= win.sum()
        conv = lambda x, win=win: signal.convolve2d(x, win, mode="valid")
        if scale > 1:
            ref, dist = conv(ref)[::2, ::2], conv(dist)[::2, ::2]
        m1, m2 = conv(ref), conv(dist)
        s1, s2 = conv(ref * ref) - m1**2, conv(dist * dist) - m2**2
        s12 = conv(ref * dist) - m1 * m2
        s1[s1 < 0], s2[s2 < 0] = 0, 0
        g = s12 / (s1 + 1e-10)
        sv = s2 - g * s12
        low1 = s1 < 1e-10
        g[low1], sv[low1], s1[low1] = 0, s2[low1], 0
        low2 = s2 < 1e-10
        g[low2], sv[low2] = 0, 0
        neg = g < 0
        sv[neg], g[neg] = s2[neg], 0
        sv[sv <= 1e-10] = 1e-10
        num += np.sum(np.log10(1 + g * g * s1 / (sv + 2)))
        den += np.sum(np.log10(1 + s1 / 2))
    return num / den


def test_vif_matches_per_scale_reference():
    f, a, b = _triple(10)
    want = _vifp_reference(a, f) + _vifp_reference(b, f)
    assert fusion.vif(f, a, b) == pytest.approx(want, rel=1e-10)


def test_batch_matches_single_images():
    triples = [_triple(s) for s in (11, 12)]
    f, a, b = (np.stack(x) for x in zip(*triples, strict=True))
    out = fusion.fusion_metrics_batch(f, a, b, "standard")
    for i, t in enumerate(triples):
        single = fusion.fusion_metrics(*t, convention="standard")
        for name in fusion.METRIC_NAMES:
            assert out[name].shape == (2,)
            assert out[name][i] == pytest.approx(single[name], rel=1e-12), name


# ----------------------------------------------------------------------------- errors


def test_bad_inputs_raise_clear_errors():
    f, a, b = _triple(13)
    with pytest.raises(ValueError, match="shapes differ"):
        fusion.fusion_metrics(f, a[:-1], b)
    nan = f.copy()
    nan[3, 4] = np.nan
    with pytest.raises(ValueError, match="fused contains NaN"):
        fusion.fusion_metrics(nan, a, b)
    with pytest.raises(ValueError, match="b contains NaN"):
        fusion.mse(f, a, nan)
    with pytest.raises(ValueError, match="2-D"):
        fusion.fusion_metrics(f[None], a[None], b[None])
    with pytest.raises(ValueError, match="unknown convention 'matlab'"):
        fusion.fusion_metrics(f, a, b, convention="matlab")
    with pytest.raises(ValueError, match="41x41"):
        fusion.vif(f[:40], a[:40], b[:40])
    with pytest.raises(ValueError, match=r"\(N, H, W\) stacks of equal shape"):
        fusion.fusion_metrics_batch(f, a, b)
    small = fusion.fusion_metrics(f[:40], a[:40], b[:40])  # too small for VIF only
    assert math.isnan(small["VIF"]) and np.isfinite(small["SSIM"])
