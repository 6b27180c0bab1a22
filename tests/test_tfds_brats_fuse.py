"""brats_fuse built from generated BraTS folders (both conventions), and training on it."""

import os
import subprocess
import sys

import numpy as np
import pytest
import timeouts

from configs import brats_fuse as brats_config
from fuse4seg_jax.data import phantom, sources, tfds_brats_fuse
from fuse4seg_jax.data.errors import DataError
from fuse4seg_jax.metric_writer import read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SHAPE = (48, 48, 24)


@pytest.fixture(scope="module")
def brats_dir(tmp_path_factory):
    """10 phantom cases written as BraTS folders, half in each naming convention."""
    root = tmp_path_factory.mktemp("brats")
    for i in range(10):
        case = phantom.make_case(100 + i, shape=SHAPE, spacing=(4.0, 4.0, 5.0))
        convention = "2021" if i % 2 else "2023"
        prefix = "BraTS2021" if convention == "2021" else "BraTS-GLI"
        phantom.write_brats_case(root, f"{prefix}_{i:05d}", case, convention=convention)
    return root


def _data_config(brats_dir, tfds_dir, **overrides):
    config = brats_config.get_config().data
    config.manual_dir = str(brats_dir)
    config.tfds_dir = str(tfds_dir)
    config.image_size = 32
    config.slices_per_case = 3
    config.min_tumour_area = 20
    for k, v in overrides.items():
        config[k] = v
    return config


def _build(data_config):
    builder = tfds_brats_fuse.make_builder(data_config)
    builder.download_and_prepare(
        download_config=tfds_brats_fuse.download_config(data_config.manual_dir)
    )
    return builder


def _split(builder, split):
    return list(tfds_brats_fuse.as_numpy(builder, split))


def test_build_counts_case_split_labels_and_ranges(brats_dir, tmp_path):
    builder = _build(_data_config(brats_dir, tmp_path))
    splits = {s: _split(builder, s) for s in ("train", "validation", "test")}
    cases = {s: {r["case_id"].decode() for r in rows} for s, rows in splits.items()}
    assert [len(cases[s]) for s in ("train", "validation", "test")] == [7, 1, 2]
    assert not (
        cases["train"] & cases["validation"]
        or cases["train"] & cases["test"]
        or cases["validation"] & cases["test"]
    )
    assert sum(len(r) for r in splits.values()) == 30  # 3 slices x 10 cases
    # the built dataset is readable by name with tfds.load, as users would
    loaded = tfds_brats_fuse.tfds.load(
        f"brats_fuse/{builder.builder_config.name}", data_dir=str(tmp_path), split="train"
    )
    assert sum(1 for _ in loaded) == len(splits["train"])
    both_conventions = {c.split("_")[0] for s in cases.values() for c in s}
    assert both_conventions == {"BraTS2021", "BraTS-GLI"}
    for rows in splits.values():
        for r in rows:
            assert r["modalities"].shape == (48, 48, 2) and r["modalities"].dtype == np.float32
            assert 0.0 <= r["modalities"].min() and r["modalities"].max() <= 1.0
            assert set(np.unique(r["label"])) <= {0, 1, 2, 3}  # 4 was mapped to 3
            assert (r["label"] > 0).sum() >= 20
            assert np.all(r["modalities"][r["mask"] == 0] == 0.0)
            np.testing.assert_allclose(r["spacing"], [4.0, 4.0])
    # the label of a record is the phantom's label of that slice
    r = splits["train"][0]
    case_name = r["case_id"].decode()
    seed = 100 + int(case_name.split("_")[-1])
    truth = phantom.make_case(seed, shape=SHAPE, spacing=(4.0, 4.0, 5.0))["label"]
    np.testing.assert_array_equal(r["label"], truth[:, :, r["slice_index"]])


def test_two_builds_are_identical(brats_dir, tmp_path):
    a = _split(_build(_data_config(brats_dir, tmp_path / "a")), "train")
    b = _split(_build(_data_config(brats_dir, tmp_path / "b")), "train")
    assert [r["case_id"] for r in a] == [r["case_id"] for r in b]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["modalities"], y["modalities"])
        assert x["slice_index"] == y["slice_index"]


