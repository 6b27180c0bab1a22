"""Segment (and fuse) BraTS cases with a trained run: `python -m fuse4seg_jax.predict`.

    python -m fuse4seg_jax.predict --workdir runs/brats_fuse \\
        --input /data/BraTS2021_Validation --out predictions [--config configs/brats_fuse.py]
        [--layout nested|brats] [--tta] [--save_probabilities] [--step N|best]
        [--resample] [--spacing_tolerance 0.1] [--overwrite | --skip_existing]
        [--batch_size 16] [--crop N]

The run is `--workdir`: its networks are rebuilt from the config the trainer saved there
(`<workdir>/config.json`), so --config is optional; a --config given must be the run's
(same networks and modalities), else a one-line error. --step picks the checkpoint: the
latest by default, a step number, or `best` (the checkpoint with the best held-out mean
Dice, which the trainer keeps in `<workdir>/checkpoint_best`).

--input is one case folder or a folder of case folders, named either
`<case>_{t1,t1ce,t2,flair}.nii.gz` (BraTS 2018-2021) or `<case>-{t1n,t1c,t2w,t2f}.nii.gz`
(2023+); only the modalities of the run's `data.modalities` are read, no segmentation.
Each case is read and normalised as for training (data/brats.py: read_case).

Orientation and spacing. The trainer records the voxel geometry its images had in
`<workdir>/geometry.json` (run_geometry.py: the orientation, e.g. RAS for the phantom or
LPS for usual BraTS files, and the voxel size). Each case is brought to that orientation
by axis permutations and flips only (exact, no interpolation), predicted, and brought back,
so the outputs lie voxel for voxel on the input's own grid whatever its orientation. A
case whose in-plane voxel size (in that orientation) differs from the training one by
more than --spacing_tolerance (relative, default 0.1) is refused before anything is
written, naming the file and both spacings; with --resample it is instead resampled
in-plane to the training spacing (linear), predicted, and the outputs resampled back onto
its grid (labels nearest neighbour, fused image and probabilities linear). The spacing
across slices is kept (the networks see 2D axial slices). A run without geometry.json
(older runs) takes it from its config (the phantom's, or the header of the first BraTS
training case); when that is impossible too, cases are used as stored, with a note.

The case's axial slices (the third axis in the training orientation) that hold any brain
go through the networks in batches (inference.py), cropped in-plane to a window around
the brain of the training crop's size (`--crop`, default the run's data.image_size,
grown in steps of 16 pixels if the brain is larger; 0 = whole slices), and are put back
in place; outside the window and the brain's slices the outputs are background (label 0,
fused 0, probability 1 of background). The window matches what the networks were trained
on (random crops of data.image_size) and saves their time. --tta averages the networks
over the four in-plane flips of each slice (none, x, y, both; each output flipped back):
the class probabilities (softmax, or the three region sigmoids of model.seg_mode
"regions") and the fused image are averaged and the labels taken from the mean
probabilities; it costs four network passes.

Outputs, `--layout nested` (default), per case in `<out>/<case>/`:

    <case>_seg.nii.gz      uint8 labels in the input's convention: 0, 1 necrotic core,
                           2 oedema, enhancing tumour 4 (2021 names) or 3 (2023 names)
    <case>_fused.nii.gz    float32 fused image in [0, 1] (not for feature-level models)
    <case>_preview.png     the slices with the most predicted tumour: sources | fused |
                           segmentation overlay, in radiological convention (the patient's
                           right on the image's left, anterior up; R/L/A/P marked) with
                           the overlay's colour legend
    <case>_probabilities.nii.gz   with --save_probabilities: 4D (x, y, z, C) probabilities
                           in [0, 1]: C = 4 classes (background, necrotic core, oedema,
                           enhancing; model.seg_mode "softmax") or 3 regions (WT, TC, ET;
                           "regions"), named in the header description; stored as uint16
                           with scale factor 1/65535 (NIfTI has no float16; readers such as
                           nibabel's get_fdata apply it), the precision float16 would give
                           or better

`--layout brats`: the segmentations as a BraTS submission expects them, flat:
`<out>/<case>.nii.gz` (same content as <case>_seg.nii.gz); everything else goes to
`<out>/extras/` (`<case>_fused.nii.gz`, `<case>_preview.png`,
`<case>_probabilities.nii.gz`), so submit `<out>/*.nii.gz` only.

The volumes have the input's shape, affine and header (that of the first modality,
with the data type, scaling and display range set for the new data), so viewers such
as 3D Slicer and ITK-SNAP overlay them on the scans. Existing outputs are refused unless
--overwrite (--skip_existing skips cases whose outputs all exist and redoes the others,
to resume a stopped run, removing the temporary files it left). Files are written to
temporary files beside their targets and renamed when all of a case's outputs are
complete. Before the first case is written every input file is checked: present, a
readable 3D NIfTI header, as many bytes as the header promises (a truncated download is
caught), shape and affine equal across the case's modalities, and the spacing as above.
Errors are one line, `error: ...`: status 2 for a bad command line, 1 for bad inputs, a
missing checkpoint or config.json, or existing outputs.
"""

