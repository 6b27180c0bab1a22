"""Cloud workdirs (gs://) for the run's own files, on an in-memory stand-in for Cloud Storage.

etils.epath serves gs:// through fsspec here (TensorFlow's GCS file system is switched off
for the test), and fsspec's "gcs" protocol is an in-memory file system: no network, no
credentials. Orbax's own gs:// support (TensorStore) is not exercised: it cannot use this
stand-in, and the project has no bucket to test against.
"""

import json

import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from fuse4seg_jax import atomic_files, metric_writer, run_geometry, storage, workdir


class _FakeCloudStorage(MemoryFileSystem):
    protocol = ("gcs", "gs")
    root_marker = ""
    store = {}
    pseudo_dirs = [""]

    def __init__(self, *args, finalize_on_close=True, **kwargs):
        super().__init__(*args, **kwargs)


@pytest.fixture
def bucket(monkeypatch):
    """gs://bucket served from memory; the files it holds, as {path: bytes}."""
    import fsspec
    from etils.epath import backend, gpath

    fsspec.register_implementation("gcs", _FakeCloudStorage, clobber=True)
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
    backend.fsspec_backend._get_filesystem.cache_clear()
    _FakeCloudStorage.store.clear()
    _FakeCloudStorage.pseudo_dirs[:] = [""]
    yield _FakeCloudStorage.store
    backend.fsspec_backend._get_filesystem.cache_clear()
    _FakeCloudStorage.store.clear()


def _files(store) -> dict:
    return {path.removeprefix("/"): value.getvalue() for path, value in store.items()}


def test_files_and_folders_reach_the_bucket_whole(bucket, tmp_path):
    atomic_files.write_json("gs://bucket/run/config.json", {"seed": 3})
    atomic_files.write_text("gs://bucket/run/notes.md", "hello\n")
    assert json.loads(storage.read_text("gs://bucket/run/config.json")) == {"seed": 3}
    assert storage.isfile("gs://bucket/run/notes.md")
    assert not storage.is_cloud(tmp_path) and storage.is_cloud("gs://bucket")
    assert storage.absolute("gs://bucket/run") == "gs://bucket/run"

    with atomic_files.atomic_dir("gs://bucket/run/eval") as folder:
        atomic_files.write_text(f"{folder}/summary.md", "one")
        atomic_files.write_csv(f"{folder}/sub/metrics.csv", [{"case": "a", "dice": 0.5}])
    assert storage.read_text("gs://bucket/run/eval/summary.md") == "one"
    assert storage.read_text("gs://bucket/run/eval/sub/metrics.csv").splitlines()[1] == "a,0.5"

    with pytest.raises(RuntimeError), atomic_files.atomic_dir("gs://bucket/run/eval") as folder:
        atomic_files.write_text(f"{folder}/summary.md", "two, half-done")
        raise RuntimeError("the evaluation failed")
    assert storage.read_text("gs://bucket/run/eval/summary.md") == "one"  # left as it was

    with atomic_files.atomic_dir("gs://bucket/run/eval") as folder:  # a rerun replaces it
        atomic_files.write_text(f"{folder}/summary.md", "three")
    assert storage.listdir("gs://bucket/run/eval") == ["summary.md"]
    with pytest.raises(ValueError):
        atomic_files.write_file("gs://bucket/run/broken.json", _fail)
    assert not storage.exists("gs://bucket/run/broken.json")  # nothing half-written


def _fail(path):
    with open(path, "w") as f:
        f.write("{")
    raise ValueError("the writer failed")


def test_metrics_and_tensorboard_events_go_to_the_bucket_and_resume_trims(bucket):
    run = "gs://bucket/runs/a"
    writer = metric_writer.MetricWriter(run)
    writer.write(1, {"train/loss": 0.5})
    writer.write(2, {"train/loss": 0.25})
    writer.write_config('{"seed": 0}')
    rows = metric_writer.read_jsonl(f"{run}/metrics.jsonl")
    assert rows == [{"step": 1, "train/loss": 0.5}, {"step": 2, "train/loss": 0.25}]
    events = [p for p in _files(bucket) if "/tensorboard/events.out.tfevents" in p]
    assert events and all(len(_files(bucket)[p]) > 0 for p in events)
    writer.close()

    resumed = metric_writer.MetricWriter(run, resume_step=1)  # the run restarted at step 1
    assert metric_writer.read_jsonl(f"{run}/metrics.jsonl") == rows[:1]
    resumed.write(2, {"train/loss": 0.3})
    resumed.close()
    assert [r["train/loss"] for r in metric_writer.read_jsonl(f"{run}/metrics.jsonl")] == [0.5, 0.3]

    from PIL import Image

    png = "gs://bucket/runs/a/figure.png"
    atomic_files.write_file(png, lambda p: Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(p))
    before = {p for p in _files(bucket) if "/tensorboard/" in p}
    metric_writer.write_figure(run, "figure", png, 2)
    assert {p for p in _files(bucket) if "/tensorboard/" in p} - before  # a new event file


