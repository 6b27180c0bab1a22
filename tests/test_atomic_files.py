"""Atomic outputs get the permissions of ordinary files and folders (a lab group can read
them), and a failed write leaves nothing behind."""

import os

import pytest
from file_modes import mode as _mode

from fuse4seg_jax import atomic_files


def test_files_and_folders_get_the_usual_modes(tmp_path, umask_022):
    atomic_files.write_text(tmp_path / "a.txt", "x")
    assert _mode(tmp_path / "a.txt") == 0o644
    with atomic_files.atomic_dir(tmp_path / "out") as tmp:
        atomic_files.write_text(os.path.join(tmp, "b.txt"), "y")
    assert _mode(tmp_path / "out") == 0o755
    assert (tmp_path / "out" / "b.txt").read_text() == "y"


def test_a_failed_folder_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), atomic_files.atomic_dir(tmp_path / "out") as tmp:
        atomic_files.write_text(os.path.join(tmp, "b.txt"), "y")
        raise RuntimeError("fail")
    assert os.listdir(tmp_path) == []
