"""The ablation runner's figures: training curves of every run, and Dice per run.

Both take `ablate.aggregate`'s rows (one per run: means over the seeds, `<key>_sd` their
standard deviations) and write a PNG atomically (figures.save_png).
"""

import numpy as np
from matplotlib.figure import Figure

from fuse4seg_jax import figures
from fuse4seg_jax.regions import REGION_NAMES

_REGION_COLOURS = {"wt": "tab:green", "tc": "tab:red", "et": "gold"}
_LINE_STYLES = ("-", "--", ":", "-.")


def run_style(index):
    """(colour, line style) of the index-th run's curve: the ten colours of tab10, then
    the same colours dashed, dotted and dash-dotted, so up to 40 runs stay distinct (the
    comparison has 11)."""
    return f"C{index % 10}", _LINE_STYLES[(index // 10) % len(_LINE_STYLES)]


def plot_curves(path, rows):
    """train/loss_seg and train/loss_fuse against the step, one line per run (its first
    seed), each run in its own colour and line style, the legend beside the panels.
    Returns the figure (written to `path`)."""
    fig = Figure(figsize=(12, 3.8))
    axes = fig.subplots(1, 2)
    for index, row in enumerate(rows):
        steps, seg, fuse = zip(*row["curve"], strict=True)
        colour, style = run_style(index)
        for ax, values in zip(axes, (seg, fuse), strict=True):
            ax.plot(steps, values, color=colour, linestyle=style, label=row["run"])
    for ax, title in zip(axes, ("train/loss_seg", "train/loss_fuse"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    figures.save_png(fig, path)
    return fig


def plot_dice(path, rows):
    """Held-out Dice per run and region as bars (mean over seeds, whiskers ± sd), one panel
    per protocol: the selected slices (training's evaluation) and, when the rows have
    them, whole cases (the volume protocol)."""
    panels = [("dice", "selected tumour slices")]
    if any(np.isfinite(row.get("vol_dice_wt", np.nan)) for row in rows):
        panels.append(("vol_dice", "whole cases (volume protocol)"))
    seeds = max(int(row.get("seeds", 1)) for row in rows)
    fig = Figure(figsize=(max(6.0, 0.75 * len(rows) + 2.0), 3.2 * len(panels)))
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    x = np.arange(len(rows))
    width = 0.8 / len(REGION_NAMES)
    for ax, (prefix, title) in zip(axes, panels, strict=True):
        for i, region in enumerate(REGION_NAMES):
            key = f"{prefix}_{region}"
            means = np.asarray([row.get(key, np.nan) for row in rows], np.float64)
            sds = np.asarray([row.get(f"{key}_sd", np.nan) for row in rows], np.float64)
            offset = (i - (len(REGION_NAMES) - 1) / 2) * width
            whiskers = np.where(np.isfinite(sds), sds, 0.0) if np.isfinite(sds).any() else None
            colour = _REGION_COLOURS.get(region)
            ax.bar(x + offset, means, width, yerr=whiskers, capsize=2, label=region.upper(),
                   color=colour)  # fmt: skip
        over = f", mean ± sd over {seeds} seeds" if seeds > 1 else ""
        ax.set_title(f"Held-out Dice, {title}{over}")
        ax.set_ylim(0.0, 1.15)  # headroom for the legend
        ax.set_yticks(np.linspace(0.0, 1.0, 6))
        ax.set_xticks(x, [row["run"] for row in rows], rotation=30, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8, ncols=len(REGION_NAMES), loc="upper right")
    fig.tight_layout()
    figures.save_png(fig, path)
