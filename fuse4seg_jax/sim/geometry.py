"""Where a simulated brain lands in the BraTS grid, and the smooth random fields it uses.

The BraTS grid: 240 x 240 x 155 voxels of 1 mm with the affine of the BraTS releases
(x and y flipped: world = (-i, 239 - j, k) mm, RAS), so simulated folders look like
real ones to every reader. Both world and template (MNI) coordinates are RAS mm.

Per case (drawn from the case's generator), a template point m lands at world point
    w = W0 + R S (m - M0) + t,
with M0 the centre of the template brain's bounding box, W0 the grid's centre (the
brain's top kept inside the 155 slices), S a diagonal scale (0.95 x (1 +- 8 %) overall,
+-3 % per axis), R a rotation (+-10 degrees about the vertical axis, +-5 about the other
two) and t a shift of up to 4 mm. A smooth non-rigid displacement (Gaussian-interpolated
random lattice, 30 mm spacing, 2.5 mm standard deviation per component) is added on the
pull-back side: a world voxel w samples the template at
    m = M0 + S^-1 R^T (w - W0 - t) + d(w).
"""

import numpy as np

SHAPE = (240, 240, 155)
AFFINE = np.array(
    [[-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 239.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)
SPACING = (1.0, 1.0, 1.0)
BASE_SCALE = 0.95
SCALE_RANGE = 0.08
AXIS_SCALE_RANGE = 0.03
MAX_ANGLE_DEG = (5.0, 5.0, 10.0)  # about x, y, z
MAX_SHIFT_MM = 4.0
WARP_SPACING_MM = 30.0
WARP_SD_MM = 2.5
COARSE = 4  # voxels between the nodes of the lattice that smooth fields and masks use
MARGIN_MM = 12.0  # around the transformed brain box: room for deformation and mass effect


def rotation(angles_rad) -> np.ndarray:
    """Rotation matrix Rz Ry Rx for angles (about x, y, z) in radians."""
    ax, ay, az = angles_rad
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _rotate_scale(placement) -> np.ndarray:
    """R S of a placement: the linear part of template -> world."""
    return rotation(placement["angles"]) * placement["scales"][None, :]


def world_of_voxel(ijk) -> np.ndarray:
    """World (RAS mm) coordinates of voxel indices (..., 3) of the BraTS grid."""
    ijk = np.asarray(ijk, np.float64)
    return ijk @ AFFINE[:3, :3].T + AFFINE[:3, 3]


def draw_placement(rng, brain_lo_mm, brain_hi_mm) -> dict:
    """The case's rigid-plus-scale placement (see the module docstring)."""
    m0 = (np.asarray(brain_lo_mm) + np.asarray(brain_hi_mm)) / 2.0
    half_z = (brain_hi_mm[2] - brain_lo_mm[2]) / 2.0
    scale = BASE_SCALE * (1.0 + rng.uniform(-SCALE_RANGE, SCALE_RANGE))
    scales = scale * (1.0 + rng.uniform(-AXIS_SCALE_RANGE, AXIS_SCALE_RANGE, 3))
    angles = np.deg2rad(rng.uniform(-1.0, 1.0, 3) * np.asarray(MAX_ANGLE_DEG))
    shift = rng.uniform(-MAX_SHIFT_MM, MAX_SHIFT_MM, 3)
    centre = world_of_voxel([(SHAPE[0] - 1) / 2.0, (SHAPE[1] - 1) / 2.0, 0.0])
    # brain top about 3 mm under the last slice at the nominal scale
    centre[2] = SHAPE[2] - 1 - 3.0 - half_z * BASE_SCALE
    return {"m0": m0, "w0": centre, "scales": scales, "angles": angles, "shift": shift}


def smooth_field(rng, axes_mm, spacing_mm: float, channels: int) -> np.ndarray:
    """Unit-variance smooth random field on the grid axes_mm = (x, y, z) 1D coordinate arrays:
    N(0, 1) values on a lattice of `spacing_mm`, interpolated with Gaussian weights
    (sigma = spacing / 2, normalised to sum 1, so C-infinity). Returns (nx, ny, nz, C) float32."""
    weights, sizes = [], []
    for a in axes_mm:
        a = np.asarray(a, np.float64)
        n = int(np.ceil((a.max() - a.min()) / spacing_mm)) + 3
        knots = a.min() - spacing_mm + spacing_mm * np.arange(n)
        w = np.exp(-0.5 * ((a[:, None] - knots[None, :]) / (spacing_mm / 2.0)) ** 2)
        weights.append((w / w.sum(1, keepdims=True)).astype(np.float32))
        sizes.append(n)
    lattice = rng.standard_normal((*sizes, channels)).astype(np.float32)
    wx, wy, wz = weights
    f = np.einsum("xa,abc...->xbc...", wx, lattice)
    f = np.einsum("yb,xbc...->xyc...", wy, f)
    f = np.einsum("zc,xyc...->xyz...", wz, f)
    # interpolation shrinks the variance; rescale by the mean interpolation gain
    gain = np.sqrt(np.mean((wx**2).sum(1)) * np.mean((wy**2).sum(1)) * np.mean((wz**2).sum(1)))
    return f / np.float32(gain)


def brain_box(placement, brain_lo_mm, brain_hi_mm):
    """Voxel index ranges (lo, hi exclusive) of the BraTS grid that can hold brain."""
    corners = (
        np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], np.float64)
        * (np.asarray(brain_hi_mm) - brain_lo_mm)
        + brain_lo_mm
    )
    r = _rotate_scale(placement)
    world = (corners - placement["m0"]) @ r.T + placement["w0"] + placement["shift"]
    inv = np.linalg.inv(AFFINE)
    ijk = world @ inv[:3, :3].T + inv[:3, 3]
    lo = np.clip(np.floor(ijk.min(0) - MARGIN_MM), 0, None).astype(int)
    hi = np.minimum(np.ceil(ijk.max(0) + MARGIN_MM) + 1, SHAPE).astype(int)
    return lo, hi


