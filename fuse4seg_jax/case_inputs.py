"""The input side of `predict`: finding BraTS case folders and checking their modality
files before any voxel is read or anything is written (case_prediction.py runs these
checks on every case first, so a bad file stops the run before the first case).
"""

import os
import pathlib

import nibabel as nib
import numpy as np

from fuse4seg_jax.data import brats
from fuse4seg_jax.data.errors import DataError


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
