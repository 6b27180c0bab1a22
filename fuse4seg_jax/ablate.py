"""Ablation and comparison runner: many runs, same data, seed and budget, one table.

    python -m fuse4seg_jax.ablate --config configs/ablation.py --workdir runs/ablation
    python -m fuse4seg_jax.ablate --config configs/compare.py --workdir runs/compare

Runs, for each seed of `config.ablation.seeds` in turn (so an ablation stopped early has
whole seeds done), in order:
- every bi-level method in `config.ablation.methods` for every orientation in
  `config.ablation.inners`, in `<workdir>/<method>-<inner>/`;
- every baseline in `config.ablation.baselines` (baselines.py), in
  `<workdir>/<baseline>/`: "two_stage", "early_fusion", "dual_encoder",
  "classical:<mean|max|pca|laplacian>", "single:<modality>", and "task_only"
  (Fuse4Seg's networks trained by the segmentation loss alone: the `joint` step with
  every fusion-loss weight 0, the ceiling of image-level fusion).
Each is an ordinary `trainer.train_and_evaluate` run (so it checkpoints and
resumes on its own), with `config.seed` set to the seed (the networks'
initialisation and the data order, and for the phantom the generated cases; every
run of a seed sees the same data). With one seed a run's folder is
`<workdir>/<run>/`, with several `<workdir>/<run>-seed<s>/`. Then the workdir gets:
- `results.csv` (one row per run and seed) and `results.md` (one row per run: the
  mean ± standard deviation over the seeds, ddof 0, and the number of seeds): held-out
  Dice per region (per
  3D case, mean over cases), with `ablation.volume_protocol` the volume protocol's
  voxel-wise Dice per region, HD95 of the whole tumour and lesion-wise Dice per region
  (`volume_scores`: evaluate's numbers, read from or written to
  `<run>/eval-<split>/`), the fusion metrics of its held-out fused images
  (`mmif` convention, mean over images; none for feature-level baselines),
  median step time (ms; compilation and diagnostics excluded) and its ratio to
  `joint`, the compiled step's memory (XLA's estimate per device), the median over
  the logged windows of the method's own implicit fraction |estimate - F_x| /
  |estimate| (`train/implicit_fraction`; second-order methods), and, from
  the hypergradient diagnostics (`bilevel.diagnose_every`; bi-level runs only),
  medians over the diagnostics whose reference converged (steps.diagnose_step:
  relative CG residual at most `bilevel.diagnose_max_residual`, no non-positive
  curvature) of the cosine with the reference hypergradient, the cosine of the
  implicit parts (estimate - F_x) and the implicit fraction |estimate - F_x| /
  |estimate| of the method and of the reference, the median residual of all
  references, and how many diagnostics were reliable out of how many;
- `curves.png`: training curves (segmentation and fusion loss) of every run;
- `dice.png`: held-out Dice per run and region (mean ± sd over the seeds), on the
  selected slices and, with the volume protocol, on whole cases.
Rerunning resumes: finished runs are read back, unfinished ones continue from
their latest checkpoint.
"""

import copy
import json

import numpy as np

from fuse4seg_jax import storage
from fuse4seg_jax.metric_writer import read_jsonl
from fuse4seg_jax.regions import REGION_NAMES

# The kinds `config.ablation.baselines` may name: recipe.BASELINE_KINDS. Not imported from
# there: this module is imported by `python -m` before train.py has set up the devices
# (cli.default_cpu_devices), so it must not import JAX at module level.

FUSION_COLUMNS = ("EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM")
# ablation.volume_protocol: evaluate's volume protocol of each run's final checkpoint
# (`vol_`: voxel-wise, `lw_`: BraTS 2023 lesion-wise), {column: evaluation summary key}
VOLUME_COLUMNS = {
    **{f"vol_dice_{r}": f"dice_{r}" for r in REGION_NAMES},
    "vol_hd95_wt": "hd95_wt",
    **{f"lw_dice_{r}": f"lw_dice_{r}" for r in REGION_NAMES},
}
COLUMNS = [
    "run",
    "method",
    "inner",
    "seed",
    *[f"dice_{r}" for r in REGION_NAMES],
    *VOLUME_COLUMNS,
    *FUSION_COLUMNS,
    "loss_seg",
    "loss_fuse",
    "step_ms",
    "step_vs_joint",
    "step_memory_mib",
    "train_implicit_fraction",
    "hypergrad_cosine",
    "implicit_cosine",
    "implicit_fraction",
    "reference_implicit_fraction",
    "reference_residual",
    "diagnostics_reliable",
    "diagnostics",
]


