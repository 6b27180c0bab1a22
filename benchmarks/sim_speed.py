"""How fast the simulator makes cases: one case on one core, and a whole TFDS build.

    python benchmarks/sim_speed.py [--cases 8] [--build-cases 100] [--workers 2]
        [--spacing 2]

1. Simulates --cases cases one after another in this process (the templates read
   first, once, and timed apart) and prints the median seconds per case; numpy and
   scipy run these on one core.
2. Builds the `brats_sim` TFDS dataset (configs/sim.py's protocol at --spacing mm) of
   --build-cases cases in all (80 % train, 10 % validation, 10 % test) with --workers
   processes into a fresh temporary folder, and prints the wall-clock time.
Targets (issue 14): under 3 s per case, under 5 minutes for 100 cases on 2 cores.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--build-cases", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--spacing", type=float, default=2.0)
    args = parser.parse_args()
    from fuse4seg_jax.sim import anatomy, case

    start = time.perf_counter()
    anatomy.load()
    print(f"templates read in {time.perf_counter() - start:.2f} s", flush=True)
    times = []
    for i in range(args.cases):
        start = time.perf_counter()
        case.simulate_case(0, i)
        times.append(time.perf_counter() - start)
    print(f"one case: median {statistics.median(times):.2f} s over {args.cases} "
          f"(min {min(times):.2f}, max {max(times):.2f})", flush=True)  # fmt: skip
    if args.build_cases <= 0:
        return

    from configs import sim
    from fuse4seg_jax.data import tfds_brats_fuse, tfds_brats_sim

    config = sim.get_config()
    n_eval = max(1, args.build_cases // 10)
    config.data.num_train_cases = args.build_cases - 2 * n_eval
    config.data.num_eval_cases = n_eval
    config.data.sim_spacing_mm = args.spacing
    folder = tempfile.mkdtemp(prefix="sim-speed-tfds-")
    config.data.tfds_dir = folder
    try:
        builder = tfds_brats_sim.make_builder(config.data)
        builder.builder_config.workers = args.workers
        start = time.perf_counter()
        builder.download_and_prepare(download_config=tfds_brats_fuse.download_config(None))
        seconds = time.perf_counter() - start
        examples = sum(builder.info.splits[s].num_examples for s in ("train", "validation", "test"))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"TFDS build of {args.build_cases} cases ({examples} slices, {args.spacing:g} mm) "
          f"with {args.workers} workers: {seconds:.0f} s", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
