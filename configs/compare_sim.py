"""configs/compare.py on simulated BraTS-like cases (configs/sim.py's data) instead of the
phantom: the same runs, seeds, step budget and fairness settings.

    python -m fuse4seg_jax.ablate --config configs/compare_sim.py --workdir runs/compare_sim

The first run simulates the dataset (100 cases at 2 mm); every run then trains on 96 x 96
crops, about 2.3 times the phantom's pixels per step. Runtime: see README (measured).
"""

from fuse4seg_jax.config_files import sibling

compare = sibling(__file__, "compare")
sim = sibling(__file__, "sim")

SIM_DATA_KEYS = ("name", "sim_spacing_mm", "image_size", "num_train_cases", "num_eval_cases",
                 "slices_per_case", "min_tumour_area")  # fmt: skip


def with_sim_data(config):
    """`config` with configs/sim.py's data protocol."""
    data = sim.get_config().data
    for key in SIM_DATA_KEYS:
        config.data[key] = data[key]
    return config


def get_config():
    return with_sim_data(compare.get_config())
