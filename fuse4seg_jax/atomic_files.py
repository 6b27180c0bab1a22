"""Atomic writes of output files and folders: a reader sees the old file (or none) or the
complete new one, never a partial one.

Every file is written to a temporary file beside its target (same folder, so same file
system) and renamed onto it when complete; a failed write leaves the target as it was and
no temporary file behind. `staged` stops before the rename, for writers that commit
several files together (case_prediction.py); `atomic_dir` does the same for a folder.

A target that is a cloud URL (gs://...; storage.py) is written to a local temporary file
or folder and uploaded when complete: a file as one object (whole or not at all), a folder
file by file (an interrupted upload can leave part of it; the next write replaces it).
"""

import contextlib
import csv
import json
import os
import pathlib
import shutil
import tempfile

from fuse4seg_jax import storage


def atomic_path(path) -> str:
    """A temporary file beside `path`, to be os.replace()d onto it when complete."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    suffix = ".nii.gz" if str(path).endswith(".nii.gz") else os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=suffix)  # nibabel: by suffix
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give outputs the usual permissions
    return tmp


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _remove(tmp):
    if os.path.exists(tmp):
        os.remove(tmp)


def staged(path, write) -> str:
    """Calls write(tmp) on a temporary file beside `path` and returns tmp, for the caller to
    os.replace() onto `path`; the temporary file is removed if `write` raises."""
    tmp = atomic_path(path)
    try:
        write(tmp)
    except BaseException:
        _remove(tmp)
        raise
    return tmp


def write_file(path, write):
    """Calls write(tmp) on a temporary file beside `path`, then renames it onto `path` (for a
    cloud URL: a local temporary file, uploaded when complete)."""
    if storage.is_cloud(path):
        with tempfile.TemporaryDirectory(prefix="fuse4seg-upload-") as folder:
            name = str(path).rstrip("/").rsplit("/", 1)[-1]
            write(os.path.join(folder, name))
            storage.upload(os.path.join(folder, name), path)
        return
    tmp = staged(path, write)
    try:
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def write_text(path, text: str):
    write_file(path, lambda tmp: pathlib.Path(tmp).write_text(text))


def write_json(path, obj):
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)

    write_file(path, write)


def write_csv(path, rows, fields=None):
    """rows (dicts) as CSV with a header: the columns `fields` (keys of a row that are not
    among them are left out), by default every key of any row, in order of appearance."""
    fields = list(dict.fromkeys(k for row in rows for k in row)) if fields is None else fields

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    write_file(path, write)


@contextlib.contextmanager
def atomic_dir(out):
    """Yields a fresh folder beside `out` to write into; when the block completes it becomes
    `out` (an existing `out` is moved aside first and removed after), when it raises it is
    removed and `out` is left as it was. For a cloud URL the folder is local and its files
    are uploaded to `out` (after removing an existing `out`) when the block completes."""
    if storage.is_cloud(out):
        with tempfile.TemporaryDirectory(prefix="fuse4seg-upload-") as tmp:
            yield tmp
            storage.rmtree(out)
            storage.upload_tree(tmp, out)
        return
    out = os.path.abspath(out)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out)}.partial-")
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the folder the usual mode
    try:
        yield tmp
        if os.path.exists(out):
            old = out + ".old"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
