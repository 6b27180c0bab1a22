"""Score predicted BraTS segmentations against ground truth: the work of
`python -m fuse4seg_jax.score` (score.py describes the inputs and outputs for users).

Owns: finding the truth and prediction files of each case (`find_truth`,
`find_predictions`) and pairing them by case id (`pair_cases`), checking every pair's
headers before any voxel is read (`check_headers`), telling the label conventions apart
and converting to ours (`to_labels`), scoring one case (`score_case`: voxel-wise
metrics/segmentation.py and lesion-wise metrics/lesionwise.py), the process pool over
cases (`score_cases`), and where the output folder goes (`default_out`); what is written
into it is score_report.py's. Every refusal is a
`ScoreError` (a ValueError) whose one-line message names the case or file.
"""

import concurrent.futures
import dataclasses
import multiprocessing
import os
import pathlib
import time

import numpy as np

from fuse4seg_jax import score_report
from fuse4seg_jax.data import brats
from fuse4seg_jax.data.errors import DataError
from fuse4seg_jax.metrics import lesionwise
from fuse4seg_jax.metrics import segmentation as seg_metrics

CONVENTIONS = ("auto", "2021", "2023")
ET_STORED = {"2021": 4, "2023": 3}  # how each BraTS release stores enhancing tumour
SEG_ENDINGS = {"_seg": "2021", "-seg": "2023"}  # file-name endings and the naming they imply
NO_ET = "no ET"  # label convention of a map without enhancing tumour (either one fits)


class ScoreError(ValueError):
    """Bad inputs or arguments of a scoring run; the message is one line."""


@dataclasses.dataclass(frozen=True)
class Pair:
    """One case to score: its id, both files, and the truth's naming convention (None for
    a flat `<case>.nii.gz`, whose convention comes from its values)."""

    case: str
    pred: pathlib.Path
    truth: pathlib.Path
    truth_naming: str | None


def _split_name(path: pathlib.Path) -> tuple[str, str | None] | None:
    """(case id, naming) of a NIfTI file name, or None if not NIfTI: `<case>_seg` ->
    2021, `<case>-seg` -> 2023, `<case>` -> None."""
    name = path.name
    ext = next((e for e in brats.EXTENSIONS if name.endswith(e)), None)
    if ext is None or name.startswith("."):
        return None
    stem = name[: -len(ext)]
    for ending, naming in SEG_ENDINGS.items():
        if stem.endswith(ending) and len(stem) > len(ending):
            return stem[: -len(ending)], naming
    return stem, None


def _add(found: dict, case: str, entry, what: str):
    if case in found:
        first = found[case][0] if isinstance(found[case], tuple) else found[case]
        second = entry[0] if isinstance(entry, tuple) else entry
        raise ScoreError(f"two {what} files for case {case}: {first} and {second}")
    found[case] = entry


def _folder(path, flag: str) -> pathlib.Path:
    path = pathlib.Path(path)
    if not path.is_dir():
        raise ScoreError(f"{flag} {path}: folder does not exist or is not a folder")
    return path


def _case_seg(case_dir: pathlib.Path) -> pathlib.Path | None:
    """`<case>/<case>_seg.nii.gz` or `<case>/<case>-seg.nii.gz` (.nii too), if present."""
    for naming in SEG_ENDINGS.values():
        for ext in brats.EXTENSIONS:
            path = case_dir / brats.file_name(case_dir.name, naming, "seg", ext)
            if path.is_file():
                return path
    return None


