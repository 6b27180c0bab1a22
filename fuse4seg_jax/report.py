"""Figures and end-of-run summaries written to the workdir.

The figure shows, per sampled held-out case (its slice with the most tumour):
each modality | the fused image | ground truth | prediction, labels overlaid
in the usual BraTS colours (necrotic core red, oedema green, enhancing
tumour yellow). Files are written atomically (temp file + rename).
"""

import contextlib
import json
import os
import shutil
import tempfile

import numpy as np

LABEL_COLOURS = np.array(
    [[0, 0, 0, 0], [0.9, 0.1, 0.1, 0.6], [0.1, 0.8, 0.2, 0.45], [1.0, 0.9, 0.0, 0.7]]
)


def atomic_path(path):
    """A temporary file beside `path`, to be os.replace()d onto it when complete."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give outputs the usual permissions
    return tmp


def save_png(fig, path, dpi: int = 110):
    """Saves a Matplotlib figure to `path` as PNG atomically (temp file + rename), then
    closes it; a failed save leaves neither `path` changed nor a temp file behind."""
    import matplotlib.pyplot as plt

    tmp = atomic_path(path)
    try:
        fig.savefig(tmp, dpi=dpi, format="png")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    finally:
        plt.close(fig)


@contextlib.contextmanager
def atomic_dir(out):
    """Yields a fresh folder beside `out` to write into; when the block completes it becomes
    `out` (an existing `out` is moved aside first and removed after), when it raises it is
    removed and `out` is left as it was."""
    out = os.path.abspath(out)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out)}.partial-")
    try:
        yield tmp
        if os.path.exists(out):
            old = out + ".old"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path, text: str):
    tmp = atomic_path(path)
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path, obj):
    tmp = atomic_path(path)
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def pick_slices(labels, case_ids, num_cases: int):
    """Indices of the slice with the largest tumour area in each of the first cases."""
    chosen = []
    for c in np.unique(case_ids)[:num_cases]:
        idx = np.flatnonzero(case_ids == c)
        chosen.append(int(idx[np.argmax((labels[idx] > 0).sum(axis=(1, 2)))]))
    return chosen


def save_figure(path, modalities, fused, labels, preds, modality_names, titles=None):
    """Grid figure: one row per example.

    modalities (N, H, W, M) float in [0,1]; fused (N, H, W) in [0,1], or None
    (feature-level models: no fused column, overlays on the first modality);
    labels and preds (N, H, W) int in 0..3; titles: optional row titles.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, m = len(labels), modalities.shape[-1]
    fused_cols = [] if fused is None else ["fused"]
    cols = [*[name.upper() for name in modality_names], *fused_cols, "ground truth", "prediction"]
    fig, axes = plt.subplots(n, len(cols), figsize=(2.2 * len(cols), 2.3 * n), squeeze=False)
    for i in range(n):
        under = modalities[i, ..., 0] if fused is None else fused[i]
        images = [modalities[i, ..., j] for j in range(m)] + [under] * (len(fused_cols) + 2)
        overlays = [None] * (m + len(fused_cols)) + [labels[i], preds[i]]
        for j, (image, overlay) in enumerate(zip(images, overlays, strict=True)):
            ax = axes[i, j]
            ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            if overlay is not None:
                ax.imshow(LABEL_COLOURS[np.asarray(overlay)], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(cols[j], fontsize=10)
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fuse4seg_jax.data import harvard

    n, m = len(fused), modalities.shape[-1]
    cols = [*[name.upper() for name in modality_names], "fused"]
    cols += ["fused (colour)"] if chroma is not None else []
    fig, axes = plt.subplots(n, len(cols), figsize=(2.4 * len(cols), 2.5 * n), squeeze=False)
    for i in range(n):
        images = [modalities[i, ..., j] for j in range(m)] + [fused[i]]
        if chroma is not None:
            images.append(harvard.colourise(fused[i], chroma[i]))
        for j, image in enumerate(images):
            ax = axes[i, j]
            ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(cols[j], fontsize=10)
        if titles is not None:
            axes[i, 0].set_ylabel(titles[i], fontsize=8)
    fig.tight_layout()
    save_png(fig, path)
