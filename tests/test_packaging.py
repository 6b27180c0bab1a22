"""pyproject.toml against the tree: every package and the shipped configs are installed,
every console command names a real function, and the exact pins of requirements.txt lie
inside pyproject's ranges (so `pip install .` and the quick start agree). The install
itself is checked end to end by launch/check_install.sh (CI)."""

import importlib
import pathlib
import tomllib

import pytest

packaging_requirements = pytest.importorskip("packaging.requirements")

ROOT = pathlib.Path(__file__).parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
COMMANDS = ("train", "evaluate", "predict", "score", "export", "ablate", "simulate")


def _pins(path, python: str | None = None) -> dict[str, list[str]]:
    """Every exact version a requirements file pins, per package (one per environment
    marker: jax has one for Python 3.11 and one for 3.12+); with `python` ("3.12"), only
    the pins whose marker holds for that Python."""
    env = {"python_version": python, "python_full_version": f"{python}.0"} if python else None
    pins = {}
    for line in (ROOT / path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-r"):
            requirement = packaging_requirements.Requirement(line)
            if env and requirement.marker is not None and not requirement.marker.evaluate(env):
                continue
            (spec,) = requirement.specifier
            assert spec.operator == "==", f"{path}: {line} is not an exact pin"
            pins.setdefault(_normal(requirement.name), []).append(spec.version)
    return pins


def _normal(name: str) -> str:
    return name.lower().replace("_", "-")


def test_every_package_and_the_configs_are_installed():
    setuptools = PROJECT["tool"]["setuptools"]
    on_disk = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "fuse4seg_jax").rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert set(setuptools["packages"]) == on_disk | {"fuse4seg_jax.configs"}
    assert setuptools["package-dir"] == {"fuse4seg_jax.configs": "configs"}
    assert (ROOT / "configs" / "__init__.py").is_file()


def test_every_command_has_a_console_script_naming_a_function():
    scripts = PROJECT["project"]["scripts"]
    assert set(scripts) == {f"fuse4seg-{c}" for c in COMMANDS}
    for name, target in scripts.items():
        module, function = target.split(":")
        assert module == f"fuse4seg_jax.{name.removeprefix('fuse4seg-')}"
        assert callable(getattr(importlib.import_module(module), function)), target


def test_the_pins_lie_in_the_declared_ranges():
    """Each runtime dependency of pyproject is pinned in requirements.txt, at a version its
    range allows; TensorFlow is the `tf` extra, not a dependency."""
    pins = _pins("requirements.txt") | _pins("requirements-dev.txt")
    declared = [packaging_requirements.Requirement(r) for r in PROJECT["project"]["dependencies"]]
    extras = PROJECT["project"]["optional-dependencies"]
    declared += [packaging_requirements.Requirement(r) for r in extras["tf"] + extras["dev"]]
    for requirement in declared:
        name = _normal(requirement.name)
        assert name in pins, f"{requirement.name} is declared but not pinned"
        for version in pins[name]:
            assert requirement.specifier.contains(version), (
                f"{name}=={version} not in {requirement}"
            )
    runtime = {
        _normal(packaging_requirements.Requirement(r).name)
        for r in PROJECT["project"]["dependencies"]
    }
    assert not {n for n in runtime if n.startswith("tensorflow-cpu") or n == "tensorflow"}
    # Pinned but not declared: TensorFlow (the `tf` extra) and protobuf (its users,
    # TFDS and tensorboardX, declare their own range; Colab keeps its own).
    assert set(_pins("requirements.txt")) - runtime == {"tensorflow-cpu", "protobuf"}


def test_without_tensorflow_the_pipeline_says_how_to_get_it():
    """TensorFlow is not a dependency (Colab and GPU images bring their own): importing the
    input pipeline without it is one line naming the extra."""
    import subprocess
    import sys

    code = "import sys; sys.modules['tensorflow'] = None; import fuse4seg_jax.data.pipeline"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ModuleNotFoundError: TensorFlow is not installed")
    assert "fuse4seg-jax[tf]" in last
