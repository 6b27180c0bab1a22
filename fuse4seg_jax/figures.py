"""The PNG figures of training, evaluation and prediction, written atomically.

- `save_figure`: per example, each modality | the fused image | ground truth | prediction,
  labels overlaid in the usual BraTS colours (necrotic core red, oedema green,
  enhancing tumour yellow); the trainer's figure.png and evaluation's cases.png and
  best_worst.png (`save_evaluation_figures`, with dice_boxplot.png).
- `save_fusion_figure`: fusion-only data (Harvard): sources | fused (| fused in colour).
- `case_preview`: a predicted BraTS volume's slices with the most tumour (predict), in
  radiological convention with orientation marks and the overlay's legend.
- `case_views`: BraTS-layout cases (real or simulated) in three planes through the
  tumour: each contrast | labels (docs/sim_cases.png, benchmarks/plot_cases.py).

Figures are built on `matplotlib.figure.Figure`, not pyplot: no GUI backend is chosen
or needed and no global figure list grows; `save_png` also closes pyplot figures.
"""

import os

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from fuse4seg_jax import atomic_files, orientation
from fuse4seg_jax.data import harvard
from fuse4seg_jax.regions import REGION_NAMES

LABEL_COLOURS = np.array(
    [[0, 0, 0, 0], [0.9, 0.1, 0.1, 0.6], [0.1, 0.8, 0.2, 0.45], [1.0, 0.9, 0.0, 0.7]]
)
PREVIEW_SLICES = 3  # rows of case_preview


