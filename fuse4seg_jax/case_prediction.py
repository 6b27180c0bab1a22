"""Prediction on BraTS case folders: the work of `python -m fuse4seg_jax.predict`.

Owns: bringing a case onto the grid the networks were trained on and back
(`case_geometry`: exact reorientation, optional in-plane resampling, the spacing check),
one case's outputs — the segmentation, fused and probability NIfTI
volumes on the input's grid and the preview PNG (figures.case_preview) — committed
together or not at all (`predict_case`, in either layout of `output_paths`), and the
driver over a folder of cases (`predict`). The input checks are in case_inputs.py, the
networks' pass over a volume in volume_prediction.py; predict.py describes the inputs and
outputs for users.
"""

import dataclasses
import gzip
import os
import pathlib
import time

import nibabel as nib
import numpy as np

from fuse4seg_jax import atomic_files, figures, inference, orientation, regions, run_geometry
from fuse4seg_jax import workdir as workdirs
from fuse4seg_jax.case_inputs import check_case_files, find_case_dirs
from fuse4seg_jax.data import brats
from fuse4seg_jax.data.errors import DataError
from fuse4seg_jax.volume_prediction import predict_volume


class UsageError(ValueError):
    """A bad command line or config (exit status 2)."""


LAYOUTS = ("nested", "brats")
EXTRAS = "extras"  # brats layout: the sub-folder of everything but the segmentations


# Test-time flips of a batch of slices (N, H, W, ...): none, x, y, both.
def output_paths(out, case_id: str, keys, layout: str = "nested", probabilities=False) -> dict:
    """{"seg" | "fused" | "preview" | "probabilities": path} of one case, for the
    predictor's output keys (predict.py describes the two layouts). probabilities: whether
    --save_probabilities asks for them (only runs that segment have them)."""
    out = pathlib.Path(out)
    if layout == "brats":
        seg, folder = out / f"{case_id}.nii.gz", out / EXTRAS
    else:
        folder = out / case_id
        seg = folder / f"{case_id}_seg.nii.gz"
    paths = {"seg": seg} if "pred" in keys else {}
    if "fused" in keys:
        paths["fused"] = folder / f"{case_id}_fused.nii.gz"
    paths["preview"] = folder / f"{case_id}_preview.png"
    if probabilities and "pred" in keys:
        paths["probabilities"] = folder / f"{case_id}_probabilities.nii.gz"
    return paths


PROB_SCALE = 65535  # probabilities are stored as uint16 * 1 / PROB_SCALE (NIfTI has no float16)


def _nifti_tmp(path, data, source_path, dtype, display_range, description, intent=None,
               slope=1.0):  # fmt: skip
    """`data` as a NIfTI file with the source file's affine and header, written to a
    temporary file beside `path`; returns the temporary file's path. A 4D `data` (x, y, z,
    C) gets voxel size 1 on its fourth axis. slope: the scaling readers apply to the stored
    values (scl_slope; intercept 0)."""
    source = nib.load(str(source_path))
    header = source.header.copy()
    header.set_data_dtype(dtype)
    data = np.asarray(data, dtype)
    image = type(source)(data, source.affine, header)
    if data.ndim == 4:
        image.header.set_zooms(tuple(source.header.get_zooms()[:3]) + (1.0,))
    image.header.set_slope_inter(slope, 0.0)  # the source may have stored scaled integers
    image.header["cal_min"], image.header["cal_max"] = display_range
    image.header["descrip"] = description.encode()[:79]
    if intent is not None:
        image.header.set_intent(intent)
    data = gzip.compress(image.to_bytes(), compresslevel=1, mtime=0)
    return atomic_files.staged(path, lambda tmp: pathlib.Path(tmp).write_bytes(data))


def probabilities_description(seg_mode: str) -> str:
    """The NIfTI description of a probabilities file: what its fourth axis holds."""
    return "fuse4seg_jax probabilities: " + ",".join(regions.channel_names(seg_mode))


def _fmt_mm(spacing) -> str:
    return " x ".join(f"{float(s):.4g}" for s in spacing) + " mm"


