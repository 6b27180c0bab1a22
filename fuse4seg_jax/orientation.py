"""Voxel-axis orientation and spacing of volumes (numpy, nibabel.orientations, scipy.ndimage).

Orientation is named by 3-letter codes as nibabel writes them (`nib.aff2axcodes`): the
letter of each stored axis says towards which side of the patient its index grows, "RAS"
= x to the patient's Right, y to Anterior, z to Superior (the NIfTI world convention);
BraTS files are usually stored "LPS". A volume stored in one orientation is brought to
another by axis permutations and flips only (`Reorientation`): exact, no interpolation,
and undone exactly (`Reorientation.undo`), so a prediction made in the networks'
orientation goes back voxel for voxel onto the input's grid.

Spacing is changed by linear interpolation (`resample_to`, `resample_back`), on grids that
share their centre: a volume of n voxels at spacing s covers the same extent as one of
round(n * s / t) voxels at spacing t, and `resample_back` returns exactly the original
shape. Labels go back by nearest neighbour, images and probabilities linearly.
"""

import dataclasses

import numpy as np
from nibabel import orientations
from scipy import ndimage

# The axes of an axial slice `volume[:, :, k]`: the only spacing the 2D networks see.
IN_PLANE = (0, 1)


def axcodes(affine) -> str:
    """The 3-letter orientation code of a voxel-to-world affine, e.g. "RAS" or "LPS"."""
    return "".join(orientations.aff2axcodes(np.asarray(affine, np.float64)))


def check_codes(codes: str) -> str:
    """`codes` (upper case) if it names each of the three body axes once (e.g. "RAS",
    "LPI", "SAR"), else ValueError."""
    codes = str(codes).upper()
    pairs = ("LR", "PA", "IS")
    axes = sorted(next((i for i, p in enumerate(pairs) if c in p), -1) for c in codes)
    if axes != [0, 1, 2]:
        raise ValueError(f"orientation {codes!r}: expected 3 letters, one of each of L/R, P/A, I/S")
    return codes


@dataclasses.dataclass(frozen=True)
class Reorientation:
    """Axis permutation and flips from a volume's stored orientation to `target` codes.

    `apply(volume)` works on (X, Y, Z, ...) arrays (trailing axes, e.g. modalities or
    classes, are kept); `undo(volume)` brings an array of the target orientation back to
    the stored one; `spacing(zooms)` permutes per-axis voxel sizes the same way.
    """

    source: str  # stored orientation codes, e.g. "LPS"
    target: str  # the orientation wanted, e.g. "RAS"
    ornt: np.ndarray  # nibabel (3, 2) transform: stored axis i -> axis ornt[i, 0], flip ornt[i, 1]

    @classmethod
    def between(cls, affine, target: str) -> "Reorientation":
        start = orientations.io_orientation(np.asarray(affine, np.float64))
        target = check_codes(target)
        ornt = orientations.ornt_transform(start, orientations.axcodes2ornt(tuple(target)))
        return cls(axcodes(affine), target, ornt)

    @property
    def identity(self) -> bool:
        return bool((self.ornt[:, 0] == np.arange(3)).all() and (self.ornt[:, 1] == 1).all())

    def apply(self, volume) -> np.ndarray:
        volume = np.asarray(volume)
        return volume if self.identity else orientations.apply_orientation(volume, self.ornt)

    def undo(self, volume) -> np.ndarray:
        volume = np.asarray(volume)
        if self.identity:
            return volume
        inverse = np.zeros_like(self.ornt)  # target axis ornt[i, 0] -> stored axis i
        for i, (axis, flip) in enumerate(self.ornt):
            inverse[int(axis)] = (i, flip)
        return orientations.apply_orientation(volume, inverse)

    def spacing(self, zooms) -> np.ndarray:
        """Voxel sizes (3,) of the stored axes -> those of the target axes."""
        zooms = np.asarray(zooms, np.float64)[:3]
        out = np.empty(3)
        out[self.ornt[:, 0].astype(int)] = zooms
        return out


def display_radiological(slice_ras) -> np.ndarray:
    """An axial slice indexed [x, y] in RAS (x grows towards the patient's Right, y
    towards Anterior) -> the array to show with imshow's default origin="upper" in the
    radiological convention: the patient's right on the image's left, anterior at the
    top. Row r, column c shows x = X-1-c, y = Y-1-r, i.e. `slice_ras[::-1, ::-1].T` (for a
    slice with trailing channel axes, only the first two are swapped)."""
    return np.swapaxes(np.asarray(slice_ras)[::-1, ::-1], 0, 1)


def _grid_map(n_from: int, s_from: float, n_to: int, s_to: float):
    """(scale, offset) of the index map to -> from of two grids sharing their centre."""
    scale = s_to / s_from
    return scale, (n_from - 1) / 2.0 - scale * (n_to - 1) / 2.0


def _resample(volume, spacing_from, spacing_to, shape_to, order: int) -> np.ndarray:
    volume = np.asarray(volume)
    spacing_from = np.asarray(spacing_from, np.float64)
    spacing_to = np.asarray(spacing_to, np.float64)
    n = len(spacing_from)
    maps = [
        _grid_map(volume.shape[i], spacing_from[i], shape_to[i], spacing_to[i]) for i in range(n)
    ]
    scale = np.array([m[0] for m in maps])
    offset = np.array([m[1] for m in maps])
    shape_to = tuple(int(s) for s in shape_to)
    extra = volume.shape[n:]
    flat = volume.reshape(volume.shape[:n] + (-1,))
    out = np.empty(shape_to + (flat.shape[-1],), volume.dtype)
    for c in range(flat.shape[-1]):  # one spatial volume at a time (diagonal map: fast path)
        out[..., c] = ndimage.affine_transform(
            flat[..., c], scale, offset, output_shape=shape_to, order=order,
            mode="constant", cval=0.0, prefilter=False,
        )  # fmt: skip
    return out.reshape(shape_to + extra)


def resampled_shape(shape, spacing_from, spacing_to) -> tuple:
    """The grid shape covering the extent of `shape` voxels of `spacing_from` at `spacing_to`."""
    ratio = np.asarray(spacing_from, float)[:3] / np.asarray(spacing_to, float)[:3]
    return tuple(max(1, int(round(n * r))) for n, r in zip(shape[:3], ratio, strict=True))


def resample_to(volume, spacing_from, spacing_to, order: int = 1) -> np.ndarray:
    """(X, Y, Z, ...) at `spacing_from` (3 values, mm) -> the same extent at `spacing_to`
    (resampled_shape), linear interpolation by default; outside the volume: 0."""
    shape = resampled_shape(np.shape(volume)[:3], spacing_from, spacing_to)
    return _resample(volume, spacing_from, spacing_to, shape, order)


def resample_back(volume, spacing_from, spacing_to, shape_to, order: int = 1) -> np.ndarray:
    """The inverse map of resample_to: (X', Y', Z', ...) at `spacing_from` -> `shape_to`
    (the original grid) at `spacing_to`; order 0 (nearest neighbour) for labels."""
    return _resample(volume, spacing_from, spacing_to, tuple(shape_to)[:3], order)


def spacing_mismatch(spacing, expected, tolerance: float, axes=(0, 1, 2)) -> bool:
    """True when any of `axes` of `spacing` differs from `expected` by more than
    `tolerance` relative to `expected`."""
    spacing, expected = np.asarray(spacing, float), np.asarray(expected, float)
    return bool(any(abs(spacing[a] - expected[a]) > tolerance * expected[a] for a in axes))