def test_config_geometry_and_the_lock_on_a_cloud_workdir(bucket, capsys, monkeypatch):
    import ml_collections

    run = "gs://bucket/runs/b"
    config = ml_collections.ConfigDict(
        {
            "data": {"name": "phantom"},
            "model": {"kind": "fuse4seg"},
            "train": {"num_steps": 4, "allow_config_change": False},
        }  # fmt: skip
    )
    with workdir.lock(run):
        atomic_files.write_json(f"{run}/config.json", json.loads(config.to_json_best_effort()))
    assert "no file locks" in capsys.readouterr().out
    assert workdir.saved_config(run).data.name == "phantom"
    workdir.check_config(config, run)  # the same config: fine
    # a run that saved a checkpoint (Orbax cannot write to this stand-in: pretend it did)
    monkeypatch.setattr(workdir, "trained", lambda w: w == run)
    other = ml_collections.ConfigDict(config.to_dict())
    other.data.name = "brats_sim"
    with pytest.raises(workdir.ConfigError, match=r"gs://bucket/runs/b belongs to another config"):
        workdir.check_config(other, run)
    assert workdir.finished_results(config, run) is None  # no checkpoints there

    geometry = {"orientation": "RAS", "spacing_mm": [1.0, 1.0, 2.0]}
    assert run_geometry.write(run, geometry) == f"{run}/geometry.json"
    assert run_geometry.read(run)["spacing_mm"] == [1.0, 1.0, 2.0]


def test_an_ablation_on_a_cloud_workdir_writes_its_table_there_and_resumes(
    bucket, monkeypatch, capsys
):
    """Every run's folder, the table, the CSV and the curves are on the bucket, and a rerun
    reads the finished runs back from it, their volume scores too. The trainer is a
    stand-in writing what a finished and evaluated run leaves, and the checkpoint list is
    pretended (Orbax cannot use this in-memory bucket)."""
    from configs import ablation
    from fuse4seg_jax import ablate, checkpointing, evaluation, trainer
    from fuse4seg_jax.regions import REGION_NAMES

    trained = []

    def fake_train(config, run_dir):
        trained.append(run_dir)
        steps = config.train.num_steps
        dice = {r: 0.5 + 0.1 * config.seed for r in REGION_NAMES}
        atomic_files.write_json(
            f"{run_dir}/results.json", {"train_steps": steps, "dice_mean": dice}
        )
        rows = [{"step": s, "train/loss_seg": 1.0 / s, "train/steps_per_second": 4.0}
                for s in (1, steps)]  # fmt: skip
        atomic_files.write_text(
            f"{run_dir}/metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows)
        )
        record = {"checkpoint_step": steps, "split": "validation", "protocol": "volume",
                  "means": {"dice_wt": 0.25, "hd95_wt": 7.0}}  # fmt: skip
        atomic_files.write_json(f"{run_dir}/eval-validation/evaluation.json", record)

    def no_evaluation(*args, **kwargs):
        raise AssertionError("the volume scores are on the bucket: nothing to evaluate")

    monkeypatch.setattr(trainer, "train_and_evaluate", fake_train)
    monkeypatch.setattr(checkpointing, "available_steps", lambda run_dir: [1, 3])
    monkeypatch.setattr(evaluation, "evaluate", no_evaluation)
    config = ablation.get_config()
    config.train.num_steps = 3
    config.ablation.methods = ("joint",)
    config.ablation.seeds = (0, 1)
    work = "gs://bucket/ablation"
    summaries = ablate.run_ablation(config, work)
    assert trained == [f"{work}/joint-fusion-seed0", f"{work}/joint-fusion-seed1"]
    (row,) = summaries
    assert row["dice_wt"] == pytest.approx(0.55) and row["step_ms"] == pytest.approx(250.0)
    assert (row["vol_dice_wt"], row["vol_hd95_wt"]) == (0.25, 7.0)  # read from the bucket
    assert np.isnan(row["vol_dice_et"])  # a metric the record does not have
    assert "| joint-fusion | 2 |" in storage.read_text(f"{work}/results.md")
    assert len(storage.read_text(f"{work}/results.csv").splitlines()) == 3  # header + 2 seeds
    for figure in ("curves.png", "dice.png"):
        assert storage.epath(f"{work}/{figure}").read_bytes()[:4] == b"\x89PNG"

    trained.clear()  # a rerun trains nothing: both runs are read back from the bucket
    assert ablate.run_ablation(config, work)[0]["dice_wt"] == pytest.approx(0.55)
    assert trained == []

    import jax  # with several processes the volume protocol is left to `evaluate`

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    assert np.isnan(ablate.run_ablation(config, work)[0]["vol_dice_wt"])
    assert "volume_protocol: skipped with several processes" in capsys.readouterr().out