@dataclasses.dataclass(frozen=True)
class CaseGeometry:
    """How a case's stored grid maps onto the networks' grid (prepare / restore).

    reorient: stored orientation -> the training orientation (None: used as stored).
    spacing: the voxel sizes in the training orientation; target: those the networks get
    (different only when resampled, in-plane).
    """

    reorient: object
    spacing: tuple
    target: tuple

    @property
    def resampled(self) -> bool:
        return self.spacing != self.target

    def prepare(self, volume) -> np.ndarray:
        """The stored (H, W, D, M) volume on the networks' grid."""
        if self.reorient is not None:
            volume = self.reorient.apply(volume)
        if self.resampled:
            volume = orientation.resample_to(volume, self.spacing, self.target, order=1)
        return np.ascontiguousarray(volume, np.float32)

    def restore(self, outputs: dict, stored_shape) -> dict:
        """predict_volume's outputs back on the stored grid: resampled back (labels nearest
        neighbour, the rest linearly), then reoriented back (exact)."""
        shape = tuple(stored_shape)
        if self.reorient is not None:
            shape = tuple(self.reorient.apply(np.empty(shape, bool)).shape)
        restored = {}
        for k, v in outputs.items():
            if self.resampled:
                order = 0 if k == "pred" else 1
                v = orientation.resample_back(v, self.target, self.spacing, shape, order)
            if self.reorient is not None:
                v = self.reorient.undo(v)
            restored[k] = np.ascontiguousarray(v)
        return restored


def case_geometry(path, affine, zooms, geometry, *, resample=False, tolerance=0.10):
    """The CaseGeometry of a case whose first modality file `path` has this affine and
    header voxel sizes, for the run's training `geometry` (run_geometry.read; None: used as
    stored). The in-plane spacing (orientation.IN_PLANE axes, after reorientation) must be
    within `tolerance` (relative) of the training spacing, else DataError naming the file
    and both spacings, unless `resample`: then the networks get the training in-plane
    spacing (the through-plane spacing never reaches the 2D networks and is kept)."""
    if geometry is None:
        spacing = tuple(float(z) for z in np.asarray(zooms)[:3])
        return CaseGeometry(None, spacing, spacing)
    reorient = orientation.Reorientation.between(affine, geometry["orientation"])
    spacing = tuple(float(s) for s in reorient.spacing(zooms))
    trained = [float(s) for s in geometry["spacing_mm"]]
    if not orientation.spacing_mismatch(spacing, trained, tolerance, orientation.IN_PLANE):
        return CaseGeometry(reorient, spacing, spacing)
    if not resample:
        raise DataError(
            path,
            f"voxel spacing {_fmt_mm(spacing)} (in the training orientation "
            f"{geometry['orientation']}) differs in-plane from the training spacing "
            f"{_fmt_mm(trained)} by more than {tolerance:.0%}: pass --resample to resample "
            "it (or raise --spacing_tolerance)",
        )
    target = tuple(trained[a] if a in orientation.IN_PLANE else spacing[a] for a in range(3))
    return CaseGeometry(reorient, spacing, target)


def _header_geometry(case_dir, modalities):
    """(path, affine, zooms) of a case's first modality file, from its header."""
    convention = brats.detect_convention(case_dir)
    options = [case_dir / brats.file_name(case_dir.name, convention, modalities[0], ext)
               for ext in brats.EXTENSIONS]  # fmt: skip
    path = next(p for p in options if p.is_file())
    image = nib.load(str(path))
    return path, np.asarray(image.affine), np.asarray(image.header.get_zooms()[:3])


