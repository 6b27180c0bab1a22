"""Export a benchmark as plain files: `python -m fuse4seg_jax.export`.

    python -m fuse4seg_jax.export --config configs/brats_fuse.py \\
        --config.data.manual_dir=/data/BraTS2021 --out exports/brats_fuse \\
        (--workdir runs/brats_fuse | --method max)

Writes, for every record of every split of the dataset (BraTS-Fuse or the
phantom), the paired originals, the ground truth and a fused image, so that
other fusion tools can read the benchmark ("paired originals, fused images
and ground truth"):

    <out>/<split>/<case>_<slice>_<modality>.{png,npy}   sources, float32 [0,1] / 8-bit PNG
    <out>/<split>/<case>_<slice>_label.{png,npy}        labels 0..3 (PNG values 0..3 as stored)
    <out>/<split>/<case>_<slice>_fused.{png,npy}        the fused image
    <out>/index.csv                                     one row per record, relative paths
                                                        (and in-plane spacing in mm for BraTS)

The fused image comes from a trained checkpoint (`--workdir`: its latest checkpoint,
or the one `--step` names, a step number or `best`; the config must be the run's) or
from a classical fusion (`--method mean`, `max`, `pca` or `laplacian`; classical.py).
Slices are exported whole (not cropped). The export is written to a temporary folder
beside `--out` and renamed when complete; an existing `--out` is refused
unless `--overwrite`.
"""

import os

from fuse4seg_jax import cli

cli.default_cpu_devices()  # before jax is imported (by benchmark_export)

from absl import flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from fuse4seg_jax import benchmark_export  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    config_flags.DEFINE_config_file(
        "config", None, "The dataset's (and run's) config.", lock_config=True
    )
    flags.DEFINE_string("out", None, "Output folder.")
    flags.DEFINE_string("workdir", None, "A training workdir: fuse with its latest checkpoint.")
    methods = list(benchmark_export.CLASSICAL)
    flags.DEFINE_enum("method", None, methods, "Classical fusion instead of a checkpoint.")
    flags.DEFINE_string("step", None, cli.STEP_HELP)
    flags.DEFINE_bool("overwrite", False, "Replace an existing --out.")
    flags.mark_flags_as_required(["config", "out"])


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}", cli.EXIT_USAGE)
    logging.set_verbosity(logging.ERROR)  # TFDS warns about its own deprecations
    if (FLAGS.workdir is None) == (FLAGS.method is None):
        cli.fail("give exactly one of --workdir (a trained checkpoint) or --method")
    step = cli.checkpoint_step(FLAGS.step)
    if step is not None and FLAGS.workdir is None:
        cli.fail("--step picks a checkpoint of --workdir; --method has none", cli.EXIT_USAGE)
    try:
        if FLAGS.method:
            fuser = benchmark_export.CLASSICAL[FLAGS.method]
        else:
            fuser = benchmark_export.checkpoint_fuser(FLAGS.config, FLAGS.workdir, step=step)
        n = benchmark_export.export(FLAGS.config, FLAGS.out, fuser, overwrite=FLAGS.overwrite)
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        cli.fail(e, 1)
    except OSError as e:  # disk full, no permission, ...: one line naming the file
        cli.fail_os_error(e)
    print(f"wrote {n} records to {os.path.abspath(FLAGS.out)} (index.csv)")


def run(argv=None):
    cli.run(main, define_flags, argv)


if __name__ == "__main__":
    run()
