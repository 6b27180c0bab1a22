"""Where the time of one compiled train step goes, per kind of operation.

    python benchmarks/step_profile.py [--config configs/demo.py]
        [--methods joint,first_order,unrolled] [--steps 5] [--devices 1]
        [--set data.image_size=192] [--top 0]

Compiles the step as the trainer does (`recipe.build`, jit with the batch sharded over the
devices), runs it under `jax.profiler` and sums the duration of every XLA:CPU thunk (one
per fused kernel, copy, collective, ...) over `--steps` profiled steps. Each thunk is
matched to its instruction in the compiled HLO and put in one category:

  conv forward      a convolution on the forward path of a network
  conv input-grad   a convolution under `transpose(...)` (reverse mode) with a small window:
                    the gradient with respect to the input
  conv weight-grad  a convolution whose window is the whole feature map: the gradient with
                    respect to the kernel (XLA writes it as a convolution over the batch)
  dot               matrix products: 1x1 heads, the 2x2 transposed convolutions (einsum) and
                    the separable Gaussian blur
  norm              group/instance normalisation (statistics and scaling, both directions)
  activation        leaky ReLU, both directions
  loss              the losses (fusion and segmentation) and their gradients
  optimiser         the outer optimisers' updates and everything else outside the networks
  data movement     transposes, copies, concatenations, pads, slices
  collective        all-reduce and friends (more than one device)
  other             the rest

Prints the wall time per step (median of the profiled steps' `block_until_ready`), the sum
of thunk time per step (larger than the wall time when thunks run concurrently; the
runtime's own events, such as launching the executable, are not thunks), the share
of each category, and with `--top N` the N most expensive thunks with their op names.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

CATEGORIES = (
    "conv forward",
    "conv input-grad",
    "conv weight-grad",
    "dot",
    "norm",
    "activation",
    "loss",
    "optimiser",
    "data movement",
    "collective",
    "other",
)
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = .*?\s([a-z][\w\-]*)\(")
_COMPUTATION = re.compile(r"^%?([\w.\-]+) .*\{$")
_MOVEMENT = {"transpose", "copy", "concatenate", "pad", "slice", "bitcast", "reverse"}
_NETWORKS = ("FrequencyFusionNet", "UNet", "DualEncoderUNet")


def parse_hlo(text):
    """{instruction: (op, op_name, computation it calls or None, window size)} and
    {computation: [(op, window size, op_name), ...]} from compiled HLO text (window size:
    the largest side of a convolution's window, 0 for other ops)."""
    instructions, computations, current = {}, collections.defaultdict(list), None
    for line in text.splitlines():
        if not line.startswith(" "):
            match = _COMPUTATION.match(line)
            current = match.group(1) if match else current
            continue
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        name, op = match.groups()
        op_name = re.search(r'op_name="([^"]*)"', line)
        op_name = op_name.group(1) if op_name else ""
        calls = re.search(r"calls=%([\w.\-]+)", line)
        window = re.search(r"window=\{size=([0-9x]+)", line)
        window = max(int(s) for s in window.group(1).split("x")) if window else 0
        instructions[name] = (op, op_name, calls.group(1) if calls else None, window)
        computations[current].append((op, window, op_name))
    return instructions, computations


def categorise(name, instructions, computations):
    """The category (CATEGORIES) of the instruction a thunk is named after."""
    if name not in instructions:
        return "other"
    op, op_name, calls, window = instructions[name]
    inner = computations.get(calls, []) if calls else [(op, window, op_name)]
    convs = [(w, n) for o, w, n in inner if o == "convolution"]
    if convs:
        w, n = max(convs)
        if w > 4:
            return "conv weight-grad"
        return "conv input-grad" if "transpose(" in n else "conv forward"
    ops = {o for o, _, _ in inner}
    if "dot" in ops:
        return "dot"
    if ops & {"all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all"}:
        return "collective"
    names = " ".join([op_name] + [n for _, _, n in inner])
    if "Norm" in names:
        return "norm"
    if "relu" in names:  # leaky_relu included
        return "activation"
    if ops <= _MOVEMENT | {"parameter", "constant", "broadcast", "tuple"}:
        return "data movement"
    if any(net in names for net in _NETWORKS):
        return "other"
    if "jvp(" in names or "transpose(" in names:
        return "loss"
    return "optimiser"


def thunk_times(trace_dir, instructions):
    """({instruction: total microseconds}, {instruction: count}) of the trace events in
    trace_dir that name an instruction of the compiled program (its thunks); the runtime's
    own events (launching the executable, buffers, thread-pool waits) are left out."""
    files = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    with gzip.open(files[0]) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    total, count = collections.Counter(), collections.Counter()
    for event in events:
        if event.get("ph") == "X" and event["name"] in instructions:
            total[event["name"]] += event.get("dur", 0)
            count[event["name"]] += 1
    return total, count


def profile(step, state, batch, steps):
    """(wall seconds per step, {category: seconds per step}, [(seconds, name, op_name)])."""
    import jax

    for _ in range(3):
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
    instructions, computations = parse_hlo(step.as_text())
    walls = []
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
        for _ in range(steps):
            t = time.perf_counter()
            state, metrics = step(state, batch)
            jax.block_until_ready(metrics)
            walls.append(time.perf_counter() - t)
        jax.profiler.stop_trace()
        total, _ = thunk_times(trace_dir, instructions)
    per_category = collections.Counter()
    top = []
    for name, us in total.items():
        category = categorise(name, instructions, computations)
        per_category[category] += us / 1e6 / steps
        op_name = instructions[name][1]
        top.append((us / 1e6 / steps, name, category, op_name))
    return statistics.median(walls), per_category, sorted(top, reverse=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.py")
    parser.add_argument("--methods", default="joint,first_order,unrolled")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--devices", type=int, default=1, help="CPU devices (0: one per core)")
    parser.add_argument(
        "--set", action="append", default=[], help="KEY=VALUE config override (repeatable)"
    )
    parser.add_argument("--top", type=int, default=0, help="also list the N costliest thunks")
    args = parser.parse_args()
    if args.devices:
        os.environ["FUSE4SEG_CPU_DEVICES"] = str(args.devices)
    import jax
    from step_speed import compiled_train_step, load_config, train_batch

    from fuse4seg_jax import sharding, train  # noqa: F401  (CPU device count)

    def config_for(method):
        config = load_config(args.config, args.set)
        config.bilevel.method = method
        return config

    base = config_for("joint")
    mesh = sharding.make_mesh(base.mesh.num_devices)
    batch = train_batch(base, mesh)
    print(
        f"{jax.device_count()} x {jax.devices()[0].platform} devices, batch "
        f"{base.train.batch_size}, {base.data.image_size}x{base.data.image_size}, "
        f"{base.model.fusion} + {base.model.segmentation}, {args.steps} profiled steps"
    )
    for method in args.methods.split(","):
        step, state, _ = compiled_train_step(config_for(method), mesh, batch)
        wall, per_category, top = profile(step, state, batch, args.steps)
        busy = sum(per_category.values())
        print(f"\n{method}: wall {wall * 1e3:.1f} ms/step, thunks {busy * 1e3:.1f} ms/step")
        for category in CATEGORIES:
            seconds = per_category.get(category, 0.0)
            print(f"  {category:<17} {seconds * 1e3:8.1f} ms  {100 * seconds / busy:5.1f} %")
        for seconds, name, category, op_name in top[: args.top]:
            print(f"  {seconds * 1e3:7.2f} ms  {category:<17} {name:<28} {op_name[-70:]}")


if __name__ == "__main__":
    main()
