"""Evaluate a trained run or a classical fusion on a split: `python -m fuse4seg_jax.evaluate`.

    python -m fuse4seg_jax.evaluate --config configs/demo.py --workdir runs/demo
    python -m fuse4seg_jax.evaluate --config configs/harvard.py \\
        --config.data.manual_dir=../shared/data/harvard --classical max --out runs/eval-max

Writes to `--out` (default `<workdir>/eval-<split>`), atomically (a temporary
folder renamed when complete; an existing one is kept unless `--overwrite`):

- `metrics.csv`: one row per image (`level` = slice) and, with labels, one per
  case (`level` = case; the case's slices stacked back in slice order). Per
  region WT/TC/ET: Dice, HD95 (mm, from the pixel spacing; the slice spacing
  is taken equal to the in-plane spacing, as BraTS and the phantom are
  isotropic), sensitivity, specificity, with the BraTS empty-mask conventions
  (metrics/segmentation.py). Per image, the fusion metrics of the fused image
  against the two sources (metrics/fusion.py, `--convention`), on 8-bit grey
  levels as the published tables use them: the fused image min-max scaled and
  rounded, the sources rounded.
- `summary.md`: mean and standard deviation of every metric, per 3D case and
  per 2D slice (both protocols, labelled), and of the fusion metrics.
- figures: `cases.png` (sources | fused | ground truth | prediction for sampled
  cases), `best_worst.png` (the best and worst cases by mean Dice),
  `dice_boxplot.png` (Dice per region over cases). Fusion-only data (Harvard):
  `pairs.png`, colour fused images for PET/SPECT.
"""

import os

from fuse4seg_jax import cli

cli.default_cpu_devices()  # before jax is imported (by evaluation)

from absl import flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from fuse4seg_jax import evaluation  # noqa: E402
from fuse4seg_jax.data import sources  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    config_flags.DEFINE_config_file("config", None, "The run's config.", lock_config=True)
    flags.DEFINE_string("workdir", None, "A training workdir: evaluate its latest checkpoint.")
    flags.DEFINE_string("classical", None, "Evaluate a classical fusion (mean|max|pca|laplacian).")
    flags.DEFINE_enum(
        "split", None, list(sources.SPLITS), "Split (default: the config's data.eval_split)."
    )
    flags.DEFINE_string("out", None, "Output folder (default <workdir>/eval-<split>).")
    flags.DEFINE_enum("convention", "mmif", ["mmif", "standard"], "Fusion-metric convention.")
    flags.DEFINE_integer("num_figure_cases", 4, "Cases in cases.png and per half of best_worst.")
    flags.DEFINE_bool("overwrite", False, "Replace an existing --out.")
    flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}", cli.EXIT_USAGE)
    logging.set_verbosity(logging.ERROR)
    split = FLAGS.split or FLAGS.config.data.eval_split
    out = FLAGS.out
    if out is None:
        if FLAGS.workdir is None:
            cli.fail("--out is needed with --classical")
        out = os.path.join(FLAGS.workdir, f"eval-{split}")
    try:
        evaluation.evaluate(
            FLAGS.config, out, workdir=FLAGS.workdir, classical=FLAGS.classical, split=split,
            convention=FLAGS.convention, num_figure_cases=FLAGS.num_figure_cases,
            overwrite=FLAGS.overwrite,
        )  # fmt: skip
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        cli.fail(e, 1)
    except OSError as e:  # disk full, no permission, ...: one line naming the file
        cli.fail_os_error(e)


def run(argv=None):
    cli.run(main, define_flags, argv)


if __name__ == "__main__":
    run()
