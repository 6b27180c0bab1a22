"""Segment (and fuse) BraTS cases with a trained run: `python -m fuse4seg_jax.predict`.

    python -m fuse4seg_jax.predict --config configs/brats_fuse.py --workdir runs/brats_fuse \\
        --input /data/BraTS2021_Validation --out predictions [--overwrite] [--batch_size 16]

--input is one case folder or a folder of case folders, named either
`<case>_{t1,t1ce,t2,flair}.nii.gz` (BraTS 2018-2021) or `<case>-{t1n,t1c,t2w,t2f}.nii.gz`
(2023+); only the modalities of the run's `data.modalities` are read, no segmentation.
Each case is read and normalised as for training (data/brats.py: read_case); its axial
slices (the third stored axis, as in training) that hold any brain go through the networks
in batches (inference.py), cropped in-plane to a window around the brain of the training
crop's size (`--crop`, default the run's data.image_size, grown in steps of 16 pixels if
the brain is larger; 0 = whole slices), and are put back in place; outside the window and
the brain's slices the outputs are background (label 0, fused 0). The window matches what
the networks were trained on (random crops of data.image_size) and saves their time.
Per case, in `<out>/<case>/`:

    <case>_seg.nii.gz      uint8 labels in the input's convention: 0, 1 necrotic core,
                           2 oedema, enhancing tumour 4 (2021 names) or 3 (2023 names)
    <case>_fused.nii.gz    float32 fused image in [0, 1] (not for feature-level models)
    <case>_preview.png     the slices with the most predicted tumour: sources | fused |
                           segmentation overlay

The volumes have the input's shape, affine and header (that of the first modality,
with the data type, scaling and display range set for the new data), so viewers such
as 3D Slicer and ITK-SNAP overlay them on the scans. Existing outputs are refused unless
--overwrite (--skip_existing skips cases whose outputs all exist and redoes the others,
to resume a stopped run, removing the temporary files it left). Files are written to
temporary files beside their targets and renamed when all of a case's outputs are
complete. Before the first case is written every input file is checked: present, a
readable 3D NIfTI header, as many bytes as the header promises (a truncated download is
caught), shape and affine equal across the case's modalities.
Errors are one line, `error: ...`: status 2 for a bad command line, 1 for bad inputs, a
missing checkpoint or existing outputs.
"""

from fuse4seg_jax import cli

cli.default_cpu_devices()  # before jax is imported (by case_prediction)

from absl import flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from fuse4seg_jax import case_prediction  # noqa: E402
from fuse4seg_jax.data.errors import DataError  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    config_flags.DEFINE_config_file("config", None, "The trained run's config.", lock_config=True)
    flags.DEFINE_string("workdir", None, "The trained run: its latest checkpoint is used.")
    flags.DEFINE_string("input", None, "A BraTS case folder or a folder of case folders.")
    flags.DEFINE_string("out", None, "Output folder (one sub-folder per case).")
    flags.DEFINE_bool("overwrite", False, "Replace existing outputs.")
    flags.DEFINE_bool("skip_existing", False, "Skip cases whose outputs all exist.")
    flags.DEFINE_integer("batch_size", 16, "Slices per network call.")
    flags.DEFINE_integer(
        "crop", None, "In-plane window around the brain (default: the run's "
        "data.image_size, its training crop; 0: whole slices)."
    )  # fmt: skip
    flags.mark_flags_as_required(["config", "workdir", "input", "out"])


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}", cli.EXIT_USAGE)
    logging.set_verbosity(logging.ERROR)  # Orbax logs every restore at INFO/WARNING
    cli.use_compilation_cache()
    try:
        case_prediction.predict(
            FLAGS.config, FLAGS.workdir, FLAGS.input, FLAGS.out, overwrite=FLAGS.overwrite,
            skip_existing=FLAGS.skip_existing, batch_size=FLAGS.batch_size, crop=FLAGS.crop,
        )  # fmt: skip
    except case_prediction.UsageError as e:
        cli.fail(str(e), cli.EXIT_USAGE)
    except (DataError, FileExistsError, FileNotFoundError, ValueError) as e:
        cli.fail(e, 1)
    except OSError as e:  # disk full, no permission, ...: one line naming the file
        cli.fail_os_error(e)


def run(argv=None):
    """Parse flags (one-line errors for unknown --config.* keys) and run main."""
    cli.run(main, define_flags, argv)


if __name__ == "__main__":
    run()
