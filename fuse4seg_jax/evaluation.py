"""Evaluation of a trained run or a classical fusion on one split of a dataset.

Two protocols (`PROTOCOLS`), named on every table and row they produce:
- "volume": every held-out case whole (data/volumes.py), every axial slice with brain
  through the networks by the code `predict` uses (volume_prediction.predict_volume, the
  same brain window), scored on the 3D label volume: voxel-wise Dice, HD95, sensitivity,
  specificity (metrics/segmentation.py) and the BraTS 2023 lesion-wise scores
  (metrics/lesionwise.py). What BraTS, nnU-Net and MONAI users report.
- "slices": the split's selected tumour slices of the TFDS dataset (the BraTS-Fuse
  protocol of the paper), scored per 2D slice and per case with the slices stacked back,
  plus the fusion metrics of each fused image (metrics/fusion.py).
Owns loading a split (`load_split`), predicting it with a checkpoint of the run or a
classical fuser, the metric rows, and writing an evaluation folder atomically:
metrics.csv, summary.md (mean ± sd tables), evaluation.json (what was evaluated: the
checkpoint step, split, protocol, and the means of summary.md, for programs such as
ablate) and the figures (figures.save_evaluation_figures). What each file holds is
described in evaluate.py, the command.
"""

import os
import time

import numpy as np

from fuse4seg_jax import atomic_files, checkpointing, figures, inference, storage, volume_prediction
from fuse4seg_jax.classical import host_fuser
from fuse4seg_jax.data import sources, volumes
from fuse4seg_jax.data.errors import DataError
from fuse4seg_jax.metrics import fusion, lesionwise
from fuse4seg_jax.metrics import segmentation as seg_metrics

PROTOCOLS = ("volume", "slices")
_TITLES = {
    "volume": "Volume protocol: whole 3D cases, every axial slice with brain",
    "slices": "Slice protocol (BraTS-Fuse): the split's selected tumour slices",
}


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


def default_protocol(config, classical=None) -> str:
    """ "volume" for a trained run on a dataset of 3D cases (volumes.DATASETS), else "slices"."""
    return "volume" if classical is None and config.data.name in volumes.DATASETS else "slices"


def _source(workdir, step, classical) -> str:
    if workdir is None:
        return f"classical {classical}"
    which = {None: "latest checkpoint", "best": "best checkpoint"}.get(step, f"checkpoint {step}")
    return f"{which} of {storage.absolute(workdir)}"


def _check_arguments(config, out, workdir, classical, protocol, step, overwrite):
    """Raises on a bad combination; returns the step of the checkpoint that will be
    evaluated (None for a classical fusion)."""
    if (workdir is None) == (classical is None):
        raise ValueError("give exactly one of --workdir (a trained run) or --classical")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    if protocol == "volume" and classical is not None:
        raise ValueError("a classical fusion does not segment: use --protocol slices with it")
    if protocol == "volume" and config.data.name not in volumes.DATASETS:
        raise ValueError(
            f"data.name={config.data.name!r} has no 3D cases: the volume protocol needs one "
            f"of {', '.join(volumes.DATASETS)} (use --protocol slices)"
        )
    if step is not None and workdir is None:
        raise ValueError("--step picks a checkpoint of --workdir; a classical fusion has none")
    if storage.exists(out) and not overwrite:
        raise FileExistsError(f"{out} exists: pass --overwrite to replace it")
    if workdir is not None:  # before loading data
        best = step == "best"
        found = checkpointing.available_steps(workdir, best=best)
        folder = checkpointing.directory(workdir, best=best)
        if not found:
            raise FileNotFoundError(f"{storage.absolute(workdir)}: no checkpoint found in {folder}")
        if step not in (None, "best") and int(step) not in found:
            raise FileNotFoundError(f"{folder}: no checkpoint of step {step} (found {found})")
        return found[-1] if step in (None, "best") else int(step)
    return None