def coarse_axes(lo, hi):
    """Voxel indices of the coarse lattice (every COARSE voxels from lo, past hi - 1) and
    their world coordinates, per axis."""
    idx = [lo[d] + COARSE * np.arange((hi[d] - 1 - lo[d]) // COARSE + 2) for d in range(3)]
    return idx, [AFFINE[d, d] * idx[d] + AFFINE[d, 3] for d in range(3)]


def affine_points(placement, world) -> np.ndarray:
    """Template (MNI mm) points pulled back from world points (..., 3), affine part only."""
    rs = _rotate_scale(placement)
    inv = np.diag(1.0 / placement["scales"] ** 2) @ rs.T  # S^-1 R^T
    base = placement["w0"] + placement["shift"]
    return ((world - base) @ inv.T + placement["m0"]).astype(np.float32)


def upsample(coarse, fine_idx, lo) -> np.ndarray:
    """Trilinear values (N, C) at fine voxels fine_idx (N, 3) of a field (cx, cy, cz, C)
    given on the coarse lattice starting at voxel lo."""
    from scipy import ndimage

    at = ((fine_idx - np.asarray(lo)) / COARSE).T.astype(np.float32)
    return np.stack(
        [
            ndimage.map_coordinates(coarse[..., c], at, order=1, mode="nearest")
            for c in range(coarse.shape[-1])
        ],
        1,
    )


def sample(channels, coords) -> np.ndarray:
    """Trilinear samples (N, C) float32 of channels (C, X, Y, Z) at voxel coordinates
    coords (N, 3); outside the grid is 0 (the templates are zero-padded anyway)."""
    from scipy import ndimage

    at = np.ascontiguousarray(coords.T, np.float32)
    return np.stack(
        [ndimage.map_coordinates(ch, at, order=1, mode="constant", cval=0.0) for ch in channels], 1
    )
