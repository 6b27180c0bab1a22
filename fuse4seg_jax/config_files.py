"""Config files: loading one from its neighbour, and naming a shipped config from anywhere.

Configs are ml-collections config files (`get_config()`); several build on another
(`demo` on `default`, `compare_sim` on `compare` and `sim`). They load that neighbour by
path with `sibling(__file__, "default")`, not by `from configs import default`, so a
config file works whatever the current folder and whether it lies in a clone's
`configs/` or in the installed package (`fuse4seg_jax/configs`, the same files).

`--config` takes a path, or the name of a shipped config (`--config demo`, `tiny`,
`sim`, ...): a value that is not an existing file and is a plain name is looked up in
`shipped_dir()` (the clone's `configs/`, else the installed package's copy).

`flatten` gives a saved config (its JSON tree) as dotted keys, for comparing a workdir's
config with a new one and for TensorBoard's hyperparameters.
"""

import importlib.util
import os
import pathlib
import re

NAME = re.compile(r"^[A-Za-z0-9_]+(\.py)?$")


def sibling(config_file, name: str):
    """The config module `name` from the folder of `config_file`, loaded by path."""
    path = pathlib.Path(config_file).resolve().with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"fuse4seg_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shipped_dir() -> pathlib.Path:
    """The shipped configs: the clone's `configs/` beside this package, else the copy
    installed as `fuse4seg_jax/configs`."""
    package = pathlib.Path(__file__).resolve().parent
    clone = package.parent / "configs"
    return clone if (clone / "default.py").is_file() else package / "configs"


def shipped_names() -> list[str]:
    folder = shipped_dir()
    return sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))


def resolve(value: str) -> str:
    """--config's value: an existing path as given; a plain name of a shipped config as its
    path (ValueError naming the shipped configs when there is none of that name)."""
    path = value.split(":", 1)[0]  # ml-collections allows "file.py:arg"
    if os.path.exists(path) or not NAME.match(path):
        return value
    name = path[:-3] if path.endswith(".py") else path
    candidate = shipped_dir() / f"{name}.py"
    if not candidate.is_file():
        raise ValueError(
            f"--config {value}: no such file, and no shipped config of that name "
            f"(shipped: {', '.join(shipped_names())})"
        )
    return str(candidate) + value[len(path) :]


def flatten(tree, prefix=""):
    """A nested config dict as {"section.key": value}."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out
