"""Read BraTS training cases (NIfTI) into normalised numpy volumes (numpy + nibabel only).

Owns the reading side of the BraTS conventions (docs/method.md sections 2 and 7): finding case
folders, telling the two file-naming conventions apart, loading and checking a case's
files, the intensity normalisation and the deterministic choice of axial slices.

Layout: `root/` is a folder of case folders; the case id is the case folder's name and
every file of a case starts with it:
- "2021" (BraTS 2018-2021): `<case>_{t1,t1ce,t2,flair,seg}.nii.gz`, labels {0, 1, 2, 4};
- "2023" (BraTS 2023+):     `<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz`, labels {0, 1, 2, 3}.
An uncompressed `.nii` file is accepted when the `.nii.gz` one is absent (BraTS 2020
ships `.nii`). Labels are returned in our convention: 0 background, 1 necrotic core,
2 oedema, 3 enhancing tumour (ET 4 -> 3 for 2021 names). A 3 in a 2021-named seg or a 4
in a 2023-named seg is reported as bad input rather than guessed.

Arrays are indexed as stored, (x, y, z); axial slice k is `volume[:, :, k]`. No
reorientation or resampling: the affine and the header spacing are returned as read.

Checks (each failure is a `DataError` naming the file or folder and the problem): missing
files, unreadable / truncated files (the data are read inside the check, since nibabel
may only fail then), volumes that are not 3D (trailing length-1 axes are dropped),
shapes or affines (atol 1e-3) that differ between a case's files, NaN / inf voxels, an
all-zero or constant modality, non-integer or unexpected label values.

Normalisation (docs/method.md section 2), per modality volume: the brain mask is the set of
voxels that are non-zero in ANY of the modalities read (BraTS images are skull-stripped
with background exactly 0; the union keeps brain voxels that happen to be 0 in one
modality). Inside the mask the volume is clipped to its 0.5 / 99.5 percentiles (computed
over the mask voxels) and scaled linearly to [0, 1]; outside the mask it is 0. The mask
therefore depends on the modalities requested (in practice identical for co-registered
BraTS images).

Slice selection (`select_slices`, docs/method.md section 7): the tumour area of axial slice
z is the number of voxels with label > 0 in `label[:, :, z]`. Eligible slices have area
>= max(min_tumour_area, 1). If at most `slices_per_case` slices are eligible, all are
taken; otherwise the eligible slices (in increasing z) are cut into `slices_per_case`
equal runs and the slice at the centre of each run is taken, i.e. eligible position
floor((i + 0.5) * n_eligible / slices_per_case), i = 0..slices_per_case-1. This is
deterministic, gives distinct sorted slices, and avoids the small-area tumour ends.
"""

import dataclasses
import pathlib

import numpy as np

from fuse4seg_jax.data.errors import DataError

__all__ = [
    "MODALITIES",
    "SUFFIXES",
    "LABEL_VALUES",
    "BratsCase",
    "find_cases",
    "detect_convention",
    "read_case",
    "normalise",
    "select_slices",
]

