"""Write a phantom case as a BraTS-style NIfTI case folder (so the BraTS reader can be tested).

Owns the BraTS file-name conventions on the writing side:
- "2021" (BraTS 2018-2021): `<case>_{t1,t1ce,t2,flair,seg}.nii.gz`, ET stored as label 4;
- "2023" (BraTS 2023+): `<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz`, ET stored as label 3.
Images are float32 scaled by `IMAGE_SCALE` (raw-scanner-like units, background 0) unless
the caller gives another scale and dtype (the simulator: raw units stored as int16);
the segmentation is uint8. All files share the case affine. Each file is written to a
temporary file in the target folder and moved into place with os.replace, so an
interrupted write never leaves a half-written .nii.gz under its final name.
"""

import os
import pathlib

import numpy as np

from fuse4seg_jax import atomic_files

SOURCE_MODALITIES = ("t1", "t1ce", "t2", "flair")  # phantom.MODALITIES, in this order
BRATS_CONVENTIONS = {
    "2021": {"sep": "_", "names": ("t1", "t1ce", "t2", "flair"), "et_label": 4},
    "2023": {"sep": "-", "names": ("t1n", "t1c", "t2w", "t2f"), "et_label": 3},
}
IMAGE_SCALE = 1000.0


def _save_atomic(img, path: pathlib.Path):
    import nibabel as nib

    atomic_files.write_file(path, lambda tmp: nib.save(img, tmp))


def _stored(values, dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def write_brats_case(
    root, case_name: str, case: dict, *, convention: str = "2021", scale: float = IMAGE_SCALE,
    dtype=np.float32,
) -> pathlib.Path:  # fmt: skip
    """Write `case` (from phantom.make_case or sim.case.simulate_case, all four modalities)
    to root/case_name/.

    case: {"modalities": (H, W, D, 4) float in order t1, t1ce, t2, flair, "label": (H, W, D)
    int in 0..3, "affine": (4, 4)}; "modality_names", if present, must equal that order.
    Images are stored as modalities x `scale` in `dtype` (rounded and clipped to its range
    for an integer dtype). Returns the case folder.
    """
    import nibabel as nib

    if convention not in BRATS_CONVENTIONS:
        raise ValueError(f"convention={convention!r}: expected one of {tuple(BRATS_CONVENTIONS)}")
    if not case_name or os.sep in case_name or case_name in (".", ".."):
        raise ValueError(f"case_name={case_name!r} must be a plain folder name")
    mods = np.asarray(case["modalities"])
    names = tuple(case.get("modality_names", SOURCE_MODALITIES))
    if mods.ndim != 4 or mods.shape[-1] != 4 or names != SOURCE_MODALITIES:
        raise ValueError(
            f"write_brats_case needs all four modalities in order {SOURCE_MODALITIES}; "
            f"got modalities of shape {mods.shape} named {names}"
        )
    label = np.asarray(case["label"])
    if label.shape != mods.shape[:3] or not np.isin(label, (0, 1, 2, 3)).all():
        raise ValueError(f"label must have shape {mods.shape[:3]} and values in 0..3")
    affine = np.asarray(case["affine"], np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be (4, 4), got {affine.shape}")

    conv = BRATS_CONVENTIONS[convention]
    folder = pathlib.Path(root) / case_name
    folder.mkdir(parents=True, exist_ok=True)
    seg = label.astype(np.uint8)
    seg[seg == 3] = conv["et_label"]
    volumes = [(n, _stored(mods[..., i] * scale, dtype)) for i, n in enumerate(conv["names"])]
    for suffix, data in volumes + [("seg", seg)]:
        img = nib.Nifti1Image(data, affine)
        img.header.set_xyzt_units("mm")
        _save_atomic(img, folder / f"{case_name}{conv['sep']}{suffix}.nii.gz")
    return folder
