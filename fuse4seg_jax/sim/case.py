"""One simulated BraTS-like case, deterministic from (seed, case index).

`simulate_case(seed, index)` draws, from `np.random.default_rng([seed, index])` and in
this order, the brain's placement in the BraTS grid (geometry.py), its lesions
(lesions.py), the smooth deformation, the scanner (scanner.py), the vessels and the
lesions' relaxation factors, then renders:
1. every voxel of the box that can hold brain pulls a template point through the case's
   transform and the lesions' mass effect; the template's GM / WM / CSF probabilities
   are sampled there (trilinear: partial volume);
2. the brain mask is where the three sum to at least 1/2 (background outside is 0);
3. the lesions' class fractions replace normal tissue (lesions.py), labels follow;
4. vessels: thin sheets (|wave field| < 0.08, 5-15 mm wavelengths) in voxels with over
   10 % CSF turn 80 % of their CSF into vessel tissue (enhancing on T1ce, not tumour);
5. each voxel's signal is its tissue fractions times the signal table (contrast.py), then
   gain, bias and Rician noise (scanner.py).
All four contrasts are always simulated (so one modality's image does not depend on
which others are asked for); `modalities` picks the ones returned.
"""

import numpy as np
from scipy import ndimage

from fuse4seg_jax.sim import anatomy, contrast, geometry, lesions, scanner

MODALITIES = contrast.MODALITIES
NORMAL = ("gm", "wm", "csf")
TISSUES = NORMAL + lesions.CLASSES + ("vessel",)
VESSEL_WIDTH = 0.08
PURE = 0.9


def _pure(normal) -> np.ndarray:
    best = normal.argmax(1)
    return np.where(normal.max(1) >= PURE, best + 1, 0).astype(np.uint8)


def preview_lesions(seed: int, index: int) -> list:
    """The lesions case (seed, index) will have (lesions.Lesion), without rendering it."""
    rng = np.random.default_rng([int(seed), int(index)])
    brain = anatomy.load()
    geometry.draw_placement(rng, brain.brain_lo_mm, brain.brain_hi_mm)
    return lesions.draw_lesions(rng, brain.centres_mm)


def simulate_case(seed: int, index: int, modalities=MODALITIES, *, vessels: bool = True) -> dict:
    """One case on the BraTS grid (240 x 240 x 155, 1 mm, BraTS affine). Returns
    {"modalities": (H, W, D, M) float32 raw scanner units (background 0), "label": (H, W, D)
    uint8 in {0, 1, 2, 3} (3 = enhancing), "mask": (H, W, D) float32 brain mask, "tissue":
    (H, W, D) uint8 normal tissue of nearly pure voxels (1 GM, 2 WM, 3 CSF: at least
    PURE of the voxel; 0 elsewhere: background, mixed, tumour or vessel),
    "affine": (4, 4), "spacing": (3,) float32, "modality_names": tuple, "params": dict
    (a JSON-able description: lesions, scales, angles, SNR)}."""
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown or not modalities:
        raise ValueError(f"modalities {tuple(modalities)}: expected names from {MODALITIES}")
    if int(seed) < 0 or int(index) < 0:
        raise ValueError(f"seed={seed} and index={index} must be >= 0")
    rng = np.random.default_rng([int(seed), int(index)])
    brain = anatomy.load()
    placement = geometry.draw_placement(rng, brain.brain_lo_mm, brain.brain_hi_mm)
    drawn = lesions.draw_lesions(rng, brain.centres_mm)
    lo, hi = geometry.brain_box(placement, brain.brain_lo_mm, brain.brain_hi_mm)
    box = tuple(int(n) for n in hi - lo)
    _, coarse_world = geometry.coarse_axes(lo, hi)
    mesh = np.stack(np.meshgrid(*coarse_world, indexing="ij"), -1)
    coarse_pts = geometry.affine_points(placement, mesh) + geometry.WARP_SD_MM * (
        geometry.smooth_field(rng, coarse_world, geometry.WARP_SPACING_MM, 3)
    )
    scan = scanner.draw(rng, len(MODALITIES))
    vessel_waves = lesions.waves(rng, 12, 5.0, 15.0)
    lesion_factor = tuple(rng.uniform(0.9, 1.1, 2))
    coarse_bias = scanner.bias_fields(rng, coarse_world, len(MODALITIES))
    origin = brain.origin_mm.astype(np.float32)

    # voxels that can hold brain: near a coarse node with any brain (one node of margin)
    coarse_q = lesions.push_back(coarse_pts.reshape(-1, 3), drawn)
    coarse_brain = geometry.sample(brain.brain, coarse_q - origin).reshape(mesh.shape[:3])
    near = ndimage.binary_dilation(coarse_brain > 0.01, np.ones((3, 3, 3), bool))
    nearest = [np.rint(np.arange(n) / geometry.COARSE).astype(int) for n in box]
    candidates = np.flatnonzero(near[np.ix_(*nearest)])
    fine = np.stack(np.unravel_index(candidates, box), 1) + lo

    pts = geometry.upsample(coarse_pts, fine, lo)  # exact for the affine part
    q = lesions.push_back(pts, drawn)
    tissue = geometry.sample(brain.tissue, q - origin)
    total = tissue.sum(1)
    keep = np.flatnonzero(total >= 0.5)
    inside, fine = candidates[keep], fine[keep]
    pts, tissue, total = pts[keep], tissue[keep], total[keep]
    fractions = lesions.fractions(pts, tissue[:, 1], tissue[:, 2], drawn)
    label_in = lesions.labels(fractions, total)
    normal = tissue * (1.0 - fractions.sum(1, keepdims=True))
    vessel = np.zeros(len(pts), np.float32)
    if vessels:
        wet = np.flatnonzero(normal[:, 2] > 0.1)
        sheet = np.abs(lesions.wave_field(vessel_waves, pts[wet])) < VESSEL_WIDTH
        vessel[wet] = np.where(sheet, normal[wet, 2] * 0.8, 0.0)
        normal[:, 2] -= vessel
    composition = np.concatenate([normal, fractions, vessel[:, None]], 1)
    table = contrast.signal_table(TISSUES, MODALITIES, lesion_factor)
    bias = geometry.upsample(coarse_bias, fine, lo)
    images = scanner.acquire(rng, composition @ table, bias, scan)

    def paste(values, dtype):
        out = np.zeros(geometry.SHAPE + values.shape[1:], dtype)
        flat = np.zeros((int(np.prod(box)),) + values.shape[1:], dtype)
        flat[inside] = values
        out[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = flat.reshape(box + values.shape[1:])
        return out

    pick = [MODALITIES.index(m) for m in modalities]
    return {
        "modalities": paste(images[:, pick], np.float32),
        "label": paste(label_in, np.uint8),
        "mask": paste(np.ones(len(inside), np.float32), np.float32),
        "tissue": paste(_pure(normal), np.uint8),
        "affine": geometry.AFFINE.copy(),
        "spacing": np.asarray(geometry.SPACING, np.float32),
        "modality_names": tuple(modalities),
        "params": {
            "seed": int(seed),
            "index": int(index),
            "scale": [round(float(s), 3) for s in placement["scales"]],
            "angles_deg": [round(float(a), 1) for a in np.rad2deg(placement["angles"])],
            "snr": {m: round(float(s), 1) for m, s in zip(MODALITIES, scan["snr"], strict=True)},
            "lesions": [lesion.summary() for lesion in drawn],
        },
    }
