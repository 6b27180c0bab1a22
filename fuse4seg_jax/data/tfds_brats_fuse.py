"""`brats_fuse`: the BraTS-Fuse benchmark as a TFDS dataset (docs/method.md section 7).

Built from a local BraTS training folder (a folder of case folders, either
naming convention) given as the manual dir; BraTS requires registration, so
nothing is downloaded:

    builder = BratsFuse(data_dir=DATA_DIR, config="t1ce_flair")
    builder.download_and_prepare(download_config=download_config(BRATS_DIR))
    ds = tfds.load("brats_fuse/t1ce_flair", data_dir=DATA_DIR, split="train")

Protocol (ours; the paper's is unpublished), all set by the builder config:
1. Case folders are sorted by name and put in a fixed pseudo-random order
   (numpy Generator seeded with `split_seed`).
2. The first ceil(max_pairs / slices_per_case) cases of that order are used
   (so at most `max_pairs` pairs, default 2040).
3. They are split BY CASE in that order: validation and test get
   round(fraction x cases) cases each (at least one), train the rest first;
   no case is in two splits. At least 3 cases are needed.
4. Per case, `brats.select_slices` picks up to `slices_per_case` axial slices
   whose tumour area is at least `min_tumour_area` pixels, evenly spread.
Each example: `modalities` (H, W, M) float32 in [0, 1] (normalised per volume),
`label` (H, W) uint8 in {0,1,2,3}, `mask` (H, W) uint8 brain mask, `case_id`,
`slice_index`, `spacing` (2,) float32 mm in-plane.

A case that cannot be read stops the build with its DataError, or, with
`skip_bad_cases=True`, is skipped with a warning naming the file and problem.
TFDS writes into a temporary folder and renames it only when the build is
complete, so a failed build leaves no half-built dataset.

Identity of a built dataset: `make_builder` names the builder config after the
protocol values AND the source folder, `..._src<hash>`, where the hash
(`source_fingerprint`) covers the folder's resolved absolute path and, for every
file under it (hidden names skipped), its relative path, size and modification
time (ns). So pointing `data.manual_dir` at another folder, or adding, removing,
replacing or editing a file in the same folder, gives a new name and a new build
instead of silently reusing the dataset built from the old source (an empty or
broken new folder then fails its build with the usual DataError). Only `stat` is
used, no content hashing: hashing tens of GB of NIfTI on every start would cost
minutes, while path + size + mtime catch every ordinary change (copy, unpack,
edit, re-download). A change that keeps size and mtime (e.g. `touch -r` after an
edit) is not seen; delete the built dataset under `data.tfds_dir` then.
"""

import dataclasses
import hashlib
import math
import os
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from fuse4seg_jax.data import brats  # noqa: E402
from fuse4seg_jax.data.errors import DataError  # noqa: E402


@dataclasses.dataclass
class BratsFuseConfig(tfds.core.BuilderConfig):
    modalities: tuple = ("t1ce", "flair")
    slices_per_case: int = 4
    min_tumour_area: int = 100
    max_pairs: int = 2040
    train_fraction: float = 0.7
    validation_fraction: float = 0.1
    split_seed: int = 0
    skip_bad_cases: bool = False


def download_config(manual_dir) -> tfds.download.DownloadConfig:
    """Build options for a local folder: never try to fetch anything."""
    return tfds.download.DownloadConfig(
        manual_dir=None if manual_dir is None else str(manual_dir), try_download_gcs=False
    )


def source_fingerprint(root) -> str:
    """A short hash of a source folder: its resolved absolute path and the relative path,
    size and mtime of every file under it (symlinks followed, hidden names skipped); no
    file contents are read (see the module docstring). A missing folder hashes its path."""
    root = os.path.realpath(os.path.expanduser(str(root)))
    digest = hashlib.sha256(root.encode())
    seen = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(f for f in filenames if not f.startswith(".")):
            path = os.path.join(dirpath, name)
            try:
                st = os.stat(path)
                stamp = f"{st.st_size}:{st.st_mtime_ns}"
            except OSError:  # a broken symlink
                stamp = "unreadable"
            digest.update(f"\0{os.path.relpath(path, root)}\0{stamp}".encode())
    return digest.hexdigest()[:12]