def save_png(fig, path, dpi: int = 110):
    """Saves a Matplotlib figure to `path` as PNG atomically (temp file + rename), then
    closes it; a failed save leaves neither `path` changed nor a temp file behind."""
    try:
        atomic_files.write_file(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    finally:
        plt.close(fig)  # a pyplot figure leaves pyplot's list; a plain Figure: no-op


def _grid(rows: int, cols: int, width: float, height: float):
    """A figure of rows x cols panels, each about width x height inches: (fig, axes 2D)."""
    fig = Figure(figsize=(width * cols, height * rows))
    return fig, fig.subplots(rows, cols, squeeze=False)


def _panel(ax, image, overlay=None, title=None, origin=None):
    """A grey image in [0, 1] (RGB as is), labels 0..3 overlaid, no ticks."""
    ax.imshow(image, cmap="gray", vmin=0, vmax=1, origin=origin, interpolation="nearest")
    if overlay is not None:
        ax.imshow(LABEL_COLOURS[np.asarray(overlay)], origin=origin, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize=10)


def largest_tumour_slice(labels, case_ids, case) -> int:
    """Index of the slice of `case` with the largest tumour area."""
    idx = np.flatnonzero(case_ids == case)
    return int(idx[np.argmax((labels[idx] > 0).sum(axis=(1, 2)))])


def pick_slices(labels, case_ids, num_cases: int):
    """Indices of the slice with the largest tumour area in each of the first cases."""
    return [largest_tumour_slice(labels, case_ids, c) for c in np.unique(case_ids)[:num_cases]]


def save_figure(path, modalities, fused, labels, preds, modality_names, titles=None):
    """Grid figure: one row per example.

    modalities (N, H, W, M) float in [0,1]; fused (N, H, W) in [0,1], or None
    (feature-level models: no fused column, overlays on the first modality);
    labels and preds (N, H, W) int in 0..3; titles: optional row titles.
    """
    n, m = len(labels), modalities.shape[-1]
    fused_cols = [] if fused is None else ["fused"]
    cols = [*[name.upper() for name in modality_names], *fused_cols, "ground truth", "prediction"]
    fig, axes = _grid(n, len(cols), 2.2, 2.3)
    for i in range(n):
        under = modalities[i, ..., 0] if fused is None else fused[i]
        images = [modalities[i, ..., j] for j in range(m)] + [under] * (len(fused_cols) + 2)
        overlays = [None] * (m + len(fused_cols)) + [labels[i], preds[i]]
        for j, (image, overlay) in enumerate(zip(images, overlays, strict=True)):
            _panel(axes[i, j], image, overlay, cols[j] if i == 0 else None)
        if titles is not None:
            axes[i, 0].set_ylabel(titles[i], fontsize=8)
    fig.text(
        0.5,
        0.005,
        "overlay: necrotic core (red), oedema (green), enhancing tumour (yellow)",
        ha="center",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    save_png(fig, path)


def save_fusion_figure(path, modalities, fused, modality_names, chroma=None, titles=None):
    """Grid for fusion-only data: each source | fused (| fused in colour when `chroma`).

    modalities (N, H, W, M) in [0,1]; fused (N, H, W) in [0,1]; chroma (N, H, W, 2)
    Cb/Cr of the colour source (harvard.colourise rebuilds RGB from the fused luma).
    """
    n, m = len(fused), modalities.shape[-1]
    cols = [*[name.upper() for name in modality_names], "fused"]
    cols += ["fused (colour)"] if chroma is not None else []
    fig, axes = _grid(n, len(cols), 2.4, 2.5)
    for i in range(n):
        images = [modalities[i, ..., j] for j in range(m)] + [fused[i]]
        if chroma is not None:
            images.append(harvard.colourise(fused[i], chroma[i]))
        for j, image in enumerate(images):
            _panel(axes[i, j], image, title=cols[j] if i == 0 else None)
        if titles is not None:
            axes[i, 0].set_ylabel(titles[i], fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


OVERLAY_LEGEND = "overlay: necrotic core (red), oedema (green), enhancing tumour (yellow)"


def _orientation_letters(ax):
    """Small R / L / A / P marks on a panel shown in radiological convention
    (orientation.display_radiological): the patient's right on the left, anterior on top."""
    style = {"transform": ax.transAxes, "fontsize": 7, "color": "#ffd24d", "fontweight": "bold"}
    for x, y, letter, ha, va in ((0.02, 0.5, "R", "left", "center"),
                                 (0.98, 0.5, "L", "right", "center"),
                                 (0.5, 0.98, "A", "center", "top"),
                                 (0.5, 0.02, "P", "center", "bottom")):  # fmt: skip
        ax.text(x, y, letter, ha=ha, va=va, **style)


def case_preview(modalities, names, fused, pred, affine=None) -> Figure:
    """The PREVIEW_SLICES axial slices of a case with the most predicted tumour (then the
    most brain): sources | fused | segmentation overlay, in radiological convention
    (the patient's right on the image's left, anterior at the top; R/L/A/P marked on each
    panel) with the overlay's colour legend. modalities (H, W, D, M) in [0, 1]; fused
    (H, W, D) or None; pred (H, W, D) 0..3 or None; affine: their voxel-to-world affine,
    used to bring them to RAS first (None: they are RAS already). Rows are titled by the
    axial slice in RAS order (0 = most inferior)."""
    if affine is not None:
        to_ras = orientation.Reorientation.between(affine, "RAS")
        modalities = to_ras.apply(modalities)
        fused = None if fused is None else to_ras.apply(fused)
        pred = None if pred is None else to_ras.apply(pred)
    brain = (modalities.max(axis=-1) > 0).sum(axis=(0, 1))
    tumour = brain * 0 if pred is None else (pred > 0).sum(axis=(0, 1))
    order = np.lexsort((-brain, -tumour))  # most tumour first, then most brain
    zs = sorted(order[: min(PREVIEW_SLICES, len(order))].tolist())
    base = fused if fused is not None else modalities[..., 0]
    cols = [n.upper() for n in names] + (["fused"] if fused is not None else [])
    cols += ["segmentation"] if pred is not None else []
    fig, axes = _grid(len(zs), len(cols), 2.2, 2.3)
    show = orientation.display_radiological
    for i, z in enumerate(zs):
        images = [modalities[..., z, j] for j in range(len(names))]
        images += [fused[..., z]] if fused is not None else []
        images += [base[..., z]] if pred is not None else []
        for j, image in enumerate(images):
            overlay = show(pred[..., z]) if pred is not None and j == len(images) - 1 else None
            _panel(axes[i, j], show(image), overlay, cols[j] if i == 0 else None)
            _orientation_letters(axes[i, j])
        axes[i, 0].set_ylabel(f"slice {z}", fontsize=9)
    if pred is not None:
        fig.text(0.5, 0.005, OVERLAY_LEGEND, ha="center", fontsize=8)
        fig.tight_layout(rect=(0, 0.03, 1, 1))
    else:
        fig.tight_layout()
    return fig


def three_planes(volume_ras, centre):
    """(axial, coronal, sagittal) slices of a RAS volume (X, Y, Z, ...) through voxel
    `centre`, arranged for imshow: axial and coronal in radiological convention (the
    patient's right on the left; anterior / superior at the top), sagittal with anterior on
    the left and superior at the top."""
    x, y, z = (int(c) for c in centre)
    v = np.asarray(volume_ras)
    return (
        orientation.display_radiological(v[:, :, z]),
        np.swapaxes(v[::-1, y, ::-1], 0, 1),
        np.swapaxes(v[x, ::-1, ::-1], 0, 1),
    )


def case_views(cases, names) -> Figure:
    """cases: [(title, modalities (H, W, D, M) in [0, 1], label (H, W, D) 0..3, affine)]:
    per case three rows (axial, coronal, sagittal through the tumour's centre of mass),
    columns: each modality named in `names`, then labels over the second modality."""
    rows = 3 * len(cases)
    fig, axes = _grid(rows, len(names) + 1, 1.9, 1.9)
    for i, (title, mods, label, affine) in enumerate(cases):
        to_ras = orientation.Reorientation.between(affine, "RAS")
        mods, label = to_ras.apply(mods), to_ras.apply(label)
        tumour = np.argwhere(label > 0)
        centre = tumour.mean(0) if len(tumour) else np.asarray(label.shape) / 2.0
        planes = [three_planes(mods[..., j], centre) for j in range(len(names))]
        label_planes = three_planes(label, centre)
        for v, view in enumerate(("axial", "coronal", "sagittal")):
            row = 3 * i + v
            for j, name in enumerate(names):
                _panel(axes[row, j], planes[j][v], title=name.upper() if row == 0 else None)
            base = planes[min(1, len(names) - 1)][v]
            _panel(axes[row, -1], base, label_planes[v], "labels" if row == 0 else None)
            axes[row, 0].set_ylabel(f"{title}\n{view}" if v == 0 else view, fontsize=8)
    fig.text(0.5, 0.003, OVERLAY_LEGEND, ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.015, 1, 1))
    return fig


def _dice_title(case, row):
    return f"case {case}\n" + " ".join(f"{r.upper()} {row[f'dice_{r}']:.2f}" for r in REGION_NAMES)


def save_examples_figure(path, examples, outputs, chosen, modality_names, titles=None):
    """save_figure of the examples at indices `chosen`: sources and labels from `examples`,
    the fused image (when there is one) and the prediction from `outputs`."""
    save_figure(
        path,
        examples["modalities"][chosen],
        outputs["fused"][chosen] if "fused" in outputs else None,
        examples["label"][chosen],
        outputs["pred"][chosen],
        modality_names,
        titles,
    )


def _case_figure(path, config, examples, outputs, cases, titles):
    """save_examples_figure of each case's slice with the most tumour."""
    chosen = [largest_tumour_slice(examples["label"], examples["case_id"], c) for c in cases]
    save_examples_figure(path, examples, outputs, chosen, config.data.modalities, titles)


def _dice_boxplot(path, case_rows):
    fig = Figure(figsize=(4.8, 3.6))
    ax = fig.subplots()
    data = [[row[f"dice_{r}"] for row in case_rows] for r in REGION_NAMES]
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(REGION_NAMES) + 1), [r.upper() for r in REGION_NAMES])
    ax.set_ylabel("Dice per 3D case")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Dice per region ({len(case_rows)} cases)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_png(fig, path)


