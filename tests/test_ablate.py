"""The ablation runner: one table, CSV and curves from one call; reruns resume."""

import csv
import json
import os

import pytest
from PIL import Image

from configs import ablation
from fuse4seg_jax import ablate
from fuse4seg_jax.config_validation import ConfigError

pytestmark = pytest.mark.slow  # trains and evaluates every ablation arm (about a minute)


def _config(tmp_path):
    config = ablation.get_config()
    config.data.image_size = 48  # VIF needs 41 px
    config.data.num_train_cases, config.data.num_eval_cases = 8, 2
    config.data.slices_per_case = 4
    config.data.tfds_dir = str(tmp_path / "tfds")
    config.model.fusion, config.model.segmentation = "fusion_tiny", "unet_tiny"
    config.optim.warmup_steps = 0
    config.train.num_steps, config.train.log_every = 4, 2
    config.train.eval_every, config.train.checkpoint_every = 100, 0
    config.bilevel.diagnose_every = 2
    config.bilevel.diagnose_cg_steps = 4  # a short reference CG compiles quickly,
    config.bilevel.diagnose_damping = 10.0  # and converges on this heavily damped system
    config.ablation.methods = ("joint", "unrolled")
    config.ablation.seeds = (0,)
    config.ablation.baselines = ("classical:max", "early_fusion")
    return config