def split_cases(case_dirs, config: BratsFuseConfig) -> dict:
    """{"train": [...], "validation": [...], "test": [...]} case folders, by the protocol."""
    case_dirs = sorted(case_dirs, key=lambda p: os.path.basename(str(p)))
    order = np.random.default_rng(config.split_seed).permutation(len(case_dirs))
    used = [case_dirs[i] for i in order[: math.ceil(config.max_pairs / config.slices_per_case)]]
    if len(used) < 3:
        raise DataError(
            os.path.dirname(str(case_dirs[0])) if case_dirs else "?",
            f"{len(used)} BraTS cases: need at least 3 (train, validation and test by case)",
        )
    n_val = max(1, round(config.validation_fraction * len(used)))
    n_test = max(1, round((1.0 - config.train_fraction - config.validation_fraction) * len(used)))
    n_train = len(used) - n_val - n_test
    return {
        "train": used[:n_train],
        "validation": used[n_train : n_train + n_val],
        "test": used[n_train + n_val :],
    }


def features(num_modalities: int) -> tfds.features.FeaturesDict:
    """The features of a BraTS-style slice example (also the `brats_sim` dataset's)."""
    return tfds.features.FeaturesDict(
        {
            "modalities": tfds.features.Tensor(
                shape=(None, None, num_modalities), dtype=np.float32, encoding="zlib"
            ),
            "label": tfds.features.Tensor(shape=(None, None), dtype=np.uint8, encoding="zlib"),
            "mask": tfds.features.Tensor(shape=(None, None), dtype=np.uint8, encoding="zlib"),
            "case_id": tfds.features.Text(),
            "slice_index": np.int32,
            "spacing": tfds.features.Tensor(shape=(2,), dtype=np.float32),
        }
    )


class BratsFuse(tfds.core.GeneratorBasedBuilder):
    """BraTS-Fuse: tumour slices of BraTS cases, split by case."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First protocol (see module docstring)."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download the BraTS training data after registering, unpack it, and pass the folder "
        "of case folders as the manual dir (config data.manual_dir)."
    )
    BUILDER_CONFIGS = [
        BratsFuseConfig(name="t1ce_flair", description="T1ce + FLAIR (the paper's pair)"),
        BratsFuseConfig(
            name="all", description="T1, T1ce, T2, FLAIR", modalities=("t1", "t1ce", "t2", "flair")
        ),
    ]
    DEFAULT_CONFIG_NAME = "t1ce_flair"

    def _info(self):
        return self.dataset_info_from_configs(
            description=__doc__.splitlines()[0],
            features=features(len(self.builder_config.modalities)),
            supervised_keys=None,
        )

    def _split_generators(self, dl_manager):
        root = dl_manager.manual_dir
        splits = split_cases(brats.find_cases(root), self.builder_config)
        return {name: self._generate_examples(cases) for name, cases in splits.items()}

    def _generate_examples(self, case_dirs):
        config = self.builder_config
        for case_dir in case_dirs:
            try:
                case = brats.read_case(case_dir, config.modalities)
            except DataError as e:
                if not config.skip_bad_cases:
                    raise
                warnings.warn(f"skipping case {os.path.basename(str(case_dir))}: {e}", stacklevel=1)
                continue
            chosen = brats.select_slices(
                case.label,
                slices_per_case=config.slices_per_case,
                min_tumour_area=config.min_tumour_area,
            )
            for z in chosen:
                z = int(z)
                yield (
                    f"{case.case_id}_{z:03d}",
                    {
                        "modalities": case.modalities[:, :, z, :].astype(np.float32),
                        "label": case.label[:, :, z].astype(np.uint8),
                        "mask": (case.mask[:, :, z] > 0).astype(np.uint8),
                        "case_id": case.case_id,
                        "slice_index": z,
                        "spacing": np.asarray(case.spacing[:2], np.float32),
                    },
                )


def make_builder(data_config) -> BratsFuse:
    """The builder for a trainer config: protocol values from `data.*` and the source
    folder `data.manual_dir` (`source_fingerprint`) in its config name, so different
    protocols or sources never share a built dataset."""
    mods = tuple(data_config.modalities)
    source = source_fingerprint(data_config.manual_dir) if data_config.manual_dir else "none"
    config = BratsFuseConfig(
        name=(
            f"{'_'.join(mods)}_s{data_config.slices_per_case}_a{data_config.min_tumour_area}"
            f"_n{data_config.max_pairs}_seed{data_config.split_seed}_src{source}"
        ),
        version=BratsFuse.VERSION,
        modalities=mods,
        slices_per_case=data_config.slices_per_case,
        min_tumour_area=data_config.min_tumour_area,
        max_pairs=data_config.max_pairs,
        split_seed=data_config.split_seed,
        skip_bad_cases=data_config.skip_bad_cases,
    )
    return BratsFuse(data_dir=os.path.expanduser(data_config.tfds_dir), config=config)


def as_numpy(builder, split: str):
    """Examples of a built split as numpy dicts, in file order."""
    return tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))