def find_truth(root) -> dict:
    """{case id: (seg path, naming "2021" / "2023" / None)} of a truth folder: a folder
    of BraTS case folders (each needs its `<case>_seg` / `<case>-seg` file), or a flat
    folder of `<case>_seg.nii.gz`, `<case>-seg.nii.gz` or `<case>.nii.gz` files."""
    root = _folder(root, "--truth")
    try:
        case_dirs = brats.find_cases(root)
    except DataError:
        case_dirs = []
    found = {}
    for case_dir in case_dirs:
        try:
            naming = brats.detect_convention(case_dir)
        except DataError as e:
            raise ScoreError(str(e)) from e
        seg = _case_seg(case_dir)
        if seg is None:
            expected = case_dir / brats.file_name(case_dir.name, naming, "seg")
            raise ScoreError(f"truth case {case_dir.name} has no segmentation file {expected}")
        found[case_dir.name] = (seg, naming)
    if not found:
        for path in sorted(root.iterdir()):
            parsed = _split_name(path) if path.is_file() else None
            if parsed is not None:
                _add(found, parsed[0], (path, parsed[1]), "truth")
    if not found:
        raise ScoreError(
            f"--truth {root}: no ground truth found (BraTS case folders with "
            "<case>_seg.nii.gz / <case>-seg.nii.gz, or such files, or <case>.nii.gz)"
        )
    return found


def find_predictions(root) -> dict:
    """{case id: path} of a predictions folder: flat `<case>.nii.gz`, `<case>_seg.nii.gz`
    or `<case>-seg.nii.gz` files (.nii too), or `<case>/<case>_seg.nii.gz` case folders
    (predict's output). Other files are ignored; two files for one case are refused."""
    root = _folder(root, "--pred")
    found = {}
    for path in sorted(root.iterdir()):
        if path.is_dir() and not path.name.startswith("."):
            seg = _case_seg(path)
            if seg is not None:
                _add(found, path.name, seg, "prediction")
        elif path.is_file():
            parsed = _split_name(path)
            if parsed is not None:
                _add(found, parsed[0], path, "prediction")
    if not found:
        raise ScoreError(
            f"--pred {root}: no predictions found (<case>.nii.gz, <case>_seg.nii.gz, "
            "<case>-seg.nii.gz or <case>/<case>_seg.nii.gz)"
        )
    return found


def pair_cases(predictions: dict, truth: dict, pred_root, truth_root) -> list[Pair]:
    """One Pair per truth case, sorted by case id; ScoreError naming the first truth case
    without a prediction (and the files looked for) or prediction without a truth case."""
    missing = sorted(set(truth) - set(predictions))
    if missing:
        c, more = missing[0], len(missing) - 1
        also = f" (and {more} more cases)" if more else ""
        raise ScoreError(
            f"no prediction for truth case {c}{also}: looked for {pred_root}/{c}.nii.gz, "
            f"{c}_seg.nii.gz, {c}-seg.nii.gz or {c}/{c}_seg.nii.gz (.nii too)"
        )
    extra = sorted(set(predictions) - set(truth))
    if extra:
        c, more = extra[0], len(extra) - 1
        also = f" (and {more} more)" if more else ""
        raise ScoreError(f"prediction {predictions[c]} has no truth case {c} in {truth_root}{also}")
    return [Pair(c, predictions[c], truth[c][0], truth[c][1]) for c in sorted(truth)]


def _header(path: pathlib.Path):
    """(image, 3D shape) of a NIfTI file, its header read without the voxels."""
    import nibabel as nib

    try:
        image = nib.load(str(path))
        shape = tuple(image.shape)
    except Exception as e:  # nibabel, gzip, OS errors alike
        raise ScoreError(f"{path}: cannot be read: {type(e).__name__}: {_short(e)}") from e
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise ScoreError(f"{path}: is {len(shape)}D with shape {tuple(image.shape)}, expected 3D")
    return image, shape


def _short(e: Exception) -> str:
    return " ".join(str(e).split())[:160] or "no details"


def _affine_text(affine: np.ndarray) -> str:
    return (
        f"diagonal {np.round(np.diag(affine)[:3], 3).tolist()} "
        f"offset {np.round(affine[:3, 3], 2).tolist()}"
    )


