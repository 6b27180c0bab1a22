"""Score any tool's BraTS segmentations against ground truth: `python -m fuse4seg_jax.score`.

    python -m fuse4seg_jax.score --pred predictions --truth /data/BraTS2021_Training \\
        [--out scores] [--overwrite] [--labels auto|2021|2023] [--workers N]

Reads, matched by case id (every truth case needs a prediction and every prediction a
truth case):
- `--truth`: a folder of BraTS case folders, `<case>/<case>_seg.nii.gz` (2021 naming) or
  `<case>/<case>-seg.nii.gz` (2023 naming), or a flat folder of `<case>_seg.nii.gz`,
  `<case>-seg.nii.gz` or `<case>.nii.gz` files (`.nii` is accepted everywhere);
- `--pred`: flat `<case>.nii.gz` files (the BraTS submission layout), `<case>_seg.nii.gz` /
  `<case>-seg.nii.gz` files, or `<case>/<case>_seg.nii.gz` folders (`fuse4seg_jax.predict`'s
  output). Other files in the folder are ignored.

Labels: BraTS 2021 stores enhancing tumour as 4, BraTS 2023 as 3 (0 background, 1
necrotic core, 2 oedema in both). The truth's convention comes from its naming (from its
values for `<case>.nii.gz`), a prediction's from its values (a 4: 2021, a 3: 2023, both:
refused); `--labels 2021|2023` imposes one on every file. Labels are converted to 0..3
(ET = 3) and scored per region WT = {1, 2, 3}, TC = {1, 3}, ET = {3}.

Before any voxel is read every pair is checked: both headers readable and 3D, equal
shapes, equal affines (within 0.001 mm). Cases are then scored in parallel (`--workers`,
default one per CPU), with one progress line per case.

Writes `--out` (default `score-<pred folder name>` beside the predictions folder),
atomically (a temporary folder renamed when complete; an existing one is refused unless
`--overwrite`):
- `metrics.csv`: one row per case: voxel-wise Dice, HD95 (mm, from the truth header's
  voxel spacing), sensitivity and specificity per region (`dice_wt`, ..., `spec_et`;
  fuse4seg_jax/metrics/segmentation.py), the BraTS 2023 lesion-wise Dice and HD95
  (`lw_dice_wt`, ..., `lw_hd95_et`) and lesion counts (`lw_tp_*`, `lw_fn_*`, `lw_fp_*`;
  fuse4seg_jax/metrics/lesionwise.py), the label conventions found, the spacing, the
  seconds taken and both file paths;
- `summary.md`: the inputs and label conventions, and mean ± sd over cases of each metric
  in two tables, "Per 3D case, voxel-wise" and "Lesion-wise (BraTS 2023)";
- `dice_boxplot.png`: voxel-wise and lesion-wise Dice per region over cases.

Errors are one line, `error: ...`, exit status 1: a truth case without a prediction, a
prediction without a truth case, different shapes or affines, unknown label values, an
unreadable file, an existing `--out` without `--overwrite`; status 2: a missing
`--pred`/`--truth` or a stray argument. Nothing is written then.
"""

from absl import flags

from fuse4seg_jax import cli, scoring

FLAGS = flags.FLAGS


def define_flags():
    """The command's flags; again in one process (tests), the old values are reset."""
    if "pred" in FLAGS:
        FLAGS.unparse_flags()
        return
    flags.DEFINE_string("pred", None, "Folder of predicted segmentations.")
    flags.DEFINE_string("truth", None, "Folder of ground-truth segmentations (or case folders).")
    flags.DEFINE_string("out", None, "Output folder (default score-<pred name> beside --pred).")
    flags.DEFINE_bool("overwrite", False, "Replace an existing --out.")
    flags.DEFINE_enum("labels", "auto", list(scoring.CONVENTIONS), "Label convention of files.")
    flags.DEFINE_integer("workers", None, "Processes (default: one per CPU).")


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}", cli.EXIT_USAGE)
    for name in ("pred", "truth"):
        if FLAGS[name].value is None:
            cli.fail(f"--{name} is required: the folder of {name} segmentations", cli.EXIT_USAGE)
    try:
        scoring.score(
            FLAGS.pred, FLAGS.truth, FLAGS.out, overwrite=FLAGS.overwrite, labels=FLAGS.labels,
            workers=FLAGS.workers, log=lambda line: print(line, flush=True),
        )  # fmt: skip
    except ValueError as e:  # ScoreError, DataError: bad inputs, one line
        cli.fail(e, 1)
    except OSError as e:  # disk full, no permission, ...: one line naming the file
        cli.fail_os_error(e)


def run(argv=None):
    cli.run(main, define_flags, argv)


if __name__ == "__main__":
    run()
