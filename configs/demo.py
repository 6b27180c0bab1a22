"""Demo: Fuse4Seg bi-level training on the built-in phantom, CPU-sized.

    python -m fuse4seg_jax.train --config configs/demo.py --workdir runs/demo

Hardware: 2 CPU cores. Runtime and Dice: see README (measured).
"""

from fuse4seg_jax.config_files import sibling

default = sibling(__file__, "default")


def get_config():
    config = default.get_config()
    config.data.image_size = 64
    config.data.num_train_cases = 160
    config.data.num_eval_cases = 24
    config.data.slices_per_case = 8
    config.train.num_steps = 1000  # about 10 minutes of demo.sh on 2 CPU cores (README)
    config.train.batch_size = 16
    config.train.log_every = 50
    config.train.eval_every = 500
    config.train.checkpoint_every = 500
    return config
