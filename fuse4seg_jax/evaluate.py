"""Evaluate a trained run or a classical fusion on a split: `python -m fuse4seg_jax.evaluate`.

    python -m fuse4seg_jax.evaluate --config configs/demo.py --workdir runs/demo
    python -m fuse4seg_jax.evaluate --config configs/harvard.py \\
        --config.data.manual_dir=../shared/data/harvard --classical max --out runs/eval-max

Writes to `--out` (default `<workdir>/eval-<split>`), atomically (a temporary
folder renamed when complete; an existing one is kept unless `--overwrite`):

- `metrics.csv`: one row per image (`level` = slice) and, with labels, one per
  case (`level` = case; the case's slices stacked back in slice order). Per
  region WT/TC/ET: Dice, HD95 (mm, from the pixel spacing; the slice spacing
  is taken equal to the in-plane spacing, as BraTS and the phantom are
  isotropic), sensitivity, specificity, with the BraTS empty-mask conventions
  (metrics/segmentation.py). Per image, the fusion metrics of the fused image
  against the two sources (metrics/fusion.py, `--convention`), on 8-bit grey
  levels as the published tables use them: the fused image min-max scaled and
  rounded, the sources rounded.
- `summary.md`: mean and standard deviation of every metric, per 3D case and
  per 2D slice (both protocols, labelled), and of the fusion metrics.
- figures: `cases.png` (sources | fused | ground truth | prediction for sampled
  cases), `best_worst.png` (the best and worst cases by mean Dice),
  `dice_boxplot.png` (Dice per region over cases). Fusion-only data (Harvard):
  `pairs.png`, colour fused images for PET/SPECT.
"""

import os

from fuse4seg_jax import cli

cli.default_cpu_devices()

import csv  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from absl import flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

SPLITS = ("train", "validation", "test")
FLAGS = flags.FLAGS


def define_flags():
    config_flags.DEFINE_config_file("config", None, "The run's config.", lock_config=True)
    flags.DEFINE_string("workdir", None, "A training workdir: evaluate its latest checkpoint.")
    flags.DEFINE_string("classical", None, "Evaluate a classical fusion (mean|max|pca|laplacian).")
    flags.DEFINE_enum("split", None, list(SPLITS), "Split (default: the config's data.eval_split).")
    flags.DEFINE_string("out", None, "Output folder (default <workdir>/eval-<split>).")
    flags.DEFINE_enum("convention", "mmif", ["mmif", "standard"], "Fusion-metric convention.")
    flags.DEFINE_integer("num_figure_cases", 4, "Cases in cases.png and per half of best_worst.")
    flags.DEFINE_bool("overwrite", False, "Replace an existing --out.")
    flags.mark_flags_as_required(["config"])


def _log(message):
    print(message, flush=True)


def load_split(config, split: str) -> dict:
    """The examples of one split as a numpy dict (batch convention, sorted by case/slice)."""
    from fuse4seg_jax.data import sources

    data = config.data
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


def evaluate(config, out: str, *, workdir=None, classical=None, split=None,
             convention="mmif", num_figure_cases=4, overwrite=False) -> dict:  # fmt: skip
    """Evaluates and writes `out` (see module docstring); returns the summary numbers."""
    from fuse4seg_jax import report
    from fuse4seg_jax.metrics import segmentation as seg_metrics

    if (workdir is None) == (classical is None):
        raise ValueError("give exactly one of --workdir (a trained run) or --classical")
    split = split or config.data.eval_split
    out = os.path.abspath(out)
    if os.path.exists(out) and not overwrite:
        raise FileExistsError(f"{out} exists: pass --overwrite to replace it")
    if workdir is not None:
        from fuse4seg_jax import inference

        if not inference.available_steps(workdir):  # before the data are loaded
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
        from fuse4seg_jax.metrics import fusion

        scores = fusion.network_fusion_metrics(outputs["fused"], examples["modalities"], convention)
        for row, f in zip(slice_rows, scores, strict=True):
            row.update(f)
        fusion_keys = [k for k in slice_rows[0] if k[0].isupper()]
        _log(f"fusion metrics ({convention}) in {time.time() - t0:.1f}s")
    seg_keys = [k for k in (case_rows[0] if case_rows else {}) if k not in ("level", "case_id")]

    from fuse4seg_jax import evaluate_figures

    with report.atomic_dir(out) as tmp:
        _write_csv(os.path.join(tmp, "metrics.csv"), slice_rows + case_rows)
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
        report.write_text(os.path.join(tmp, "summary.md"), "\n".join(lines))
        evaluate_figures.write_all(tmp, config, examples, outputs, case_rows, num_figure_cases)
    _log(f"wrote {out}/summary.md, metrics.csv and figures")
    summary = {k: float(np.nanmean([r[k] for r in case_rows])) for k in seg_keys}
    summary |= {k: float(np.nanmean([r[k] for r in slice_rows])) for k in fusion_keys}
    return summary


def _predict(config, modalities, workdir, classical_name) -> dict:
    if workdir is not None:
        from fuse4seg_jax import inference

        return inference.load_trained(config, workdir).predict(modalities)
    from fuse4seg_jax import classical

    return {"fused": classical.host_fuser(classical_name)(modalities)}


def _write_csv(path, rows):
    from fuse4seg_jax import report

    fields = list(dict.fromkeys(k for row in rows for k in row))
    tmp = report.atomic_path(path)
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}", cli.EXIT_USAGE)
    logging.set_verbosity(logging.ERROR)
    split = FLAGS.split or FLAGS.config.data.eval_split
    out = FLAGS.out
    if out is None:
        if FLAGS.workdir is None:
            cli.fail("--out is needed with --classical")
        out = os.path.join(FLAGS.workdir, f"eval-{split}")
    try:
        evaluate(
            FLAGS.config, out, workdir=FLAGS.workdir, classical=FLAGS.classical, split=split,
            convention=FLAGS.convention, num_figure_cases=FLAGS.num_figure_cases,
            overwrite=FLAGS.overwrite,
        )  # fmt: skip
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        cli.fail(e, 1)


def run(argv=None):
    cli.run(main, define_flags, argv)


if __name__ == "__main__":
    run()
