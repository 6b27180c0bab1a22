"""The figures of `python -m fuse4seg_jax.evaluate` (see evaluate.py for what each shows)."""

import os

import numpy as np

from fuse4seg_jax import report
from fuse4seg_jax.regions import REGION_NAMES


def _largest_tumour_slice(labels, case_ids, case) -> int:
    idx = np.flatnonzero(case_ids == case)
    return int(idx[np.argmax((labels[idx] > 0).sum(axis=(1, 2)))])


def _case_figure(path, config, examples, outputs, cases, titles):
    chosen = [_largest_tumour_slice(examples["label"], examples["case_id"], c) for c in cases]
    report.save_figure(
        path,
        examples["modalities"][chosen],
        outputs["fused"][chosen] if "fused" in outputs else None,
        examples["label"][chosen],
        outputs["pred"][chosen],
        config.data.modalities,
        titles,
    )


def _title(case, row):
    return f"case {case}\n" + " ".join(f"{r.upper()} {row[f'dice_{r}']:.2f}" for r in REGION_NAMES)


def _boxplot(path, case_rows):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 3.6))
    data = [[row[f"dice_{r}"] for row in case_rows] for r in REGION_NAMES]
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(REGION_NAMES) + 1), [r.upper() for r in REGION_NAMES])
    ax.set_ylabel("Dice per 3D case")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Dice per region ({len(case_rows)} cases)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    report.save_png(fig, path)


def write_all(folder, config, examples, outputs, case_rows, num_cases: int):
    """cases.png, best_worst.png and dice_boxplot.png with labels; pairs.png without."""
    if not case_rows:  # fusion-only data: sources and fused images
        if "fused" not in outputs:
            return
        chosen = list(range(min(num_cases, len(outputs["fused"]))))
        report.save_fusion_figure(
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
                 [_title(c, by_case[c]) for c in sampled])  # fmt: skip
    ranked = sorted(by_case, key=lambda c: np.mean([by_case[c][f"dice_{r}"] for r in REGION_NAMES]))
    k = max(1, min(num_cases // 2, len(ranked) // 2))
    best, worst = ranked[::-1][:k], ranked[:k]
    titles = [f"best: {_title(c, by_case[c])}" for c in best]
    titles += [f"worst: {_title(c, by_case[c])}" for c in worst]
    _case_figure(os.path.join(folder, "best_worst.png"), config, examples, outputs, best + worst,
                 titles)  # fmt: skip
    _boxplot(os.path.join(folder, "dice_boxplot.png"), case_rows)
