"""configs/ablation.py on simulated BraTS-like cases (configs/sim.py's data): the
hypergradient methods, seeds and step budget of the phantom ablation.

    python -m fuse4seg_jax.ablate --config configs/ablation_sim.py --workdir runs/ablation_sim

Runtime: see README (measured).
"""

from fuse4seg_jax.config_files import sibling

ablation = sibling(__file__, "ablation")
compare_sim = sibling(__file__, "compare_sim")


def get_config():
    return compare_sim.with_sim_data(ablation.get_config())
