"""Ablation runner: every listed bi-level method, same data, seed and budget, one table.

    python -m fuse4seg_jax.ablate --config configs/ablation.py --workdir runs/ablation

For each method in `config.ablation.methods` and orientation in
`config.ablation.inners` it trains a run in `<workdir>/<method>-<inner>/` with
`trainer.train_and_evaluate` (so each run checkpoints and resumes on its own),
then writes to the workdir:
- `results.csv` and `results.md`: per run, held-out Dice per region, final
  train losses, median step time (ms, compilation excluded) and its ratio to
  `joint`, the compiled step's memory (XLA's estimate per device), and the
  median cosine of its hypergradient with a reference CG hypergradient
  (`bilevel.diagnose_every`; for `joint` the cosine of its outer gradient);
- `curves.png`: training curves (segmentation and fusion loss) of every run.
Rerunning resumes: finished runs are read back, unfinished ones continue from
their latest checkpoint.
"""

import copy
import csv
import json
import os

import numpy as np

from fuse4seg_jax.metric_writer import read_jsonl
from fuse4seg_jax.regions import REGION_NAMES

COLUMNS = [
    "run",
    "method",
    "inner",
    *[f"dice_{r}" for r in REGION_NAMES],
    "loss_seg",
    "loss_fuse",
    "step_ms",
    "step_vs_joint",
    "step_memory_mib",
    "hypergrad_cosine",
]


def _finished(run_dir, num_steps) -> bool:
    path = os.path.join(run_dir, "results.json")
    if not os.path.exists(path):
        return False
    with open(path) as f:
        return json.load(f).get("train_steps") == num_steps


def _summarise(name, method, inner, run_dir) -> dict:
    with open(os.path.join(run_dir, "results.json")) as f:
        results = json.load(f)
    rows = [r for r in read_jsonl(os.path.join(run_dir, "metrics.jsonl")) if "train/loss_seg" in r]
    rates = [r["train/steps_per_second"] for r in rows if r.get("train/steps_per_second")]
    memory = results.get("step_memory_bytes")
    cosines = [
        r["train/diag_hypergrad_cosine"]
        for r in read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
        if "train/diag_hypergrad_cosine" in r
    ]
    return {
        "run": name,
        "method": method,
        "inner": inner,
        **{f"dice_{r}": results["dice_mean"][r] for r in REGION_NAMES},
        "loss_seg": rows[-1]["train/loss_seg"],
        "loss_fuse": rows[-1]["train/loss_fuse"],
        "step_ms": 1e3 / float(np.median(rates)) if rates else float("nan"),
        "step_memory_mib": memory / 2**20 if memory else float("nan"),
        # median over the run of the cosine with the reference CG hypergradient
        "hypergrad_cosine": float(np.median(cosines)) if cosines else float("nan"),
        "curve": [(r["step"], r["train/loss_seg"], r["train/loss_fuse"]) for r in rows],
    }


def run_ablation(config, workdir: str) -> list[dict]:
    """Trains (or resumes, or reads back) every run; writes the table and the curves."""
    from fuse4seg_jax import report, trainer

    summaries = []
    for inner in config.ablation.inners:
        for method in config.ablation.methods:
            name = f"{method}-{inner}"
            run_dir = os.path.join(workdir, name)
            run_config = copy.deepcopy(config)
            run_config.bilevel.method, run_config.bilevel.inner = method, inner
            if _finished(run_dir, config.train.num_steps):
                trainer.log(f"== {name}: finished earlier, reading {run_dir}")
            else:
                trainer.log(f"== {name}: training in {run_dir}")
                trainer.train_and_evaluate(run_config, run_dir)
            summaries.append(_summarise(name, method, inner, run_dir))
    joint = {s["inner"]: s["step_ms"] for s in summaries if s["method"] == "joint"}
    for s in summaries:
        s["step_vs_joint"] = s["step_ms"] / joint[s["inner"]] if s["inner"] in joint else np.nan
    _write_csv(os.path.join(workdir, "results.csv"), summaries, report)
    table = markdown_table(summaries)
    report.write_text(os.path.join(workdir, "results.md"), table + "\n")
    _plot_curves(os.path.join(workdir, "curves.png"), summaries, report)
    trainer.log(table)
    return summaries


def markdown_table(summaries) -> str:
    head = (
        "| run | Dice WT | Dice TC | Dice ET | loss_seg | loss_fuse | step ms | vs joint "
        "| step memory MiB | hypergrad cosine |"
    )
    lines = [head, "|" + " --- |" * 10]
    for s in summaries:
        lines.append(
            f"| {s['run']} | {s['dice_wt']:.3f} | {s['dice_tc']:.3f} | {s['dice_et']:.3f} | "
            f"{s['loss_seg']:.4f} | {s['loss_fuse']:.4f} | {s['step_ms']:.0f} | "
            f"{s['step_vs_joint']:.2f} | {s['step_memory_mib']:.1f} | "
            f"{s['hypergrad_cosine']:.4f} |"
        )
    return "\n".join(lines)


def _write_csv(path, summaries, report):
    tmp = report.atomic_path(path)
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(summaries)
    os.replace(tmp, path)


def _plot_curves(path, summaries, report):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for s in summaries:
        steps, seg, fuse = zip(*s["curve"], strict=True)
        axes[0].plot(steps, seg, label=s["run"])
        axes[1].plot(steps, fuse, label=s["run"])
    for ax, title in zip(axes, ("train/loss_seg", "train/loss_fuse"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    tmp = report.atomic_path(path)
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, path)


def main():
    from fuse4seg_jax import train  # the same flags and process set-up as training

    train.run(work=run_ablation)


if __name__ == "__main__":
    main()
