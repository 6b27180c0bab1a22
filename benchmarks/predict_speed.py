"""Seconds to predict (or evaluate) one BraTS-sized case (240 x 240 x 155) with a config's networks.

    .venv/bin/python benchmarks/predict_speed.py [--config configs/brats_fuse.py]
        [--size 240] [--depth 155] [--batch-size 16] [--crop -1] [--runs 3] [--devices N]
        [--tta] [--score]

Times what `python -m fuse4seg_jax.predict` runs per case (volume_prediction.predict_volume: the
brain window's axial slices batched through the jitted networks and put back in place)
on a phantom brain volume of that size at 1 mm voxels (its brain fills the field of view
about as a BraTS brain does), with randomly initialised networks (no checkpoint: speed
does not depend on the weights). Reports the compile time separately (no persistent
compilation cache), then the median over `--runs` of the seconds per case and slices/s,
and prints a Markdown row for benchmarks/RESULTS.md. --crop -1 (default) uses the
config's data.image_size as predict does; 0 runs whole slices. Reading and writing the
NIfTI files are not included. One CPU device per core unless XLA_FLAGS or --devices say
otherwise, like the predict CLI. --tta: with the four in-plane flips averaged (predict
--tta). --score: what evaluate's volume protocol does per case, the prediction then the
voxel-wise and lesion-wise metrics of the 3D volume against the phantom's labels (the
metrics' seconds are reported apart).
"""

import argparse
import datetime
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
    parser.add_argument("--config", default="configs/brats_fuse.py")
    parser.add_argument("--size", type=int, default=240, help="slice height and width")
    parser.add_argument("--depth", type=int, default=155, help="slices per case")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--crop", type=int, default=-1, help="-1: data.image_size; 0: none")
    parser.add_argument("--devices", type=int, default=0, help="CPU devices (0: one per core)")
    parser.add_argument("--tta", action="store_true", help="average the 4 in-plane flips")
    parser.add_argument("--score", action="store_true", help="add the volume metrics")
    args = parser.parse_args()
    if args.devices:
        os.environ["FUSE4SEG_CPU_DEVICES"] = str(args.devices)
    from fuse4seg_jax import cli

    cli.default_cpu_devices()  # before jax starts
    import importlib.util

    import jax
    import numpy as np

    from fuse4seg_jax import inference, recipe, volume_prediction
    from fuse4seg_jax.data import phantom
    from fuse4seg_jax.metrics import lesionwise
    from fuse4seg_jax.metrics import segmentation as seg_metrics

    spec = importlib.util.spec_from_file_location("cfg", args.config)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    run = recipe.build(config)
    state = jax.jit(run.init_state)()
    keys = inference.PROB_KEYS if args.tta else inference.OUTPUT_KEYS  # tta averages probs
    predictor = inference.Predictor(
        run.eval_step, state, batch_size=args.batch_size, keys=keys,
        seg_mode=config.model.seg_mode,
    )  # fmt: skip
    m = len(config.data.modalities)
    crop = config.data.image_size if args.crop < 0 else args.crop
    case = phantom.make_case(
        0, shape=(args.size, args.size, args.depth), spacing=(1.0, 1.0, 1.0),
        modalities=tuple(config.data.modalities),
    )  # fmt: skip
    x = (case["modalities"] * (case["mask"][..., None] > 0)).astype(np.float32)
    realistic = np.roll(case["label"], 2, axis=0)  # what --score scores (module docstring)
    far = np.argwhere((case["mask"] > 0) & (case["label"] == 0))
    blob = far[len(far) // 7]
    realistic[tuple(slice(int(c) - 5, int(c) + 5) for c in blob)] = 2
    window = volume_prediction.brain_window(x, crop)
    shape = x[window].shape
    devices = predictor.mesh.devices.size
    kind = run.kind
    print(
        f"{config.model.fusion} + {config.model.segmentation} ({kind}),"
        f" case {args.size}x{args.size}x{args.depth}, {m} modalities, batch {args.batch_size}"
        f" on {devices} x {jax.devices()[0].platform}; crop {crop}: the networks see"
        f" {shape[2]} slices of {shape[0]}x{shape[1]}",
        flush=True,
    )

    t0 = time.perf_counter()
    predictor.compile(shape[0], shape[1], m)
    compile_s = time.perf_counter() - t0
    print(f"compile: {compile_s:.1f} s", flush=True)
    times, score_times = [], []
    for i in range(args.runs + 1):  # the first run warms up (allocations, thread pools)
        t0 = time.perf_counter()
        out = volume_prediction.predict_volume(predictor, x, crop, tta=args.tta)
        elapsed = time.perf_counter() - t0
        assert all(v.shape[:3] == x.shape[:3] for v in out.values())
        note = ""
        if args.score:
            t1 = time.perf_counter()
            seg_metrics.region_scores(realistic, case["label"], case["spacing"])
            lesionwise.lesion_scores(realistic, case["label"], case["spacing"])
            scored = time.perf_counter() - t1
            elapsed += scored
            note = f" (metrics {scored:.2f} s)"
            if i:
                score_times.append(scored)
        if i:
            times.append(elapsed)
        print(f"run {i}{' (warm-up)' if not i else ''}: {elapsed:.2f} s{note}", flush=True)
    case_s = statistics.median(times)
    what = ("evaluated (volume protocol)" if args.score else "predicted") + (
        " with --tta" if args.tta else ""
    )
    print(f"median {case_s:.2f} s per case {what}, {args.depth / case_s:.1f} slices/s")
    if score_times:
        print(
            f"of which metrics (voxel-wise + lesion-wise): {statistics.median(score_times):.2f} s"
        )
    print("\n| date | machine | devices | case | crop (networks see) | batch | networks | "
          "compile s | s/case (median) | slices/s |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print(
        f"| {datetime.date.today()} | {_cpu_name()}, {os.cpu_count()} cores | {devices} | "
        f"{args.size}x{args.size}x{args.depth}{' --tta' if args.tta else ''}"
        f"{' --score' if args.score else ''} | {crop} ({shape[2]} x {shape[0]}x{shape[1]}) | "
        f"{args.batch_size} | "
        f"{config.model.fusion} + {config.model.segmentation} | {compile_s:.1f} | "
        f"{case_s:.2f} (of {args.runs}) | {args.depth / case_s:.1f} |"
    )


if __name__ == "__main__":
    main()
