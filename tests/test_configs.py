"""Every shipped config passes validation and builds its recipe; each kind of run resolves
to the pieces it needs (recipe.py), and the step closes over no config."""

import importlib
import pathlib
import re

import jax
import pytest

from configs import tiny
from fuse4seg_jax import ablate, recipe, trainer
from fuse4seg_jax.config_validation import ConfigError, validate

CONFIGS = sorted(
    p.stem
    for p in (pathlib.Path(__file__).parents[1] / "configs").glob("*.py")
    if p.stem != "__init__"
)
# What a user must add on the command line (the config docstrings say so).
NEEDS_FOLDER = {"brats_fuse": "/data/BraTS2021", "harvard": "/data/harvard"}


def _shipped(name):
    config = importlib.import_module(f"configs.{name}").get_config()
    if name in NEEDS_FOLDER:
        config.data.manual_dir = NEEDS_FOLDER[name]
    return config


def _runs(config):
    """The config itself, or for ablation/comparison configs every run they will make (of
    the first seed: the seeds' runs differ in config.seed alone)."""
    if "ablation" not in config:
        return [config]
    first = ablate.seeds(config)[0]
    return [run for *_, seed, run in ablate.run_configs(config) if seed == first]


def test_configs_are_found():
    assert {"default", "demo", "tiny", "brats_fuse", "harvard", "ablation", "compare"} <= set(
        CONFIGS
    )


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("devices", [1, 2])
def test_shipped_config_validates_and_builds(name, devices):
    for config in _runs(_shipped(name)):
        validate(config, devices)
        run = recipe.build(config)
        assert run.kind in recipe.RUN_KINDS
        state = jax.eval_shape(run.init_state)  # shapes only: no parameters are computed
        assert jax.tree.leaves(state.fusion.params) or jax.tree.leaves(state.seg.params)


def test_brats_config_without_its_folder_is_refused():
    config = importlib.import_module("configs.brats_fuse").get_config()
    with pytest.raises(ConfigError, match="data.manual_dir"):
        validate(config, 1)


@pytest.mark.parametrize(
    "overrides,kind,fusion,seg,diagnose",
    [
        ({}, "fuse4seg", True, True, True),
        ({"segmentation": "none"}, "fusion_only", True, False, False),
        ({"kind": "two_stage"}, "two_stage", True, True, False),
        ({"kind": "classical"}, "classical", False, True, False),
        ({"kind": "single"}, "single", False, True, False),
        ({"kind": "early_fusion"}, "early_fusion", False, True, False),
        ({"kind": "dual_encoder"}, "dual_encoder", False, True, False),
    ],
)
def test_each_kind_resolves_to_its_pieces(overrides, kind, fusion, seg, diagnose):
    config = tiny.get_config()
    config.model.update(overrides)
    validate(config, 1)
    run = recipe.build(config)
    assert run.kind == kind == recipe.run_kind(config)
    assert (run.fusion_model is not None) == fusion
    assert (run.seg_model is not None) == seg
    assert (run.diagnose_step is not None) == diagnose
    state = jax.eval_shape(run.init_state)
    assert bool(jax.tree.leaves(state.fusion.params)) == fusion
    assert bool(jax.tree.leaves(state.seg.params)) == seg
    assert run.describe(state).count("params") == int(fusion) + int(seg)


def test_the_bound_step_ignores_later_config_changes():
    """The recipe reads every hyperparameter once: changing the config after build does not
    change the traced step (a step that closed over the config would see the change)."""
    config = tiny.get_config()
    run = recipe.build(config)
    state = jax.eval_shape(run.init_state)
    s = config.data.image_size
    batch = {
        "modalities": jax.ShapeDtypeStruct((16, s, s, 2), "float32"),
        "label": jax.ShapeDtypeStruct((16, s, s), "int32"),
        "mask": jax.ShapeDtypeStruct((16, s, s), "float32"),
    }
    before = jax.make_jaxpr(run.train_step)(state, batch)
    config.bilevel.method = "joint"
    config.bilevel.batch_split = "same"
    config.loss.w_grad = 7.0
    after = jax.make_jaxpr(run.train_step)(state, batch)
    assert str(before) == str(after)
    assert str(after) != str(jax.make_jaxpr(recipe.build(config).train_step)(state, batch))


