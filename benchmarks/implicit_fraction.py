"""How much of each bi-level update is the implicit term, per inner setting (demo networks).

    .venv/bin/python benchmarks/implicit_fraction.py [--steps 60] [--every 10]

Trains the demo config (`unrolled`, one inner step) for `--steps` steps under each setting
below and prints the median over the run, and the value at the end, of the method's own
`implicit_fraction` = |hypergradient - F_x| / |hypergradient| (bilevel aux), sampled every
`--every` steps. A coupling "acts" when that fraction is not negligible. Settings: the
inner optimiser and its rate, mu (inner = fusion) or beta (inner = segmentation), and the
orientation. One CPU device; the numbers are the same on any backend up to float noise.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SETTINGS = [  # (label, {bilevel key: value})
    ("adam 1e-3, mu 0.1 (default)", {}),
    ("adam 1e-2, mu 0.1", {"inner_lr": 1e-2}),
    ("adam 1e-3, mu 1", {"mu": 1.0}),
    ("sgd 0.1, mu 0.1", {"inner_optimizer": "sgd", "inner_lr": 0.1}),
    ("sgd 0.1, mu 1", {"inner_optimizer": "sgd", "inner_lr": 0.1, "mu": 1.0}),
    ("sgd 1.0, mu 1", {"inner_optimizer": "sgd", "inner_lr": 1.0, "mu": 1.0}),
    ("inner=segmentation, adam 1e-3", {"inner": "segmentation"}),
    ("inner=segmentation, sgd 0.1", {"inner": "segmentation", "inner_optimizer": "sgd",
                                     "inner_lr": 0.1}),
]  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--every", type=int, default=10)
    args = parser.parse_args()
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
    import jax

    from configs import demo
    from fuse4seg_jax import recipe
    from fuse4seg_jax.data import pipeline, sources

    print("| setting | median implicit fraction | at the end | loss_seg at the end | s |")
    print("| --- | --- | --- | --- | --- |")
    for label, overrides in SETTINGS:
        config = demo.get_config()
        config.bilevel.method, config.bilevel.inner_steps = "unrolled", 1
        config.bilevel.update(overrides)
        config.train.num_steps = args.steps
        t0 = time.time()
        train, _ = sources.load(config.data, config.seed)
        batches = pipeline.train_iterator(
            train, batch_size=config.train.batch_size, seed=config.seed, augment_data=True,
            start_batch=0, shuffle_buffer=config.data.shuffle_buffer, process_index=0,
            process_count=1, crop_size=config.data.image_size,
            intensity_scale=config.data.intensity_scale,
            intensity_shift=config.data.intensity_shift,
        )  # fmt: skip
        run = recipe.build(config)
        state = jax.jit(run.init_state)()
        step = jax.jit(run.train_step, donate_argnums=0)
        fractions, loss = [], float("nan")
        for i in range(1, args.steps + 1):
            state, metrics = step(state, next(batches))
            if i % args.every == 0:
                metrics = jax.device_get(metrics)
                fractions.append(float(metrics["implicit_fraction"]))
                loss = float(metrics.get("loss_seg", float("nan")))
        print(
            f"| {label} | {statistics.median(fractions):.3g} | {fractions[-1]:.3g} | "
            f"{loss:.4f} | {time.time() - t0:.0f} |",
            flush=True,
        )
        del state


if __name__ == "__main__":
    main()