def check_headers(pairs: list[Pair]):
    """ScoreError for the first pair whose files cannot be read (header), are not 3D, or
    differ in shape or affine (beyond brats.AFFINE_ATOL mm)."""
    for pair in pairs:
        truth, truth_shape = _header(pair.truth)
        pred, pred_shape = _header(pair.pred)
        if pred_shape != truth_shape:
            raise ScoreError(
                f"case {pair.case}: prediction shape {pred_shape} != truth shape {truth_shape}"
            )
        a, b = np.asarray(pred.affine), np.asarray(truth.affine)
        if not np.allclose(a, b, rtol=0.0, atol=brats.AFFINE_ATOL):
            raise ScoreError(
                f"case {pair.case}: prediction affine ({_affine_text(a)}) != truth affine "
                f"({_affine_text(b)}), max difference {np.abs(a - b).max():.3g}"
            )


def to_labels(data: np.ndarray, path, convention: str) -> tuple[np.ndarray, str]:
    """Stored labels -> (our labels uint8 0..3, convention used).

    convention: "2021" (ET stored as 4), "2023" (ET as 3), or "auto": a 4 means 2021, a 3
    means 2023, both is an error, neither is reported as NO_ET (nothing to convert).
    ScoreError naming `path` for non-integer or unknown values."""
    if not np.issubdtype(data.dtype, np.integer) and data.dtype != bool:
        data = np.asarray(data, np.float64)
        bad = ~np.isfinite(data) | (data != np.round(data))
        if bad.any():
            raise ScoreError(f"{path}: {int(bad.sum())} voxels hold non-integer label values")
    values = set(np.unique(data).tolist())
    if convention == "auto":
        if {3, 4} <= values:
            raise ScoreError(
                f"{path}: holds both 3 and 4, so neither BraTS 2021 (ET = 4) nor 2023 "
                "(ET = 3) labels; pass --labels to say which"
            )
        convention = "2021" if 4 in values else "2023" if 3 in values else NO_ET
    allowed = {0, 1, 2, ET_STORED.get(convention, 3)}
    unknown = sorted(values - allowed)
    if unknown:
        expected = "0, 1, 2 and 4 or 3" if convention == NO_ET else sorted(allowed)
        raise ScoreError(
            f"{path}: unknown label values {[int(v) for v in unknown]} "
            f"(BraTS {convention} labels are {expected})"
        )
    labels = np.asarray(data, np.uint8)
    if convention == "2021":
        labels = np.where(labels == 4, np.uint8(3), labels)
    return labels, convention


def _read(path: pathlib.Path):
    """(stored label data (X, Y, Z), header spacing (3,) mm) of a NIfTI file."""
    import nibabel as nib

    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
        spacing = tuple(float(z) for z in image.header.get_zooms()[:3])
    except Exception as e:  # truncated gzip, short file, ...
        raise ScoreError(f"{path}: cannot be read: {type(e).__name__}: {_short(e)}") from e
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    return data, spacing


def score_case(pair: Pair, labels: str = "auto") -> dict:
    """One case's row: "case", the voxel-wise scores (`seg_metrics.region_scores` keys:
    dice_/hd95_/sens_/spec_ + wt/tc/et; HD95 in mm from the truth header's spacing),
    the lesion-wise ones (`lesionwise.lesion_scores` keys lw_*), the label conventions
    found ("truth_labels", "pred_labels"), "seconds", and both file paths."""
    start = time.perf_counter()
    truth_data, spacing = _read(pair.truth)
    pred_data, _ = _read(pair.pred)
    truth_convention = labels if labels != "auto" else (pair.truth_naming or "auto")
    truth, truth_used = to_labels(truth_data, pair.truth, truth_convention)
    pred, pred_used = to_labels(pred_data, pair.pred, labels)
    row = {"case": pair.case}
    row |= seg_metrics.region_scores(pred, truth, spacing)
    row |= lesionwise.lesion_scores(pred, truth, spacing)
    row |= {
        "truth_labels": truth_used,
        "pred_labels": pred_used,
        "spacing_mm": " ".join(f"{s:g}" for s in spacing),
        "seconds": round(time.perf_counter() - start, 3),
        "truth_file": str(pair.truth),
        "pred_file": str(pair.pred),
    }
    return row


