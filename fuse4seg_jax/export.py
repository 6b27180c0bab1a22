"""Export a benchmark as plain files: `python -m fuse4seg_jax.export`.

    python -m fuse4seg_jax.export --config configs/brats_fuse.py \\
        --config.data.manual_dir=/data/BraTS2021 --out exports/brats_fuse \\
        (--workdir runs/brats_fuse | --method max)

Writes, for every record of every split of the dataset (BraTS-Fuse or the
phantom), the paired originals, the ground truth and a fused image, so that
other fusion tools can read the benchmark ("paired originals, fused images
and ground truth"):

    <out>/<split>/<case>_<slice>_<modality>.{png,npy}   sources, float32 [0,1] / 8-bit PNG
    <out>/<split>/<case>_<slice>_label.{png,npy}        labels 0..3 (PNG values 0..3 as stored)
    <out>/<split>/<case>_<slice>_fused.{png,npy}        the fused image
    <out>/index.csv                                     one row per record, relative paths
                                                        (and in-plane spacing in mm for BraTS)

The fused image comes from a trained checkpoint (`--workdir`: its latest
checkpoint; the config must be the run's) or from a classical fusion
(`--method mean`, `max`, `pca` or `laplacian`; classical.py). Slices are
exported whole (not cropped). The export is written to a temporary folder
beside `--out` and renamed when complete; an existing `--out` is refused
unless `--overwrite`.
"""

import os

from fuse4seg_jax import cli

cli.default_cpu_devices()

import csv  # noqa: E402

import numpy as np  # noqa: E402
from absl import flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from fuse4seg_jax import classical, report  # noqa: E402

CLASSICAL = {name: classical.host_fuser(name) for name in classical.METHODS}

FLAGS = flags.FLAGS


def define_flags():
    config_flags.DEFINE_config_file(
        "config", None, "The dataset's (and run's) config.", lock_config=True
    )
    flags.DEFINE_string("out", None, "Output folder.")
    flags.DEFINE_string("workdir", None, "A training workdir: fuse with its latest checkpoint.")
    flags.DEFINE_enum("method", None, list(CLASSICAL), "Classical fusion instead of a checkpoint.")
    flags.DEFINE_bool("overwrite", False, "Replace an existing --out.")
    flags.mark_flags_as_required(["config", "out"])


def checkpoint_fuser(config, workdir, *, batch_size: int = 16):
    """fused = fn(modalities (B,H,W,M)) with the fusion network of workdir's latest checkpoint.

    fused: (B,H,W) float32 in [0,1]; only the fusion network runs (XLA prunes the rest). Raises
    FileNotFoundError if workdir has no checkpoint, ValueError if its model makes no fused
    image (feature-level baselines)."""
    from fuse4seg_jax import inference

    predictor = inference.load_trained(config, workdir, batch_size=batch_size, keys=("fused",))
    if "fused" not in predictor.output_keys(len(config.data.modalities)):
        raise ValueError(
            f"{workdir}: model.kind={config.model.get('kind', 'fuse4seg')} makes no fused image"
        )
    return lambda x: predictor.predict(x)["fused"]


def _png(path, image01):
    from PIL import Image

    Image.fromarray(np.round(np.clip(image01, 0, 1) * 255).astype(np.uint8)).save(path)


def _write_record(folder, split, record, fused_image, names) -> dict:
    """Writes one record's sources, fused image and label (PNG + NPY) under folder/split;
    returns its index.csv row."""
    from PIL import Image

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
    """Writes the benchmark to `out` (see module docstring); returns the number of records."""
    from fuse4seg_jax.data import sources, tfds_brats_fuse

    out = os.path.abspath(out)
    if os.path.exists(out) and not overwrite:
        raise FileExistsError(f"{out} exists: pass --overwrite to replace it")
    builder = sources.prepared_builder(config.data, config.seed)
    names = tuple(config.data.modalities)
    rows = []
    with report.atomic_dir(out) as tmp:
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
        with open(os.path.join(tmp, "index.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return len(rows)


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}", cli.EXIT_USAGE)
    logging.set_verbosity(logging.ERROR)  # TFDS warns about its own deprecations
    if (FLAGS.workdir is None) == (FLAGS.method is None):
        cli.fail("give exactly one of --workdir (a trained checkpoint) or --method")
    try:
        if FLAGS.method:
            fuser = CLASSICAL[FLAGS.method]
        else:
            fuser = checkpoint_fuser(FLAGS.config, FLAGS.workdir)
        n = export(FLAGS.config, FLAGS.out, fuser, overwrite=FLAGS.overwrite)
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        cli.fail(e, 1)
    print(f"wrote {n} records to {os.path.abspath(FLAGS.out)} (index.csv)")


def run(argv=None):
    cli.run(main, define_flags, argv)


if __name__ == "__main__":
    run()
