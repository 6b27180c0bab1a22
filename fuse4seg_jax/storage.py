"""Workdir paths that are local folders or cloud URLs (gs://, s3://, az://).

Orbax reads and writes checkpoints at either kind natively. The run's own small files
(config.json, metrics.jsonl, results.json, geometry.json, figures, TensorBoard events,
evaluation folders) go through this module and `atomic_files`, which use
`etils.epath` (the path library Orbax itself uses) for URLs and the usual os calls for
local paths, so local behaviour (atomic renames, permissions) is unchanged.

On cloud storage there is no rename: a file is written locally in full and then uploaded
as one object, which appears whole or not at all; a folder is uploaded file by file once
it is complete locally; an append rewrites the object. There are no file locks either, so
one trainer per cloud workdir is the user's responsibility (`workdir.lock` says so).
"""

import os
import posixpath

CLOUD_SCHEMES = ("gs://", "s3://", "az://")


def is_cloud(path) -> bool:
    return str(path).startswith(CLOUD_SCHEMES)


def epath(path):
    """`path` as an `etils.epath.Path` (imported only when asked)."""
    from etils import epath as epath_lib

    return epath_lib.Path(str(path))


def absolute(path) -> str:
    """A local path made absolute; a URL as given."""
    return str(path) if is_cloud(path) else os.path.abspath(path)


def join(base, *names) -> str:
    return posixpath.join(str(base), *names) if is_cloud(base) else os.path.join(base, *names)


def exists(path) -> bool:
    return epath(path).exists() if is_cloud(path) else os.path.exists(path)


def isfile(path) -> bool:
    return epath(path).is_file() if is_cloud(path) else os.path.isfile(path)


def isdir(path) -> bool:
    return epath(path).is_dir() if is_cloud(path) else os.path.isdir(path)


def makedirs(path):
    if is_cloud(path):
        epath(path).mkdir(parents=True, exist_ok=True)
    else:
        os.makedirs(path, exist_ok=True)


def listdir(path) -> list[str]:
    if is_cloud(path):
        return sorted(p.name for p in epath(path).iterdir())
    return sorted(os.listdir(path))


def read_text(path) -> str:
    if is_cloud(path):
        return epath(path).read_text()
    with open(path) as f:
        return f.read()


def rmtree(path):
    if is_cloud(path):
        epath(path).rmtree(missing_ok=True)
    else:
        import shutil

        shutil.rmtree(path, ignore_errors=True)


def upload(local_file, url):
    """Copies a complete local file to `url` (one object: it appears whole or not at all)."""
    with open(local_file, "rb") as f:
        data = f.read()
    epath(url).parent.mkdir(parents=True, exist_ok=True)
    epath(url).write_bytes(data)


def upload_tree(local_dir, url):
    """Copies every file under `local_dir` to the same relative names under `url`."""
    for root, _, files in os.walk(local_dir):
        for name in sorted(files):
            local = os.path.join(root, name)
            relative = os.path.relpath(local, local_dir).replace(os.sep, "/")
            upload(local, join(url, relative))


def move_tree(src, dst):
    """Moves folder `src` to `dst` (replacing it); on cloud storage a copy of every file,
    then `src` removed."""
    rmtree(dst)
    if not is_cloud(src):
        import shutil

        shutil.move(src, dst)
        return
    root = epath(src)
    for item in root.rglob("*"):
        if item.is_file():
            target = epath(join(dst, str(item.relative_to(root))))
            target.parent.mkdir(parents=True, exist_ok=True)
            item.copy(target, overwrite=True)
    rmtree(src)