from fuse4seg_jax import cli

cli.default_cpu_devices()  # before jax is imported (by case_prediction)

from absl import flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from fuse4seg_jax import case_prediction  # noqa: E402
from fuse4seg_jax.data.errors import DataError  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    config_flags.DEFINE_config_file(
        "config", None, "The trained run's config (default: <workdir>/config.json).",
        lock_config=True,
    )  # fmt: skip
    flags.DEFINE_string("workdir", None, "The trained run.")
    flags.DEFINE_string("input", None, "A BraTS case folder or a folder of case folders.")
    flags.DEFINE_string("out", None, "Output folder (organised as --layout says).")
    flags.DEFINE_bool("overwrite", False, "Replace existing outputs.")
    flags.DEFINE_bool("skip_existing", False, "Skip cases whose outputs all exist.")
    flags.DEFINE_integer("batch_size", 16, "Slices per network call.")
    flags.DEFINE_integer(
        "crop", None, "In-plane window around the brain (default: the run's "
        "data.image_size, its training crop; 0: whole slices)."
    )  # fmt: skip
    flags.DEFINE_enum(
        "layout",
        "nested",
        ["nested", "brats"],
        "Output layout: <out>/<case>/ "
        "files, or BraTS-submission <out>/<case>.nii.gz (rest in <out>/extras/).",
    )
    flags.DEFINE_bool("tta", False, "Average over the four in-plane flips (4x the work).")
    flags.DEFINE_bool("save_probabilities", False, "Also write <case>_probabilities.nii.gz.")
    flags.DEFINE_string("step", None, cli.STEP_HELP)
    flags.DEFINE_bool(
        "resample",
        False,
        "Resample inputs whose in-plane spacing differs from "
        "the training spacing, instead of refusing them.",
    )
    flags.DEFINE_float(
        "spacing_tolerance",
        0.10,
        "Relative in-plane spacing difference accepted without resampling.",
    )
    flags.mark_flags_as_required(["workdir", "input", "out"])


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}", cli.EXIT_USAGE)
    logging.set_verbosity(logging.ERROR)  # Orbax logs every restore at INFO/WARNING
    cli.use_compilation_cache()
    try:
        case_prediction.predict(
            FLAGS.config, FLAGS.workdir, FLAGS.input, FLAGS.out, overwrite=FLAGS.overwrite,
            skip_existing=FLAGS.skip_existing, batch_size=FLAGS.batch_size, crop=FLAGS.crop,
            layout=FLAGS.layout, tta=FLAGS.tta, save_probabilities=FLAGS.save_probabilities,
            step=cli.checkpoint_step(FLAGS.step), resample=FLAGS.resample,
            spacing_tolerance=FLAGS.spacing_tolerance,
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