def save_evaluation_figures(folder, config, examples, outputs, case_rows, num_cases: int):
    """The figures of an evaluation (evaluate.py says what each shows): cases.png,
    best_worst.png and dice_boxplot.png with labels (case_rows); pairs.png without."""
    if not case_rows:  # fusion-only data: sources and fused images
        if "fused" not in outputs:
            return
        chosen = list(range(min(num_cases, len(outputs["fused"]))))
        save_fusion_figure(
            os.path.join(folder, "pairs.png"),
            examples["modalities"][chosen],
            outputs["fused"][chosen],
            config.data.modalities,
            chroma=examples["chroma"][chosen] if "chroma" in examples else None,
            titles=[f"pair {examples['case_id'][i]}" for i in chosen],
        )
        return
    by_case = {row["case_id"]: row for row in case_rows}
    case_ids = np.asarray([str(c) for c in examples["case_id"]])
    examples = dict(examples, case_id=case_ids)
    sampled = sorted(by_case)[:num_cases]
    _case_figure(os.path.join(folder, "cases.png"), config, examples, outputs, sampled,
                 [_dice_title(c, by_case[c]) for c in sampled])  # fmt: skip
    ranked = sorted(by_case, key=lambda c: np.mean([by_case[c][f"dice_{r}"] for r in REGION_NAMES]))
    k = max(1, min(num_cases // 2, len(ranked) // 2))
    best, worst = ranked[::-1][:k], ranked[:k]
    titles = [f"best: {_dice_title(c, by_case[c])}" for c in best]
    titles += [f"worst: {_dice_title(c, by_case[c])}" for c in worst]
    _case_figure(os.path.join(folder, "best_worst.png"), config, examples, outputs, best + worst,
                 titles)  # fmt: skip
    _dice_boxplot(os.path.join(folder, "dice_boxplot.png"), case_rows)
