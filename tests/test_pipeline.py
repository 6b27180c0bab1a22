"""The tf.data pipeline: determinism, resume position, augmentation moving labels with images."""

import numpy as np
import pytest

from fuse4seg_jax.config_validation import ConfigError
from fuse4seg_jax.data import pipeline


def _examples(n=24, size=8, m=2):
    rng = np.random.default_rng(0)
    label = rng.integers(0, 4, (n, size, size)).astype(np.int32)
    mods = np.stack([label / 3.0 + 0.01 * k for k in range(m)], axis=-1).astype(np.float32)
    mask = (label > 0).astype(np.float32)
    return {"modalities": mods, "label": label, "mask": mask}


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_same_seed_same_stream_and_different_seed_differs():
    ex = _examples()
    a = _take(pipeline.train_iterator(ex, batch_size=4, seed=3), 8)
    b = _take(pipeline.train_iterator(ex, batch_size=4, seed=3), 8)
    c = _take(pipeline.train_iterator(ex, batch_size=4, seed=4), 8)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["modalities"], y["modalities"])
    assert any(not np.array_equal(x["label"], y["label"]) for x, y in zip(a, c, strict=True))


def test_resume_continues_the_same_stream():
    ex = _examples()
    straight = _take(pipeline.train_iterator(ex, batch_size=4, seed=1), 9)
    resumed = _take(pipeline.train_iterator(ex, batch_size=4, seed=1, start_batch=5), 4)
    for x, y in zip(straight[5:], resumed, strict=True):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_augmentation_moves_labels_with_images():
    ex = _examples()
    for batch in _take(pipeline.train_iterator(ex, batch_size=4, seed=2), 12):
        # modality 0 was built as label / 3: any flip or rotation must keep that relation
        np.testing.assert_allclose(batch["modalities"][..., 0], batch["label"] / 3.0, atol=1e-6)
        np.testing.assert_array_equal(batch["mask"], (batch["label"] > 0).astype(np.float32))
    plain = _take(pipeline.train_iterator(ex, batch_size=4, seed=2, augment_data=False), 12)
    augmented = _take(pipeline.train_iterator(ex, batch_size=4, seed=2), 12)
    assert any(
        not np.array_equal(p["label"], a["label"]) for p, a in zip(plain, augmented, strict=True)
    )


def test_epoch_covers_every_example_once():
    ex = _examples(n=24)
    ex["label"][:, 0, 0] = np.arange(24)  # tag each example
    seen = np.concatenate(
        [
            b["label"][:, 0, 0]
            for b in _take(pipeline.train_iterator(ex, batch_size=4, seed=0, augment_data=False), 6)
        ]
    )
    assert sorted(seen.tolist()) == list(range(24))


def test_processes_read_disjoint_shares():
    ex = _examples(n=24)
    ex["label"][:, 0, 0] = np.arange(24)
    shares = [
        np.concatenate(
            [
                b["label"][:, 0, 0]
                for b in _take(
                    pipeline.train_iterator(
                        ex,
                        batch_size=4,
                        seed=0,
                        augment_data=False,
                        process_index=p,
                        process_count=2,
                    ),
                    6,
                )
            ]
        )
        for p in range(2)
    ]
    assert all(len(s) == 12 for s in shares)
    assert not set(shares[0]) & set(shares[1])


def test_eval_batches_pad_to_device_multiple():
    ex = _examples(n=10)
    out = list(pipeline.eval_batches(ex, batch_size=3, multiple_of=4))
    assert [valid for _, valid in out] == [4, 4, 2]
    assert all(b["label"].shape[0] == 4 for b, _ in out)
    np.testing.assert_array_equal(np.concatenate([b["label"][:v] for b, v in out]), ex["label"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 5, "process_count": 2}, "train.batch_size=5 is not divisible by the 2"),
        ({"batch_size": 32}, "train.batch_size=32: the training split has only 24 examples"),
        ({"batch_size": 4, "crop_size": 9}, "data.image_size=9 is larger than the 8x8 images"),
    ],
)
def test_a_batch_or_crop_the_data_cannot_give_is_a_config_error_naming_the_key(kwargs, message):
    # ConfigError: `train` reports it as one line (tests/test_cli_errors.py), not a traceback
    with pytest.raises(ConfigError, match=message):
        next(pipeline.train_iterator(_examples(), seed=0, **kwargs))


def test_random_crops_keep_alignment_and_size():
    ex = _examples(n=8, size=12)
    for batch in _take(pipeline.train_iterator(ex, batch_size=4, seed=5, crop_size=8), 6):
        assert batch["modalities"].shape == (4, 8, 8, 2)
        np.testing.assert_allclose(batch["modalities"][..., 0], batch["label"] / 3.0, atol=1e-6)
    plain = next(pipeline.train_iterator(ex, batch_size=4, seed=5, crop_size=8, augment_data=False))
    assert plain["label"].shape == (4, 8, 8)


def test_intensity_jitter_stays_in_range_and_inside_the_brain():
    ex = _examples(n=8)
    kw = dict(batch_size=4, seed=6, intensity_scale=0.2, intensity_shift=0.2)
    for batch in _take(pipeline.train_iterator(ex, **kw), 4):
        mods, brain = batch["modalities"], batch["mask"] > 0
        assert mods.min() >= 0.0 and mods.max() <= 1.0
        # outside the brain (label 0 here) the images are untouched: label / 3 == 0
        assert np.all(mods[..., 0][~brain] == 0.0)
        inside = mods[..., 0][brain] - batch["label"][brain] / 3.0
        assert np.abs(inside).max() > 1e-3  # the jitter did change the brain
