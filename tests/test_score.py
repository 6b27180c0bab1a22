"""The folder scorer: `python -m fuse4seg_jax.score` (score.py) and its work (scoring.py).

Small NIfTI volumes are written into tmp_path; the command runs in this process through
`score.run([...])`, which exits (SystemExit) with status 1 and one `error:` line on a
refusal.
"""

import csv
import gzip
import os

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from fuse4seg_jax import score, score_report, scoring
from fuse4seg_jax.metrics import lesionwise
from fuse4seg_jax.metrics import segmentation as seg_metrics

SHAPE = (40, 48, 32)
AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])
CASES = ("BraTS-GLI-00001-000", "BraTS-GLI-00002-000")


def blobs(seed: int) -> np.ndarray:
    """Our labels 0..3: nested smoothed-noise blobs (several lesions per region)."""
    field = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(SHAPE), 2.0)
    field /= field.std()
    labels = np.zeros(SHAPE, np.uint8)
    labels[field > 1.3] = 2
    labels[field > 1.8] = 1
    labels[field > 2.2] = 3
    return labels


def stored(labels: np.ndarray, convention: str) -> np.ndarray:
    """Our labels as a BraTS release stores them (2021: ET as 4)."""
    return np.where(labels == 3, 4, labels).astype(np.uint8) if convention == "2021" else labels


def write(path, data, affine=AFFINE):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


def truth_folder(root, convention: str, cases=CASES) -> dict:
    """BraTS case folders with only the seg file; returns {case: our labels}."""
    sep = "_" if convention == "2021" else "-"
    labels = {c: blobs(i) for i, c in enumerate(cases)}
    for c, lab in labels.items():
        write(root / c / f"{c}{sep}seg.nii.gz", stored(lab, convention))
    return labels


def flat_predictions(root, labels: dict, convention: str, pattern="{}.nii.gz"):
    for c, lab in labels.items():
        write(root / pattern.format(c), stored(lab, convention))


def run_command(capsys, *args) -> tuple:
    """(exit status, stderr lines, stdout) of `score.run` in this process."""
    with pytest.raises(SystemExit) as exit_info:
        score.run(["score", *map(str, args)])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.err.splitlines(), captured.out


def refused(capsys, *args, scored=True, status=1) -> str:
    """The one error line of a refused run (exit `status`); scored=False: refused before any
    case was scored (no progress line)."""
    code, err, out = run_command(capsys, *args)
    assert code == status
    assert len(err) == 1 and err[0].startswith("error: "), err
    if not scored:
        assert "[1/" not in out, out
    return err[0]


def read_rows(out) -> list:
    with open(out / "metrics.csv") as f:
        return list(csv.DictReader(f))


def assert_perfect(rows):
    for row in rows:
        for r in ("wt", "tc", "et"):
            assert float(row[f"dice_{r}"]) == 1.0 and float(row[f"hd95_{r}"]) == 0.0
            assert float(row[f"lw_dice_{r}"]) == 1.0 and float(row[f"lw_hd95_{r}"]) == 0.0
            assert int(row[f"lw_fp_{r}"]) == int(row[f"lw_fn_{r}"]) == 0


def test_round_trip_2021_names_flat_submission(tmp_path, capsys):
    labels = truth_folder(tmp_path / "truth", "2021")
    flat_predictions(tmp_path / "pred", labels, "2021")
    with pytest.raises(SystemExit) as exit_info:
        score.run(["score", "--pred", str(tmp_path / "pred"), "--truth", str(tmp_path / "truth"),
                   "--workers", "1"])  # fmt: skip
    assert exit_info.value.code in (0, None)
    assert f"[2/2] {CASES[1]}: " in capsys.readouterr().out  # progress lines
    out = tmp_path / "score-pred"  # the default: beside the predictions
    assert sorted(os.listdir(out)) == ["dice_boxplot.png", "metrics.csv", "summary.md"]
    rows = read_rows(out)
    assert [row["case"] for row in rows] == sorted(CASES)
    assert {row["truth_labels"] for row in rows} == {"2021"}
    assert {row["pred_labels"] for row in rows} == {"2021"}
    assert all(int(row["lw_tp_et"]) >= 1 for row in rows)  # ET present: 4 read as 3
    assert_perfect(rows)
    summary = (out / "summary.md").read_text()
    assert "## Per 3D case, voxel-wise" in summary and "## Lesion-wise (BraTS 2023)" in summary
    assert str(tmp_path / "truth") in summary and "truth 2021: 2" in summary


def test_round_trip_2023_names_predict_layout_and_flat_truth(tmp_path):
    labels = truth_folder(tmp_path / "truth", "2023")
    flat_predictions(tmp_path / "pred", labels, "2023", "{0}/{0}_seg.nii.gz")  # predict's layout
    rows = scoring.score(tmp_path / "pred", tmp_path / "truth", tmp_path / "out", workers=1,
                         log=lambda line: None)  # fmt: skip
    assert {row["truth_labels"] for row in rows} == {row["pred_labels"] for row in rows} == {"2023"}
    assert_perfect(rows)
    # A flat truth folder of <case>.nii.gz (convention from values) and -seg predictions.
    flat_predictions(tmp_path / "flat_truth", labels, "2021")
    flat_predictions(tmp_path / "pred2", labels, "2023", "{}-seg.nii.gz")
    rows = scoring.score(tmp_path / "pred2", tmp_path / "flat_truth", tmp_path / "out2",
                         workers=1, log=lambda line: None)  # fmt: skip
    assert {row["truth_labels"] for row in rows} == {"2021"}
    assert_perfect(rows)