MODALITIES = ("t1", "t1ce", "t2", "flair")
SUFFIXES = {
    "2021": {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair", "seg": "seg"},
    "2023": {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"},
}
SEPARATORS = {"2021": "_", "2023": "-"}
LABEL_VALUES = {"2021": (0, 1, 2, 4), "2023": (0, 1, 2, 3)}  # as stored in the seg files
EXTENSIONS = (".nii.gz", ".nii")  # first is the expected one
AFFINE_ATOL = 1e-3
_FIND_HINT = "<case>_flair.nii.gz or <case>-t2f.nii.gz"


@dataclasses.dataclass
class BratsCase:
    """One case as read by `read_case` (H, W, D = the stored x, y, z axes)."""

    case_id: str
    convention: str  # "2021" or "2023"
    modalities: np.ndarray  # (H, W, D, M) float32 in [0, 1], background 0
    label: np.ndarray | None  # (H, W, D) int32 in {0, 1, 2, 3}; None if with_label=False
    mask: np.ndarray  # (H, W, D) float32 in {0, 1}: brain mask
    spacing: np.ndarray  # (3,) float32 mm (header zooms)
    affine: np.ndarray  # (4, 4) float64 voxel -> mm
    modality_names: tuple  # M names from MODALITIES, in the order of the last axis
    paths: dict  # modality name / "seg" -> pathlib.Path read


def file_name(case_id: str, convention: str, name: str, ext: str = ".nii.gz") -> str:
    """File name of modality / "seg" `name` of a case under a convention."""
    return f"{case_id}{SEPARATORS[convention]}{SUFFIXES[convention][name]}{ext}"


def _existing(case_dir: pathlib.Path, convention: str, name: str) -> pathlib.Path | None:
    for ext in EXTENSIONS:
        p = case_dir / file_name(case_dir.name, convention, name, ext)
        if p.is_file():
            return p
    return None


def _conventions_present(case_dir: pathlib.Path) -> list[str]:
    names = (*MODALITIES, "seg")
    return [c for c in SUFFIXES if any(_existing(case_dir, c, n) for n in names)]


def find_cases(root) -> list[pathlib.Path]:
    """Sorted (by name) case folders directly under `root` holding BraTS files of either
    convention (any modality or seg file named after the folder). Hidden folders are
    skipped. DataError if root is missing, not a folder or holds no case folder."""
    root = pathlib.Path(root)
    if not root.exists():
        raise DataError(root, "BraTS folder does not exist")
    if not root.is_dir():
        raise DataError(root, "is not a folder (expected a folder of BraTS case folders)")
    cases = [
        d
        for d in sorted(root.iterdir(), key=lambda p: p.name)
        if d.is_dir() and not d.name.startswith(".") and _conventions_present(d)
    ]
    if not cases:
        hint = ""
        if _conventions_present(root):
            hint = "; this looks like a single case folder, pass the folder that contains it"
        raise DataError(root, f"no BraTS case folders ({_FIND_HINT}) found{hint}")
    return cases


def detect_convention(case_dir) -> str:
    """ "2021" or "2023" from the names of the files in `case_dir` (prefix = folder name).
    DataError naming the folder if no BraTS file is found or files of both exist."""
    case_dir = pathlib.Path(case_dir)
    if not case_dir.is_dir():
        raise DataError(case_dir, "case folder does not exist or is not a folder")
    present = _conventions_present(case_dir)
    if len(present) == 1:
        return present[0]
    c = case_dir.name
    if not present:
        raise DataError(
            case_dir,
            f"no BraTS files found: expected {c}_{{t1,t1ce,t2,flair,seg}}.nii.gz (2021 naming) "
            f"or {c}-{{t1n,t1c,t2w,t2f,seg}}.nii.gz (2023 naming)",
        )
    raise DataError(
        case_dir, "ambiguous naming: holds files of both the 2021 (_flair) and 2023 (-t2f) names"
    )


def _short(e: Exception) -> str:
    msg = " ".join(str(e).split()) or "no details"
    return f"{type(e).__name__}: {msg[:160]}"


def _load(path: pathlib.Path, *, label: bool):
    """(data, affine, zooms) of one file; any read failure becomes a DataError."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        if label:
            data = np.asanyarray(img.dataobj)
        else:
            data = img.get_fdata(dtype=np.float32)
        affine = np.asarray(img.affine, np.float64)
        zooms = np.asarray(img.header.get_zooms(), np.float64)
    except Exception as e:  # nibabel, gzip, zlib, EOF, OS errors alike
        raise DataError(path, f"cannot be read: {_short(e)}") from e
    shape = data.shape
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(path, f"is {len(shape)}D with shape {shape}, expected a 3D volume")
    return data, affine, zooms[:3]


def normalise(volume, mask) -> np.ndarray:
    """Normalise one volume: inside `mask` (> 0), clip to the 0.5 / 99.5 percentiles of the
    mask voxels and scale to [0, 1]; 0 outside. volume, mask: same shape, any dims.
    Returns float32 of that shape. An empty mask gives zeros; a volume constant inside the
    mask (99.5 = 0.5 percentile) gives 0 everywhere."""
    volume = np.asarray(volume, np.float32)
    inside = np.asarray(mask) > 0
    if inside.shape != volume.shape:
        raise ValueError(f"mask shape {inside.shape} != volume shape {volume.shape}")
    out = np.zeros(volume.shape, np.float32)
    if not inside.any():
        return out
    v = volume[inside].astype(np.float64)
    lo, hi = np.percentile(v, [0.5, 99.5])
    if hi > lo:
        out[inside] = np.clip((v - lo) / (hi - lo), 0.0, 1.0)
    return out


def _check_modalities(modalities) -> tuple:
    if isinstance(modalities, str) or len(modalities) == 0:
        raise ValueError(f"modalities must be a non-empty sequence of names from {MODALITIES}")
    mods = tuple(modalities)
    bad = [m for m in mods if m not in MODALITIES]
    if bad:
        raise ValueError(f"unknown modality {bad[0]!r}: expected names from {MODALITIES}")
    if len(set(mods)) != len(mods):
        raise ValueError(f"duplicate modality in {mods}")
    return mods


def _check_values(path, data, what: str):
    bad = ~np.isfinite(data)
    if bad.any():
        n_nan = int(np.isnan(data).sum())
        raise DataError(
            path,
            f"{what} contains {int(bad.sum())} non-finite voxels "
            f"({n_nan} NaN, {int(bad.sum()) - n_nan} inf)",
        )


def _read_label(path, data, convention: str) -> np.ndarray:
    if not np.issubdtype(data.dtype, np.integer):
        if np.issubdtype(data.dtype, np.bool_):
            data = data.astype(np.int32)
        else:
            _check_values(path, data, "segmentation")
            frac = data != np.round(data)
            if frac.any():
                ex = np.unique(data[frac])[:5].tolist()
                raise DataError(
                    path, f"non-integer label values in {int(frac.sum())} voxels (e.g. {ex})"
                )
    found = np.unique(data)
    allowed = LABEL_VALUES[convention]
    unexpected = [v for v in found.tolist() if v not in allowed]
    if unexpected:
        raise DataError(
            path,
            f"unexpected label values {[int(v) for v in unexpected]} (values found: "
            f"{[int(v) for v in found.tolist()]}; BraTS {convention} naming allows "
            f"{list(allowed)})",
        )
    label = data.astype(np.int32)
    if convention == "2021":
        label[label == 4] = 3
    return label


def read_case(case_dir, modalities=("t1ce", "flair"), *, with_label: bool = True) -> BratsCase:
    """Read, check and normalise one BraTS case folder (either naming convention).

    modalities: names from MODALITIES (any subset, any order; the last axis follows it).
    Returns a BratsCase: modalities (H, W, D, M) float32 in [0, 1] (module docstring),
    label (H, W, D) int32 in {0, 1, 2, 3} or None, mask (H, W, D) float32, spacing (3,)
    float32 mm, affine (4, 4) float64 (of the first modality file). Raises DataError
    naming the file and the problem for any bad input (module docstring); ValueError for
    bad arguments.
    """
    mods = _check_modalities(modalities)
    case_dir = pathlib.Path(case_dir)
    convention = detect_convention(case_dir)
    names = mods + (("seg",) if with_label else ())
    paths = {}
    for name in names:
        p = _existing(case_dir, convention, name)
        if p is None:
            expected = case_dir / file_name(case_dir.name, convention, name)
            what = "segmentation" if name == "seg" else f"{name} modality"
            raise DataError(expected, f"missing {what} file (BraTS {convention} naming)")
        paths[name] = p

    volumes, ref = [], None
    for name in names:
        path = paths[name]
        data, affine, zooms = _load(path, label=name == "seg")
        if ref is None:
            ref = (path, data.shape, affine, zooms)
        elif data.shape != ref[1]:
            raise DataError(path, f"shape {data.shape} differs from {ref[1]} of {ref[0].name}")
        elif not np.allclose(affine, ref[2], rtol=0.0, atol=AFFINE_ATOL):
            diff = float(np.abs(affine - ref[2]).max())
            raise DataError(
                path, f"affine differs from that of {ref[0].name} (max abs difference {diff:.3g})"
            )
        if name == "seg":
            label = _read_label(path, data, convention)
            continue
        _check_values(path, data, "image")
        if not data.any():
            raise DataError(path, "image is all zero")
        volumes.append(data)

    mask = np.zeros(ref[1], bool)
    for v in volumes:
        mask |= v != 0
    for name, v in zip(mods, volumes, strict=True):
        if v[mask].min() == v[mask].max():
            raise DataError(paths[name], "image has a single intensity value inside the brain")
    out = np.stack([normalise(v, mask) for v in volumes], axis=-1)
    return BratsCase(
        case_id=case_dir.name,
        convention=convention,
        modalities=out,
        label=label if with_label else None,
        mask=mask.astype(np.float32),
        spacing=ref[3].astype(np.float32),
        affine=ref[2],
        modality_names=mods,
        paths=paths,
    )


def select_slices(label, *, slices_per_case: int, min_tumour_area: int) -> np.ndarray:
    """Axial (last-axis) slice indices of a (H, W, D) label volume, protocol in the module
    docstring. Returns a sorted int64 array of at most `slices_per_case` distinct indices
    (empty if no slice has enough tumour)."""
    label = np.asarray(label)
    if label.ndim != 3:
        raise ValueError(f"label must be (H, W, D), got shape {label.shape}")
    if int(slices_per_case) != slices_per_case or slices_per_case < 1:
        raise ValueError(f"slices_per_case={slices_per_case} must be an integer >= 1")
    area = (label > 0).sum(axis=(0, 1))
    eligible = np.flatnonzero(area >= max(int(min_tumour_area), 1))
    n = int(slices_per_case)
    if len(eligible) <= n:
        return eligible.astype(np.int64)
    pos = ((np.arange(n) + 0.5) * len(eligible) / n).astype(np.int64)
    return eligible[pos].astype(np.int64)
