"""What `python -m fuse4seg_jax.score` writes: metrics.csv, summary.md (mean ± sd
tables, voxel-wise and lesion-wise) and dice_boxplot.png, into one folder atomically
(`write_outputs`). The scoring itself is scoring.py's.
"""

import os

import numpy as np

from fuse4seg_jax import atomic_files
from fuse4seg_jax.metrics import lesionwise
from fuse4seg_jax.metrics import segmentation as seg_metrics
from fuse4seg_jax.regions import REGIONS


def _mean_sd(summary: dict, key: str, digits: int) -> str:
    s = summary[key]
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}" if s["n"] else "n/a"


def _table(title: str, rows: list, metrics: list) -> list[str]:
    """A markdown table: one line per (label, key prefix, digits), columns WT, TC, ET."""
    summary = seg_metrics.summarise(rows, skip=("case",))
    lines = [f"## {title}", "", "| metric | WT | TC | ET |", "| --- | --- | --- | --- |"]
    for label, prefix, digits in metrics:
        cells = [_mean_sd(summary, f"{prefix}_{r}", digits) for r in REGIONS]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return lines + [""]


def _conventions_text(rows: list, key: str) -> str:
    counts = {}
    for row in rows:
        counts[row[key]] = counts.get(row[key], 0) + 1
    return ", ".join(f"{name}: {count}" for name, count in sorted(counts.items()))


def summary_markdown(rows: list, pred_dir, truth_dir, labels: str) -> str:
    """summary.md: the inputs, label conventions, and mean ± sd over cases per metric."""
    n = len(rows)
    totals = {f"{m}_{r}": sum(row[f"lw_{m}_{r}"] for row in rows)
              for m in ("tp", "fn", "fp") for r in REGIONS}  # fmt: skip
    lines = [
        "# Segmentation scores",
        "",
        f"- predictions: `{os.path.abspath(pred_dir)}`",
        f"- ground truth: `{os.path.abspath(truth_dir)}`",
        f"- {n} cases, matched by case id; `--labels {labels}`; label conventions found "
        f"(cases): truth {_conventions_text(rows, 'truth_labels')}; predictions "
        f"{_conventions_text(rows, 'pred_labels')}",
        "- labels converted to 0 background, 1 necrotic core, 2 oedema, 3 enhancing tumour "
        "(BraTS 2021 stores ET as 4); regions WT = {1, 2, 3}, TC = {1, 3}, ET = {3}; "
        "HD95 in mm from the truth header's voxel spacing",
        "- mean ± sd over cases (population sd); per-case values in metrics.csv",
        "",
    ]
    voxel = [("Dice", "dice", 4), ("HD95 (mm)", "hd95", 2), ("sensitivity", "sens", 4),
             ("specificity", "spec", 5)]  # fmt: skip
    lines += _table("Per 3D case, voxel-wise", rows, voxel)
    lines += [
        f"Empty masks: Dice 1 and HD95 0 when both are empty, Dice 0 and HD95 "
        f"{seg_metrics.HD95_EMPTY:g} mm when one is (metrics/segmentation.py).",
        "",
    ]
    lesion = [("lesion-wise Dice", "lw_dice", 4), ("lesion-wise HD95 (mm)", "lw_hd95", 2)]
    lines += _table("Lesion-wise (BraTS 2023)", rows, lesion)
    for label, m in (("TP lesions", "tp"), ("FN lesions", "fn"), ("FP lesions", "fp")):
        counts = ", ".join(f"{r.upper()} {totals[f'{m}_{r}']}" for r in REGIONS)
        lines.append(f"- {label} (all cases): {counts}")
    lines += [
        "",
        f"GT lesions merged when within {lesionwise.DILATION} dilations, lesions of at most "
        f"{lesionwise.MIN_VOLUME} mm^3 ignored, {lesionwise.HD95_FP:g} mm per missed or "
        "false-positive lesion; lesion HD95 computed as the voxel-wise one "
        "(metrics/lesionwise.py).",
        "",
    ]
    return "\n".join(lines)


def save_dice_boxplot(path, rows: list):
    """Dice per region over cases, voxel-wise and lesion-wise boxes side by side (PNG)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.6, 3.6))
    ax = fig.subplots()
    names = list(REGIONS)
    voxel = [[row[f"dice_{r}"] for row in rows] for r in names]
    lesion = [[row[f"lw_dice_{r}"] for row in rows] for r in names]
    at = np.arange(len(names)) * 3.0
    for data, offset, colour, label in ((voxel, -0.5, "C0", "voxel-wise"),
                                        (lesion, 0.5, "C1", "lesion-wise")):  # fmt: skip
        box = ax.boxplot(data, positions=at + offset, widths=0.8, showmeans=True,
                         patch_artist=True, medianprops={"color": "black"})  # fmt: skip
        for patch in box["boxes"]:
            patch.set_facecolor(colour)
            patch.set_alpha(0.5)
        box["boxes"][0].set_label(label)
    ax.set_xticks(at, [r.upper() for r in names])
    ax.set_ylabel("Dice per 3D case")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Dice per region ({len(rows)} cases)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")


def write_outputs(out, rows: list, pred_dir, truth_dir, labels: str):
    """metrics.csv, summary.md and dice_boxplot.png into `out`, atomically (a folder that
    appears complete or not at all)."""
    with atomic_files.atomic_dir(out) as tmp:
        atomic_files.write_csv(os.path.join(tmp, "metrics.csv"), rows)
        text = summary_markdown(rows, pred_dir, truth_dir, labels)
        atomic_files.write_text(os.path.join(tmp, "summary.md"), text)
        save_dice_boxplot(os.path.join(tmp, "dice_boxplot.png"), rows)
