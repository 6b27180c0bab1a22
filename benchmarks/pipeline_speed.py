"""Input pipeline throughput next to what the train step consumes, at the reference setting.

    python benchmarks/pipeline_speed.py [--config configs/brats_fuse.py] [--batches 60]
        [--step-steps 5] [--source-size 240]

The pipeline is fed BraTS-sized slices (phantom slices rendered at
--source-size, as BraTS's 240x240) and crops them at random to the config's
image size with the config's augmentation, exactly as in training. It reports
the median images/s over --batches batches (after a warm-up), then times the
config's train step (median of --step-steps steps after compilation) and
prints the ratio: the pipeline must deliver at least 5x what the step consumes.
"""

import argparse
import importlib.util
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/brats_fuse.py")
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--step-steps", type=int, default=5)
    parser.add_argument("--source-size", type=int, default=240)
    args = parser.parse_args()
    import jax
    import numpy as np

    from fuse4seg_jax import (
        recipe,
        sharding,
        train,  # noqa: F401  (one CPU device per core, like the CLI)
    )
    from fuse4seg_jax.data import phantom, pipeline

    spec = importlib.util.spec_from_file_location("cfg", args.config)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    bs, size = config.train.batch_size, config.data.image_size
    examples = phantom.make_dataset(
        0,
        num_cases=24,
        slices_per_case=8,
        image_size=args.source_size,
        modalities=tuple(config.data.modalities),
    )
    it = pipeline.train_iterator(
        examples,
        batch_size=bs,
        seed=0,
        crop_size=size,
        intensity_scale=config.data.intensity_scale,
        intensity_shift=config.data.intensity_shift,
    )
    for _ in range(5):
        next(it)
    times = []
    for _ in range(args.batches):
        t = time.perf_counter()
        batch = next(it)
        times.append(time.perf_counter() - t)
    pipe_rate = bs / statistics.median(times)
    print(
        f"pipeline: {args.source_size}->{size} crops, batch {bs}, "
        f"{len(config.data.modalities)} modalities: median {pipe_rate:.0f} images/s "
        f"(mean {bs * len(times) / sum(times):.0f})",
        flush=True,
    )

    mesh = sharding.make_mesh(config.mesh.num_devices)
    repl, batch_sh = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    run = recipe.build(config)
    state = jax.device_put(run.init_state(), repl)
    step = jax.jit(
        run.train_step, in_shardings=(repl, batch_sh), out_shardings=(repl, repl), donate_argnums=0
    )
    device_batch = sharding.shard_batch({k: np.asarray(v) for k, v in batch.items()}, mesh)
    state, metrics = step(state, device_batch)
    jax.block_until_ready(metrics)
    step_times = []
    for _ in range(args.step_steps):
        t = time.perf_counter()
        state, metrics = step(state, device_batch)
        jax.block_until_ready(metrics)
        step_times.append(time.perf_counter() - t)
    step_rate = bs / statistics.median(step_times)
    print(
        f"train step ({config.bilevel.method}, {config.model.fusion} + "
        f"{config.model.segmentation}, {jax.device_count()} x {jax.devices()[0].platform}): "
        f"median {statistics.median(step_times):.2f} s/step = {step_rate:.1f} images/s"
    )
    print(f"pipeline / step = {pipe_rate / step_rate:.1f}x (target >= 5x)")


if __name__ == "__main__":
    main()
