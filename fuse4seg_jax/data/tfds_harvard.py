"""`harvard_mif`: Harvard Whole Brain Atlas fusion pairs as a TFDS dataset (fusion only).

Built from a local folder laid out as `<set>/<modality>/<id>.png` (the layout
of ../shared/data/harvard: MRI_CT, MRI_PET, MRI_SPECT) given as the manual
dir; one builder config per set. There are no labels: these pairs measure
fusion quality. Colour PET/SPECT images are stored as luma (BT.601 Y) next to
their chroma, so a fused luma can be turned back into a colour fused image
(`harvard.colourise`). Every pair goes to the single `test` split, as in the
fusion literature, where these pairs are test sets.

Each example: `modalities` (H, W, 2) float32 in [0, 1] (MRI, then the other
modality's luma), `chroma` (H, W, 2) float32 Cb/Cr of the other modality,
`is_colour` bool, `pair_id` text.

Identity of a built dataset: `build` names the builder config `<set>_src<hash>`,
the hash covering the resolved absolute path of `<root>/<set>` and the relative
path, size and modification time of every file under it
(`tfds_brats_fuse.source_fingerprint`; no content hashing, as for BraTS: stat is
cheap and catches every ordinary change). Another folder, or an added, removed or
edited PNG, builds a new dataset instead of reusing the one built from the old
source.
"""

import dataclasses
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from fuse4seg_jax.data import harvard  # noqa: E402


@dataclasses.dataclass
class HarvardConfig(tfds.core.BuilderConfig):
    set_name: str = "MRI_PET"


class HarvardMif(tfds.core.GeneratorBasedBuilder):
    """MRI-CT, MRI-PET and MRI-SPECT pairs of the Harvard Whole Brain Atlas."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Pairs as laid out in <set>/<modality>/<id>.png."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Pass the folder holding MRI_CT/, MRI_PET/ and MRI_SPECT/ (each <modality>/<id>.png) "
        "as the manual dir."
    )
    BUILDER_CONFIGS = [
        HarvardConfig(name=name.lower(), description=f"{name} pairs", set_name=name)
        for name in harvard.SETS
    ]

    def _info(self):
        return self.dataset_info_from_configs(
            description=__doc__.splitlines()[0],
            features=tfds.features.FeaturesDict(
                {
                    "modalities": tfds.features.Tensor(
                        shape=(None, None, 2), dtype=np.float32, encoding="zlib"
                    ),
                    "chroma": tfds.features.Tensor(
                        shape=(None, None, 2), dtype=np.float32, encoding="zlib"
                    ),
                    "is_colour": np.bool_,
                    "pair_id": tfds.features.Text(),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        set_name = self.builder_config.set_name
        pairs = harvard.find_pairs(dl_manager.manual_dir, set_name)
        return {"test": self._generate_examples(pairs)}

    def _generate_examples(self, pairs):
        for pair_id, mri_path, other_path in pairs:
            pair = harvard.read_pair(mri_path, other_path)
            yield (
                pair_id,
                {
                    "modalities": pair["modalities"],
                    "chroma": pair["chroma"],
                    "is_colour": bool(pair["is_colour"]),
                    "pair_id": pair_id,
                },
            )


def build(root, set_name: str, data_dir):
    """Build (or reuse) harvard_mif/<set>_src<hash> from `root` (the hash identifies the
    source, see the module docstring); returns the builder."""
    from fuse4seg_jax.data import building
    from fuse4seg_jax.data.tfds_brats_fuse import download_config, source_fingerprint

    building.quiet_tfds()

    if set_name not in harvard.SETS:
        raise ValueError(f"unknown Harvard set {set_name!r}: expected one of {list(harvard.SETS)}")
    source = source_fingerprint(os.path.join(os.path.expanduser(str(root)), set_name))
    config = HarvardConfig(
        name=f"{set_name.lower()}_src{source}", version=HarvardMif.VERSION, set_name=set_name
    )
    harvard.find_pairs(os.path.expanduser(str(root)), set_name)  # DataError, not TFDS's
    builder = HarvardMif(data_dir=os.path.expanduser(str(data_dir)), config=config)
    return building.prepare(builder, download_config(root), f"Harvard {set_name} ({root})")
