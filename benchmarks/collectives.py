"""All-reduces per train step, per hypergradient method, read from the compiled program.

    .venv/bin/python benchmarks/collectives.py [--config configs/tiny.py]

Compiles the data-parallel train step of every method (and the baselines) on
an 8-device `data` mesh and counts the cross-device collectives XLA emitted
(after its all-reduce combining), with the bytes they move. The count is what
bounds scaling once the per-device batch is small: each all-reduce costs a
latency plus 2 (D - 1) / D times its bytes over the interconnect.
Prints a Markdown table (docs/scaling.md).
"""

import argparse
import importlib.util
import os
import re
import sys

os.environ.setdefault(
    "XLA_FLAGS", "--xla_force_host_platform_device_count=8"
)  # before JAX is imported
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from fuse4seg_jax import bilevel, recipe, sharding  # noqa: E402

_OPS = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
_SHAPE = re.compile(r"(f32|bf16|f64|s32|u32|pred)\[([\d,]*)\]")
_BYTES = {"f32": 4, "bf16": 2, "f64": 8, "s32": 4, "u32": 4, "pred": 1}


def _load_config(path):
    spec = importlib.util.spec_from_file_location("cfg", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def count(config):
    mesh = sharding.make_mesh(0)
    run = recipe.build(config)
    train = run.train_step
    state = jax.jit(run.init_state)()
    s = config.data.image_size
    b, m = config.train.batch_size, len(config.data.modalities)
    batch = {
        "modalities": np.zeros((b, s, s, m), np.float32),
        "label": np.zeros((b, s, s), np.int32),
        "mask": np.ones((b, s, s), np.float32),
    }
    repl, batch_sh = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    state = jax.device_put(state, repl)
    batch = sharding.shard_batch(batch, mesh)
    text = (
        jax.jit(train, in_shardings=(repl, batch_sh), out_shardings=(repl, repl))
        .lower(state, batch)
        .compile()
        .as_text()
    )
    ops, total = 0, 0
    for line in text.splitlines():
        op = next((o for o in _OPS if f" {o}(" in line or f" {o}-start(" in line), None)
        if op is None or " = " not in line:
            continue
        ops += 1
        shapes = line.split(" = ", 1)[1].split(f" {op}", 1)[0]  # the result shape(s)
        for dtype, dims in _SHAPE.findall(shapes):
            total += _BYTES[dtype] * int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
    return ops, total


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/tiny.py")
    parser.add_argument("--inner_steps", type=int, default=1)
    args = parser.parse_args()
    print(f"{jax.device_count()} devices; config {args.config}, inner_steps {args.inner_steps}")
    print("| method | collectives per step | MiB moved per step |")
    print("| --- | --- | --- |")
    for method in bilevel.METHODS:
        config = _load_config(args.config)
        config.bilevel.method = method
        config.bilevel.inner_steps = args.inner_steps
        ops, total = count(config)
        print(f"| {method} | {ops} | {total / 2**20:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
