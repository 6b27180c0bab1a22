"""Export of a labelled dataset as a fusion benchmark of plain files: the work of
`python -m fuse4seg_jax.export`, which describes the layout for users.

Owns: the fusers an export can use (`CLASSICAL`, a classical fusion by name;
`checkpoint_fuser`, the fusion network of a trained run), one record's files (sources,
fused image and label as NPY and 8-bit PNG) and its index.csv row, and `export`, which
writes every split of the dataset into a folder atomically.
"""

import os

import numpy as np
from PIL import Image

from fuse4seg_jax import atomic_files, classical, inference
from fuse4seg_jax.data import sources

CLASSICAL = {name: classical.host_fuser(name) for name in classical.METHODS}


def checkpoint_fuser(config, workdir, *, step=None, batch_size: int = 16):
    """fused = fn(modalities (B,H,W,M)) with the fusion network of workdir's checkpoint
    `step` (None: the latest; "best": the best by held-out mean Dice).

    fused: (B,H,W) float32 in [0,1]; only the fusion network runs (XLA prunes the rest). Raises
    FileNotFoundError if workdir has no checkpoint, ValueError if its model makes no fused
    image (feature-level baselines)."""
    predictor = inference.load_trained(
        config, workdir, step=step, batch_size=batch_size, keys=("fused",)
    )
    if "fused" not in predictor.output_keys(len(config.data.modalities)):
        raise ValueError(
            f"{workdir}: model.kind={config.model.get('kind', 'fuse4seg')} makes no fused image"
        )
    return lambda x: predictor.predict(x)["fused"]


def _png(path, image01):
    Image.fromarray(np.round(np.clip(image01, 0, 1) * 255).astype(np.uint8)).save(path)


def _write_record(folder, split, record, fused_image, names) -> dict:
    """Writes one record's sources, fused image and label (PNG + NPY) under folder/split;
    returns its index.csv row."""
    case = record["case_id"]
    case = case.decode() if isinstance(case, bytes) else str(case)
    stem = f"{case}_{int(record['slice_index']):03d}"
    row = {"split": split, "case_id": case, "slice_index": int(record["slice_index"])}
    if "spacing" in record:  # BraTS: in-plane voxel size in mm
        row["spacing_x_mm"], row["spacing_y_mm"] = map(float, record["spacing"])
    images = {n: record["modalities"][..., i] for i, n in enumerate(names)}
    images["fused"] = np.asarray(fused_image, np.float32)
    for name, image in images.items():
        rel = os.path.join(split, f"{stem}_{name}")
        np.save(os.path.join(folder, rel + ".npy"), image.astype(np.float32))
        _png(os.path.join(folder, rel + ".png"), image)
        row[name] = rel + ".png"
    rel = os.path.join(split, f"{stem}_label")
    label = record["label"].astype(np.uint8)
    np.save(os.path.join(folder, rel + ".npy"), label)
    Image.fromarray(label).save(os.path.join(folder, rel + ".png"))
    row["label"] = rel + ".png"
    return row


def export(config, out: str, fuser, *, overwrite: bool = False, batch_size: int = 16) -> int:
    """Writes the benchmark to `out` (export.py), fusing with fuser(modalities (B,H,W,M)) ->
    (B,H,W) in batches of batch_size; returns the number of records. Raises
    FileExistsError if `out` exists and not overwrite."""
    # TensorFlow is imported only when a dataset is read (data/sources.py), not on import.
    from fuse4seg_jax.data import tfds_brats_fuse

    out = os.path.abspath(out)
    if os.path.exists(out) and not overwrite:
        raise FileExistsError(f"{out} exists: pass --overwrite to replace it")
    builder = sources.prepared_builder(config.data, config.seed)
    names = tuple(config.data.modalities)
    rows = []
    with atomic_files.atomic_dir(out) as tmp:
        for split in sorted(builder.info.splits):
            os.makedirs(os.path.join(tmp, split))
            records = sorted(
                tfds_brats_fuse.as_numpy(builder, split),
                key=lambda r: (r["case_id"], r["slice_index"]),
            )
            for start in range(0, len(records), batch_size):
                chunk = records[start : start + batch_size]
                fused = fuser(np.stack([r["modalities"] for r in chunk]))
                for record, fused_image in zip(chunk, fused, strict=True):
                    rows.append(_write_record(tmp, split, record, fused_image, names))
            print(f"exported {split}: {len(records)} records", flush=True)
        atomic_files.write_csv(os.path.join(tmp, "index.csv"), rows, fields=list(rows[0]))
    return len(rows)
