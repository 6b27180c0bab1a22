"""Steps/s and images/s of the train step per bi-level method at the demo size.

    python benchmarks/step_speed.py [--config configs/demo.py]
        [--methods joint,first_order,unrolled]
        [--steps 20] [--devices N]

Prints one line per method: median step time over `--steps` timed steps (after
compilation), steps/s, images/s, the compiled step's memory (XLA's estimate per
device: arguments + outputs + temporaries) and the ratio to the `joint` step.
Method options (cg_steps, neumann_steps, ...) are the config's defaults. Uses one
CPU device per core unless XLA_FLAGS or --devices say otherwise, like train.py.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.py")
    parser.add_argument(
        "--methods",
        default="joint,first_order,unrolled,darts,implicit_cg,implicit_neumann,bdl",
    )
    parser.add_argument("--inner", default="fusion")
    parser.add_argument("--inner-steps", type=int, default=0, help="0: the config's")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--devices", type=int, default=0, help="CPU devices (0: one per core)")
    args = parser.parse_args()
    if args.devices:
        os.environ["FUSE4SEG_CPU_DEVICES"] = str(args.devices)
    import importlib.util

    import jax
    import numpy as np

    from fuse4seg_jax import (
        recipe,
        sharding,
        train,  # noqa: F401  (sets the CPU device count before jax starts)
    )
    from fuse4seg_jax.data import sources

    spec = importlib.util.spec_from_file_location("cfg", args.config)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    base = module.get_config()
    mesh = sharding.make_mesh(base.mesh.num_devices)
    repl, batch_sh = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    data_config = base.data
    data_config.num_train_cases, data_config.num_eval_cases = 4, 1
    examples, _ = sources.load(data_config, 0)
    bs = base.train.batch_size
    idx = np.arange(bs) % len(examples["label"])
    batch = sharding.shard_batch(
        {k: examples[k][idx] for k in ("modalities", "label", "mask")}, mesh
    )
    print(
        f"{jax.device_count()} x {jax.devices()[0].platform} devices, batch {bs}, "
        f"{base.data.image_size}x{base.data.image_size}, fusion {base.model.fusion}, "
        f"segmentation {base.model.segmentation}, inner={args.inner}"
    )
    joint_time = None
    for method in args.methods.split(","):
        config = module.get_config()
        config.bilevel.method = method
        config.bilevel.inner = args.inner
        if args.inner_steps:
            config.bilevel.inner_steps = args.inner_steps
        run = recipe.build(config)
        state = jax.device_put(run.init_state(), repl)
        step = jax.jit(
            run.train_step,
            in_shardings=(repl, batch_sh),
            out_shardings=(repl, repl),
            donate_argnums=0,
        )
        t = time.perf_counter()
        step = step.lower(state, batch).compile()
        mem = step.memory_analysis()
        mem_mib = (
            mem.argument_size_in_bytes
            + mem.output_size_in_bytes
            + mem.temp_size_in_bytes
            - mem.alias_size_in_bytes
        ) / 2**20
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        compile_s = time.perf_counter() - t
        times = []
        for _ in range(args.steps):
            t = time.perf_counter()
            state, metrics = step(state, batch)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t)
        med = statistics.median(times)
        joint_time = med if method == "joint" else joint_time
        ratio = f"{med / joint_time:.2f}x joint" if joint_time else ""
        print(
            f"{method:>12}: median {med * 1e3:7.1f} ms/step  {1 / med:6.2f} steps/s  "
            f"{bs / med:7.1f} images/s  memory {mem_mib:6.1f} MiB  "
            f"compile+first {compile_s:5.1f}s  "
            f"{ratio}",
            flush=True,
        )


if __name__ == "__main__":
    main()
