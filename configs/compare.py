"""Is image-level fusion better than feature-level fusion here? Fuse4Seg against the baselines.

    python -m fuse4seg_jax.ablate --config configs/compare.py --workdir runs/compare

Same data (the phantom, demo setting), seed and step budget for every run:
Fuse4Seg (bi-level, unrolled) and `joint`; `task_only` (the same networks trained by
the segmentation loss alone: the ceiling of image-level fusion); `two_stage`; the
feature-level baselines (early fusion, dual encoder); classical fusion (mean, Laplacian
pyramid, PCA) followed by the same U-Net; each modality alone. The table
(`results.md`, `results.csv`) has Dice per region and the fusion metrics of
each run's held-out fused images; `curves.png` the training curves.

400 steps per run (the ablation's budget); timing on 2 CPU cores in docs/comparison.md.
For BraTS, override data.* as in configs/brats_fuse.py.

Fair by construction: every network learns from all 16 images of every step in every
kind (bilevel.batch_split = "same": both levels of the bi-level step see the whole batch,
where "halves" would give each 8; tests/test_fairness.py checks which images reach which
network), and the follower gets the same warm-up, schedule and gradient clipping as every
optax-trained network (bilevel.inner_schedule = "outer").
"""

import ml_collections

from fuse4seg_jax.config_files import sibling

demo = sibling(__file__, "demo")


def get_config():
    config = demo.get_config()
    config.train.num_steps = 400
    config.train.eval_every = 400
    config.train.checkpoint_every = 200
    config.train.log_every = 50
    config.bilevel.batch_split = "same"  # 16 images per network per step, as the baselines
    config.bilevel.inner_schedule = "outer"  # the default; explicit: fairness rests on it
    config.ablation = ml_collections.ConfigDict()
    config.ablation.methods = ("unrolled", "joint")
    config.ablation.inners = ("fusion",)
    config.ablation.seeds = (0, 1, 2)  # every run once per seed; tables show mean ± sd
    config.ablation.volume_protocol = True  # + whole held-out cases scored (evaluate)
    config.ablation.baselines = (
        "task_only",
        "two_stage",
        "early_fusion",
        "dual_encoder",
        "classical:mean",
        "classical:laplacian",
        "classical:pca",
        "single:t1ce",
        "single:flair",
    )
    return config
