"""Simulated tumours: their random parameters, nested label fields and mass effect.

A lesion is an irregular blob around a rotated ellipsoid (tumour core, mean radius 10-25
mm, or 5-10 mm with probability 0.2; axes +-25 %), centred in deep cerebral white matter.
Its level functions of template points p (MNI mm, in the frame after the mass effect),
positive inside:
    core(p)     = 1 - |A (p - c)| + 0.22 n1(p)        (A: rotated ellipsoid, unit at the surface)
    necrosis(p) = min(core(p) - rim / R, rho - |A (p - c)| + 0.15 n2(p))
    oedema(p)   = 1 - d(p) / M + beta (wm(q) - 1/2) + 0.35 n3(p) - 1.5 csf(q),  d = -R core(p)
n1..n3 are unit-variance smooth random fields (12 plane waves, wavelengths 8-30 mm), R the
mean core radius, rim the enhancing rim's thickness (2-5 mm), rho the necrosis' relative
radius (0.35-0.7), M the oedema margin (3-20 mm; oedema is cut off smoothly at
d = 2 M, `OEDEMA_MAX`) and beta its preference for white matter
(0.4-1.2); wm(q) and csf(q) are the template's tissue at the pulled-back point q. Each
level becomes a partial-volume fraction through a logistic of width 0.5 mm, so labels are
smooth at the voxel scale and images get partial volume. Necrosis lies at least `rim`
inside the core by construction; oedema fills only the part of a voxel outside the core
and avoids CSF.
Variety: one lesion (two with probability 0.3); no necrosis with probability 0.25 (always
below 8 mm); no enhancement with probability 0.15, in which case the core is non-enhancing
tumour (label 1, as BraTS labels NCR/NET).
Mass effect: tissue is pushed radially out of a ball of radius Rp = 0.6 R as if the ball
were inserted: a point at distance r > Rp from c pulls the template at distance
(r^3 - Rp^3)^(1/3) (volume-preserving outside the ball).
"""

import dataclasses

import numpy as np

from fuse4seg_jax.sim.geometry import rotation

CLASSES = ("necrosis", "nonenhancing", "oedema", "enhancing")
LABEL_OF_CLASS = {"necrosis": 1, "nonenhancing": 1, "oedema": 2, "enhancing": 3}
EDGE_MM = 0.5  # logistic width of every tumour boundary (partial volume)
RADIUS_MM = (10.0, 25.0)  # mean core radius, uniform; or SMALL_MM with probability SMALL_P
SMALL_MM = (5.0, 10.0)
SMALL_P = 0.2
TWO_LESIONS_P = 0.3
NO_NECROSIS_P = 0.25
NO_ENHANCEMENT_P = 0.15
PUSH_FRACTION = 0.6
OEDEMA_MM = (3.0, 20.0)
OEDEMA_MAX = 2.0  # oedema reaches at most this many margins M beyond the core


@dataclasses.dataclass
class Lesion:
    centre: np.ndarray  # (3,) MNI mm
    shape: np.ndarray  # (3, 3) A: |A (p - c)| = 1 on the ellipsoid
    radius: float  # mean core radius R, mm
    rim_mm: float
    necrosis_rho: float  # 0: no necrosis
    enhancing: bool
    oedema_mm: float
    wm_affinity: float
    noise: tuple  # three (wavevectors (12, 3), phases (12,)) sets

    def summary(self) -> dict:
        return {
            "centre_mm": [round(float(v), 1) for v in self.centre],
            "radius_mm": round(self.radius, 1),
            "necrosis": self.necrosis_rho > 0,
            "enhancing": self.enhancing,
            "oedema_mm": round(self.oedema_mm, 1),
        }


