"""Deterministic multi-modal brain-tumour phantom: the built-in dataset (numpy only).

Owns rendering the synthetic subject (drawn by phantom_subject.py: anatomy, tumour,
per-modality look): MR contrasts, partial volume, texture, bias, noise and intensity
normalisation, rendered as a 3D case (`make_case`), as axial slices
through the tumour (`make_slices`) or as a many-subject slice dataset in the
batch convention of docs/method.md section 2 (`make_dataset`). Writing a case as a
BraTS folder lives in phantom_nifti.py (re-exported here as `write_brats_case`).

Design (our choices, see docs/method.md sections 2 and 7):
- A subject is a set of continuous implicit functions of physical coordinates
  (mm, origin at the field-of-view centre, axes x (left-right), y (anterior-
  posterior), z (inferior-superior)), drawn from `np.random.default_rng(seed)`.
  The same subject can be rendered as a volume or on selected axial planes; 2D
  only evaluates the requested planes. Arrays are indexed (x, y, z): a 2D slice
  is `volume[:, :, k]`, as with BraTS NIfTI arrays.
- Anatomy: skull-stripped brain = perturbed ellipsoid (about 140 x 170 x 116 mm,
  boundary perturbed by low-order angular harmonics); outer CSF layer (about
  2 mm), sulci (zero sets of a smooth random field, 10-16 mm deep) and an
  interhemispheric fissure, all lined by a GM ribbon (about 3.5 mm, thickness
  varied by angular harmonics); two lateral ventricles (CSF) and two deep GM
  nuclei; WM elsewhere. Background is exactly 0 outside the brain mask.
- Tumour: deformed, rotated, stretched blob placed inside a hemisphere. Nested
  labels (BraTS convention, docs/method.md section 2): necrotic core 1 inside an
  enhancing rim 3 (together the tumour core, radius 10-24 mm) inside oedema 2.
  Rim 6.5-9 mm thick (>= 2 pixels at 64 px over 200 mm), core radius 35-65 % of
  the TC radius, oedema 6-20 mm beyond the rim (irregular, does not enter CSF),
  WT radius about 20-40 mm. About 15 % of subjects have no necrosis.
- Contrasts: `CONTRAST` below. No single modality shows all parts: T1ce shows
  the rim and necrosis but oedema keeps the intensity of the tissue under it;
  FLAIR shows the whole tumour bright (oedema = rim = necrosis) with CSF
  suppressed; T1 and T2 show oedema and necrosis but not the rim.
- Image formation: partial volume (soft tissue boundaries, ~0.35 voxel),
  multiplicative per-tissue texture (3 % normal tissue, 6 % tumour core), a
  smooth per-modality multiplicative bias field (up to about +-13 %) and Rician
  noise (sigma 0.02-0.04 of the contrast scale) inside the brain only.
- Normalisation (docs/method.md section 2): per modality, inside the brain mask, clip
  to the 0.5 / 99.5 percentiles and scale to [0, 1]; background 0. A 3D case
  uses its volume; a slice set uses the pooled pixels of that case's slices. A 3D
  case can take its percentiles from given axial planes instead (`make_case`'s
  `reference_planes`): the planes of its training slices (`slice_planes`) make the
  whole volume look as its training slices did, as the volume protocol needs.
- Noise of modality m is drawn from a generator seeded by (seed, m), so an image
  does not depend on which other modalities were requested.
"""

import numpy as np

from fuse4seg_jax.data.phantom_nifti import write_brats_case
from fuse4seg_jax.data.phantom_subject import (
    MODALITIES,
    brain_depth,
    ellipsoid_sdf,
    fourier,
    sample_subject,
    tumour_fields,
    tumour_labels,
)

__all__ = ["MODALITIES", "CONTRAST", "make_case", "make_slices", "make_dataset", "case_seed"]
__all__ += ["write_brats_case"]

FOV_MM = 200.0  # default field of view: pixels are FOV_MM / image_size mm wide
TISSUES = ("csf", "gm", "deep_gm", "wm", "oedema", "enhancing", "necrosis")
_CSF, _GM, _DGM, _WM, _ED, _ET, _NCR = range(len(TISSUES))