# Not a model kind but a setting of Fuse4Seg: both networks trained by the segmentation
# loss alone (the `joint` step with every fusion-loss weight 0), the fused image free to be
# whatever helps the segmenter most: the ceiling of image-level fusion on this data.
TASK_ONLY = {
    "model": {"kind": "fuse4seg"},
    "bilevel": {"method": "joint"},
    "loss": {"w_freq": 0.0, "w_grad": 0.0, "w_ssim": 0.0},
}


def baseline_overrides(spec: str) -> dict:
    """{config section: overrides} of a baseline spec such as "classical:pca",
    "single:flair" or "task_only"."""
    from fuse4seg_jax.config_validation import ConfigError
    from fuse4seg_jax.recipe import BASELINE_KINDS

    if spec == "task_only":
        return copy.deepcopy(TASK_ONLY)
    kind, _, option = spec.partition(":")
    if kind not in BASELINE_KINDS or (kind in ("classical", "single")) != bool(option):
        raise ConfigError(
            f"ablation.baselines entry {spec!r}: expected one of two_stage, early_fusion, "
            "dual_encoder, task_only, classical:<method>, single:<modality>"
        )
    extra = {"classical": {"classical": option}, "single": {"single_modality": option}}
    return {"model": {"kind": kind, **extra.get(kind, {})}}


def planned_runs(config) -> list[tuple[str, str, str, dict]]:
    """(name, method, inner, {config section: overrides}) of every run, in table order."""
    runs = [
        (f"{method}-{inner}", method, inner, {"bilevel": {"method": method, "inner": inner}})
        for inner in config.ablation.inners
        for method in config.ablation.methods
    ]
    for spec in config.ablation.baselines:
        runs.append((spec.replace(":", "-"), spec, "-", baseline_overrides(spec)))
    return runs


def _finished(run_dir, num_steps) -> bool:
    path = storage.join(run_dir, "results.json")
    if not storage.exists(path):
        return False
    return json.loads(storage.read_text(path)).get("train_steps") == num_steps


def volume_scores(run_config, run_dir) -> dict:
    """VOLUME_COLUMNS of the run's latest checkpoint under evaluate's volume protocol on its
    held-out split: read from `<run_dir>/eval-<split>/evaluation.json` when that folder
    evaluated this checkpoint with that protocol, else evaluated now into that folder (what
    `python -m fuse4seg_jax.evaluate --workdir <run_dir>` writes)."""
    from fuse4seg_jax import checkpointing, evaluation

    split = run_config.data.eval_split
    out = storage.join(run_dir, f"eval-{split}")
    record_path = storage.join(out, "evaluation.json")
    steps = checkpointing.available_steps(run_dir)  # none: evaluate says so in one line
    latest = steps[-1] if steps else None
    record = json.loads(storage.read_text(record_path)) if storage.isfile(record_path) else {}
    wanted = {"checkpoint_step": latest, "split": split, "protocol": "volume"}
    if all(record.get(k) == v for k, v in wanted.items()):
        means = record["means"]
    else:
        means = evaluation.evaluate(
            run_config, out, workdir=run_dir, split=split, protocol="volume", overwrite=True
        )
    return {column: means.get(key, float("nan")) for column, key in VOLUME_COLUMNS.items()}