def predict_case(predictor, case_dir, out, modalities, crop: int = 0, *, layout="nested",
                 geometry=None, tta=False, save_probabilities=False, resample=False,
                 spacing_tolerance=0.10) -> tuple:  # fmt: skip
    """Reads, predicts and writes one case (predict.py); returns the volume shape. The case
    is brought to the training `geometry` (case_geometry), predicted (predict_volume) and
    brought back to its own grid. The outputs are written to temporary files and renamed
    only when all are complete; on an error nothing of the case is left (not even a
    folder it created)."""
    case = brats.read_case(case_dir, modalities, with_label=False)
    source = case.paths[modalities[0]]
    grid = case_geometry(source, case.affine, case.spacing, geometry, resample=resample,
                         tolerance=spacing_tolerance)  # fmt: skip
    volume = grid.prepare(case.modalities)
    outputs = predict_volume(predictor, volume, crop, tta=tta)
    outputs = grid.restore(outputs, case.modalities.shape[:3])
    paths = output_paths(out, case.case_id, outputs, layout, save_probabilities)
    pred = outputs.get("pred")
    folders = {p.parent for p in paths.values()}
    created = [f for f in sorted(folders) if not f.exists()]
    tmps, done = {}, False
    try:
        if pred is not None:
            et = brats.LABEL_VALUES[case.convention][3]  # 4 (2021 names) or 3 (2023 names)
            seg = np.where(pred == 3, et, pred).astype(np.uint8)
            tmps["seg"] = _nifti_tmp(paths["seg"], seg, source, np.uint8, (0, et),
                                     "fuse4seg_jax segmentation", intent="label")  # fmt: skip
        if "fused" in outputs:
            tmps["fused"] = _nifti_tmp(paths["fused"], outputs["fused"], source, np.float32,
                                       (0, 1), "fuse4seg_jax fused image")  # fmt: skip
        if "probabilities" in paths:
            stored = np.round(np.clip(outputs["probs"], 0.0, 1.0) * PROB_SCALE)
            tmps["probabilities"] = _nifti_tmp(
                paths["probabilities"], stored, source, np.uint16, (0, 1),
                probabilities_description(predictor.seg_mode), slope=1.0 / PROB_SCALE,
            )  # fmt: skip
        fig = figures.case_preview(case.modalities, modalities, outputs.get("fused"), pred,
                                   affine=case.affine)  # fmt: skip
        tmps["preview"] = atomic_files.staged(
            paths["preview"], lambda tmp: fig.savefig(tmp, dpi=100, format="png")
        )
        for key, tmp in tmps.items():
            os.replace(tmp, paths[key])
        done = True
    finally:
        if not done:  # leave nothing of this case behind
            for tmp in tmps.values():
                if os.path.exists(tmp):
                    os.remove(tmp)
            for folder in sorted(created, reverse=True):  # deepest first
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
    return case.modalities.shape[:3]


def _parse_step(step):
    """None, an int >= 0 or "best" from predict's `step` (a --step string or a value)."""
    if step is None or step == "best":
        return step
    try:
        value = int(step)
    except (TypeError, ValueError):
        value = -1
    if value < 0 or (isinstance(step, str) and not step.strip().isdigit()):
        raise UsageError(f"--step={step}: expected a checkpoint step (an integer >= 0) or 'best'")
    return value


def _check_arguments(config, batch_size, crop, overwrite, skip_existing, layout,
                     spacing_tolerance) -> tuple:  # fmt: skip
    """(crop, modalities) after checking predict's arguments; UsageError if bad."""
    if batch_size < 1:
        raise UsageError(f"--batch_size={batch_size} must be >= 1")
    crop = int(config.data.image_size if crop is None else crop)
    if crop < 0:
        raise UsageError(f"--crop={crop} must be >= 0 (0: whole slices)")
    if overwrite and skip_existing:
        raise UsageError("give at most one of --overwrite and --skip_existing")
    if layout not in LAYOUTS:
        raise UsageError(f"--layout={layout}: expected one of {', '.join(LAYOUTS)}")
    if not spacing_tolerance >= 0:
        raise UsageError(f"--spacing_tolerance={spacing_tolerance} must be >= 0")
    modalities = tuple(config.data.modalities)
    bad = [m for m in modalities if m not in brats.MODALITIES]
    if bad:
        raise UsageError(f"data.modalities has {bad[0]!r}; BraTS has {brats.MODALITIES}")
    return crop, modalities