# Mean intensity of each tissue (rows, TISSUES order) per modality (columns,
# MODALITIES order) before bias, texture, noise and normalisation. NaN means
# "same as the normal tissue underneath": oedema is invisible in T1ce. The
# tumour core (rim and necrosis) replaces the tissue under it.
CONTRAST = np.array(
    [
        # t1    t1ce    t2    flair
        [0.20, 0.15, 1.00, 0.08],  # csf: dark in T1/T1ce/FLAIR (suppressed), bright in T2
        [0.55, 0.50, 0.58, 0.58],  # grey matter
        [0.64, 0.56, 0.50, 0.52],  # deep grey matter (thalamus-like)
        [0.78, 0.64, 0.40, 0.45],  # white matter
        [0.40, np.nan, 0.82, 0.92],  # oedema: hypo T1, invisible T1ce, bright T2/FLAIR
        [0.41, 1.00, 0.80, 0.92],  # enhancing rim: only T1ce differs from oedema
        [0.24, 0.12, 0.96, 0.92],  # necrosis: dark T1/T1ce, fluid-bright T2, FLAIR = oedema
    ],
    dtype=np.float64,
)


def case_seed(seed: int, index: int) -> int:
    """Seed of subject `index` of `make_dataset(seed, ...)`, derived with SeedSequence."""
    return int(np.random.SeedSequence((int(seed), int(index))).generate_state(1)[0])


def _modality_indices(modalities) -> list[int]:
    if isinstance(modalities, str) or not len(modalities):
        raise ValueError(f"modalities must be a non-empty sequence of names from {MODALITIES}")
    for m in modalities:
        if m not in MODALITIES:
            raise ValueError(f"unknown modality {m!r}: expected names from {MODALITIES}")
    if len(set(modalities)) != len(modalities):
        raise ValueError(f"duplicate modality in {tuple(modalities)}")
    return [MODALITIES.index(m) for m in modalities]


# --- rendering --------------------------------------------------------------------------


def _render(subject, pts, h, seed, midx, with_tumour=True, reference=None):
    """Render at points pts (broadcastable to shape G): (images G+(M,), label G, mask G).
    reference: boolean G, the points whose brain voxels set the normalisation (None: all)."""
    b, t, look = subject["brain"], subject["tumour"], subject["look"]
    eps = 0.35 * h
    soft = lambda s: (0.5 - 0.5 * np.tanh(s / eps)).astype(np.float32)  # 1 inside (s < 0)

    depth, u = brain_depth(b, pts)
    mask = depth > 0
    if not mask.any():
        raise ValueError("the requested field of view contains no brain")
    shape = mask.shape
    csf_t = b["csf_t"] + 0.6 * fourier(b["ctx"], u)
    sulcus = np.abs(fourier(b["fold"], pts)) / np.linalg.norm(b["fold"][0], axis=1).mean()
    sulcus = np.hypot(sulcus, np.maximum(depth - b["sulcus_depth"], 0.0)) - 0.8
    fissure = (
        np.hypot(pts[0] - float(b["centre"][0]), np.maximum(depth - b["fissure_depth"], 0.0)) - 1.0
    )
    cortex = np.minimum(depth - csf_t, np.minimum(sulcus, fissure))  # distance to CSF (mm)
    vent = np.minimum(*(ellipsoid_sdf(pts, *e) for e in b["ventricles"]))
    w_csf = np.maximum(soft(cortex), soft(vent))
    w_gm = soft(cortex - b["gm_t"] - 0.8 * fourier(b["ctx"], (u[1], u[2], u[0])))
    w_dgm = soft(np.minimum(*(ellipsoid_sdf(pts, *e) for e in b["deep_gm"])))
    rho_tc, rho_ed = tumour_fields(t, pts)
    w_tc = soft(rho_tc - t["r_tc"])
    w_ncr = soft(rho_tc - t["r_ncr"])
    w_ed = soft(rho_ed - t["r_wt"]) * (1 - w_csf)
    if not with_tumour:  # healthy twin: same anatomy, bias and noise samples
        w_tc, w_ncr, w_ed = (np.zeros_like(w_csf) for _ in range(3))

    con = CONTRAST[:, midx].astype(np.float32)  # (tissues, M)
    inherit = np.isnan(con[_ED])
    con[_ED][inherit] = 0.0
    lerp = lambda a, v, w: a + (v - a) * w[..., None]
    img = np.broadcast_to(con[_WM], shape + (len(midx),))
    for k, w in ((_DGM, w_dgm), (_GM, w_gm), (_CSF, w_csf)):
        img = lerp(img, con[k], w)
    tex = (1 + 0.03 * fourier(look["texture"], pts)).astype(np.float32)[..., None]
    img = img * tex
    img = img + (con[_ED] * tex - img) * (w_ed[..., None] * ~inherit)
    tex_t = (1 + 0.06 * fourier(look["tumour_texture"], pts)).astype(np.float32)[..., None]
    img = lerp(img, con[_ET] * tex_t, w_tc)
    img = lerp(img, con[_NCR] * tex_t, w_ncr)

    out = np.zeros(shape + (len(midx),), np.float32)
    for j, m in enumerate(midx):
        bias = 1 + look["bias_amp"][m] * np.clip(fourier(look["bias"][m], pts), -1.5, 1.5)
        rng = np.random.default_rng((int(seed), 7, m))
        clean = (img[..., j] * bias)[mask]
        n1, n2 = rng.standard_normal((2, clean.size), dtype=np.float32) * look["sigma"]
        v = np.sqrt((clean + n1) ** 2 + n2**2)  # Rician magnitude
        pool = v if reference is None else v[np.broadcast_to(reference, shape)[mask]]
        lo, hi = np.percentile(pool, [0.5, 99.5])
        out[..., j][mask] = np.clip((v - lo) / (hi - lo), 0.0, 1.0)

    hard_csf = w_csf >= 0.5
    label = np.where(rho_tc < t["r_ncr"], 1, np.where(rho_tc < t["r_tc"], 3, 0))
    label = np.where((label == 0) & (rho_ed < t["r_wt"]) & ~hard_csf, 2, label)
    return out, np.where(mask, label, 0).astype(np.int32), mask.astype(np.float32)