def _summarise(name, method, inner, run_dir) -> dict:
    results = json.loads(storage.read_text(storage.join(run_dir, "results.json")))
    metrics = read_jsonl(storage.join(run_dir, "metrics.jsonl"))
    rows = [r for r in metrics if "train/loss_seg" in r]
    fusion = results.get("fusion_metrics") or {}
    rates = [r["train/steps_per_second"] for r in rows if r.get("train/steps_per_second")]
    memory = results.get("step_memory_bytes")
    diagnostics = [r for r in metrics if "train/diag_hypergrad_cosine" in r]
    reliable = [r for r in diagnostics if r.get("train/diag_reference_reliable", 1.0) > 0.5]

    def median(key, rows=reliable):
        values = [r[f"train/diag_{key}"] for r in rows if f"train/diag_{key}" in r]
        return float(np.median(values)) if values else float("nan")

    return {
        "run": name,
        "method": method,
        "inner": inner,
        **{f"dice_{r}": results["dice_mean"][r] for r in REGION_NAMES},
        **{k: float("nan") if fusion.get(k) is None else fusion[k] for k in FUSION_COLUMNS},
        "loss_seg": rows[-1]["train/loss_seg"],
        "loss_fuse": rows[-1].get("train/loss_fuse", float("nan")),
        "step_ms": 1e3 / float(np.median(rates)) if rates else float("nan"),
        "step_memory_mib": memory / 2**20 if memory else float("nan"),
        # median over the logged windows of the method's own implicit share (bilevel aux)
        "train_implicit_fraction": _median([r.get("train/implicit_fraction") for r in rows]),
        # medians over the run's reliable diagnostics (module docstring)
        "hypergrad_cosine": median("hypergrad_cosine"),
        "implicit_cosine": median("implicit_cosine"),
        "implicit_fraction": median("implicit_fraction"),
        "reference_implicit_fraction": median("reference_implicit_fraction"),
        "reference_residual": median("reference_cg_residual", diagnostics),
        "diagnostics_reliable": len(reliable) if diagnostics else float("nan"),
        "diagnostics": len(diagnostics) if diagnostics else float("nan"),
        "curve": [
            (r["step"], r["train/loss_seg"], r.get("train/loss_fuse", float("nan"))) for r in rows
        ],
    }


def seeds(config) -> tuple[int, ...]:
    """config.ablation.seeds (default: config.seed alone); ConfigError if empty or repeated."""
    from fuse4seg_jax.config_validation import ConfigError

    chosen = tuple(int(s) for s in config.ablation.get("seeds", (config.seed,)))
    if not chosen or len(set(chosen)) != len(chosen):
        raise ConfigError(f"ablation.seeds={chosen}: give one or more distinct seeds")
    return chosen


def _median(values) -> float:
    values = [v for v in values if v is not None]
    return float(np.median(values)) if values else float("nan")


def run_configs(config) -> list[tuple[str, str, str, int, object]]:
    """(folder name, method, inner, seed, the run's config) of every planned run and seed,
    seed by seed (every run of the first seed, then of the next), each validated, so a
    bad run stops the ablation before the first run starts (ConfigError naming the key)."""
    import jax

    from fuse4seg_jax.config_validation import ConfigError, validate

    validated, chosen = [], seeds(config)
    for name, method, inner, overrides in planned_runs(config):
        run_config = copy.deepcopy(config)
        for section, values in overrides.items():
            run_config[section].update(values)
        try:
            validate(run_config, config.mesh.num_devices or jax.device_count())
        except ConfigError as e:
            raise ConfigError(f"ablation run {name}: {e}") from None
        validated.append((name, method, inner, run_config))
    runs = []
    for seed in chosen:  # seed-major: a long ablation stopped early has whole seeds done
        for name, method, inner, run_config in validated:
            seeded = copy.deepcopy(run_config)
            seeded.seed = seed
            folder = name if len(chosen) == 1 else f"{name}-seed{seed}"
            runs.append((folder, method, inner, seed, seeded))
    return runs


def aggregate(summaries) -> list[dict]:
    """One row per run (in table order): the mean over its seeds of every numeric column,
    with `<column>_sd` (population standard deviation) and `seeds` (how many)."""
    by_run = {}
    for s in summaries:
        by_run.setdefault(s["run"], []).append(s)
    rows = []
    for group in by_run.values():
        row = {k: group[0][k] for k in ("run", "method", "inner", "curve")}
        row["seeds"] = len(group)
        for key in COLUMNS[4:]:  # the numeric columns
            values = np.asarray([g.get(key, np.nan) for g in group], np.float64)
            finite = values[np.isfinite(values)]
            row[key] = float(finite.mean()) if finite.size else float("nan")
            row[f"{key}_sd"] = float(finite.std()) if finite.size > 1 else float("nan")
        rows.append(row)
    return rows


