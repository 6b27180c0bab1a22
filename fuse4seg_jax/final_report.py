"""The end-of-run report of a training run: `<workdir>/results.json` and `figure.png`.

Segmenting runs: held-out Dice per region (mean over cases and per case), the tumour-part
contrast of the fused image against the sources (metrics/visibility.py), the fusion
metrics of the held-out fused images (metrics/fusion.py) and a figure of sampled slices.
Fusion-only runs: the mean held-out fusion loss and a figure of source pairs and fused
images. Files are written by process 0 only, atomically (atomic_files.py).
"""

import jax
import numpy as np

from fuse4seg_jax import atomic_files, figures
from fuse4seg_jax.metric_writer import log
from fuse4seg_jax.metrics import fusion, visibility
from fuse4seg_jax.regions import REGION_NAMES


def write(config, workdir, examples, result, run_stats):
    """Writes the report of `result` (trainer.evaluate's output on the held-out `examples`);
    returns Dice per region, or for fusion-only runs the held-out scores."""
    if "pred" not in result:
        return _fusion_only(config, workdir, examples, result, run_stats)
    dice = {r: result["scores"][f"dice_{r}"] for r in REGION_NAMES}
    contrast = None
    if "fused" in result:  # feature-level baselines have no fused image
        contrast = visibility.contrast_table(
            examples["modalities"],
            result["fused"],
            examples["label"],
            examples["mask"],
            config.data.modalities,
        )
    if jax.process_index() == 0:
        _segmentation_files(config, workdir, examples, result, dice, contrast, run_stats)
    if contrast is not None:
        log(
            "tumour-part contrast on held-out slices (contrast-to-noise ratio):\n"
            + visibility.format_table(contrast)
        )
    log(
        f"held-out Dice over {len(result['per_case'])} cases: "
        + ", ".join(f"{r.upper()} {dice[r]:.3f}" for r in REGION_NAMES)
        + f"\nwrote {workdir}/results.json, {workdir}/figure.png, {workdir}/metrics.jsonl"
    )
    return dice


def fused_image_metrics(fused, modalities, convention="mmif"):
    """Mean over images of the fusion metrics (metrics/fusion.py) of held-out fused images
    against the two sources, on 8-bit grey levels; None without a fused image or with M != 2."""
    if fused is None or modalities.shape[-1] != 2:
        return None
    rows = fusion.network_fusion_metrics(fused, modalities, convention)
    values = {k: np.array([r[k] for r in rows], np.float64) for k in fusion.METRIC_NAMES}
    return {k: float(np.nanmean(v)) if np.isfinite(v).any() else None for k, v in values.items()}


def _segmentation_files(config, workdir, examples, result, dice, contrast, run_stats):
    chosen = figures.pick_slices(
        examples["label"], examples["case_id"], config.report.num_figure_cases
    )
    per_case = result["per_case"]
    titles = [
        f"case {examples['case_id'][i]} slice {int(examples['slice_index'][i])}\n"
        + " ".join(
            f"{r.upper()} {per_case[examples['case_id'][i].item()][r]:.2f}" for r in REGION_NAMES
        )
        for i in chosen
    ]
    figures.save_examples_figure(
        f"{workdir}/figure.png", examples, result, chosen, config.data.modalities, titles
    )
    atomic_files.write_json(
        f"{workdir}/results.json",
        {
            "dice_mean": dice,
            "dice_per_case": {str(k): v for k, v in per_case.items()},
            "num_cases": len(per_case),
            "part_contrast": contrast,
            "fusion_metrics": fused_image_metrics(result.get("fused"), examples["modalities"]),
            "train_steps": config.train.num_steps,
            **run_stats,
        },
    )


def _fusion_only(config, workdir, examples, result, run_stats):
    """Fusion-only runs: mean held-out fusion loss and a figure of sources and fused images."""
    scores = result["scores"]
    if jax.process_index() == 0:
        chosen = list(range(min(config.report.num_figure_cases, len(result["fused"]))))
        figures.save_fusion_figure(
            f"{workdir}/figure.png",
            examples["modalities"][chosen],
            result["fused"][chosen],
            config.data.modalities,
            chroma=examples["chroma"][chosen] if "chroma" in examples else None,
            titles=[f"pair {examples['case_id'][i]}" for i in chosen],
        )
        atomic_files.write_json(
            f"{workdir}/results.json",
            {
                "eval": scores,
                "num_pairs": len(result["fused"]),
                "train_steps": config.train.num_steps,
                **run_stats,
            },
        )
    log(
        f"held-out fusion loss over {len(result['fused'])} pairs: {scores['loss_fuse']:.4f}\n"
        f"wrote {workdir}/results.json, {workdir}/figure.png, {workdir}/metrics.jsonl"
    )
    return scores
