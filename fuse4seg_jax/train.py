"""Command line entry point: `python -m fuse4seg_jax.train --config configs/x.py --workdir DIR`.

Only flags and process set-up live here; the work is trainer.train_and_evaluate,
which Colab notebooks and tests call directly. The project's own errors (a bad config
value or file, bad data, a non-finite loss, a full disk or a missing permission) end in
one line `error: ...` naming the key or file; anything else (a bug) keeps its traceback.
Overrides use ml-collections syntax, e.g. `--config.train.num_steps=200
--config.bilevel.method=first_order`; an unknown key stops with a message naming it.
"""

import sys

from fuse4seg_jax import cli, storage

cli.default_cpu_devices()

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
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
    cli.use_compilation_cache()

    from fuse4seg_jax import preemption, trainer  # after jax.distributed and the cache set-up
    from fuse4seg_jax.config_validation import ConfigError
    from fuse4seg_jax.data.errors import DataError

    workdir = FLAGS.workdir
    if storage.exists(workdir) and not storage.isdir(workdir):
        cli.fail(f"--workdir {workdir}: exists and is not a folder", cli.EXIT_USAGE)
    try:
        (work or trainer.train_and_evaluate)(FLAGS.config, workdir)
    except (ConfigError, DataError, trainer.NonFiniteLossError) as e:
        cli.fail(e, 1)
    except OSError as e:  # disk full, no permission, ...: one line naming the file
        cli.fail_os_error(e)
    except preemption.Preempted as e:
        print(e, file=sys.stderr, flush=True)
        raise SystemExit(preemption.EXIT_PREEMPTED) from None


def run(argv=None, work=None):
    """Parse --config/--workdir (one-line errors for unknown keys) and run `work`."""
    cli.run(lambda args: main(args, work), define_flags, argv)


if __name__ == "__main__":
    run()