def predict(config, workdir, input_path, out, *, overwrite=False, skip_existing=False,
            batch_size=16, crop=None, layout="nested", tta=False, save_probabilities=False,
            step=None, resample=False, spacing_tolerance=0.10, log=print) -> int:  # fmt: skip
    """Predicts every case of `input_path` into `out` (predict.py); returns the number
    of cases written. config: the run's config, or None to read `<workdir>/config.json`
    (workdir.saved_config). crop: the in-plane window (brain_window; None: data.image_size,
    the training crop; 0: whole slices). layout: "nested" or "brats" (output_paths).
    tta: average over in-plane flips (predict_volume). save_probabilities: also write the
    per-class probabilities. step: the checkpoint, None (latest), an int or "best".
    resample / spacing_tolerance: case_geometry. Raises DataError (bad inputs),
    FileExistsError (outputs exist), FileNotFoundError (no checkpoint), UsageError /
    ValueError (bad arguments or config, including workdir.ConfigError)."""
    step = _parse_step(step)
    if config is None:
        config = workdirs.saved_config(workdir)
    crop, modalities = _check_arguments(config, batch_size, crop, overwrite, skip_existing,
                                        layout, spacing_tolerance)  # fmt: skip
    cases = find_case_dirs(input_path)
    for case_dir in cases:  # missing files stop the run before anything is written
        check_case_files(case_dir, modalities)
    geometry = run_geometry.read(workdir, log=log)
    for case_dir in cases:  # so do spacings the networks were not trained on
        case_geometry(*_header_geometry(case_dir, modalities), geometry, resample=resample,
                      tolerance=spacing_tolerance)  # fmt: skip
    t_load = time.time()
    keys = inference.PROB_KEYS if (tta or save_probabilities) else inference.OUTPUT_KEYS
    predictor = inference.load_trained(config, workdir, step=step, batch_size=batch_size,
                                       keys=keys)  # fmt: skip
    keys = predictor.output_keys(len(modalities))
    if "pred" not in keys and (layout == "brats" or save_probabilities):
        flag = "--layout=brats" if layout == "brats" else "--save_probabilities"
        raise UsageError(f"{flag}: the run has no segmentation network (fused images only)")
    todo = []
    for case_dir in cases:  # skip_existing: a case is done only when all its outputs exist
        paths = output_paths(out, case_dir.name, keys, layout, save_probabilities)
        existing = [p for p in paths.values() if p.exists()]
        if skip_existing and len(existing) == len(paths):
            continue
        if existing and not (overwrite or skip_existing):
            raise FileExistsError(f"{existing[0]} exists: pass --overwrite to replace it")
        todo.append(case_dir)
    # temporary files of an interrupted run (atomic_files.atomic_path)
    every = [output_paths(out, c.name, keys, layout, True) for c in todo]
    for folder in {p.parent for paths in every for p in paths.values()}:
        for stray in folder.glob(".tmp-*") if folder.is_dir() else ():
            stray.unlink()
    names = {"pred": "segmentation", "fused": "fused image", "probs": "probabilities"}
    parts = [names[k] for k in keys if k != "probs" or save_probabilities]
    what = ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1]
    what += ", flip-averaged" if tta else ""
    log(f"checkpoint step {predictor.step}{' (best)' if step == 'best' else ''} of "
        f"{os.path.abspath(workdir)} ({what}; {time.time() - t_load:.1f} s); {len(todo)} of "
        f"{len(cases)} cases to predict, batch {batch_size} on "
        f"{predictor.mesh.devices.size} device(s)")  # fmt: skip
    t_start, total = time.time(), 0
    options = {"layout": layout, "geometry": geometry, "tta": tta, "resample": resample,
               "save_probabilities": save_probabilities,
               "spacing_tolerance": spacing_tolerance}  # fmt: skip
    for i, case_dir in enumerate(todo, 1):
        t0, compiled = time.time(), len(predictor.executables)
        try:
            _, _, n = predict_case(predictor, case_dir, out, modalities, crop, **options)
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