def evaluate(config, out: str, *, workdir=None, classical=None, split=None, protocol=None,
             step=None, convention="mmif", num_figure_cases=4,
             overwrite=False) -> dict:  # fmt: skip
    """Evaluates and writes `out` (see evaluate.py); returns the summary numbers: the mean
    over cases of each segmentation metric and over images of each fusion metric.

    Exactly one of workdir (a trained run) or classical (a name of classical.METHODS).
    protocol: one of PROTOCOLS (None: default_protocol). step: the checkpoint (None: the
    latest; "best": the best by held-out mean Dice). Raises FileExistsError (`out` exists
    and not overwrite), FileNotFoundError (no such checkpoint in workdir), ValueError (bad
    arguments or config), DataError (a bad case file)."""
    split = split or config.data.eval_split
    protocol = protocol or default_protocol(config, classical)
    out = storage.absolute(out)
    checkpoint_step = _check_arguments(config, out, workdir, classical, protocol, step, overwrite)
    source = _source(workdir, step, classical)
    if protocol == "volume":
        result = _volume_protocol(config, split, workdir, step)
    else:
        result = _slice_protocol(config, split, workdir, step, classical, convention)
    rows, tables, examples, outputs, case_rows = result
    summary = {}
    for _, table_rows, keys in tables[::-1]:  # the first table's means win
        summary |= {k: float(np.nanmean([r[k] for r in table_rows])) for k in keys}
    record = {
        "source": source, "checkpoint_step": checkpoint_step, "dataset": config.data.name,
        "split": split, "protocol": protocol, "cases": len(case_rows), "means": summary,
    }  # fmt: skip
    with atomic_files.atomic_dir(out) as tmp:
        atomic_files.write_csv(os.path.join(tmp, "metrics.csv"), rows)
        lines = [f"# Evaluation: {source}", "", f"Dataset {config.data.name}, split {split}.", ""]
        for title, table_rows, keys in tables:
            lines += _summary_table(title, table_rows, keys)
        if protocol == "volume":
            lines += ["Fusion metrics are per 2D image: run `--protocol slices` for them.", ""]
        atomic_files.write_text(os.path.join(tmp, "summary.md"), "\n".join(lines))
        atomic_files.write_json(os.path.join(tmp, "evaluation.json"), record)
        figures.save_evaluation_figures(tmp, config, examples, outputs, case_rows,
                                        num_figure_cases)  # fmt: skip
    for prefix, what in (("dice", "Dice"), ("hd95", "HD95 (mm)"), ("lw_dice", "lesion-wise Dice")):
        if f"{prefix}_wt" in summary:
            means = " ".join(
                f"{r.upper()} {summary[f'{prefix}_{r}']:.3f}" for r in ("wt", "tc", "et")
            )
            _log(f"{protocol} protocol, mean over {len(case_rows)} cases: {what} {means}")
    _log(f"wrote {out}/summary.md, metrics.csv and figures")
    return summary


def _volume_protocol(config, split, workdir, step):
    """(rows, tables, figure examples, figure outputs, case rows) of the volume protocol."""
    cases = volumes.split_cases(config.data, config.seed, split)
    predictor = inference.load_trained(config, workdir, step=step)
    crop = int(config.data.image_size)
    _log(f"{config.data.name}/{split}: {len(cases)} cases, volume protocol "
         f"(checkpoint step {predictor.step})")  # fmt: skip
    rows, shown, t_start, skipped = [], [], time.time(), 0
    for i, case in enumerate(cases, 1):
        t0 = time.time()
        try:
            modalities, label, spacing = case.load()
        except DataError as e:
            if not config.data.skip_bad_cases:
                raise
            _log(f"skipping case {case.case_id} (data.skip_bad_cases): {e}")
            skipped += 1
            continue
        outputs = volume_prediction.predict_volume(predictor, modalities, crop)
        t1 = time.time()
        pred = outputs["pred"]
        row = {"protocol": "volume", "level": "case", "case_id": case.case_id}
        row |= {"num_slices": int(label.shape[2]), "brain_slices": _brain_slices(modalities)}
        row |= seg_metrics.region_scores(pred, label, spacing)
        row |= lesionwise.lesion_scores(pred, label, spacing)
        rows.append(row)
        shown.append(_figure_slice(modalities, label, outputs))
        eta = (time.time() - t_start) / i * (len(cases) - i)
        _log(f"[{i}/{len(cases)}] {case.case_id}: {row['brain_slices']} slices, predicted in "
             f"{t1 - t0:.1f} s, scored in {time.time() - t1:.1f} s; Dice WT "
             f"{row['dice_wt']:.3f} TC {row['dice_tc']:.3f} ET {row['dice_et']:.3f}"
             + (f", about {eta:.0f} s left" if i < len(cases) else ""))  # fmt: skip
    if not rows:
        raise ValueError(f"no case of split {split!r} could be read ({skipped} skipped)")
    voxel_keys = [k for k in rows[0] if k.split("_")[0] in ("dice", "hd95", "sens", "spec")]
    lesion_keys = [k for k in rows[0] if k.startswith("lw_")]
    title = f"{_TITLES['volume']} (mean over cases)"
    tables = [(f"{title}, voxel-wise", rows, voxel_keys),
              (f"{title}, lesion-wise (BraTS 2023)", rows, lesion_keys)]  # fmt: skip
    examples, outputs = _stack_shown(shown, [r["case_id"] for r in rows])
    return rows, tables, examples, outputs, rows


