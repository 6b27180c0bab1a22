"""Fusion-only training on Harvard Whole Brain Atlas pairs (no segmentation side).

    python -m fuse4seg_jax.train --config configs/harvard.py \\
        --config.data.manual_dir=../shared/data/harvard --workdir runs/harvard_pet

The segmentation side is switched off by `model.segmentation = "none"`: the
fusion network alone is trained on L_fuse with optax (a different step
function is bound at build time; the bi-level step is untouched). Pairs of
`data.harvard_set` (MRI_CT, MRI_PET or MRI_SPECT; set data.modalities to match,
e.g. ("mri", "spect")) are split by a seeded permutation, a fifth held out;
colour PET/SPECT are fused on luma and shown in colour in figure.png.

Hardware: 2 CPU cores suffice: measured 1.6 steps/s at 256x256, batch 8
(2026-11-24, 60-step smoke run on MRI_PET), so the 2,000 steps take about
21 minutes there.
"""

from fuse4seg_jax.config_files import sibling

default = sibling(__file__, "default")


def get_config():
    config = default.get_config()
    config.data.name = "harvard_mif"
    config.data.harvard_set = "MRI_PET"
    config.data.modalities = ("mri", "pet")
    config.data.image_size = 256
    config.data.augment = True
    config.model.segmentation = "none"
    config.loss.w_ssim = 0.5
    config.train.num_steps = 2000
    config.train.batch_size = 8
    config.train.eval_every = 500
    config.train.checkpoint_every = 500
    config.train.eval_batch_size = 8
    return config
