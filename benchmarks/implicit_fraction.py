"""How much of each bi-level update is the implicit term, per inner setting (demo networks).

    .venv/bin/python benchmarks/implicit_fraction.py [--steps 60] [--every 10] [--only TEXT]

Trains the demo config with `unrolled` for `--steps` steps under each setting below (or
those whose label contains TEXT; a trailing comma matches a label's end) and prints the
median over the run, and the value at the end, of the method's own `implicit_fraction` =
|hypergradient - F_x| / |hypergradient| (bilevel aux), sampled every `--every` steps. A
coupling "acts" when that fraction is not negligible. Settings: the orientation, the inner
optimiser and its rate, the inner steps K per outer step, and mu (inner = fusion; beta
stays 1 for inner = segmentation). One CPU device; the numbers are the same on any backend
up to float noise.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _setting(inner="fusion", opt="sgd", lr=1.0, k=3, mu=1.0, schedule="constant"):
    label = f"inner={inner}, {opt} {lr:g}, K {k}" + (f", mu {mu:g}" if inner == "fusion" else "")
    label += ", outer schedule" if schedule == "outer" else ""
    keys = {"inner": inner, "inner_optimizer": opt, "inner_lr": lr, "inner_steps": k, "mu": mu}
    return label, keys | {"inner_schedule": schedule}


SETTINGS = [  # (label, {bilevel key: value}); every key explicit, whatever the defaults
    _setting(opt="adam", lr=1e-3, k=1, mu=0.1),  # the defaults before issue 13
    _setting(opt="adam", lr=1e-2, k=1, mu=0.1),
    _setting(opt="adam", lr=1e-3, k=1, mu=1.0),
    _setting(lr=0.1, k=1, mu=0.1),
    _setting(lr=0.1, k=1, mu=1.0),
    _setting(lr=1.0, k=1),
    _setting(lr=1.0, k=2),
    _setting(lr=1.0, k=3),
    _setting(lr=1.0, k=1, schedule="outer"),  # the defaults
    _setting(lr=1.0, k=1, mu=10.0),
    _setting(lr=3.0, k=1, mu=3.0),
    _setting("segmentation", "adam", 1e-3, 1),
    _setting("segmentation", lr=0.1, k=1),
    _setting("segmentation", lr=0.1, k=3),
    _setting("segmentation", lr=1.0, k=3),
    _setting("segmentation", lr=1.0, k=1, schedule="outer"),  # the defaults
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--only", default="", help="only the settings whose label has this")
    args = parser.parse_args()
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
    import jax

    from configs import demo
    from fuse4seg_jax import recipe
    from fuse4seg_jax.data import pipeline, sources

    print("| setting | median implicit fraction | at the end | loss_seg at the end | s |")
    print("| --- | --- | --- | --- | --- |")
    for label, overrides in SETTINGS:
        if args.only not in label + ",":
            continue
        config = demo.get_config()
        config.bilevel.method = "unrolled"
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
