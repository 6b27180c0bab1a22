"""How hard are the simulated cases? Early fusion and Fuse4Seg at the demo's step budget.

    python -m fuse4seg_jax.ablate --config configs/difficulty_sim.py --workdir runs/difficulty_sim
    python -m fuse4seg_jax.ablate --config configs/difficulty_sim.py \
        --config.train.num_steps=10000 --workdir runs/difficulty_sim_10x
    python -m fuse4seg_jax.ablate --config configs/difficulty_sim.py \
        --config.train.num_steps=5000 --config.ablation.baselines="()" \
        --workdir runs/difficulty_sim_5k

configs/compare_sim.py's data and fairness settings (every network sees all 16 images of
every step), trained for configs/demo.py's step budget (1,000; the second command: 10 times
that; the third: Fuse4Seg alone for 5,000 steps, about ten times the demo's time): an
early-fusion U-Net (the modalities stacked as channels) and Fuse4Seg (bi-level,
unrolled, fusion inner), seed 0. If both score above 0.95 Dice everywhere the simulator is
too easy to rank methods; below 0.3 everywhere, too hard. Measured: see README.
"""

from fuse4seg_jax.config_files import sibling

compare_sim = sibling(__file__, "compare_sim")
demo = sibling(__file__, "demo")


def get_config():
    config = compare_sim.get_config()
    budget = demo.get_config().train
    config.train.num_steps = budget.num_steps
    config.train.eval_every = budget.num_steps
    config.train.checkpoint_every = budget.checkpoint_every
    config.ablation.methods = ("unrolled",)
    config.ablation.inners = ("fusion",)
    config.ablation.seeds = (0,)
    config.ablation.baselines = ("early_fusion",)
    return config
