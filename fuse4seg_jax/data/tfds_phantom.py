"""`phantom`: the built-in synthetic data as a TFDS dataset.

The demo and real data go through the same path: a TFDS build, then
`tfds.load`-style reading into the tf.data pipeline. The builder generates its
examples with `phantom.make_dataset` (deterministic by seed), so building twice
gives identical records; nothing is downloaded. The builder config carries
every generation parameter in its name, so different settings never share a
built dataset. Splits by case: `train` (the first `num_train_cases` subjects)
and `validation` (the rest).
"""

import dataclasses
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from fuse4seg_jax.data import phantom  # noqa: E402


@dataclasses.dataclass
class PhantomConfig(tfds.core.BuilderConfig):
    seed: int = 0
    image_size: int = 64
    modalities: tuple = ("t1ce", "flair")
    num_train_cases: int = 160
    num_eval_cases: int = 24
    slices_per_case: int = 8


class Phantom(tfds.core.GeneratorBasedBuilder):
    """Multi-modal brain-tumour phantom slices (fuse4seg_jax/data/phantom.py)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First phantom (skull-stripped brain, three tumour parts)."}
    BUILDER_CONFIGS = [PhantomConfig(name="default")]

    def _info(self):
        config = self.builder_config
        size, m = config.image_size, len(config.modalities)
        return self.dataset_info_from_configs(
            description=__doc__.splitlines()[0],
            features=tfds.features.FeaturesDict(
                {
                    "modalities": tfds.features.Tensor(
                        shape=(size, size, m), dtype=np.float32, encoding="zlib"
                    ),
                    "label": tfds.features.Tensor(shape=(size, size), dtype=np.uint8),
                    "mask": tfds.features.Tensor(shape=(size, size), dtype=np.uint8),
                    "case_id": np.int32,
                    "slice_index": np.int32,
                }
            ),
        )

    def _split_generators(self, dl_manager):
        config = self.builder_config
        examples = phantom.make_dataset(
            config.seed,
            num_cases=config.num_train_cases + config.num_eval_cases,
            slices_per_case=config.slices_per_case,
            image_size=config.image_size,
            modalities=tuple(config.modalities),
        )
        is_train = examples["case_id"] < config.num_train_cases
        return {
            "train": self._generate_examples(examples, np.flatnonzero(is_train)),
            "validation": self._generate_examples(examples, np.flatnonzero(~is_train)),
        }

    def _generate_examples(self, examples, indices):
        for i in indices:
            yield (
                int(i),
                {
                    "modalities": examples["modalities"][i],
                    "label": examples["label"][i].astype(np.uint8),
                    "mask": (examples["mask"][i] > 0).astype(np.uint8),
                    "case_id": int(examples["case_id"][i]),
                    "slice_index": int(examples["slice_index"][i]),
                },
            )


def make_builder(data_config, seed: int) -> Phantom:
    mods = tuple(data_config.modalities)
    config = PhantomConfig(
        name=(
            f"{'_'.join(mods)}_s{data_config.image_size}_c{data_config.num_train_cases}"
            f"+{data_config.num_eval_cases}x{data_config.slices_per_case}_seed{seed}"
        ),
        version=Phantom.VERSION,
        seed=seed,
        image_size=data_config.image_size,
        modalities=mods,
        num_train_cases=data_config.num_train_cases,
        num_eval_cases=data_config.num_eval_cases,
        slices_per_case=data_config.slices_per_case,
    )
    return Phantom(data_dir=os.path.expanduser(data_config.tfds_dir), config=config)
