"""The phantom's random subject: a brain, a tumour and a per-modality look, drawn from a
seed as continuous implicit functions of physical coordinates (mm, origin at the field of
view's centre), and the smooth random functions they are made of. phantom.py renders a
subject into images and labels; its module docstring describes the design.
"""

import numpy as np

MODALITIES = ("t1", "t1ce", "t2", "flair")  # each subject draws a bias field per modality


# --- smooth random functions ------------------------------------------------------------


def _fourier_params(rng, k, lo, hi):
    """k random plane waves with wavenumber |w| in [lo, hi] (rad per unit) and phases."""
    d = rng.normal(size=(k, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return d * rng.uniform(lo, hi, size=(k, 1)), rng.uniform(0.0, 2 * np.pi, size=k)


def fourier(params, pts):
    """Unit-variance smooth random field at points pts = (x, y, z) (broadcastable arrays).

    With pts in mm and wavenumbers 2 pi / wavelength this is a spatial texture; on unit
    direction vectors with |w| in [1, 3] it is a low-order angular harmonic field.
    """
    w, phase = params
    out = 0.0
    for (wx, wy, wz), ph in zip(w.tolist(), phase.tolist(), strict=True):  # keeps float32
        out = out + np.cos(wx * pts[0] + wy * pts[1] + wz * pts[2] + ph)
    return out * np.sqrt(2.0 / len(phase))


def _wavelength(rng, k, lo_mm, hi_mm):
    return _fourier_params(rng, k, 2 * np.pi / hi_mm, 2 * np.pi / lo_mm)


def ellipsoid_sdf(pts, centre, radii, angle):
    """Approximate signed distance (mm, < 0 inside) to an ellipsoid rotated about z."""
    x, y, z = (pts[i] - float(centre[i]) for i in range(3))
    c, s = float(np.cos(angle)), float(np.sin(angle))
    radii = [float(r) for r in radii]
    xr, yr = c * x + s * y, -s * x + c * y
    r = np.sqrt((xr / radii[0]) ** 2 + (yr / radii[1]) ** 2 + (z / radii[2]) ** 2)
    return (r - 1.0) * min(radii)


# --- subject ----------------------------------------------------------------------------


def brain_depth(b, pts):
    """Depth below the brain surface along the ray from the brain centre (mm, > 0 inside)."""
    x, y, z = (pts[i] - float(b["centre"][i]) for i in range(3))
    a = b["radii"].tolist()
    r = np.sqrt((x / a[0]) ** 2 + (y / a[1]) ** 2 + (z / a[2]) ** 2) + 1e-6
    u = (x / a[0] / r, y / a[1] / r, z / a[2] / r)
    bound = 1.0 + np.clip(0.04 * fourier(b["shape"], u), -0.07, 0.07)
    return (bound - r) * np.sqrt(x * x + y * y + z * z) / r, u


def sample_subject(rng) -> dict:
    """All random parameters of one subject, drawn in a fixed order."""
    b = {
        "centre": rng.uniform(-3, 3, 3),
        "radii": np.array([70.0, 85.0, 58.0]) * rng.uniform(0.92, 1.0) * rng.uniform(0.96, 1.04, 3),
        "shape": _fourier_params(rng, 6, 1.0, 3.0),
        "csf_t": rng.uniform(1.5, 2.5),
        "gm_t": rng.uniform(3.5, 5.0),
        "ctx": _fourier_params(rng, 6, 1.0, 3.0),
        "fold": _wavelength(rng, 12, 16.0, 26.0),
        "sulcus_depth": rng.uniform(10.0, 16.0),
        "fissure_depth": rng.uniform(30.0, 40.0),
    }
    vx, vy, vz = rng.uniform(6, 9), rng.uniform(-6, 4), rng.uniform(8, 14)
    vr, va = rng.uniform(0.8, 1.25) * np.array([5.0, 26.0, 10.0]), rng.uniform(0.1, 0.25)
    b["ventricles"] = [((s * vx, vy, vz), vr, s * va) for s in (-1, 1)]
    tx, ty = rng.uniform(10, 13), rng.uniform(-12, -6)
    b["deep_gm"] = [((s * tx, ty, 0.0), (8.0, 12.0, 8.0), 0.0) for s in (-1, 1)]

    t = {"r_tc": rng.uniform(10.0, 24.0), "necrotic": rng.random() >= 0.15}
    frac = rng.uniform(0.35, 0.65)
    rim = np.clip(t["r_tc"] * (1 - frac), 6.5, 9.0)  # clipping keeps frac in [0.35, 0.65]
    t["r_ncr"] = (t["r_tc"] - rim) if t["necrotic"] else -np.inf
    margin = np.clip(rng.uniform(6.0, 20.0), 20.0 - t["r_tc"], 40.0 - t["r_tc"])
    t["r_wt"] = t["r_tc"] + np.clip(margin, 6.0, 20.0)
    t["rot"] = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    t["scale"] = rng.uniform(1.0, 1.25, 3)  # stretch only, so rims stay >= `rim` thick
    t["ang_tc"], t["ang_ed"] = _fourier_params(rng, 5, 1.0, 3.0), _fourier_params(rng, 6, 1.0, 3.5)
    t["amp_tc"], t["amp_ed"] = 0.14 * t["r_tc"], 0.35 * (t["r_wt"] - t["r_tc"])
    t["ed_field"] = _wavelength(rng, 8, 12.0, 25.0)
    t["centre"] = np.array([35.0, 0.0, 10.0])
    for _ in range(200):
        c = b["centre"] + rng.uniform([-0.6, -0.65, -0.45], [0.6, 0.65, 0.7]) * b["radii"]
        depth = brain_depth(b, c)[0]
        if depth >= t["r_tc"] * t["scale"].max() + 10.0 and abs(c[0] - b["centre"][0]) > 10.0:
            t["centre"] = c
            break

    look = {
        "texture": _wavelength(rng, 8, 3.0, 8.0),
        "tumour_texture": _wavelength(rng, 8, 3.0, 7.0),
        "bias": [_wavelength(rng, 3, 250.0, 450.0) for _ in MODALITIES],
        "bias_amp": rng.uniform(0.07, 0.09, len(MODALITIES)),
        "sigma": rng.uniform(0.02, 0.04),
    }
    for k in ("r_tc", "r_ncr", "r_wt", "amp_tc", "amp_ed"):
        t[k] = float(t[k])  # python floats keep float32 arrays float32 (NEP 50)
    for k in ("csf_t", "gm_t", "sulcus_depth", "fissure_depth"):
        b[k] = float(b[k])
    return {"brain": b, "tumour": t, "look": look}


def tumour_fields(t, pts):
    """Deformed radial coordinates (mm): TC rho_tc < r_tc, NCR rho_tc < r_ncr, WT rho_ed < r_wt."""
    rot, scale = t["rot"].tolist(), t["scale"].tolist()
    d = [pts[i] - float(t["centre"][i]) for i in range(3)]
    q = [sum(rot[j][i] * d[j] for j in range(3)) / scale[i] for i in range(3)]
    r = np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2) + 1e-6
    u = [qi / r for qi in q]
    lim = float(0.25 * t["r_tc"])
    rho_tc = r - np.clip(t["amp_tc"] * fourier(t["ang_tc"], u), -lim, lim)
    margin = t["r_wt"] - t["r_tc"]
    bulge = t["amp_ed"] * fourier(t["ang_ed"], u) + 3.0 * fourier(t["ed_field"], pts)
    return rho_tc, rho_tc - np.clip(bulge, -(margin - 3.0), 0.8 * margin)


def tumour_labels(t, pts):
    rho_tc, rho_ed = tumour_fields(t, pts)
    return np.where(
        rho_tc < t["r_ncr"], 1, np.where(rho_tc < t["r_tc"], 3, np.where(rho_ed < t["r_wt"], 2, 0))
    )