def test_ablation_writes_table_csv_and_curves_and_resumes(tmp_path):
    config = _config(tmp_path)
    work = tmp_path / "ablation"
    summaries = ablate.run_ablation(config, str(work))
    runs = ["joint-fusion", "unrolled-fusion", "classical-max", "early_fusion"]
    assert [s["run"] for s in summaries] == runs
    with open(work / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["joint", "unrolled", "classical:max", "early_fusion"]
    # fusion metrics of the fused images; none for the feature-level baseline
    assert all(float(r["EN"]) > 0 and float(r["Qabf"]) > 0 for r in rows[:3])
    assert rows[3]["EN"] == "nan" and rows[3]["loss_fuse"] == "nan"
    assert float(rows[0]["step_vs_joint"]) == 1.0
    assert float(rows[1]["step_ms"]) > 0 and float(rows[1]["step_memory_mib"]) > 0
    assert all(0.0 <= float(r["dice_wt"]) <= 1.0 for r in rows)
    assert -1.0 <= float(rows[1]["hypergrad_cosine"]) <= 1.0 + 1e-6
    assert (rows[1]["diagnostics"], rows[1]["diagnostics_reliable"]) == ("2", "2")
    assert float(rows[1]["reference_residual"]) <= config.bilevel.diagnose_max_residual
    assert float(rows[1]["implicit_fraction"]) >= 0 and rows[2]["diagnostics"] == "nan"
    assert float(rows[1]["train_implicit_fraction"]) > 1e-3  # the default coupling acts
    assert rows[0]["train_implicit_fraction"] == "nan"  # joint has no implicit term
    # the volume protocol (ablation.volume_protocol): evaluate's numbers of the final checkpoint
    for run, row in zip(runs, rows, strict=True):
        record = json.loads((work / run / "eval-validation" / "evaluation.json").read_text())
        assert (record["checkpoint_step"], record["protocol"], record["cases"]) == (4, "volume", 2)
        for column, key in ablate.VOLUME_COLUMNS.items():
            assert float(row[column]) == pytest.approx(record["means"][key])
        assert 0.0 <= float(row["vol_dice_wt"]) <= 1.0 and float(row["vol_hd95_wt"]) >= 0.0
    table = (work / "results.md").read_text()
    assert table.count("\n") == 6 and "| unrolled-fusion |" in table and "| early_fusion |" in table
    assert all(line.count("|") == 35 for line in table.splitlines())  # 34 columns
    assert "| volume Dice WT | volume Dice TC | volume Dice ET | volume HD95 WT (mm) |" in table
    assert (work / "curves.png").read_bytes()[:4] == b"\x89PNG"
    with Image.open(work / "dice.png") as dice:  # two panels: slices and whole cases
        assert dice.format == "PNG" and dice.height == round(2 * 3.2 * 110)
    # a rerun reads the finished runs and their evaluations back instead of redoing them
    metrics = work / "joint-fusion" / "metrics.jsonl"
    evaluated = work / "joint-fusion" / "eval-validation" / "evaluation.json"
    before = os.stat(metrics).st_mtime_ns, os.stat(evaluated).st_mtime_ns
    stale = work / "early_fusion" / "eval-validation" / "evaluation.json"
    record = json.loads(stale.read_text())
    stale.write_text(json.dumps(record | {"checkpoint_step": 2, "means": {}}))  # another step
    again = ablate.run_ablation(config, str(work))
    assert (os.stat(metrics).st_mtime_ns, os.stat(evaluated).st_mtime_ns) == before
    assert [s["dice_et"] for s in again] == [s["dice_et"] for s in summaries]
    assert [s["vol_dice_et"] for s in again] == pytest.approx([s["vol_dice_et"] for s in summaries])
    assert json.loads(stale.read_text())["checkpoint_step"] == 4  # evaluated again


def test_every_run_is_planned_once_per_seed(tmp_path):
    config = _config(tmp_path)
    config.ablation.seeds = (0, 5)
    runs = ablate.run_configs(config)
    assert len(runs) == 8 and all(run.seed == seed for *_, seed, run in runs)
    # seed-major: every run of seed 0, then every run of seed 5, in table order
    assert [seed for *_, seed, _ in runs] == [0] * 4 + [5] * 4
    assert [folder for folder, *_ in runs[4:]] == [
        f.replace("seed0", "seed5") for f, *_ in runs[:4]
    ]
    assert runs[0][0] == "joint-fusion-seed0"
    a, b = runs[0][4].to_dict(), runs[4][4].to_dict()
    assert {k for k in a if a[k] != b[k]} == {"seed"}
    config.ablation.seeds = (1, 1)
    with pytest.raises(ConfigError, match=r"ablation.seeds=\(1, 1\): give one or more"):
        ablate.run_configs(config)


def test_seeds_are_reported_as_mean_and_sd():
    """Two seeds of one run: the table shows mean ± population sd and the seed count."""
    rows = [
        {"run": "unrolled-fusion", "method": "unrolled", "inner": "fusion", "seed": seed,
         "curve": [], "dice_wt": dice, "step_ms": ms, "step_vs_joint": 1.0}
        for seed, dice, ms in ((0, 0.90, 100.0), (1, 0.80, 300.0))
    ]  # fmt: skip
    (row,) = ablate.aggregate(rows)
    assert row["seeds"] == 2 and row["dice_wt"] == pytest.approx(0.85)
    assert row["dice_wt_sd"] == pytest.approx(0.05) and row["step_ms_sd"] == pytest.approx(100)
    table = ablate.markdown_table([row])
    assert "| unrolled-fusion | 2 | 0.850 ± 0.050 |" in table and "| 200 ± 100 |" in table


def test_task_only_is_the_joint_step_without_fusion_loss(tmp_path):
    """The comparison's ceiling of image-level fusion: the same networks and step as
    `joint`, trained by the segmentation loss alone (every fusion-loss weight 0)."""
    config = _config(tmp_path)
    config.ablation.baselines = ("task_only",)
    runs = {folder: run.to_dict() for folder, _, _, _, run in ablate.run_configs(config)}
    joint, task = runs["joint-fusion"], runs["task_only"]
    assert task["model"]["kind"] == "fuse4seg" and task["bilevel"]["method"] == "joint"
    differ = {k for k in joint["loss"] if joint["loss"][k] != task["loss"][k]}
    assert differ == {"w_freq", "w_grad"}  # w_ssim is already 0 in the joint run
    assert all(task["loss"][k] == 0.0 for k in ("w_freq", "w_grad", "w_ssim"))
    assert {k for k in joint if joint[k] != task[k]} == {"loss"}
    with pytest.raises(ConfigError, match="task_only"):
        ablate.baseline_overrides("task-only")
