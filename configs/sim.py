"""Fuse4Seg bi-level training on simulated BraTS-like cases (docs/simulator.md), CPU-sized.

    python -m fuse4seg_jax.train --config configs/sim.py --workdir runs/sim
    python -m fuse4seg_jax.evaluate --config configs/sim.py --workdir runs/sim

The first run simulates the dataset into data.tfds_dir (100 cases at 2 mm: 80 train, 10
validation, 10 test; a few minutes on 2 cores), then trains on 96 x 96 crops of the
120 x 120 axial tumour slices of T1ce + FLAIR. The 1 mm protocol of real BraTS is
`--config.data.sim_spacing_mm=1 --config.data.image_size=192 --config.data.min_tumour_area=100`.
Runtime and Dice: see README (measured).
"""

from fuse4seg_jax.config_files import sibling

demo = sibling(__file__, "demo")


def get_config():
    config = demo.get_config()  # the demo's training budget and schedule
    config.data.name = "brats_sim"
    config.data.sim_spacing_mm = 2.0
    config.data.image_size = 96
    config.data.num_train_cases = 80
    config.data.num_eval_cases = 10
    config.data.slices_per_case = 8
    config.data.min_tumour_area = 25  # pixels of 4 mm2: 100 mm2, as brats_fuse at 1 mm
    return config
