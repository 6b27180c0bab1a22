"""How visible each tumour part is in an image: the question image-level fusion answers.

For a part P with a reference region R (the tissue it must be told apart from),
the contrast-to-noise ratio CNR = |mean_P - mean_R| / sqrt((var_P + var_R) / 2),
pooled over all given slices. Pairs (ours, matching how a reader separates the parts):
oedema vs normal brain, enhancing tumour vs oedema, necrotic core vs enhancing
tumour. A part is "visible" at contrast >= 1.5 (the phantom tests use this
threshold too); a fused image that serves segmentation should show all three.
"""

import numpy as np

PAIRS = {"oedema": (2, 0), "enhancing": (3, 2), "necrotic_core": (1, 3)}
VISIBLE = 1.5


def part_contrast(image: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> dict:
    """{part: contrast} for one image stack.

    image (N, H, W) float; labels (N, H, W) int 0..3; mask (N, H, W) brain mask.
    Parts absent from the labels get NaN.
    """
    image, labels = np.asarray(image, np.float64), np.asarray(labels)
    normal = (mask > 0) & (labels == 0)
    out = {}
    for part, (label, ref) in PAIRS.items():
        a = image[labels == label]
        b = image[normal if ref == 0 else labels == ref]
        noise = np.sqrt((a.var() + b.var()) / 2) if a.size and b.size else 0.0
        out[part] = float(abs(a.mean() - b.mean()) / noise) if noise > 0 else float("nan")
    return out


def contrast_table(modalities, fused, labels, mask, modality_names) -> dict:
    """{image name: {part: contrast}} for each source modality and the fused image."""
    table = {
        name: part_contrast(modalities[..., i], labels, mask)
        for i, name in enumerate(modality_names)
    }
    table["fused"] = part_contrast(fused, labels, mask)
    return table


def format_table(table: dict) -> str:
    parts = list(PAIRS)
    lines = [f"{'image':>8} | " + " | ".join(f"{p:>13}" for p in parts)]
    for name, row in table.items():
        cells = [f"{row[p]:>8.2f} {'seen' if row[p] >= VISIBLE else '-':>4}" for p in parts]
        lines.append(f"{name:>8} | " + " | ".join(cells))
    return "\n".join(lines)