def test_perturbed_prediction_scores_match_the_metric_functions(tmp_path):
    # Anisotropic voxels: HD95 and the lesion volumes use the header spacing (mm).
    spacing = (1.2, 1.0, 0.8)
    affine = np.diag([*spacing, 1.0])
    truth = {c: blobs(i) for i, c in enumerate(CASES)}
    pred = {}
    for i, (c, lab) in enumerate(truth.items()):
        p = np.roll(lab, 2, axis=0)  # shifted: Dice < 1, HD95 > 0
        p[5:9, 5:9, 5:9] = 2  # a false-positive lesion
        p[p == 1] = 3 if i == 0 else 1  # necrosis called enhancing in one case
        pred[c] = p
        write(tmp_path / "truth" / c / f"{c}-seg.nii.gz", lab, affine)
        write(tmp_path / "pred" / f"{c}.nii.gz", p, affine)
    logged = []
    rows = scoring.score(tmp_path / "pred", tmp_path / "truth", workers=2, log=logged.append)
    assert any(line.startswith("[2/2] ") and "s left" in line for line in logged)
    header_spacing = tuple(float(np.float32(s)) for s in spacing)  # NIfTI stores float32
    for row in rows:
        c = row["case"]
        expected = seg_metrics.region_scores(pred[c], truth[c], header_spacing)
        expected |= lesionwise.lesion_scores(pred[c], truth[c], header_spacing)
        for key, value in expected.items():
            assert row[key] == pytest.approx(value, abs=1e-12), (c, key)
        assert row["lw_fp_wt"] >= 1 and row["dice_wt"] < 1.0
    csv_rows = read_rows(tmp_path / "score-pred")
    assert float(csv_rows[0]["hd95_wt"]) == pytest.approx(rows[0]["hd95_wt"])


def test_forced_label_convention(tmp_path, capsys):
    labels = truth_folder(tmp_path / "truth", "2023")
    flat_predictions(tmp_path / "pred", labels, "2023")
    out = tmp_path / "out"
    rows = scoring.score(tmp_path / "pred", tmp_path / "truth", out, labels="2023", workers=1,
                         log=lambda line: None)  # fmt: skip
    assert_perfect(rows)
    # Forcing 2021 on files that store ET as 3: refused, naming a file and the values.
    line = refused(capsys, "--pred", tmp_path / "pred", "--truth", tmp_path / "truth",
                   "--out", tmp_path / "out2", "--labels", 2021, "--workers", 1)  # fmt: skip
    assert "unknown label values [3]" in line and ".nii.gz" in line
    assert not (tmp_path / "out2").exists()


def test_refuses_a_truth_case_without_prediction(tmp_path, capsys):
    labels = truth_folder(tmp_path / "truth", "2021")
    flat_predictions(tmp_path / "pred", {CASES[0]: labels[CASES[0]]}, "2021")
    line = refused(capsys, "--pred", tmp_path / "pred", "--truth", tmp_path / "truth")
    assert f"no prediction for truth case {CASES[1]}" in line
    assert f"{tmp_path / 'pred'}/{CASES[1]}.nii.gz" in line
    assert not (tmp_path / "score-pred").exists()


def test_refuses_a_prediction_without_truth(tmp_path, capsys):
    labels = truth_folder(tmp_path / "truth", "2021", CASES[:1])
    flat_predictions(tmp_path / "pred", {**labels, "BraTS-GLI-00009-000": labels[CASES[0]]},
                     "2021")  # fmt: skip
    line = refused(capsys, "--pred", tmp_path / "pred", "--truth", tmp_path / "truth")
    assert "BraTS-GLI-00009-000.nii.gz has no truth case BraTS-GLI-00009-000" in line


def test_refuses_different_shapes(tmp_path, capsys):
    labels = truth_folder(tmp_path / "truth", "2021")
    flat_predictions(tmp_path / "pred", labels, "2021")
    write(tmp_path / "pred" / f"{CASES[1]}.nii.gz", np.zeros((40, 48, 30), np.uint8))
    # The second case is bad: headers are all checked before the first case is scored.
    line = refused(capsys, "--pred", tmp_path / "pred", "--truth", tmp_path / "truth",
                   "--workers", 1, scored=False)  # fmt: skip
    assert f"case {CASES[1]}: prediction shape (40, 48, 30) != truth shape (40, 48, 32)" in line


