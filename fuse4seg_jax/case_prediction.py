"""Prediction on BraTS case folders: the work of `python -m fuse4seg_jax.predict`.

Owns: finding case folders and checking their modality files before any work
(`find_case_dirs`, `check_case_files`), the in-plane window around the brain the
networks see (`brain_window`), a case volume through a trained Predictor
(`_predict_volume`), one case's outputs — the segmentation and fused NIfTI volumes on the
input's grid and the preview PNG (figures.case_preview) — committed together or not at
all (`predict_case`), and the driver over a folder of cases (`predict`). predict.py
describes the inputs and outputs for users.
"""

import gzip
import os
import pathlib
import time

import nibabel as nib
import numpy as np

from fuse4seg_jax import atomic_files, figures, inference
from fuse4seg_jax.data import brats
from fuse4seg_jax.data.errors import DataError


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
    """The case's naming convention, after checking without reading any voxel that each
    modality file exists, has a readable NIfTI header of a 3D volume, holds as many bytes
    as its header promises (`_check_size`), and has the shape and affine of the others.
    DataError naming the first file that fails (read_case checks the voxels later)."""
    convention = brats.detect_convention(case_dir)
    ref = None
    for name in modalities:
        options = [case_dir / brats.file_name(case_dir.name, convention, name, ext)
                   for ext in brats.EXTENSIONS]  # fmt: skip
        found = [p for p in options if p.is_file()]
        if not found:
            raise DataError(options[0], f"missing {name} modality file (BraTS {convention} naming)")
        path = found[0]
        try:
            image = nib.load(str(path))
            shape, affine = tuple(image.shape), np.asarray(image.affine)
            data_end = int(image.dataobj.offset) + int(np.prod(image.dataobj.shape)) * int(
                image.get_data_dtype().itemsize
            )
        except Exception as e:  # nibabel, gzip, OS errors alike
            raise DataError(path, f"header cannot be read: {type(e).__name__}: {e}") from e
        while len(shape) > 3 and shape[-1] == 1:
            shape = shape[:-1]
        if len(shape) != 3:
            raise DataError(path, f"is {len(shape)}D with shape {shape}, expected a 3D volume")
        _check_size(path, data_end)
        if ref is None:
            ref = (path, shape, affine)
        elif shape != ref[1]:
            raise DataError(path, f"shape {shape} differs from {ref[1]} of {ref[0].name}")
        elif not np.allclose(affine, ref[2], rtol=0.0, atol=brats.AFFINE_ATOL):
            raise DataError(path, f"affine differs from that of {ref[0].name}")
    return convention


def _check_size(path, expected: int):
    """DataError if the file does not hold the `expected` bytes (header and voxel data) its
    header promises: for `.nii` the file size, for `.nii.gz` the uncompressed size that gzip
    records in its last four bytes (modulo 2**32; a truncated download ends elsewhere, so
    they disagree; a file written as several gzip members would be refused too)."""
    if path.name.endswith(".gz"):
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            stored = int.from_bytes(f.read(4), "little")
        if stored != expected % 2**32:
            raise DataError(path, "truncated or corrupt: gzip size does not match the header")
    elif path.stat().st_size < expected:
        raise DataError(path, f"truncated: {path.stat().st_size} bytes, header needs {expected}")


def output_paths(out, case_id: str, keys) -> dict:
    """{"seg" | "fused" | "preview": path} of one case, for the predictor's output keys."""
    folder = pathlib.Path(out) / case_id
    paths = {"seg": folder / f"{case_id}_seg.nii.gz"} if "pred" in keys else {}
    if "fused" in keys:
        paths["fused"] = folder / f"{case_id}_fused.nii.gz"
    paths["preview"] = folder / f"{case_id}_preview.png"
    return paths


def _nifti_tmp(path, data, source_path, dtype, display_range, description, intent=None):
    """`data` as a NIfTI file with the source file's affine and header, written to a
    temporary file beside `path`; returns the temporary file's path."""
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
    return atomic_files.staged(path, lambda tmp: pathlib.Path(tmp).write_bytes(data))


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
    """Reads, predicts and writes one case (predict.py); returns the volume shape. The
    outputs are written to temporary files and renamed only when all are complete; on an
    error nothing of the case is left (not even a folder it created)."""
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
        fig = figures.case_preview(case.modalities, modalities, outputs.get("fused"), pred)
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
            if not folder_existed and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
    return case.modalities.shape[:3]


def _check_arguments(config, batch_size, crop, overwrite, skip_existing) -> tuple:
    """(crop, modalities) after checking predict's arguments; UsageError if bad."""
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
    return crop, modalities


def predict(config, workdir, input_path, out, *, overwrite=False, skip_existing=False,
            batch_size=16, crop=None, log=print) -> int:  # fmt: skip
    """Predicts every case of `input_path` into `out` (predict.py); returns the number
    of cases written. crop: the in-plane window (brain_window; None: data.image_size, the
    training crop; 0: whole slices). Raises DataError (bad inputs), FileExistsError
    (outputs exist), FileNotFoundError (no checkpoint), UsageError / ValueError (bad
    arguments or config)."""
    crop, modalities = _check_arguments(config, batch_size, crop, overwrite, skip_existing)
    cases = find_case_dirs(input_path)
    for case_dir in cases:  # missing files stop the run before anything is written
        check_case_files(case_dir, modalities)
    t_load = time.time()
    predictor = inference.load_trained(config, workdir, batch_size=batch_size)
    keys = predictor.output_keys(len(modalities))
    todo = []
    for case_dir in cases:  # skip_existing: a case is done only when all its outputs exist
        paths = output_paths(out, case_dir.name, keys)
        existing = [p for p in paths.values() if p.exists()]
        if skip_existing and len(existing) == len(paths):
            continue
        if existing and not (overwrite or skip_existing):
            raise FileExistsError(f"{existing[0]} exists: pass --overwrite to replace it")
        todo.append(case_dir)
    for case_dir in todo:  # temporary files of an interrupted run (atomic_files.atomic_path)
        folder = pathlib.Path(out) / case_dir.name
        for stray in folder.glob(".tmp-*") if folder.is_dir() else ():
            stray.unlink()
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
