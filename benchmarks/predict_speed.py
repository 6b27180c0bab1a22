"""Seconds to predict one BraTS-sized case (240 x 240 x 155) with a config's networks.

    python benchmarks/predict_speed.py [--config configs/default.py] [--size 240]
        [--depth 155] [--batch-size 16] [--runs 3] [--devices N]

Times `inference.Predictor` (what `python -m fuse4seg_jax.predict` runs per case) on a
(depth, size, size, M) array of random images, with randomly initialised networks (no
checkpoint, no data: speed does not depend on either). Reports the compile time of the
batch executable separately (no persistent compilation cache), then the median over
`--runs` of the seconds per case (all `depth` slices, batched and padded as predict does;
reading and writing NIfTI files not included) and slices/s, and prints a Markdown row
for benchmarks/RESULTS.md. Uses one CPU device per core unless XLA_FLAGS or --devices
say otherwise, like the predict CLI. A case's time is linear in the number of batches,
ceil(depth / batch size), so a small --depth estimates the full case.
"""

import argparse
import datetime
import math
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/default.py")
    parser.add_argument("--size", type=int, default=240, help="slice height and width")
    parser.add_argument("--depth", type=int, default=155, help="slices per case")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--devices", type=int, default=0, help="CPU devices (0: one per core)")
    args = parser.parse_args()
    if args.devices:
        os.environ["FUSE4SEG_CPU_DEVICES"] = str(args.devices)
    from fuse4seg_jax import cli

    cli.default_cpu_devices()  # before jax starts
    import importlib.util

    import jax
    import numpy as np

    from fuse4seg_jax import inference, steps

    spec = importlib.util.spec_from_file_location("cfg", args.config)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    _, _, outer_tx, inner_opt, _, eval_fn = steps.make_steps(config)
    fusion_model, seg_model = steps.build_models(config)
    state = jax.jit(
        lambda: steps.init_state(config, fusion_model, seg_model, outer_tx, inner_opt)
    )()
    predictor = inference.Predictor(eval_fn, state, batch_size=args.batch_size)
    m = len(config.data.modalities)
    x = np.random.default_rng(0).uniform(size=(args.depth, args.size, args.size, m))
    x = x.astype(np.float32)
    devices = predictor.mesh.devices.size
    kind = config.model.get("kind", "fuse4seg")
    print(
        f"{config.model.fusion} + {config.model.segmentation} ({kind}),"
        f" case {args.size}x{args.size}x{args.depth}, {m} modalities, batch {args.batch_size}"
        f" on {devices} x {jax.devices()[0].platform}",
        flush=True,
    )

    t0 = time.perf_counter()
    predictor.compile(args.size, args.size, m)
    compile_s = time.perf_counter() - t0
    print(f"compile: {compile_s:.1f} s", flush=True)
    times = []
    for i in range(args.runs + 1):  # the first run warms up (allocations, thread pools)
        t0 = time.perf_counter()
        out = predictor.predict(x)
        elapsed = time.perf_counter() - t0
        assert all(v.shape == x.shape[:3] for v in out.values())
        if i:
            times.append(elapsed)
        print(f"run {i}{' (warm-up)' if not i else ''}: {elapsed:.2f} s", flush=True)
    case_s = statistics.median(times)
    batches = math.ceil(args.depth / args.batch_size)
    full = math.ceil(155 / args.batch_size) * case_s / batches
    print(
        f"median {case_s:.2f} s per case, {args.depth / case_s:.1f} slices/s; "
        f"a {args.size}x{args.size}x155 case: about {full:.1f} s"
    )
    print("\n| date | machine | devices | case | batch | networks | compile s | s/case "
          "(median) | slices/s |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print(
        f"| {datetime.date.today()} | {_cpu_name()}, {os.cpu_count()} cores | {devices} | "
        f"{args.size}x{args.size}x{args.depth} | {args.batch_size} | "
        f"{config.model.fusion} + {config.model.segmentation} | {compile_s:.1f} | "
        f"{case_s:.2f} (of {args.runs}) | {args.depth / case_s:.1f} |"
    )


if __name__ == "__main__":
    main()