def test_refuses_different_affines(tmp_path, capsys):
    labels = truth_folder(tmp_path / "truth", "2021")
    flat_predictions(tmp_path / "pred", labels, "2021")
    moved = AFFINE.copy()
    moved[:3, 3] = (-90.0, 126.0, -72.0)
    write(tmp_path / "pred" / f"{CASES[0]}.nii.gz", stored(labels[CASES[0]], "2021"), moved)
    line = refused(capsys, "--pred", tmp_path / "pred", "--truth", tmp_path / "truth")
    assert f"case {CASES[0]}: prediction affine" in line
    assert "offset [-90.0, 126.0, -72.0]" in line and "offset [0.0, 0.0, 0.0]" in line


def test_refuses_unknown_or_mixed_label_values(tmp_path, capsys):
    labels = truth_folder(tmp_path / "truth", "2021")
    flat_predictions(tmp_path / "pred", labels, "2021")
    bad = stored(labels[CASES[1]], "2021")
    bad[0, 0, 0] = 7
    path = write(tmp_path / "pred" / f"{CASES[1]}.nii.gz", bad)
    args = ("--pred", tmp_path / "pred", "--truth", tmp_path / "truth", "--workers", 1)
    line = refused(capsys, *args)
    assert f"{path}: unknown label values [7]" in line
    bad[0, 0, 0], bad[0, 0, 1] = 3, 4
    write(path, bad)
    assert "holds both 3 and 4" in refused(capsys, *args)
    # A 3 in a truth file named the 2021 way is refused too (2021 stores ET as 4).
    flat_predictions(tmp_path / "pred", labels, "2021")
    write(tmp_path / "truth" / CASES[0] / f"{CASES[0]}_seg.nii.gz", labels[CASES[0]])
    assert "unknown label values [3]" in refused(capsys, *args)
    assert not (tmp_path / "score-pred").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no partial folder


def test_refuses_unreadable_files(tmp_path, capsys):
    labels = truth_folder(tmp_path / "truth", "2021")
    flat_predictions(tmp_path / "pred", labels, "2021")
    args = ("--pred", tmp_path / "pred", "--truth", tmp_path / "truth", "--workers", 1)
    garbage = tmp_path / "pred" / f"{CASES[0]}.nii.gz"
    garbage.write_bytes(gzip.compress(b"not a NIfTI file"))
    line = refused(capsys, *args)
    assert f"{garbage}: cannot be read" in line
    # Header intact, voxel data cut short (a truncated download): found when read.
    flat_predictions(tmp_path / "pred", labels, "2021")
    whole = gzip.decompress(garbage.read_bytes())
    garbage.write_bytes(gzip.compress(whole[: len(whole) // 2]))
    line = refused(capsys, *args)
    assert f"{garbage}: cannot be read" in line
    assert not (tmp_path / "score-pred").exists()


def test_refuses_existing_output_unless_overwrite(tmp_path, capsys):
    labels = truth_folder(tmp_path / "truth", "2023")
    flat_predictions(tmp_path / "pred", labels, "2023")
    out = tmp_path / "scores"
    out.mkdir()
    (out / "old.txt").write_text("old")
    args = ("--pred", tmp_path / "pred", "--truth", tmp_path / "truth", "--out", out,
            "--workers", 1)  # fmt: skip
    assert f"--out {out} exists: pass --overwrite" in refused(capsys, *args)
    assert os.listdir(out) == ["old.txt"]
    status, err, _ = run_command(capsys, *args, "--overwrite")
    assert status in (0, None), err
    assert sorted(os.listdir(out)) == ["dice_boxplot.png", "metrics.csv", "summary.md"]
    # --out must not be (or hold) an input folder: replacing it would delete the inputs.
    line = refused(capsys, "--pred", tmp_path / "pred", "--truth", tmp_path / "truth",
                   "--out", tmp_path, "--overwrite")  # fmt: skip
    assert "choose another folder" in line


def test_refuses_missing_folder_flags(tmp_path, capsys):
    assert refused(capsys, "--truth", tmp_path, status=2) == (
        "error: --pred is required: the folder of pred segmentations"
    )
    assert "--truth is required" in refused(capsys, "--pred", tmp_path, status=2)
    line = refused(capsys, "--pred", tmp_path / "nowhere", "--truth", tmp_path)
    assert "--pred" in line and "does not exist" in line


def test_a_failed_write_leaves_no_output(tmp_path, monkeypatch, capsys):
    labels = truth_folder(tmp_path / "truth", "2021", CASES[:1])
    flat_predictions(tmp_path / "pred", labels, "2021")

    def broken(path, rows):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(score_report, "save_dice_boxplot", broken)
    with pytest.raises(OSError):
        scoring.score(tmp_path / "pred", tmp_path / "truth", workers=1, log=lambda line: None)
    assert sorted(os.listdir(tmp_path)) == ["pred", "truth"]
    # The command reports it in one line naming the file.
    line = refused(capsys, "--pred", tmp_path / "pred", "--truth", tmp_path / "truth",
                   "--workers", 1)  # fmt: skip
    assert line.endswith("dice_boxplot.png: No space left on device")
    assert sorted(os.listdir(tmp_path)) == ["pred", "truth"]