def make_case(
    seed: int,
    *,
    shape=(96, 96, 64),
    spacing=(2.0, 2.0, 2.0),
    modalities=MODALITIES,
    with_tumour=True,
    reference_planes=None,
):
    """One 3D subject.

    Returns {"modalities": (H, W, D, M) float32 in [0, 1], "label": (H, W, D) int32 in 0..3,
    "mask": (H, W, D) float32 brain mask, "spacing": (3,) float32 mm, "affine": (4, 4) float64
    voxel -> mm (centred field of view), "modality_names": tuple of M names}.
    with_tumour=False renders the healthy twin (same anatomy, bias field and noise samples;
    "label" still marks where the tumour would be), e.g. to measure what the tumour changes.
    reference_planes: axial plane indices whose brain voxels set the intensity
    normalisation (default: the whole volume; module docstring).
    """
    midx = _modality_indices(modalities)
    shape, spacing = tuple(int(s) for s in shape), np.asarray(spacing, np.float64)
    if len(shape) != 3 or spacing.shape != (3,) or min(shape) < 1 or (spacing <= 0).any():
        raise ValueError(f"expected a 3D shape and 3 positive spacings, got {shape}, {spacing}")
    subject = sample_subject(np.random.default_rng(seed))
    origin = -(np.asarray(shape) - 1) / 2.0 * spacing
    axes = [(origin[i] + spacing[i] * np.arange(shape[i])).astype(np.float32) for i in range(3)]
    pts = (axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :])
    reference = None
    if reference_planes is not None:
        reference = np.zeros((1, 1, shape[2]), bool)
        reference[..., np.asarray(reference_planes, np.int64)] = True
    images, label, mask = _render(
        subject, pts, float(spacing.min()), seed, midx, with_tumour, reference
    )
    affine = np.diag(np.append(spacing, 1.0))
    affine[:3, 3] = origin
    return {
        "modalities": images,
        "label": label,
        "mask": mask,
        "spacing": spacing.astype(np.float32),
        "affine": affine,
        "modality_names": tuple(modalities),
    }


