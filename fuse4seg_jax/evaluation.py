"""Evaluation of a trained run or a classical fusion on one split of a dataset.

Owns: loading a split (`load_split`), predicting it with the run's latest checkpoint or a
classical fuser, the per-image and per-case metric rows (metrics/segmentation.py,
metrics/fusion.py), and writing an evaluation folder atomically: metrics.csv, summary.md
(mean ± sd tables) and the figures (figures.save_evaluation_figures). What each file holds
is described in evaluate.py, the command that runs `evaluate`.
"""

import os
import time

import numpy as np

from fuse4seg_jax import atomic_files, checkpointing, figures, inference
from fuse4seg_jax.classical import host_fuser
from fuse4seg_jax.data import sources
from fuse4seg_jax.metrics import fusion
from fuse4seg_jax.metrics import segmentation as seg_metrics


def _log(message):
    print(message, flush=True)


def load_split(config, split: str) -> dict:
    """The examples of one split as a numpy dict (batch convention, sorted by case/slice).
    ValueError (one line) naming the dataset's splits if it has no split `split`."""
    data = config.data
    sources.check_split(data, split)
    with data.unlocked():
        if split != "train":
            data.eval_split = split
    train, held_out = sources.load(data, config.seed)
    return train if split == "train" else held_out


def _mean_sd(values) -> str:
    values = np.asarray([v for v in values if v is not None and np.isfinite(v)], np.float64)
    if not values.size:
        return "-"
    return f"{values.mean():.4f} ± {values.std():.4f}"


def _summary_table(title, rows, keys) -> list[str]:
    lines = [f"### {title} (n = {len(rows)})", "", "| metric | mean ± sd |", "| --- | --- |"]
    lines += [f"| {k} | {_mean_sd([r.get(k) for r in rows])} |" for k in keys]
    return lines + [""]


def _predict(config, modalities, workdir, classical_name) -> dict:
    if workdir is not None:
        return inference.load_trained(config, workdir).predict(modalities)
    return {"fused": host_fuser(classical_name)(modalities)}


def evaluate(config, out: str, *, workdir=None, classical=None, split=None,
             convention="mmif", num_figure_cases=4, overwrite=False) -> dict:  # fmt: skip
    """Evaluates and writes `out` (see evaluate.py); returns the summary numbers: the mean
    over cases of each segmentation metric and over images of each fusion metric.

    Exactly one of workdir (a trained run: its latest checkpoint) or classical (a name of
    classical.METHODS). Raises FileExistsError (`out` exists and not overwrite),
    FileNotFoundError (no checkpoint in workdir), ValueError (bad arguments or config)."""
    if (workdir is None) == (classical is None):
        raise ValueError("give exactly one of --workdir (a trained run) or --classical")
    split = split or config.data.eval_split
    out = os.path.abspath(out)
    if os.path.exists(out) and not overwrite:
        raise FileExistsError(f"{out} exists: pass --overwrite to replace it")
    if workdir is not None and not checkpointing.available_steps(workdir):  # before loading data
        folder = os.path.join(os.path.abspath(workdir), "checkpoints")
        raise FileNotFoundError(f"{os.path.abspath(workdir)}: no checkpoint found in {folder}")
    t0 = time.time()
    examples = load_split(config, split)
    n = len(examples["modalities"])
    _log(f"{config.data.name}/{split}: {n} images ({time.time() - t0:.1f}s)")
    t0 = time.time()
    outputs = _predict(config, examples["modalities"], workdir, classical)
    source = f"checkpoint of {os.path.abspath(workdir)}" if workdir else f"classical {classical}"
    _log(f"predicted {n} images with the {source} ({n / (time.time() - t0):.1f} images/s)")

    labelled = "pred" in outputs and config.data.name != "harvard_mif"
    spacing = examples.get("spacing")
    slice_rows = [
        {"level": "slice", "case_id": str(c), "slice_index": int(s)}
        for c, s in zip(examples["case_id"], examples["slice_index"], strict=True)
    ]
    case_rows = []
    if labelled:
        scores = seg_metrics.slice_scores(outputs["pred"], examples["label"], spacing)
        for row, s in zip(slice_rows, scores, strict=True):
            row.update(s)
        by_case = seg_metrics.case_scores(
            outputs["pred"], examples["label"], examples["case_id"], examples["slice_index"],
            spacing=None if spacing is None else spacing[0],
            slice_spacing=1.0 if spacing is None else float(spacing[0][0]),
        )  # fmt: skip
        case_rows = [{"level": "case", "case_id": str(c), **v} for c, v in by_case.items()]
    fusion_keys = []
    if "fused" in outputs and examples["modalities"].shape[-1] == 2:
        t0 = time.time()
        scores = fusion.network_fusion_metrics(outputs["fused"], examples["modalities"], convention)
        for row, f in zip(slice_rows, scores, strict=True):
            row.update(f)
        fusion_keys = [k for k in slice_rows[0] if k[0].isupper()]
        _log(f"fusion metrics ({convention}) in {time.time() - t0:.1f}s")
    seg_keys = [k for k in (case_rows[0] if case_rows else {}) if k not in ("level", "case_id")]

    with atomic_files.atomic_dir(out) as tmp:
        atomic_files.write_csv(os.path.join(tmp, "metrics.csv"), slice_rows + case_rows)
        lines = [
            f"# Evaluation: {source}",
            "",
            f"Dataset {config.data.name}, split {split}: {n} images"
            + (f", {len(case_rows)} cases." if case_rows else "."),
            "",
        ]
        if case_rows:
            lines += _summary_table("Per 3D case (slices stacked back; mean over cases)",
                                    case_rows, seg_keys)  # fmt: skip
            lines += _summary_table("Per 2D slice (mean over slices)", slice_rows, seg_keys)
        if fusion_keys:
            lines += _summary_table(f"Fusion metrics, `{convention}` convention (per image)",
                                    slice_rows, fusion_keys)  # fmt: skip
        atomic_files.write_text(os.path.join(tmp, "summary.md"), "\n".join(lines))
        figures.save_evaluation_figures(tmp, config, examples, outputs, case_rows,
                                        num_figure_cases)  # fmt: skip
    _log(f"wrote {out}/summary.md, metrics.csv and figures")
    summary = {k: float(np.nanmean([r[k] for r in case_rows])) for k in seg_keys}
    summary |= {k: float(np.nanmean([r[k] for r in slice_rows])) for k in fusion_keys}
    return summary
