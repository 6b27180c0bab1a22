"""Steps/s and images/s of the train step per bi-level method at the demo size.

    python benchmarks/step_speed.py [--config configs/demo.py]
        [--methods joint,first_order,unrolled]
        [--steps 20] [--devices N]

Prints one line per method: median step time over `--steps` timed steps (after
compilation), steps/s, images/s, the compiled step's memory (XLA's estimate per
device: arguments + outputs + temporaries) and the ratio to the `joint` step.
Method options (cg_steps, neumann_steps, ...) are the config's defaults. Uses one
CPU device per core unless XLA_FLAGS or --devices say otherwise, like train.py.

Then, per method, the achieved FLOP/s: the compiled step's floating-point operations
(XLA's cost analysis, per device, times the devices) over its median time, against
  - the matrix-multiply peak measured in the same run (one large jitted matmul in the
    step's compute dtype: float32, or bfloat16 with --set model.compute_dtype=...; on CPU
    the whole machine, since fake CPU devices share its cores; on GPU/TPU one device,
    times the devices), and
  - the data-sheet peak of known accelerators (PEAK_TFLOPS, dense, per device),
so the first run on a GPU or TPU gives a line comparable with the CPU's. Config keys can
be overridden as `--set model.compute_dtype=bfloat16` (repeatable).
"""

import argparse
import ast
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Data-sheet dense peaks per JAX device in TFLOP/s, (float32, bfloat16), matched as a
# substring of `device_kind` (first match wins). TPU v2/v3 devices are single cores, half
# a chip; later TPUs show one device per chip. GPU float32 is without TF32.
PEAK_TFLOPS = (
    ("TPU v2", (None, 22.5)),
    ("TPU v3", (None, 61.5)),
    ("TPU v4", (None, 275.0)),
    ("TPU v5 lite", (None, 197.0)),
    ("TPU v5", (None, 459.0)),
    ("TPU v6 lite", (None, 918.0)),
    ("T4", (8.1, 65.0)),
    ("L4", (30.3, 121.0)),
    ("A100", (19.5, 312.0)),
    ("H100", (67.0, 989.0)),
)


def datasheet_peak(device_kind, dtype_name):
    """The data-sheet peak (FLOP/s per device) of a known accelerator, or None."""
    for name, (f32, bf16) in PEAK_TFLOPS:
        if name in device_kind:
            peak = bf16 if dtype_name == "bfloat16" else f32
            return peak * 1e12 if peak else None
    return None


def matmul_peak(dtype_name, size=None, repeats=10):
    """FLOP/s of one large jitted square matmul (median of `repeats`) on the first device."""
    import jax
    import jax.numpy as jnp

    platform = jax.devices()[0].platform
    n = size or (2048 if platform == "cpu" else 8192)
    a = jax.device_put(jnp.ones((n, n), dtype_name), jax.devices()[0])
    matmul = jax.jit(lambda a, b: a @ b)
    jax.block_until_ready(matmul(a, a))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(matmul(a, a))
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def step_flops(compiled):
    """Floating-point operations of one call of a compiled step, per device (XLA's count)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):  # older jax: one dict per program
        cost = cost[0]
    return float(cost.get("flops", 0.0)) if cost else 0.0


def load_config(path, overrides=()):
    """get_config() of the config file at `path`, with KEY=VALUE overrides applied."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cfg", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for item in overrides:
        key, value = item.split("=", 1)
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass  # a bare string
        config.update_from_flattened_dict({key: value})
    return config


def train_batch(config, mesh):
    """One global training batch of the config's data (its first cases), sharded as the
    trainer shards it."""
    import numpy as np

    from fuse4seg_jax import sharding
    from fuse4seg_jax.data import sources

    data_config = config.data.copy_and_resolve_references()
    data_config.num_train_cases, data_config.num_eval_cases = 4, 1
    examples, _ = sources.load(data_config, 0)
    idx = np.arange(config.train.batch_size) % len(examples["label"])
    return sharding.shard_batch(
        {k: examples[k][idx] for k in ("modalities", "label", "mask")}, mesh
    )


