"""Tiny configuration for tests and smoke runs: tiny networks, 32x32, a few steps.

    python -m fuse4seg_jax.train --config configs/tiny.py --workdir /tmp/tiny

Hardware: any CPU; under a minute including compilation.
"""

from fuse4seg_jax.config_files import sibling

default = sibling(__file__, "default")


def get_config():
    config = default.get_config()
    config.data.image_size = 32
    config.data.num_train_cases = 8
    config.data.num_eval_cases = 2
    config.data.slices_per_case = 4
    config.data.shuffle_buffer = 64
    config.model.fusion = "fusion_tiny"
    config.model.segmentation = "unet_tiny"
    config.optim.warmup_steps = 0
    config.train.num_steps = 6
    config.train.batch_size = 16
    config.train.log_every = 2
    config.train.eval_every = 6
    config.train.checkpoint_every = 3
    config.train.eval_batch_size = 16
    config.report.num_figure_cases = 2
    return config
