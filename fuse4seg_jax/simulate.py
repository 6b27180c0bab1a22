"""Write simulated BraTS-like cases as BraTS case folders: `python -m fuse4seg_jax.simulate`.

    python -m fuse4seg_jax.simulate --out DIR --cases N [--naming 2021|2023] [--seed S]
        [--start I] [--workers W] [--no-vessels]

Each case is multi-contrast brain-tumour MRI simulated on the ICBM152 anatomy
(fuse4seg_jax/sim, docs/simulator.md): 240 x 240 x 155 voxels of 1 mm with the BraTS
affine, skull-stripped, images as int16 raw scanner units, the segmentation as uint8 (ET
stored as 4 under the 2021 naming, 3 under 2023). Case i (i = start .. start + N - 1) is
a deterministic function of (seed, i): the same command always writes the same voxels, and
N cases are the first N of a longer run. Folder names: `SimBraTS2021_<i:05d>` (2021
naming) or `SimBraTS-GLI-<i:05d>-000` (2023), so the BraTS reader, the `brats_fuse` TFDS
builder, evaluate, predict and score take the folder as they take a BraTS release.

Every case folder is written to a staging folder inside DIR and renamed into place when
complete; a case folder that already exists is kept (so an interrupted run resumes).
DIR/simulation.json records the seed and naming; a DIR written with other values is
refused. DIR/cases.csv (rewritten atomically at the end) has one row per case: seconds,
lesion count, tumour volumes (cm3) per label, SNR per contrast.
Needs nilearn (its wheel ships the templates; nothing is downloaded).
"""

import concurrent.futures
import json
import multiprocessing
import os
import shutil
import tempfile
import time

from absl import flags

from fuse4seg_jax import atomic_files, cli

FLAGS = flags.FLAGS
NAMES = {"2021": "SimBraTS2021_{:05d}", "2023": "SimBraTS-GLI-{:05d}-000"}


def define_flags():
    if "cases" in FLAGS:
        FLAGS.unparse_flags()
        return
    flags.DEFINE_string("out", None, "Folder to write the case folders into.")
    flags.DEFINE_integer("cases", None, "Number of cases.", lower_bound=1)
    flags.DEFINE_enum("naming", "2021", list(NAMES), "BraTS file naming (and ET label 4 or 3).")
    flags.DEFINE_integer("seed", 0, "Simulation seed.", lower_bound=0)
    flags.DEFINE_integer("start", 0, "Index of the first case.", lower_bound=0)
    flags.DEFINE_integer("workers", None, "Processes (default: one per CPU, at most --cases).")
    flags.DEFINE_bool("vessels", True, "Enhancing vessels in sulci and ventricles (T1ce).")


def case_name(index: int, naming: str) -> str:
    return NAMES[naming].format(index)


def write_case(out, index: int, seed: int, naming: str, vessels: bool = True) -> dict:
    """Simulate case `index` and write it to out/<name>/ (atomically); returns its row."""
    import numpy as np

    from fuse4seg_jax.data.phantom_nifti import write_brats_case
    from fuse4seg_jax.sim import anatomy
    from fuse4seg_jax.sim.case import simulate_case

    anatomy.load()  # once per process, not timed as part of the case
    start = time.perf_counter()
    case = simulate_case(seed, index, vessels=vessels)
    seconds = time.perf_counter() - start
    name = case_name(index, naming)
    staging = tempfile.mkdtemp(dir=out, prefix=".staging-")
    try:
        write_brats_case(staging, name, case, convention=naming, scale=1.0, dtype=np.int16)
        os.replace(os.path.join(staging, name), os.path.join(out, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    label, params = case["label"], case["params"]
    row = {"case": name, "index": index, "simulate_s": round(seconds, 2)}
    row["write_s"] = round(time.perf_counter() - start - seconds, 2)
    row["lesions"] = len(params["lesions"])
    for value, part in ((1, "necrotic"), (2, "oedema"), (3, "enhancing")):
        row[f"{part}_cm3"] = round(float(np.count_nonzero(label == value)) / 1000.0, 2)
    row.update({f"snr_{m}": s for m, s in params["snr"].items()})
    row["lesion_params"] = json.dumps(params["lesions"])
    return row


def _check_out(out, seed: int, naming: str):
    manifest = os.path.join(out, "simulation.json")
    want = {"seed": seed, "naming": naming, "generator": "fuse4seg_jax.sim v1"}
    if os.path.exists(manifest):
        with open(manifest) as f:
            have = json.load(f)
        if have != want:
            cli.fail(
                f"--out {out}: holds cases simulated with {have}, not {want}; choose another "
                "folder (or delete it)"
            )
    else:
        atomic_files.write_json(manifest, want)


def simulate(out, cases: int, *, seed=0, naming="2021", start=0, workers=None, vessels=True,
             log=print) -> list:  # fmt: skip
    """Write cases start .. start + cases - 1 (existing folders kept); returns the rows."""
    from fuse4seg_jax.sim import anatomy

    anatomy.template_dir()  # nilearn missing: one line before anything is written
    os.makedirs(out, exist_ok=True)
    _check_out(out, seed, naming)
    todo = [
        i
        for i in range(start, start + cases)
        if not os.path.isdir(os.path.join(out, case_name(i, naming)))
    ]
    if len(todo) < cases:
        log(f"{cases - len(todo)} of {cases} case folders already in {out}: kept")
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    rows, t0 = [], time.perf_counter()
    if todo:
        log(f"simulating {len(todo)} cases (seed {seed}, {naming} naming), {workers} process(es)")
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = [pool.submit(write_case, out, i, seed, naming, vessels) for i in todo]
        for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
            row = future.result()
            rows.append(row)
            eta = (time.perf_counter() - t0) / done * (len(todo) - done)
            log(
                f"[{done}/{len(todo)}] {row['case']}: simulated in {row['simulate_s']:.1f} s, "
                f"written in {row['write_s']:.1f} s; tumour {row['necrotic_cm3']:.1f} / "
                f"{row['oedema_cm3']:.1f} / {row['enhancing_cm3']:.1f} cm3 (NCR / ED / ET) | "
                f"ETA {eta:.0f} s"
            )
    rows.sort(key=lambda r: r["index"])
    if rows:
        path = os.path.join(out, "cases.csv")
        old = _read_rows(path)
        merged = {r["case"]: r for r in old + rows}
        atomic_files.write_csv(path, sorted(merged.values(), key=lambda r: int(r["index"])))
        log(f"wrote {len(rows)} cases to {out} in {time.perf_counter() - t0:.0f} s (cases.csv)")
    return rows


def _read_rows(path) -> list:
    import csv

    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}", cli.EXIT_USAGE)
    for name in ("out", "cases"):
        if FLAGS[name].value is None:
            cli.fail(f"--{name} is required", cli.EXIT_USAGE)
    try:
        simulate(
            FLAGS.out, FLAGS.cases, seed=FLAGS.seed, naming=FLAGS.naming, start=FLAGS.start,
            workers=FLAGS.workers, vessels=FLAGS.vessels, log=lambda line: print(line, flush=True),
        )  # fmt: skip
    except (ValueError, ModuleNotFoundError) as e:  # DataError, nilearn missing: one line
        cli.fail(e, 1)
    except OSError as e:
        cli.fail_os_error(e)


def run(argv=None):
    cli.run(main, define_flags, argv)


if __name__ == "__main__":
    run()