def compiled_train_step(config, mesh, batch):
    """(the trainer's train step for `config` compiled for `batch`, its initial state,
    seconds spent lowering and compiling)."""
    import jax

    from fuse4seg_jax import recipe, sharding

    repl, batch_sh = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    run = recipe.build(config)
    state = jax.device_put(run.init_state(), repl)
    step = jax.jit(
        run.train_step,
        in_shardings=(repl, batch_sh),
        out_shardings=(repl, repl),
        donate_argnums=0,
    )
    t = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    return compiled, state, time.perf_counter() - t


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
    parser.add_argument(
        "--set", action="append", default=[], help="KEY=VALUE config override (repeatable)"
    )
    args = parser.parse_args()
    if args.devices:
        os.environ["FUSE4SEG_CPU_DEVICES"] = str(args.devices)
    import jax

    from fuse4seg_jax import (
        sharding,
        train,  # noqa: F401  (sets the CPU device count before jax starts)
    )

    def get_config():
        return load_config(args.config, args.set)

    base = get_config()
    mesh = sharding.make_mesh(base.mesh.num_devices)
    batch = train_batch(base, mesh)
    bs = base.train.batch_size
    print(
        f"{jax.device_count()} x {jax.devices()[0].platform} devices, batch {bs}, "
        f"{base.data.image_size}x{base.data.image_size}, fusion {base.model.fusion}, "
        f"segmentation {base.model.segmentation}, inner={args.inner}"
    )
    joint_time = None
    dtype_name = base.model.compute_dtype
    peak = matmul_peak(dtype_name)
    if jax.devices()[0].platform != "cpu":
        peak *= jax.device_count()  # fake CPU devices share the machine's cores
    sheet = datasheet_peak(jax.devices()[0].device_kind, dtype_name)
    sheet_text = f", data sheet {sheet * jax.device_count() / 1e12:.1f} TFLOP/s" if sheet else ""
    print(f"{dtype_name} matmul peak measured {peak / 1e9:.1f} GFLOP/s{sheet_text}", flush=True)
    achieved = []
    for method in args.methods.split(","):
        config = get_config()
        config.bilevel.method = method
        config.bilevel.inner = args.inner
        if args.inner_steps:
            config.bilevel.inner_steps = args.inner_steps
        step, state, compile_s = compiled_train_step(config, mesh, batch)
        mem = step.memory_analysis()
        mem_mib = (
            mem.argument_size_in_bytes
            + mem.output_size_in_bytes
            + mem.temp_size_in_bytes
            - mem.alias_size_in_bytes
        ) / 2**20
        t = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        compile_s += time.perf_counter() - t
        times = []
        for _ in range(args.steps):
            t = time.perf_counter()
            state, metrics = step(state, batch)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t)
        med = statistics.median(times)
        joint_time = med if method == "joint" else joint_time
        flops = step_flops(step) * jax.device_count()
        achieved.append((method, flops, flops / med))
        ratio = f"{med / joint_time:.2f}x joint" if joint_time else ""
        print(
            f"{method:>12}: median {med * 1e3:7.1f} ms/step  {1 / med:6.2f} steps/s  "
            f"{bs / med:7.1f} images/s  memory {mem_mib:6.1f} MiB  "
            f"compile+first {compile_s:5.1f}s  "
            f"{ratio}",
            flush=True,
        )
    for method, flops, rate in achieved:
        sheet_share = (
            f", {100 * rate / (sheet * jax.device_count()):.1f} % of the data sheet"
            if sheet
            else ""
        )
        print(
            f"{method:>12}: {flops / 1e9:8.2f} GFLOP/step  achieved {rate / 1e9:7.1f} GFLOP/s  "
            f"{100 * rate / peak:5.1f} % of the measured matmul peak{sheet_share}"
        )


if __name__ == "__main__":
    main()