def _progress(log, k: int, n: int, row: dict, start: float):
    elapsed = time.perf_counter() - start
    left = elapsed / k * (n - k)
    log(f"[{k}/{n}] {row['case']}: {row['seconds']:.1f} s, about {left:.0f} s left")


def score_cases(pairs: list[Pair], labels: str = "auto", workers: int = 1, log=print) -> list:
    """score_case of every pair, in pair order, with `workers` processes (1: in this
    process). Logs one progress line per finished case; the first error stops the run
    (cases not started are cancelled) and is raised."""
    start, n = time.perf_counter(), len(pairs)
    if workers <= 1 or n <= 1:
        rows = []
        for k, pair in enumerate(pairs, start=1):
            rows.append(score_case(pair, labels))
            _progress(log, k, n, rows[-1], start)
        return rows
    # forkserver: workers fork from a fresh server process that has imported this module,
    # never from the caller (which may run JAX's threads, unsafe to fork).
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    by_case = {}
    with concurrent.futures.ProcessPoolExecutor(min(workers, n), mp_context=context) as pool:
        futures = [pool.submit(score_case, pair, labels) for pair in pairs]
        try:
            for future in concurrent.futures.as_completed(futures):
                row = future.result()
                by_case[row["case"]] = row
                _progress(log, len(by_case), n, row, start)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return [by_case[pair.case] for pair in pairs]


def default_out(pred_dir) -> pathlib.Path:
    """`<parent of pred>/score-<name of pred>`: beside the predictions, never inside."""
    pred = pathlib.Path(os.path.abspath(pred_dir))
    return pred.parent / f"score-{pred.name}"


def _check_out(out: pathlib.Path, overwrite: bool, inputs: dict):
    for flag, folder in inputs.items():
        folder = pathlib.Path(os.path.abspath(folder))
        if out == folder or out in folder.parents:  # replacing out would delete inputs
            raise ScoreError(f"--out {out} is or holds {flag} {folder}: choose another folder")
    if out.exists() and not overwrite:
        raise ScoreError(f"--out {out} exists: pass --overwrite to replace it")


def score(pred_dir, truth_dir, out=None, *, overwrite: bool = False, labels: str = "auto",
          workers: int | None = None, log=print) -> list[dict]:  # fmt: skip
    """Score every truth case's prediction and write `out` (default `default_out`).

    Checks, in this order and before any voxel is read: the arguments, `out` (exists
    without overwrite, or overlapping an input), both folders, the case pairing and every
    pair's headers. Returns the rows of metrics.csv (score_case). ScoreError otherwise.
    """
    if labels not in CONVENTIONS:
        raise ScoreError(f"--labels {labels!r}: expected one of {', '.join(CONVENTIONS)}")
    if workers is None:
        workers = os.cpu_count() or 1
    if workers < 1:
        raise ScoreError(f"--workers {workers}: must be >= 1")
    out = pathlib.Path(os.path.abspath(out if out is not None else default_out(pred_dir)))
    _check_out(out, overwrite, {"--pred": pred_dir, "--truth": truth_dir})
    _folder(pred_dir, "--pred")
    truth = find_truth(truth_dir)
    predictions = find_predictions(pred_dir)
    pairs = pair_cases(predictions, truth, pred_dir, truth_dir)
    check_headers(pairs)
    log(f"scoring {len(pairs)} cases with {min(workers, len(pairs))} processes")
    rows = score_cases(pairs, labels, workers, log)
    score_report.write_outputs(out, rows, pred_dir, truth_dir, labels)
    log(f"wrote {out}/metrics.csv, summary.md and dice_boxplot.png")
    return rows