NONSENSE = [  # (key, value, what the message must say): each refused before any work
    ("optim.learning_rate", -1e-3, "must be positive"),
    ("optim.learning_rate", 0.0, "must be positive"),
    ("bilevel.inner_lr", -0.1, "must be positive"),
    ("optim.name", "adagrad", "expected one of"),
    ("bilevel.inner_optimizer", "rmsprop", "expected one of"),
    ("train.keep_checkpoints", 0, "must be at least 1"),
    ("train.batch_size", 0, "must be at least 1"),
    ("train.eval_batch_size", 0, "must be at least 1"),
    ("train.eval_batch_size", 12, "multiple of the 8 devices"),
    ("data.num_train_cases", 0, "must be at least 1"),
    ("data.slices_per_case", 0, "must be at least 1"),
    ("mesh.num_devices", 9, r"between 0 \(all\) and the 8 visible devices"),
]


@pytest.mark.parametrize("key,value,problem", NONSENSE, ids=[f"{k}={v}" for k, v, _ in NONSENSE])
def test_nonsensical_values_are_refused_naming_the_key(tmp_path, key, value, problem):
    config = tiny.get_config()
    section, name = key.split(".")
    config[section][name] = value
    with pytest.raises(ConfigError, match=rf"^{re.escape(f'{key}={value!r}')}: .*{problem}"):
        trainer.train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_ablation_validates_every_run_before_the_first(tmp_path):
    config = importlib.import_module("configs.compare").get_config()
    config.ablation.baselines = ("two_stage", "classical:median")
    with pytest.raises(ConfigError, match=r"ablation run classical-median: model.classical"):
        ablate.run_ablation(config, str(tmp_path))
    config.ablation.baselines = ("single",)  # single needs a modality
    with pytest.raises(ConfigError, match="ablation.baselines entry 'single'"):
        ablate.run_ablation(config, str(tmp_path))
    assert not list(tmp_path.iterdir())  # no run was started


def test_config_names_resolve_to_the_shipped_files(tmp_path):
    from fuse4seg_jax import config_files

    root = pathlib.Path(__file__).parents[1]
    assert config_files.resolve("demo") == str(root / "configs" / "demo.py")
    assert config_files.resolve("tiny.py") == str(root / "configs" / "tiny.py")
    mine = tmp_path / "mine.py"
    mine.write_text("")
    assert config_files.resolve(str(mine)) == str(mine)  # an existing path is kept
    with pytest.raises(ValueError, match=r"no shipped config.*\bdemo\b.*\btiny\b"):
        config_files.resolve("nosuch")
    assert set(CONFIGS) == set(config_files.shipped_names())


@pytest.mark.parametrize("name", ["compare_sim", "ablation_sim", "difficulty_sim", "demo"])
def test_configs_load_from_any_folder(tmp_path, name):
    """A config loads its neighbours by path: with only the package importable (no clone on
    sys.path) and another working folder, it still builds."""
    import subprocess
    import sys

    root = pathlib.Path(__file__).parents[1]
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "fuse4seg_jax").symlink_to(root / "fuse4seg_jax")
    path = str(root / "configs" / f"{name}.py")
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('c', {path!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "print(m.get_config().data.name)\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path / "pkg")}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ("phantom" if name == "demo" else "brats_sim")


def test_difficulty_sim_trains_the_demo_budget_on_the_compare_sim_protocol():
    """The difficulty measurement's budget is the demo's and its data compare_sim's."""
    difficulty = _shipped("difficulty_sim")
    assert difficulty.train.num_steps == _shipped("demo").train.num_steps
    assert difficulty.data.to_dict() == _shipped("compare_sim").data.to_dict()
    assert difficulty.bilevel.batch_split == "same"
    assert set(difficulty.ablation.baselines) == {"early_fusion"}
