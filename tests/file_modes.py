"""Outputs a lab group can read: with umask 022, every folder 0755 and every file 0644."""

import os
import stat


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def unusual_modes(root) -> list[str]:
    """'path: 0o700' for every folder of `root` (itself included) that is not 0755 and
    every file that is not 0644 (the modes under umask 022)."""
    found = [] if mode(root) == 0o755 else [f"{root}: {oct(mode(root))}"]
    for folder, dirs, files in os.walk(root):
        for name, wanted in [(d, 0o755) for d in dirs] + [(f, 0o644) for f in files]:
            path = os.path.join(folder, name)
            if mode(path) != wanted:
                found.append(f"{path}: {oct(mode(path))}")
    return found