def waves(rng, k=12, lo_mm=8.0, hi_mm=30.0):
    d = rng.standard_normal((k, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    k_abs = 2 * np.pi / rng.uniform(lo_mm, hi_mm, (k, 1))
    return (d * k_abs).astype(np.float32), rng.uniform(0, 2 * np.pi, k).astype(np.float32)


def wave_field(waves, pts) -> np.ndarray:
    """Unit-variance smooth random field (sum of plane waves) at points pts (N, 3)."""
    vectors, phases = waves
    return np.cos(pts @ vectors.T + phases).sum(1) * np.float32(np.sqrt(2.0 / len(phases)))


def draw_lesions(rng, centres_mm) -> list:
    n = 2 if rng.uniform() < TWO_LESIONS_P else 1
    lesions = []
    for _ in range(n):
        small = rng.uniform() < SMALL_P
        radius = float(rng.uniform(*(SMALL_MM if small else RADIUS_MM)))
        if n == 2:
            radius *= 0.75
        axes = radius * (1.0 + rng.uniform(-0.25, 0.25, 3))
        rot = rotation(rng.uniform(-np.pi, np.pi, 3))
        shape = np.diag(1.0 / axes) @ rot.T
        for _ in range(50):  # a second lesion apart from the first
            centre = centres_mm[rng.integers(len(centres_mm))]
            if all(np.linalg.norm(centre - o.centre) > 1.5 * (radius + o.radius) for o in lesions):
                break
        necrotic = radius >= 8.0 and rng.uniform() >= NO_NECROSIS_P
        lesions.append(
            Lesion(
                centre=np.asarray(centre, np.float64),
                shape=shape,
                radius=float(np.mean(axes)),
                rim_mm=float(rng.uniform(2.0, 5.0)),
                necrosis_rho=float(rng.uniform(0.35, 0.7)) if necrotic else 0.0,
                enhancing=bool(rng.uniform() >= NO_ENHANCEMENT_P),
                oedema_mm=float(rng.uniform(*OEDEMA_MM)),
                wm_affinity=float(rng.uniform(0.4, 1.2)),
                noise=tuple(waves(rng) for _ in range(3)),
            )
        )
    return lesions


def push_back(pts, lesions) -> np.ndarray:
    """Template points q pulled back through every lesion's mass effect; pts (N, 3)."""
    q = pts
    for lesion in lesions:
        rp = PUSH_FRACTION * lesion.radius
        v = q - lesion.centre.astype(np.float32)
        r = np.sqrt((v * v).sum(1))
        rho = np.cbrt(np.maximum(r**3 - rp**3, 0.0))
        q = lesion.centre.astype(np.float32) + v * (rho / np.maximum(r, 1e-6))[:, None]
    return q


def reach_mm(lesion) -> float:
    """Radius around the centre beyond which the lesion renders nothing."""
    axis = 1.0 / np.linalg.svd(lesion.shape, compute_uv=False).min()  # longest semi-axis
    # core > 0 needs |A (p - c)| < 1 + 0.22 n1 (n1 < 3.5 in practice); oedema needs
    # d = -R core < OEDEMA_MAX M; plus 3 logistic widths
    return axis * (1.8 + (OEDEMA_MAX * lesion.oedema_mm + 12.0) / lesion.radius)


def _logistic(level_mm):
    return 0.5 + 0.5 * np.tanh(level_mm / (2.0 * EDGE_MM))


def fractions(pts, wm, csf, lesions) -> np.ndarray:
    """Per-point fractions (N, 4) of CLASSES at template points pts (N, 3) (after the mass
    effect) given the tissue wm, csf (N,) at the pulled-back points; rows sum to <= 1."""
    out = np.zeros((len(pts), len(CLASSES)), np.float32)
    for lesion in lesions:
        v = pts - lesion.centre.astype(np.float32)
        near = np.flatnonzero((v * v).sum(1) < reach_mm(lesion) ** 2)
        if near.size == 0:
            continue
        p, v = pts[near], v[near]
        r_n = np.sqrt(((v @ lesion.shape.T.astype(np.float32)) ** 2).sum(1))
        n1, n2, n3 = (wave_field(w, p) for w in lesion.noise)
        big_r = lesion.radius
        core = 1.0 - r_n + 0.22 * n1
        f_core = _logistic(core * big_r)
        f_nec = np.zeros_like(f_core)
        if lesion.necrosis_rho > 0:
            nec = np.minimum(core - lesion.rim_mm / big_r, lesion.necrosis_rho - r_n + 0.15 * n2)
            f_nec = np.minimum(_logistic(nec * big_r), f_core)
        oed = (
            1.0
            + core * big_r / lesion.oedema_mm
            + lesion.wm_affinity * (wm[near] - 0.5)
            + 0.35 * n3
            - 1.5 * csf[near]
        )
        oed = np.minimum(oed, OEDEMA_MAX + core * big_r / lesion.oedema_mm)  # d <= 2 M
        f_oed = _logistic(oed * lesion.oedema_mm / 4.0) * (1.0 - f_core)
        solid = f_core - f_nec
        part = np.stack([f_nec, solid * (not lesion.enhancing), f_oed, solid * lesion.enhancing], 1)
        out[near] = np.maximum(out[near], part.astype(np.float32))
    total = out.sum(1, keepdims=True)
    return out / np.maximum(total, 1.0)


def labels(class_fractions, brain) -> np.ndarray:
    """uint8 labels (0 background, 1 necrotic / non-enhancing core, 2 oedema, 3 enhancing)
    from class fractions (N, 4): the class with the largest fraction where the tumour
    fractions sum to at least 1/2, inside the brain (brain >= 1/2) only."""
    tumour = class_fractions.sum(1)
    best = np.asarray([LABEL_OF_CLASS[c] for c in CLASSES], np.uint8)[class_fractions.argmax(1)]
    return np.where((tumour >= 0.5) & (brain >= 0.5), best, 0).astype(np.uint8)
