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
--overwrite (--skip_existing skips cases whose outputs all exist, to resume a stopped
run). Files are written to temporary files beside their targets and renamed when all of
a case's outputs are complete. Missing files of any case are found before any work.
Errors are one line, `error: ...`: status 2 for a bad command line, 1 for bad inputs, a
missing checkpoint or existing outputs.
"""

import os
import pathlib
import time

import numpy as np
from absl import flags, logging
from ml_collections import config_flags

from fuse4seg_jax import cli
from fuse4seg_jax.data import brats
from fuse4seg_jax.data.errors import DataError

PREVIEW_SLICES = 3
FLAGS = flags.FLAGS


def _define_flags():
    """The CLI's flags, defined only when run as a command: other CLIs (export, evaluate)
    define --config too, and tests import them into one process."""
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


class UsageError(ValueError):
    """A bad command line or config (exit status 2)."""


def find_case_dirs(input_path) -> list[pathlib.Path]:
    """[input_path] if it is a case folder, else its case folders (brats.find_cases)."""
    path = pathlib.Path(input_path)
    if not path.is_dir():
        raise DataError(path, "input folder does not exist or is not a folder")
    try:
        brats.detect_convention(path)
        return [path]
    except DataError:
        return brats.find_cases(path)


def check_case_files(case_dir, modalities) -> str:
    """The case's naming convention; DataError naming the first missing modality file (as
    read_case would, but without reading anything)."""
    convention = brats.detect_convention(case_dir)
    for name in modalities:
        options = [case_dir / brats.file_name(case_dir.name, convention, name, ext)
                   for ext in brats.EXTENSIONS]  # fmt: skip
        if not any(p.is_file() for p in options):
            raise DataError(options[0], f"missing {name} modality file (BraTS {convention} naming)")
    return convention


def output_paths(out, case_id: str, keys) -> dict:
    """{"seg" | "fused" | "preview": path} of one case, for the predictor's output keys."""
    folder = pathlib.Path(out) / case_id
    paths = {"seg": folder / f"{case_id}_seg.nii.gz"} if "pred" in keys else {}
    if "fused" in keys:
        paths["fused"] = folder / f"{case_id}_fused.nii.gz"
    paths["preview"] = folder / f"{case_id}_preview.png"
    return paths


def _to_tmp(path, write):
    """write(tmp) into a temporary file beside `path` (removed if writing fails); returns it."""
    from fuse4seg_jax import report

    tmp = report.atomic_path(path)
    try:
        write(tmp)
    except BaseException:
        os.remove(tmp)
        raise
    return tmp


def _nifti_tmp(path, data, source_path, dtype, display_range, description, intent=None):
    """`data` as a NIfTI file with the source file's affine and header, written to a
    temporary file beside `path`; returns the temporary file's path."""
    import gzip

    import nibabel as nib

    source = nib.load(str(source_path))
    header = source.header.copy()
    header.set_data_dtype(dtype)
    image = type(source)(np.asarray(data, dtype), source.affine, header)
    image.header.set_slope_inter(1.0, 0.0)  # the source may have stored scaled integers
    image.header["cal_min"], image.header["cal_max"] = display_range
    image.header["descrip"] = description.encode()[:79]
    if intent is not None:
        image.header.set_intent(intent)
    data = gzip.compress(image.to_bytes(), compresslevel=1, mtime=0)
    return _to_tmp(path, lambda tmp: pathlib.Path(tmp).write_bytes(data))


