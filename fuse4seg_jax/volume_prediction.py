"""A normalised case volume through a trained Predictor: the code `predict` and the
volume protocol of `evaluate` share.

`brain_window` is the in-plane window around the brain (and the axial slices with
brain) the networks see; `predict_volume` runs those slices as one batch stream,
optionally averaged over the four in-plane flips (`FLIPS`), and puts the outputs back
in place, background elsewhere.
"""

import numpy as np

from fuse4seg_jax import regions

FLIPS = ((), (1,), (2,), (1, 2))


def brain_window(modalities, crop: int, multiple: int = 16):
    """The part of a case the networks see: (x slice, y slice, z slice) of the stored axes.

    modalities: (H, W, D, M), background exactly 0 (brats.normalise). z: the axial slices
    holding any brain voxel. In-plane: a window of at least crop x crop pixels, each side
    grown to a multiple of `multiple` when the brain's bounding box (over all slices) is
    larger, never beyond the image, centred on the box and shifted to stay inside the
    image, so it always holds every brain voxel. crop 0: the whole slices (no window).
    None when the case has no brain voxel at all.
    """
    h, w, d, _ = modalities.shape
    if crop <= 0:
        return slice(0, h), slice(0, w), slice(0, d)
    brain = modalities.max(axis=-1) > 0
    zs = np.flatnonzero(brain.any(axis=(0, 1)))
    if not zs.size:
        return None
    window = []
    for axis, size in ((0, h), (1, w)):
        on = np.flatnonzero(brain.any(axis=tuple({0, 1, 2} - {axis})))
        lo, hi = int(on[0]), int(on[-1]) + 1
        side = min(size, max(crop, -(-(hi - lo) // multiple) * multiple))
        start = min(max((lo + hi - side) // 2, 0), size - side)
        window.append(slice(start, start + side))
    return window[0], window[1], slice(int(zs[0]), int(zs[-1]) + 1)


def _background(keys, shape, seg_mode) -> dict:
    """The outputs where the networks do not run: label 0, fused 0, and probabilities of
    no tumour (background 1 for softmax, every region 0 for regions)."""
    out = {}
    for k in keys:
        if k == "probs":
            out[k] = np.zeros(shape + (len(regions.channel_names(seg_mode)),), np.float32)
            if seg_mode == "softmax":
                out[k][..., 0] = 1.0
        else:
            out[k] = np.zeros(shape, np.int32 if k == "pred" else np.float32)
    return out


def _flip_average(predictor, slices) -> dict:
    """The predictor's outputs for a batch of slices (N, H, W, M) averaged over the in-plane
    flips FLIPS: each flipped batch goes through the networks, its outputs are flipped back,
    probabilities and fused images are averaged, labels come from the mean probabilities."""
    sums = {}
    for axes in FLIPS:
        out = predictor.predict(np.flip(slices, axes) if axes else slices)
        for k, v in out.items():
            if k != "pred":
                v = np.flip(v, axes) if axes else v
                sums[k] = v.astype(np.float32) if k not in sums else sums[k] + v
    mean = {k: v / np.float32(len(FLIPS)) for k, v in sums.items()}
    if "probs" in mean:
        labels = regions.probabilities_to_labels(mean["probs"], predictor.seg_mode)
        mean["pred"] = np.asarray(labels, np.int32)
    return mean


def predict_volume(predictor, volume, crop: int, *, tta: bool = False) -> dict:
    """A case volume through the networks: {"pred": (H, W, D) int32, "fused": (H, W, D)
    float32, "probs": (H, W, D, C) float32} (those of the predictor's keys the model has).

    volume: (H, W, D, M) float32, normalised as for training (brats.read_case) and in the
    training orientation; its axial slices `volume[:, :, k]` in the brain window
    (brain_window with `crop`) go through the networks, the outputs elsewhere are
    background (label 0, fused 0, no tumour probability). tta: average over the four
    in-plane flips (FLIPS; labels from the mean probabilities, so the predictor must
    compute "probs" when it segments: inference.PROB_KEYS).
    """
    h, w, d, m = volume.shape
    keys = predictor.output_keys(m)
    if tta and "pred" in keys and "probs" not in keys:
        raise ValueError("tta needs a predictor that computes 'probs' (keys=inference.PROB_KEYS)")
    out = _background(keys, (h, w, d), predictor.seg_mode)
    window = brain_window(volume, crop)
    if window is None:
        return out
    slices = np.moveaxis(volume[window], 2, 0)  # (D', H', W', M): axial slices as a batch
    result = _flip_average(predictor, slices) if tta else predictor.predict(slices)
    for k, v in result.items():
        out[k][window] = np.moveaxis(v, 0, 2)
    return out