def _select_planes(t, coords, h, num_slices):
    """Axial plane indices through the tumour: evenly spread over the planes that show all
    its parts, topped up by the planes nearest the tumour centre."""
    reach = t["r_wt"] * t["scale"].max() + 10.0
    near = np.flatnonzero(np.abs(coords - t["centre"][2]) < reach)
    inx = coords[np.abs(coords - t["centre"][0]) < reach]
    iny = coords[np.abs(coords - t["centre"][1]) < reach]
    labels = tumour_labels(t, (inx[None, :, None], iny[None, None, :], coords[near][:, None, None]))
    parts = (1, 2, 3) if t["necrotic"] else (2, 3)
    full = np.all([(labels == p).sum(axis=(1, 2)) >= 3 for p in parts], axis=0)
    if full.sum() >= num_slices:
        pick = near[full][np.round(np.linspace(0, full.sum() - 1, num_slices)).astype(int)]
    else:
        has = (labels > 0).any(axis=(1, 2))
        rest = np.setdiff1d(np.arange(len(coords)), near[full])
        dist = np.abs(coords[rest] - t["centre"][2]) - 1e3 * np.isin(rest, near[has])
        pick = np.concatenate([near[full], rest[np.argsort(dist, kind="stable")]])[:num_slices]
    return np.sort(pick)


def slice_planes(seed: int, *, num_slices: int, image_size: int = 64, fov_mm: float = FOV_MM):
    """The axial plane indices `make_slices` renders for subject `seed` (sorted): planes
    of the image_size^3 cube of fov_mm / image_size mm voxels, i.e. `volume[:, :, k]`."""
    subject = sample_subject(np.random.default_rng(seed))
    h = float(fov_mm) / image_size
    coords = ((np.arange(image_size) - (image_size - 1) / 2.0) * h).astype(np.float32)
    return _select_planes(subject["tumour"], coords, h, num_slices)


def make_slices(
    seed: int,
    *,
    num_slices: int,
    image_size: int = 64,
    modalities=("t1ce", "flair"),
    fov_mm: float = FOV_MM,
):
    """Axial slices of one subject (the subject of `make_case(seed)`) through its tumour.

    Pixels are fov_mm / image_size wide; slice k is plane k of the isotropic cube
    (image_size^3 voxels, same spacing) centred on the field of view, i.e. `volume[:, :, k]`.
    Planes are spread over the tumour's z extent, preferring planes with all tumour parts.
    Normalisation uses the pooled brain pixels of the returned slices.
    Returns {"modalities": (N, S, S, M) float32 in [0, 1], "label": (N, S, S) int32,
    "mask": (N, S, S) float32, "slice_index": (N,) int32}, N = num_slices, S = image_size.
    """
    midx = _modality_indices(modalities)
    if not 1 <= num_slices <= image_size:
        raise ValueError(f"num_slices={num_slices} must be in [1, image_size={image_size}]")
    subject = sample_subject(np.random.default_rng(seed))
    h = float(fov_mm) / image_size
    coords = ((np.arange(image_size) - (image_size - 1) / 2.0) * h).astype(np.float32)
    ks = slice_planes(seed, num_slices=num_slices, image_size=image_size, fov_mm=fov_mm)
    pts = (coords[None, :, None], coords[None, None, :], coords[ks][:, None, None])
    images, label, mask = _render(subject, pts, h, seed, midx)
    return {"modalities": images, "label": label, "mask": mask, "slice_index": ks.astype(np.int32)}


def make_dataset(
    seed: int,
    *,
    num_cases: int,
    slices_per_case: int,
    image_size: int = 64,
    modalities=("t1ce", "flair"),
):
    """Slices of `num_cases` subjects; subject i is `make_slices(case_seed(seed, i), ...)`.

    Returns the batch dict of docs/method.md section 2 with N = num_cases * slices_per_case:
    "modalities" (N, S, S, M) float32 in [0, 1], "label" (N, S, S) int32, "mask" (N, S, S)
    float32, "case_id" (N,) int32 (= i), "slice_index" (N,) int32.
    """
    _modality_indices(modalities)
    if num_cases < 1:
        raise ValueError(f"num_cases={num_cases} must be >= 1")
    cases = [
        make_slices(
            case_seed(seed, i),
            num_slices=slices_per_case,
            image_size=image_size,
            modalities=modalities,
        )
        for i in range(num_cases)
    ]
    out = {k: np.concatenate([c[k] for c in cases]) for k in cases[0]}
    out["case_id"] = np.repeat(np.arange(num_cases, dtype=np.int32), slices_per_case)
    return out