def _preview_tmp(path, modalities, names, fused, pred):
    """Preview PNG (module docstring) to a temporary file beside `path`; returns it.
    modalities (H, W, D, M) in [0, 1]; fused (H, W, D) or None; pred (H, W, D) 0..3 or None."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fuse4seg_jax import report

    brain = (modalities.max(axis=-1) > 0).sum(axis=(0, 1))
    tumour = brain * 0 if pred is None else (pred > 0).sum(axis=(0, 1))
    order = np.lexsort((-brain, -tumour))  # most tumour first, then most brain
    zs = sorted(order[: min(PREVIEW_SLICES, len(order))].tolist())
    base = fused if fused is not None else modalities[..., 0]
    cols = [n.upper() for n in names] + (["fused"] if fused is not None else [])
    cols += ["segmentation"] if pred is not None else []
    fig, axes = plt.subplots(len(zs), len(cols), figsize=(2.2 * len(cols), 2.3 * len(zs)),
                             squeeze=False)  # fmt: skip
    for i, z in enumerate(zs):
        images = [modalities[..., z, j] for j in range(len(names))]
        images += [fused[..., z]] if fused is not None else []
        images += [base[..., z]] if pred is not None else []
        for j, image in enumerate(images):
            ax = axes[i, j]  # stored (x, y) shown with x across and y up
            ax.imshow(image.T, cmap="gray", vmin=0, vmax=1, origin="lower", interpolation="nearest")
            if pred is not None and j == len(images) - 1:
                overlay = report.LABEL_COLOURS[pred[..., z].T]
                ax.imshow(overlay, origin="lower", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(cols[j], fontsize=10)
        axes[i, 0].set_ylabel(f"slice {z}", fontsize=9)
    fig.tight_layout()
    try:
        return _to_tmp(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)


def brain_window(modalities, crop: int, multiple: int = 16):
    """The part of a case the networks see: (x slice, y slice, z slice) of the stored axes.

    modalities: (H, W, D, M), background exactly 0 (brats.normalise). z: the axial slices
    holding any brain voxel. In-plane: a window of at least crop x crop pixels, each side
    grown to a multiple of `multiple` when the brain's bounding box (over all slices) is
    larger, never beyond the image, centred on the box and shifted to stay inside the
    image, so it always holds every brain voxel. crop 0: the whole slices (no window).
    None when the case has no brain voxel at all.
    """
    h, w, d, _ = modalities.shape
    if crop <= 0:
        return slice(0, h), slice(0, w), slice(0, d)
    brain = modalities.max(axis=-1) > 0
    zs = np.flatnonzero(brain.any(axis=(0, 1)))
    if not zs.size:
        return None
    window = []
    for axis, size in ((0, h), (1, w)):
        on = np.flatnonzero(brain.any(axis=tuple({0, 1, 2} - {axis})))
        lo, hi = int(on[0]), int(on[-1]) + 1
        side = min(size, max(crop, -(-(hi - lo) // multiple) * multiple))
        start = min(max((lo + hi - side) // 2, 0), size - side)
        window.append(slice(start, start + side))
    return window[0], window[1], slice(int(zs[0]), int(zs[-1]) + 1)


def _predict_volume(predictor, volume, crop: int) -> dict:
    """{"pred": (H, W, D) int32, "fused": (H, W, D) float32} (the predictor's keys) for a
    (H, W, D, M) case: the networks run on the brain window's axial slices, zeros (label
    background, black) elsewhere."""
    h, w, d, m = volume.shape
    keys = predictor.output_keys(m)
    out = {k: np.zeros((h, w, d), np.int32 if k == "pred" else np.float32) for k in keys}
    window = brain_window(volume, crop)
    if window is None:
        return out
    slices = np.moveaxis(volume[window], 2, 0)  # (D', H', W', M): axial slices as a batch
    for k, v in predictor.predict(slices).items():
        out[k][window] = np.moveaxis(v, 0, 2)
    return out


def predict_case(predictor, case_dir, out, modalities, crop: int = 0) -> tuple:
    """Reads, predicts and writes one case (module docstring); returns the volume shape."""
    case = brats.read_case(case_dir, modalities, with_label=False)
    outputs = _predict_volume(predictor, case.modalities, crop)
    paths = output_paths(out, case.case_id, outputs)
    source = case.paths[modalities[0]]
    pred = outputs.get("pred")
    folder = paths["preview"].parent
    folder_existed, tmps, done = folder.exists(), {}, False
    try:
        if pred is not None:
            et = brats.LABEL_VALUES[case.convention][3]  # 4 (2021 names) or 3 (2023 names)
            seg = np.where(pred == 3, et, pred).astype(np.uint8)
            tmps["seg"] = _nifti_tmp(paths["seg"], seg, source, np.uint8, (0, et),
                                     "fuse4seg_jax segmentation", intent="label")  # fmt: skip
        if "fused" in outputs:
            tmps["fused"] = _nifti_tmp(paths["fused"], outputs["fused"], source, np.float32,
                                       (0, 1), "fuse4seg_jax fused image")  # fmt: skip
        tmps["preview"] = _preview_tmp(paths["preview"], case.modalities, modalities,
                                       outputs.get("fused"), pred)  # fmt: skip
        for key, tmp in tmps.items():
            os.replace(tmp, paths[key])
        done = True
    finally:
        if not done:  # leave nothing of this case behind
            for tmp in tmps.values():
                if os.path.exists(tmp):
                    os.remove(tmp)
            if not folder_existed and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
    return case.modalities.shape[:3]


def predict(config, workdir, input_path, out, *, overwrite=False, skip_existing=False,
            batch_size=16, crop=None, log=print) -> int:  # fmt: skip
    """Predicts every case of `input_path` into `out` (module docstring); returns the number
    of cases written. crop: the in-plane window (brain_window; None: data.image_size, the
    training crop; 0: whole slices). Raises DataError (bad inputs), FileExistsError
    (outputs exist), FileNotFoundError (no checkpoint), UsageError / ValueError (bad
    arguments or config)."""
    from fuse4seg_jax import inference

    if batch_size < 1:
        raise UsageError(f"--batch_size={batch_size} must be >= 1")
    crop = int(config.data.image_size if crop is None else crop)
    if crop < 0:
        raise UsageError(f"--crop={crop} must be >= 0 (0: whole slices)")
    if overwrite and skip_existing:
        raise UsageError("give at most one of --overwrite and --skip_existing")
    modalities = tuple(config.data.modalities)
    bad = [m for m in modalities if m not in brats.MODALITIES]
    if bad:
        raise UsageError(f"data.modalities has {bad[0]!r}; BraTS has {brats.MODALITIES}")
    cases = find_case_dirs(input_path)
    for case_dir in cases:  # missing files stop the run before anything is written
        check_case_files(case_dir, modalities)
    t_load = time.time()
    predictor = inference.load_trained(config, workdir, batch_size=batch_size)
    keys = predictor.output_keys(len(modalities))
    todo = []
    for case_dir in cases:
        existing = [p for p in output_paths(out, case_dir.name, keys).values() if p.exists()]
        if skip_existing and len(existing) == len(output_paths(out, case_dir.name, keys)):
            continue
        if existing and not overwrite:
            raise FileExistsError(f"{existing[0]} exists: pass --overwrite to replace it")
        todo.append(case_dir)
    what = " and ".join({"pred": "segmentation", "fused": "fused image"}[k] for k in keys)
    log(f"checkpoint step {predictor.step} of {os.path.abspath(workdir)} ({what}; "
        f"{time.time() - t_load:.1f} s); {len(todo)} of {len(cases)} cases to predict, "
        f"batch {batch_size} on {predictor.mesh.devices.size} device(s)")  # fmt: skip
    t_start, total = time.time(), 0
    for i, case_dir in enumerate(todo, 1):
        t0, compiled = time.time(), len(predictor.executables)
        try:
            _, _, n = predict_case(predictor, case_dir, out, modalities, crop)
        except DataError as e:
            raise DataError(e.path, f"{e.problem} ({i - 1} of {len(todo)} cases written)") from e
        total += n
        new = list(predictor.executables)[compiled:]
        note = "".join(f" ({b}x{h}x{w} batches: compilation included)" for b, h, w, _ in new)
        eta = (time.time() - t_start) / i * (len(todo) - i)
        left = f", about {eta:.0f} s left" if i < len(todo) else ""
        log(f"[{i}/{len(todo)}] {case_dir.name}: {n} slices, {time.time() - t0:.1f} s{note}{left}")
    elapsed = time.time() - t_start
    rate = f" ({total / elapsed:.0f} slices/s)" if elapsed > 0 and total else ""
    log(f"predicted {len(todo)} cases, {total} slices in {elapsed:.1f} s{rate} -> "
        f"{os.path.abspath(out)}")  # fmt: skip
    return len(todo)


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}", 2)
    logging.set_verbosity(logging.ERROR)  # Orbax logs every restore at INFO/WARNING
    cli.use_compilation_cache()
    try:
        predict(FLAGS.config, FLAGS.workdir, FLAGS.input, FLAGS.out, overwrite=FLAGS.overwrite,
                skip_existing=FLAGS.skip_existing, batch_size=FLAGS.batch_size,
                crop=FLAGS.crop)  # fmt: skip
    except UsageError as e:
        cli.fail(str(e), 2)
    except (DataError, FileExistsError, FileNotFoundError, ValueError) as e:
        cli.fail(e, 1)


def run(argv=None):
    """Parse flags (one-line errors for unknown --config.* keys) and run main."""
    cli.default_cpu_devices()
    cli.run(main, _define_flags, argv)


if __name__ == "__main__":
    run()
