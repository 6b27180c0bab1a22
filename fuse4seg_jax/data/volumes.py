"""The whole-volume cases of a labelled dataset's split, for the volume protocol of evaluate.

`split_cases(data_config, seed, split)` lists the cases of a split as `VolumeCase`s whose
`load()` reads (or renders) the case only when called, so an evaluation holds one volume
at a time:
- "brats_fuse": the case folders the BraTS-Fuse builder assigns to the split
  (tfds_brats_fuse.split_cases on `data.manual_dir`, the same cases whose selected slices
  form the TFDS split), read and normalised by brats.read_case as for training and
  prediction.
- "brats_sim": the split's simulated cases (tfds_brats_sim.py: train indices 0 ..
  num_train_cases - 1, then num_eval_cases each for validation and test), simulated
  and normalised whole by sim/release.py as for the TFDS slices.
- "phantom": the split's subjects (train: case ids 0 .. num_train_cases - 1, validation:
  the next num_eval_cases), each rendered whole by phantom.make_case on the cube the
  training slices were cut from: image_size^3 voxels of FOV_MM / image_size mm. Its
  intensities are normalised with the percentiles of the planes of the case's TFDS
  slices (phantom.slice_planes), as those slices were: normalised over its whole volume
  instead, a case's T1ce came out up to 28% brighter than its training slices (measured
  on demo cases), a shift the networks never saw and BraTS data does not have.
The volumes are (H, W, D, M) float32 in [0, 1] with background 0, labels (H, W, D) int32
0..3, spacing (3,) mm per stored axis; axial slices are the last axis, as in training.
"""

import dataclasses
import os
from collections.abc import Callable

import numpy as np

from fuse4seg_jax.data import brats, sources
from fuse4seg_jax.data.errors import DataError

DATASETS = ("phantom", "brats_fuse", "brats_sim")  # the labelled datasets made of 3D cases


@dataclasses.dataclass(frozen=True)
class VolumeCase:
    case_id: str
    load: Callable  # () -> (modalities (H, W, D, M), label (H, W, D), spacing (3,))


def split_cases(data_config, seed: int, split: str) -> list[VolumeCase]:
    """The cases of `split` (module docstring), sorted by case id. ValueError for a
    dataset without 3D cases or a split it lacks; DataError for a missing BraTS folder."""
    if data_config.name not in DATASETS:
        raise ValueError(
            f"data.name={data_config.name!r} has no 3D cases: the volume protocol needs one "
            f"of {', '.join(DATASETS)} (use --protocol slices)"
        )
    sources.check_split(data_config, split)
    if data_config.name == "phantom":
        return _phantom_cases(data_config, seed, split)
    if data_config.name == "brats_sim":
        return _sim_cases(data_config, split)
    return _brats_cases(data_config, split)


def _sim_cases(data_config, split) -> list[VolumeCase]:
    from fuse4seg_jax.sim import release

    n_train, n_eval = int(data_config.num_train_cases), int(data_config.num_eval_cases)
    first = {"train": 0, "validation": n_train, "test": n_train + n_eval}[split]
    count = n_train if split == "train" else n_eval
    mods, spacing = tuple(data_config.modalities), float(data_config.sim_spacing_mm)

    def loader(index):
        def load():
            images, label, _, voxel = release.read_case(data_config.sim_seed, index, mods, spacing)
            return images, label, voxel

        return load

    return [VolumeCase(release.NAME.format(i), loader(i)) for i in range(first, first + count)]


def _phantom_cases(data_config, seed, split) -> list[VolumeCase]:
    from fuse4seg_jax.data import phantom

    first = 0 if split == "train" else data_config.num_train_cases
    count = data_config.num_train_cases if split == "train" else data_config.num_eval_cases
    size = int(data_config.image_size)
    spacing = (phantom.FOV_MM / size,) * 3
    mods = tuple(data_config.modalities)

    def loader(index):
        def load():
            case_seed = phantom.case_seed(seed, index)
            planes = phantom.slice_planes(
                case_seed, num_slices=data_config.slices_per_case, image_size=size
            )
            case = phantom.make_case(case_seed, shape=(size,) * 3, spacing=spacing,
                                     modalities=mods, reference_planes=planes)  # fmt: skip
            return case["modalities"], case["label"], np.asarray(spacing, np.float32)

        return load

    return [VolumeCase(str(i), loader(i)) for i in range(first, first + count)]


def _brats_cases(data_config, split) -> list[VolumeCase]:
    from fuse4seg_jax.data import tfds_brats_fuse  # imports TensorFlow (the builder's config)

    if not data_config.manual_dir:
        raise ValueError("data.manual_dir is empty: give the BraTS folder of case folders")
    root = os.path.expanduser(data_config.manual_dir)
    if not os.path.isdir(root):
        raise DataError(data_config.manual_dir, "BraTS folder (data.manual_dir) not found")
    protocol = tfds_brats_fuse.make_builder(data_config).builder_config
    folders = tfds_brats_fuse.split_cases(brats.find_cases(root), protocol)[split]
    mods = tuple(data_config.modalities)

    def loader(folder):
        def load():
            case = brats.read_case(folder, mods, with_label=True)
            return case.modalities, case.label, case.spacing

        return load

    return [VolumeCase(os.path.basename(str(f)), loader(f)) for f in folders]