def test_bad_case_stops_the_build_and_leaves_nothing(brats_dir, tmp_path):
    bad_root = tmp_path / "bad"
    bad_root.mkdir()
    for case_dir in sorted(brats_dir.iterdir())[:5]:
        target = bad_root / case_dir.name
        target.mkdir()
        for f in case_dir.iterdir():
            (target / f.name).write_bytes(f.read_bytes())
    protocol = tfds_brats_fuse.BratsFuseConfig(name="x", slices_per_case=3)
    splits = tfds_brats_fuse.split_cases(sorted(bad_root.iterdir()), protocol)
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [3, 1, 1]
    victim = splits["train"][0]  # skipping it still leaves every split non-empty
    flair = sorted(victim.glob("*flair*")) + sorted(victim.glob("*t2f*"))
    flair[0].write_bytes(flair[0].read_bytes()[:200])  # truncated gzip
    tfds_dir = tmp_path / "tfds"
    with pytest.raises(DataError, match=flair[0].name):
        _build(_data_config(bad_root, tfds_dir))
    built = [p for p in tfds_dir.rglob("dataset_info.json")]
    assert not built, f"a half-built dataset was left behind: {built}"
    # configured to skip: the build completes without the bad case
    builder = _build(_data_config(bad_root, tmp_path / "tfds2", skip_bad_cases=True))
    ids = {
        r["case_id"].decode() for s in ("train", "validation", "test") for r in _split(builder, s)
    }
    assert victim.name not in ids and len(ids) == 4


@pytest.mark.slow
def test_train_command_on_a_brats_folder(brats_dir, tmp_path):
    """The documented command, with a tiny model: builds brats_fuse, trains, evaluates."""
    overrides = {
        "data.manual_dir": brats_dir,
        "data.tfds_dir": tmp_path / "tfds",
        "data.image_size": 32,
        "data.slices_per_case": 3,
        "data.min_tumour_area": 20,
        "data.shuffle_buffer": 64,
        "model.fusion": "fusion_tiny",
        "model.segmentation": "unet_tiny",
        "train.num_steps": 3,
        "train.log_every": 1,
        "train.eval_every": 100,
        "train.checkpoint_every": 0,
        "train.eval_batch_size": 16,
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fuse4seg_jax.train",
            "--config",
            "configs/brats_fuse.py",
            "--workdir",
            str(tmp_path / "run"),
            *[f"--config.{k}={v}" for k, v in overrides.items()],
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeouts.limit(900),  # 90 s measured at load average 5-8, cold cache
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "held-out Dice over 1 cases" in proc.stdout  # the validation split: one case
    rows = read_jsonl(str(tmp_path / "run" / "metrics.jsonl"))
    assert [r["step"] for r in rows if "train/loss_seg" in r] == [1, 2, 3]
    assert (tmp_path / "run" / "figure.png").exists()


def test_missing_folder_is_a_clear_error(tmp_path):
    config = _data_config(tmp_path / "nowhere", tmp_path / "tfds")
    with pytest.raises(DataError, match="nowhere"):
        sources.load(config, 0)


def test_export_of_brats_fuse_keeps_spacing_and_whole_slices(brats_dir, tmp_path):
    import csv

    from configs import tiny
    from fuse4seg_jax import benchmark_export

    config = tiny.get_config()
    config.data = _data_config(brats_dir, tmp_path / "tfds")
    n = benchmark_export.export(config, str(tmp_path / "out"), benchmark_export.CLASSICAL["mean"])
    with open(tmp_path / "out" / "index.csv") as f:
        rows = list(csv.DictReader(f))
    assert n == len(rows) == 30
    assert {r["split"] for r in rows} == {"train", "validation", "test"}
    assert all(float(r["spacing_x_mm"]) == 4.0 for r in rows)
    fused = np.load(tmp_path / "out" / rows[0]["fused"].replace(".png", ".npy"))
    assert fused.shape == SHAPE[:2]  # exported whole, not cropped


def test_a_changed_source_folder_builds_a_new_dataset(brats_dir, tmp_path):
    """Same tfds_dir and protocol, another manual_dir: the data come from the new folder
    (never the dataset built from the old one); an empty folder is the usual error."""
    tfds_dir = tmp_path / "tfds"
    train_a, eval_a = sources.load(_data_config(brats_dir, tfds_dir), 0)
    ids_a = set(train_a["case_id"]) | set(eval_a["case_id"])
    other = tmp_path / "other"
    other.mkdir()
    chosen = sorted(brats_dir.iterdir())[5:]  # 5 of the 10 cases
    for case_dir in chosen:
        (other / case_dir.name).mkdir()
        for f in case_dir.iterdir():
            (other / case_dir.name / f.name).write_bytes(f.read_bytes())
    train_b, eval_b = sources.load(_data_config(other, tfds_dir), 0)
    ids_b = set(train_b["case_id"]) | set(eval_b["case_id"])
    assert len(ids_a) > 5 and ids_b <= {d.name for d in chosen}
    # a modified file in the same folder is a new source too
    builder_b = tfds_brats_fuse.make_builder(_data_config(other, tfds_dir))
    victim = sorted((other / chosen[0].name).iterdir())[0]
    victim.write_bytes(victim.read_bytes())
    os.utime(victim, ns=(1, 1))
    builder_c = tfds_brats_fuse.make_builder(_data_config(other, tfds_dir))
    assert builder_b.builder_config.name != builder_c.builder_config.name
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no BraTS case folders"):
        sources.load(_data_config(empty, tfds_dir), 0)
