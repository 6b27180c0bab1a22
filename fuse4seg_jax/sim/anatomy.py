"""The simulator's anatomy: the ICBM152 2009a (nonlinear, symmetric) templates at 1 mm.

The nilearn wheel ships three of them as package data,
`nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz`
(197 x 233 x 189 voxels, 1 mm, MNI space, uint8). They are read from the installed
package with nibabel; nilearn itself is never imported and nothing is fetched.

Tissue probabilities: GM and WM are the template's maps (scaled to [0, 1]); the brain
mask is where the skull-stripped T1 template is non-zero; CSF is the mask minus GM and
WM (clipped to [0, 1]); GM + WM is rescaled to at most 1. The arrays are zero-padded by
`PAD` voxels so that sampling outside the template gives background.

Citation: V. Fonov, A. Evans, R. McKinstry, C. Almli, D. Collins, "Unbiased nonlinear
average age-appropriate brain templates from birth to adulthood", NeuroImage 47 (2009)
S102; V. Fonov et al., NeuroImage 54 (2011) 313-327. Copyright (C) 1993-2009 Louis
Collins, McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill
University; distributed with permission to use, copy, modify and distribute provided
the copyright notice is kept (README, "Simulated BraTS-like data").
"""

import dataclasses
import functools
import importlib.util
import pathlib

import numpy as np

from fuse4seg_jax.data.errors import DataError

TEMPLATE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
NILEARN_PIN = "nilearn==0.14.1"
PAD = 2
TISSUES = ("gm", "wm", "csf")
# Where tumours may be centred: deep white matter of the cerebrum (MNI z in this range,
# at least MIN_DEPTH_MM from the brain's edge); gliomas are mostly supratentorial.
CENTRE_Z_MM = (-10.0, 55.0)
MIN_DEPTH_MM = 18.0


@dataclasses.dataclass(frozen=True)
class Anatomy:
    tissue: np.ndarray  # (3, X, Y, Z) float32 gm, wm, csf probabilities (padded grid)
    brain: np.ndarray  # (1, X, Y, Z) float32 their sum
    origin_mm: np.ndarray  # (3,) MNI mm of padded voxel (0, 0, 0); spacing is 1 mm
    brain_lo_mm: np.ndarray  # (3,) MNI bounding box of the brain mask
    brain_hi_mm: np.ndarray
    centres_mm: np.ndarray  # (K, 3) candidate tumour centres, MNI mm


def template_dir() -> pathlib.Path:
    """The folder of the installed nilearn's bundled templates (nilearn is not imported)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the simulator reads the ICBM152 templates shipped with nilearn, which is not "
            f"installed: pip install {NILEARN_PIN}"
        )
    return pathlib.Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def _read(name: str):
    import nibabel as nib

    path = template_dir() / TEMPLATE.format(name)
    if not path.is_file():
        raise DataError(path, f"ICBM152 template missing from the nilearn install ({NILEARN_PIN})")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, np.float32) / 255.0
    except Exception as e:
        raise DataError(path, f"cannot be read: {type(e).__name__}: {e}") from e
    zooms = np.asarray(img.header.get_zooms()[:3], np.float64)
    if (
        data.ndim != 3
        or not np.allclose(zooms, 1.0)
        or not np.allclose(img.affine[:3, :3], np.eye(3))
    ):
        raise DataError(
            path, f"expected a 3D 1 mm template in MNI orientation, got shape {data.shape}"
        )
    return path, data, np.asarray(img.affine[:3, 3], np.float64)


@functools.lru_cache(maxsize=1)
def load() -> Anatomy:
    """The padded tissue maps (read once per process, about 1 s)."""
    from scipy import ndimage

    (p1, t1, o1), (_, gm, o2), (_, wm, o3) = (_read(n) for n in ("t1", "gm", "wm"))
    if not (t1.shape == gm.shape == wm.shape and np.allclose(o1, o2) and np.allclose(o1, o3)):
        raise DataError(p1.parent, "the ICBM152 t1, gm and wm templates do not share one grid")
    mask = (t1 > 0).astype(np.float32)
    gm, wm = gm * mask, wm * mask
    total = gm + wm
    scale = np.where(total > 1.0, 1.0 / np.maximum(total, 1e-6), 1.0).astype(np.float32)
    gm, wm = gm * scale, wm * scale
    csf = np.clip(mask - gm - wm, 0.0, 1.0)
    tissue = np.pad(np.stack([gm, wm, csf]), [(0, 0)] + [(PAD, PAD)] * 3)

    idx = np.argwhere(mask > 0)
    lo, hi = idx.min(0) + o1, idx.max(0) + o1
    depth = ndimage.distance_transform_edt(mask > 0)
    z_mm = np.arange(mask.shape[2]) + o1[2]
    zok = (z_mm >= CENTRE_Z_MM[0]) & (z_mm <= CENTRE_Z_MM[1])
    ok = (wm > 0.9) & (depth >= MIN_DEPTH_MM) & zok[None, None, :]
    centres = np.argwhere(ok)[::7].astype(np.float64) + o1  # thinned: plenty of candidates
    return Anatomy(
        tissue=np.ascontiguousarray(tissue),
        brain=tissue.sum(0, keepdims=True),
        origin_mm=o1 - PAD,
        brain_lo_mm=lo.astype(np.float64),
        brain_hi_mm=hi.astype(np.float64),
        centres_mm=centres,
    )