def run_ablation(config, workdir: str) -> list[dict]:
    """Trains (or resumes, or reads back) every run; writes the table and the curves."""
    import jax  # after the device set-up (see above), as the project's modules

    from fuse4seg_jax import ablation_figures, atomic_files, trainer
    from fuse4seg_jax.metric_writer import log

    summaries = []
    runs = run_configs(config)
    volume = config.ablation.get("volume_protocol", False)
    if volume and jax.process_count() > 1:
        log(
            "ablation.volume_protocol: skipped with several processes (evaluation runs "
            "in one); score each run by python -m fuse4seg_jax.evaluate --workdir <run>"
        )
        volume = False
    for i, (folder, method, inner, seed, run_config) in enumerate(runs, 1):
        run_dir = storage.join(workdir, folder)
        if _finished(run_dir, config.train.num_steps):
            log(f"== [{i}/{len(runs)}] {folder}: finished earlier, reading {run_dir}")
        else:
            log(f"== [{i}/{len(runs)}] {folder}: training in {run_dir}")
            trainer.train_and_evaluate(run_config, run_dir)
        name = folder.removesuffix(f"-seed{seed}")
        summary = _summarise(name, method, inner, run_dir) | {"seed": seed}
        if volume:
            summary |= volume_scores(run_config, run_dir)
        summaries.append(summary)
    for seed in seeds(config):  # each is compared with the same seed's joint step
        same = [s for s in summaries if s["seed"] == seed]
        joint = {s["inner"]: s["step_ms"] for s in same if s["method"] == "joint"}
        reference = joint.get("fusion", next(iter(joint.values()), np.nan))
        for s in same:  # baselines: the default orientation's joint step
            s["step_vs_joint"] = s["step_ms"] / joint.get(s["inner"], reference)
    atomic_files.write_csv(storage.join(workdir, "results.csv"), summaries, COLUMNS)
    summaries = aggregate(summaries)
    table = markdown_table(summaries)
    atomic_files.write_text(storage.join(workdir, "results.md"), table + "\n")
    ablation_figures.plot_curves(storage.join(workdir, "curves.png"), summaries)
    ablation_figures.plot_dice(storage.join(workdir, "dice.png"), summaries)
    log(table)
    return summaries


def _cell(value, fmt, sd=None):
    if value is None or not np.isfinite(value):
        return "-"
    if sd is None or not np.isfinite(sd):
        return format(value, fmt)
    return f"{format(value, fmt)} ± {format(sd, fmt)}"


def markdown_table(summaries) -> str:
    """One row per run of `aggregate`'s rows (mean ± sd over seeds when there are several);
    columns without a value in any run (e.g. fusion metrics of a comparison of
    feature-level models only) are left out."""
    columns = [
        ("run", "run", None),
        ("seeds", "seeds", ".0f"),
        *[(f"Dice {r.upper()}", f"dice_{r}", ".3f") for r in REGION_NAMES],
        *[(f"volume Dice {r.upper()}", f"vol_dice_{r}", ".3f") for r in REGION_NAMES],
        ("volume HD95 WT (mm)", "vol_hd95_wt", ".1f"),
        *[(f"lesion-wise Dice {r.upper()}", f"lw_dice_{r}", ".3f") for r in REGION_NAMES],
        *[(k, k, ".3f") for k in FUSION_COLUMNS],
        ("loss_seg", "loss_seg", ".4f"),
        ("loss_fuse", "loss_fuse", ".4f"),
        ("step ms", "step_ms", ".0f"),
        ("vs joint", "step_vs_joint", ".2f"),
        ("step memory MiB", "step_memory_mib", ".1f"),
        ("implicit fraction (training)", "train_implicit_fraction", ".3g"),
        ("hypergrad cosine", "hypergrad_cosine", ".4f"),
        ("implicit cosine", "implicit_cosine", ".3f"),
        ("implicit fraction", "implicit_fraction", ".3g"),
        ("reference implicit fraction", "reference_implicit_fraction", ".3g"),
        ("reference residual", "reference_residual", ".3g"),
        ("reliable diagnostics", "diagnostics_reliable", ".0f"),
        ("diagnostics", "diagnostics", ".0f"),
    ]
    columns = [c for c in columns if c[2] is None or any(np.isfinite(s[c[1]]) for s in summaries)]
    lines = ["| " + " | ".join(c[0] for c in columns) + " |", "|" + " --- |" * len(columns)]
    for s in summaries:
        cells = [s[key] if fmt is None else _cell(s[key], fmt, s.get(f"{key}_sd"))
                 for _, key, fmt in columns]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    from fuse4seg_jax import train  # the same flags and process set-up as training

    train.run(work=run_ablation)


if __name__ == "__main__":
    main()
