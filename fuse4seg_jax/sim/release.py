"""Simulated cases as the project's readers see them (the `brats_sim` dataset's source).

`read_case(seed, index, modalities, spacing_mm)` gives what `brats.read_case` would give
for the folder `python -m fuse4seg_jax.simulate` writes for that case, without writing it:
the images rounded to int16 as stored, the brain mask where any requested image is
non-zero, each image normalised by `brats.normalise` (0.5 / 99.5 percentiles inside the
mask), labels 0..3. At 1 mm this equals reading the written folder (tested). At
`spacing_mm` = 2 the stored-grid images are first averaged over 2 x 2 x 2 blocks (the
last of the 155 slices dropped: 120 x 120 x 77) and each block takes the label covering
most of it (ties to the higher label), before the mask and normalisation; a cheaper
protocol for CPU budgets.

`case_slices(...)` picks a case's axial training slices (`brats.select_slices`, as the
`brats_fuse` builder does) and returns them as TFDS examples; it is a plain function of
this TensorFlow-free module so that builder worker processes can run it.
"""

import numpy as np

from fuse4seg_jax.data import brats
from fuse4seg_jax.sim import case as sim_case

SPACINGS_MM = (1.0, 2.0)
NAME = "SimBraTS_{:05d}"


def _downsample(images, label):
    h, w, d = (n // 2 * 2 for n in label.shape)
    blocks = images[:h, :w, :d].reshape(h // 2, 2, w // 2, 2, d // 2, 2, -1)
    images = blocks.mean((1, 3, 5))
    onehot = np.stack([label[:h, :w, :d] == v for v in range(4)], -1).astype(np.float32)
    votes = onehot.reshape(h // 2, 2, w // 2, 2, d // 2, 2, 4).mean((1, 3, 5))
    label = (3 - np.argmax(votes[..., ::-1], -1)).astype(np.int32)  # ties to the higher
    return images, label


def read_case(seed: int, index: int, modalities, spacing_mm: float = 1.0):
    """(modalities (H, W, D, M) float32 in [0, 1], label (H, W, D) int32, mask (H, W, D)
    float32, spacing (3,) float32 mm) of simulated case (seed, index); see the docstring."""
    if spacing_mm not in SPACINGS_MM:
        raise ValueError(f"spacing_mm={spacing_mm}: expected one of {SPACINGS_MM}")
    case = sim_case.simulate_case(seed, index, tuple(modalities))
    images = np.clip(np.rint(case["modalities"]), -32768, 32767)  # as stored in int16
    label = case["label"].astype(np.int32)
    if spacing_mm == 2.0:
        images, label = _downsample(images, label)
    mask = (images != 0).any(-1)
    out = np.stack([brats.normalise(images[..., m], mask) for m in range(images.shape[-1])], -1)
    spacing = np.full(3, spacing_mm, np.float32)
    return out, label, mask.astype(np.float32), spacing


def case_slices(seed, index, modalities, spacing_mm, slices_per_case, min_tumour_area):
    """The TFDS examples [(key, features)] of case (seed, index)'s selected axial slices."""
    images, label, mask, spacing = read_case(seed, index, modalities, spacing_mm)
    chosen = brats.select_slices(
        label, slices_per_case=slices_per_case, min_tumour_area=min_tumour_area
    )
    case_id = NAME.format(index)
    return [
        (
            f"{case_id}_{int(z):03d}",
            {
                "modalities": images[:, :, z, :].astype(np.float32),
                "label": label[:, :, z].astype(np.uint8),
                "mask": (mask[:, :, z] > 0).astype(np.uint8),
                "case_id": case_id,
                "slice_index": int(z),
                "spacing": spacing[:2].astype(np.float32),
            },
        )
        for z in chosen
    ]
