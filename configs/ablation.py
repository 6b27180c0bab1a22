"""Hypergradient ablation on the phantom: every method, same data, seed and step budget.

    python -m fuse4seg_jax.ablate --config configs/ablation.py --workdir runs/ablation

Hardware: 2 CPU cores; each run is the demo setting cut to 400 steps, once per seed
(about 41 minutes for the nine runs there). Methods are any of bilevel.METHODS; the
table, the CSV and the training curves go to the workdir.
"""

import ml_collections

from fuse4seg_jax.config_files import sibling

demo = sibling(__file__, "demo")


def get_config():
    config = demo.get_config()
    config.train.num_steps = 400
    config.train.eval_every = 400
    config.train.checkpoint_every = 200
    config.train.log_every = 25
    config.bilevel.diagnose_every = 50  # cosine with a reference CG hypergradient
    config.ablation = ml_collections.ConfigDict()
    config.ablation.methods = ("joint", "first_order", "unrolled")
    config.ablation.inners = ("fusion",)
    config.ablation.seeds = (0, 1, 2)  # every run once per seed; tables show mean ± sd
    config.ablation.baselines = ()  # e.g. ("two_stage", "classical:laplacian"); see compare.py
    config.ablation.volume_protocol = True  # + whole held-out cases scored (evaluate)
    return config
