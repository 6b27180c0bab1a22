"""Cases per second of the folder scorer (`python -m fuse4seg_jax.score`) on BraTS-sized cases.

    .venv/bin/python benchmarks/score_speed.py [--cases 20] [--runs 1] [--workers N]
        [--shape 240 240 155] [--keep DIR]

Writes `--cases` synthetic case pairs into a temporary folder (or `--keep DIR`): a truth
`<case>/<case>-seg.nii.gz` with 3 to 5 ellipsoidal tumours (oedema around a core of
necrosis and enhancing tumour) and a prediction `<case>.nii.gz` derived from it (tumours
shifted and grown or shrunk, one missed, one cut in two, two false-positive blobs
anywhere in the volume). The tumours of a case lie within 30 voxels of a main one, as in
multifocal gliomas, the missed one 55 voxels away; the false positives widen the region
the voxel-wise HD95 works on to much of the volume, a pessimistic case. Then times
`scoring.score` over the folder, end to end
(header checks, reading the gzipped NIfTI files, voxel-wise and lesion-wise metrics in a
pool of `--workers` processes, default one per CPU, the output folder), and reports the
median over `--runs` of the wall-clock seconds, cases/s, the time projected for 100
cases, and the single-process split of one case between voxel-wise and lesion-wise
metrics.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from fuse4seg_jax import scoring  # noqa: E402
from fuse4seg_jax.metrics import lesionwise  # noqa: E402
from fuse4seg_jax.metrics import segmentation as seg_metrics  # noqa: E402


def _ellipsoid(labels, centre, radii, value):
    """Sets `value` inside an axis-aligned ellipsoid (voxel units), in place."""
    lo = [max(int(c - r) - 1, 0) for c, r in zip(centre, radii, strict=True)]
    hi = [min(int(c + r) + 2, n) for c, r, n in zip(centre, radii, labels.shape, strict=True)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    axes = np.ogrid[box]
    inside = sum(((x - c) / r) ** 2 for x, c, r in zip(axes, centre, radii, strict=True)) <= 1
    labels[box][inside] = value


def _tumour(labels, centre, size, rng):
    """Oedema ellipsoid with a necrotic core inside an enhancing rim (our labels 2, 1, 3)."""
    radii = size * rng.uniform(0.7, 1.3, 3)
    _ellipsoid(labels, centre, radii, 2)
    _ellipsoid(labels, centre, radii * 0.6, 3)
    _ellipsoid(labels, centre, radii * 0.35, 1)


def make_case(shape, rng) -> tuple[np.ndarray, np.ndarray]:
    """(truth, prediction): our labels 0..3, uint8 of `shape`."""
    truth, pred = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    n = int(rng.integers(3, 6))
    margin = 25
    middle = rng.uniform(0.4, 0.6, 3) * np.asarray(shape)  # multifocal: lesions near each other
    for i in range(n):
        offset = rng.uniform(-30, 30, 3) if i != 1 else rng.choice([-1, 1]) * np.array([55, 0, 0])
        centre = middle + offset if i else middle
        size = (20.0, 6.0)[i] if i < 2 else rng.uniform(3.0, 16.0)
        seed = int(rng.integers(1 << 30))
        _tumour(truth, centre, size, np.random.default_rng(seed))
        if i == 1:
            continue  # missed lesion
        moved = centre + rng.integers(-2, 3, 3)
        _tumour(pred, moved, size * rng.uniform(0.85, 1.15), np.random.default_rng(seed))
        if i == 2:  # cut in two by an empty slab
            pred[int(moved[0]) : int(moved[0]) + 2] = 0
    for _ in range(2):  # false positives
        _ellipsoid(pred, rng.uniform(margin, np.asarray(shape) - margin), (3, 3, 2), 2)
    return truth, pred


def write_cases(root, count: int, shape, seed: int = 0):
    rng = np.random.default_rng(seed)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    for k in range(count):
        case = f"BraTS-GLI-{k:05d}-000"
        truth, pred = make_case(shape, rng)
        os.makedirs(os.path.join(root, "truth", case), exist_ok=True)
        os.makedirs(os.path.join(root, "pred"), exist_ok=True)
        nib.save(
            nib.Nifti1Image(truth, affine), os.path.join(root, "truth", case, f"{case}-seg.nii.gz")
        )
        nib.save(nib.Nifti1Image(pred, affine), os.path.join(root, "pred", f"{case}.nii.gz"))


def split_one_case(shape) -> tuple[float, float]:
    """Seconds of the voxel-wise and the lesion-wise metrics of one case, one process."""
    truth, pred = make_case(shape, np.random.default_rng(123))
    times = []
    for fn in (seg_metrics.region_scores, lesionwise.lesion_scores):
        start = time.perf_counter()
        fn(pred, truth, (1.0, 1.0, 1.0))
        times.append(time.perf_counter() - start)
    return times[0], times[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--shape", type=int, nargs=3, default=(240, 240, 155))
    parser.add_argument("--keep", default=None, help="write the cases here and keep them")
    args = parser.parse_args()
    root = args.keep or tempfile.mkdtemp(prefix="score-speed-")
    start = time.perf_counter()
    write_cases(root, args.cases, tuple(args.shape))
    print(
        f"wrote {args.cases} case pairs {tuple(args.shape)} in {time.perf_counter() - start:.1f} s"
    )
    seconds = []
    for run in range(args.runs):
        out = os.path.join(root, f"score-run{run}")
        start = time.perf_counter()
        scoring.score(os.path.join(root, "pred"), os.path.join(root, "truth"), out,
                      workers=args.workers, log=lambda line: None)  # fmt: skip
        seconds.append(time.perf_counter() - start)
    wall = statistics.median(seconds)
    voxel, lesion = split_one_case(tuple(args.shape))
    print(f"{args.cases} cases, {args.workers} workers, {os.cpu_count()} CPUs: {wall:.1f} s "
          f"(median of {args.runs}), {args.cases / wall:.2f} cases/s, "
          f"100 cases in about {100 * wall / args.cases:.0f} s")  # fmt: skip
    print(f"one case in one process: voxel-wise {voxel:.2f} s, lesion-wise {lesion:.2f} s")
    if not args.keep:
        import shutil

        shutil.rmtree(root)


if __name__ == "__main__":
    main()
