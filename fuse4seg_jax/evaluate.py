"""Evaluate a trained run or a classical fusion on a split: `python -m fuse4seg_jax.evaluate`.

    python -m fuse4seg_jax.evaluate --workdir runs/demo
    python -m fuse4seg_jax.evaluate --config configs/demo.py --workdir runs/demo \\
        --protocol slices --step best
    python -m fuse4seg_jax.evaluate --config configs/harvard.py \\
        --config.data.manual_dir=../shared/data/harvard --classical max --out runs/eval-max

Two protocols (`--protocol`), named in every row (`protocol` column) and table:
- `volume` (the default for a trained run on BraTS-style data, brats_fuse or the phantom):
  every case of the split whole. Each case is read as a volume and normalised as for
  training; every axial slice with brain goes through the networks inside the same brain
  window as `predict` (`data.image_size`, grown to hold the brain); the 3D label volume is
  scored. This is the protocol of BraTS, nnU-Net and MONAI papers: false positives
  anywhere in the brain count.
- `slices`: the split's selected tumour slices (the paper's BraTS-Fuse protocol: at
  most `data.slices_per_case` slices per case, each with at least `data.min_tumour_area`
  tumour voxels, centre-cropped to `data.image_size`; never a healthy slice), scored per
  2D slice and per case with the slices stacked back, with the fusion metrics of each
  fused image. The only protocol for a classical fusion and for Harvard pairs.

Writes to `--out` (default `<workdir>/eval-<split>` for the volume protocol,
`<workdir>/eval-<split>-slices` for the slice protocol), atomically (a temporary folder
renamed when complete; an existing one is kept unless `--overwrite`):

- `metrics.csv`: volume protocol: one row per case with its slice counts and, per region
  WT/TC/ET, voxel-wise Dice, HD95 (mm, from the voxel spacing of the header),
  sensitivity, specificity (BraTS empty-mask conventions, metrics/segmentation.py) and
  the BraTS 2023 lesion-wise Dice and HD95 with the lesion counts (`lw_*`,
  metrics/lesionwise.py). Slice protocol: one row per image (`level` = slice) and, with
  labels, one per case (`level` = case; slices stacked back, the slice spacing taken
  equal to the in-plane spacing), the same voxel-wise metrics, and per image the fusion
  metrics of the fused image against the two sources (metrics/fusion.py,
  `--convention`) on 8-bit grey levels as the published tables use them.
- `summary.md`: mean ± standard deviation of every metric, each table titled with its
  protocol and level.
- figures: `cases.png` (sources | fused | ground truth | prediction for sampled cases;
  the slice with the most tumour), `best_worst.png` (the best and worst cases by mean
  Dice), `dice_boxplot.png` (Dice per region over cases). Fusion-only data (Harvard):
  `pairs.png`, colour fused images for PET/SPECT.

`--step` picks the checkpoint: a step number or `best` (the best by held-out mean Dice
during training); by default the latest.

`--config` is optional with `--workdir`: the run's own config, as the trainer saved it in
`<workdir>/config.json`, is used (any run, including each run of an ablation folder).
Give `--config` to change data keys (`--config.data.manual_dir=...`, another
`data.tfds_dir`); it must then describe the same networks as the run. A classical fusion
has no run, so it needs `--config`.
"""

from fuse4seg_jax import cli

cli.default_cpu_devices()  # before jax is imported (by evaluation)

from absl import flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from fuse4seg_jax import evaluation, storage  # noqa: E402
from fuse4seg_jax import workdir as workdirs  # noqa: E402
from fuse4seg_jax.data import sources  # noqa: E402
from fuse4seg_jax.data.errors import DataError  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    config_flags.DEFINE_config_file(
        "config", None, "The run's config (default: <workdir>/config.json).", lock_config=True
    )
    flags.DEFINE_string("workdir", None, "A training workdir: evaluate its latest checkpoint.")
    flags.DEFINE_string("classical", None, "Evaluate a classical fusion (mean|max|pca|laplacian).")
    flags.DEFINE_enum(
        "split", None, list(sources.SPLITS), "Split (default: the config's data.eval_split)."
    )
    flags.DEFINE_enum(
        "protocol", None, list(evaluation.PROTOCOLS),
        "volume: whole cases; slices: the split's selected slices (default: volume for a "
        "trained run on BraTS-style data, else slices).",
    )  # fmt: skip
    flags.DEFINE_string("step", None, cli.STEP_HELP)
    flags.DEFINE_string("out", None, "Output folder (default <workdir>/eval-<split>[-slices]).")
    flags.DEFINE_enum("convention", "mmif", ["mmif", "standard"], "Fusion-metric convention.")
    flags.DEFINE_integer("num_figure_cases", 4, "Cases in cases.png and per half of best_worst.")
    flags.DEFINE_bool("overwrite", False, "Replace an existing --out.")


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}", cli.EXIT_USAGE)
    logging.set_verbosity(logging.ERROR)
    config = FLAGS.config
    if config is None:
        if FLAGS.workdir is None:
            cli.fail("--config is needed without --workdir (a classical fusion has no run)",
                     cli.EXIT_USAGE)  # fmt: skip
        try:
            config = workdirs.saved_config(FLAGS.workdir)
        except workdirs.ConfigError as e:
            cli.fail(e, 1)
    split = FLAGS.split or config.data.eval_split
    step = cli.checkpoint_step(FLAGS.step)
    protocol = FLAGS.protocol or evaluation.default_protocol(config, FLAGS.classical)
    out = FLAGS.out
    if out is None:
        if FLAGS.workdir is None:
            cli.fail("--out is needed with --classical")
        name = f"eval-{split}" + ("" if protocol == "volume" else "-slices")
        out = storage.join(FLAGS.workdir, name + ("" if step is None else f"-step-{step}"))
    try:
        evaluation.evaluate(
            config, out, workdir=FLAGS.workdir, classical=FLAGS.classical, split=split,
            protocol=protocol, step=step, convention=FLAGS.convention,
            num_figure_cases=FLAGS.num_figure_cases, overwrite=FLAGS.overwrite,
        )  # fmt: skip
    except (DataError, FileExistsError, FileNotFoundError, ValueError) as e:
        cli.fail(e, 1)
    except OSError as e:  # disk full, no permission, ...: one line naming the file
        cli.fail_os_error(e)


def run(argv=None):
    cli.run(main, define_flags, argv)


if __name__ == "__main__":
    run()