def _brain_slices(modalities) -> int:
    return int((modalities.max(axis=-1) > 0).any(axis=(0, 1)).sum())


def _figure_slice(modalities, label, outputs) -> dict:
    """The axial slice with the most tumour (ground truth, else prediction) for the figures."""
    area = (label > 0).sum(axis=(0, 1))
    if not area.any():
        area = (outputs["pred"] > 0).sum(axis=(0, 1))
    z = int(np.argmax(area)) if area.any() else label.shape[2] // 2
    return {"modalities": modalities[:, :, z], "label": label[:, :, z]} | {
        k: outputs[k][:, :, z] for k in ("pred", "fused") if k in outputs
    }


def _stack_shown(shown, case_ids) -> tuple:
    """(examples, outputs) dicts of one figure slice per case, zero-padded to one size."""
    h = max(s["label"].shape[0] for s in shown)
    w = max(s["label"].shape[1] for s in shown)

    def stack(key):
        parts = []
        for s in shown:
            a = s[key]
            pad = [(0, h - a.shape[0]), (0, w - a.shape[1])] + [(0, 0)] * (a.ndim - 2)
            parts.append(np.pad(a, pad))
        return np.stack(parts)

    examples = {"modalities": stack("modalities"), "label": stack("label"),
                "case_id": np.asarray(case_ids)}  # fmt: skip
    return examples, {k: stack(k) for k in ("pred", "fused") if k in shown[0]}


def _predict_slices(config, modalities, workdir, step, classical_name) -> dict:
    if workdir is not None:
        return inference.load_trained(config, workdir, step=step).predict(modalities)
    return {"fused": host_fuser(classical_name)(modalities)}


def _slice_protocol(config, split, workdir, step, classical, convention):
    """(rows, tables, examples, outputs, case rows) of the slice protocol."""
    t0 = time.time()
    examples = load_split(config, split)
    n = len(examples["modalities"])
    _log(f"{config.data.name}/{split}: {n} images, slice protocol ({time.time() - t0:.1f}s)")
    t0 = time.time()
    outputs = _predict_slices(config, examples["modalities"], workdir, step, classical)
    _log(f"predicted {n} images with the {_source(workdir, step, classical)} "
         f"({n / (time.time() - t0):.1f} images/s)")  # fmt: skip

    labelled = "pred" in outputs and config.data.name != "harvard_mif"
    spacing = examples.get("spacing")
    slice_rows = [
        {"protocol": "slices", "level": "slice", "case_id": str(c), "slice_index": int(s)}
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
        case_rows = [{"protocol": "slices", "level": "case", "case_id": str(c), **v}
                     for c, v in by_case.items()]  # fmt: skip
    tables = []
    if case_rows:
        seg_keys = [k for k in case_rows[0] if k not in ("protocol", "level", "case_id")]
        tables += [
            (f"{_TITLES['slices']}, per 3D case (slices stacked back; mean over cases)",
             case_rows, seg_keys),
            (f"{_TITLES['slices']}, per 2D slice (mean over slices)", slice_rows, seg_keys),
        ]  # fmt: skip
    if "fused" in outputs and examples["modalities"].shape[-1] == 2:
        t0 = time.time()
        scores = fusion.network_fusion_metrics(outputs["fused"], examples["modalities"], convention)
        for row, f in zip(slice_rows, scores, strict=True):
            row.update(f)
        fusion_keys = [k for k in slice_rows[0] if k[0].isupper()]
        tables.append((f"Fusion metrics, `{convention}` convention (per image of the "
                       f"{len(slice_rows)} slices)", slice_rows, fusion_keys))  # fmt: skip
        _log(f"fusion metrics ({convention}) in {time.time() - t0:.1f}s")
    return slice_rows + case_rows, tables, examples, outputs, case_rows
