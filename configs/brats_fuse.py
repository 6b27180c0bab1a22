"""BraTS-Fuse: Fuse4Seg on real BraTS data (T1ce + FLAIR), the reference setting.

    python -m fuse4seg_jax.train --config configs/brats_fuse.py \\
        --config.data.manual_dir=/path/to/BraTS2021_Training_Data --workdir runs/brats_fuse

The first run builds the `brats_fuse` TFDS dataset from the folder (both BraTS
naming conventions are read; up to 2040 tumour slices, split by case) into
data.tfds_dir; later runs reuse it. Training slices are randomly cropped to
192x192, held-out slices centre-cropped.

Hardware: one GPU or TPU host (add the jax extra, see README). Expected
runtime: not yet measured on an accelerator (no accelerator is available to
this project); on 2 CPU cores a step at this size takes seconds, so CPU runs
are for smoke tests only (e.g. with --config.train.num_steps=20).
"""

from fuse4seg_jax.config_files import sibling

default = sibling(__file__, "default")


def get_config():
    config = default.get_config()
    config.data.name = "brats_fuse"
    config.data.image_size = 192
    config.data.slices_per_case = 4
    config.data.intensity_scale = 0.1
    config.data.intensity_shift = 0.1
    config.model.segmentation = "unet_base"
    config.train.num_steps = 20_000
    config.train.batch_size = 16
    config.train.eval_every = 2000
    config.train.checkpoint_every = 1000
    return config
