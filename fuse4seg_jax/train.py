"""Command line entry point: `python -m fuse4seg_jax.train --config configs/x.py --workdir DIR`.

Only flags and process set-up live here; the work is trainer.train_and_evaluate,
which Colab notebooks and tests call directly. Overrides use ml-collections
syntax, e.g. `--config.train.num_steps=200 --config.bilevel.method=first_order`;
an unknown key stops with a message naming it.
"""

import os
import sys


def _default_cpu_devices():
    """One XLA CPU device per core unless the user chose: XLA:CPU leaves cores idle
    within one device (STACK.md). Only affects the CPU platform."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        count = int(os.environ.get("FUSE4SEG_CPU_DEVICES", os.cpu_count() or 1))
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


_default_cpu_devices()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # silences TensorFlow's start-up notice

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and figures go.")
flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() (multi-host; the cluster's "
    "environment — TPU VM, SLURM, Open MPI — or the three flags below say who is who)."
)  # fmt: skip
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (--distributed).")
flags.DEFINE_integer("num_processes", None, "Number of processes (--distributed).")
flags.DEFINE_integer("process_id", None, "This process's index (--distributed).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv, work=None):
    """Process set-up, then `work(config, workdir)` (default: train_and_evaluate)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # Orbax and JAX log every checkpoint at INFO
    if FLAGS.distributed:
        # CPU processes need a collectives backend (gloo); accelerators bring their own.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=FLAGS.coordinator_address,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
        )
    cache = os.path.expanduser(os.environ.get("FUSE4SEG_JAX_CACHE", "~/.cache/fuse4seg_jax/xla"))
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)

    from fuse4seg_jax import preemption, trainer  # after jax.distributed and the cache set-up
    from fuse4seg_jax.config_validation import ConfigError

    try:
        (work or trainer.train_and_evaluate)(FLAGS.config, FLAGS.workdir)
    except (ConfigError, trainer.NonFiniteLossError) as e:
        sys.exit(f"error: {e}")
    except preemption.Preempted as e:
        print(e, file=sys.stderr, flush=True)
        sys.exit(preemption.EXIT_PREEMPTED)


def run(argv=None, work=None):
    """Parse --config/--workdir (one-line errors for unknown keys) and run `work`."""
    argv = list(sys.argv if argv is None else argv)
    try:
        app.run(lambda args: main(args, work), argv=argv)
    except (KeyError, AttributeError) as e:
        # ml-collections rejects unknown override keys while parsing flags, with a
        # multi-line traceback; name the offending flag in one line instead.
        overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
        hint = " ".join(str(e.args[0] if e.args else e).split())
        if not overrides:
            raise
        sys.exit(f"error: unknown config key in {' '.join(overrides)}: {hint}")


if __name__ == "__main__":
    run()
