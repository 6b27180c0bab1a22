"""The tf.data input pipeline: with the TFDS builders (data/tfds_*.py, which build and read
the datasets), the only code that imports TensorFlow; data/sources.py imports them only
when a dataset is loaded, so models, steps and the trainer's own code never do.

Host-side: reads this process's share of the examples, shuffles, augments,
batches to a fixed per-process batch and prefetches; yields numpy dicts that
`fuse4seg_jax.sharding.shard_batch` turns into global arrays.

Determinism: the example order depends only on the seed (shuffle with a fixed
seed, reshuffled each epoch by TensorFlow's seeded generator) and each
example's augmentation only on (seed, its position in the stream), via
stateless random ops. The position in the stream is the number of batches
consumed, saved with each checkpoint; a resumed run skips that many batches
before augmenting, so it continues the same stream.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402

try:
    import tensorflow as tf
except ModuleNotFoundError:  # not a dependency of the package: Colab and GPU images have it
    raise ModuleNotFoundError(
        "TensorFlow is not installed, and the tf.data input pipeline needs it: "
        "pip install 'fuse4seg-jax[tf]' (tensorflow-cpu), or use your platform's TensorFlow"
    ) from None

# JAX owns the accelerators; TensorFlow only runs the host pipeline.
tf.config.set_visible_devices([], "GPU")

TRAIN_KEYS = ("modalities", "label", "mask")


def augment(example, seed, *, crop_size=None, intensity_scale=0.0, intensity_shift=0.0):
    """Random crop, flips, 90-degree rotations and per-modality intensity jitter.

    example: modalities (H, W, M) float32 in [0, 1], label (H, W) int32, mask (H, W)
    float32. seed: int64 tensor (2,) for the stateless random ops, so the result
    depends only on the seed. Geometry moves images, label and mask together;
    the intensity jitter (x * (1 + U(-scale, scale)) + U(-shift, shift) per
    modality, clipped to [0, 1]) acts inside the brain mask only.
    crop_size: output side length (None keeps the size; the crop must be square
    for the rotations).
    """
    seeds = tf.random.experimental.stateless_split(seed, 5)
    if crop_size is not None:
        shape = tf.shape(example["label"])
        top = tf.random.stateless_uniform(
            (), seeds[0], maxval=shape[0] - crop_size + 1, dtype=tf.int32
        )
        left = tf.random.stateless_uniform(
            (), seeds[1], maxval=shape[1] - crop_size + 1, dtype=tf.int32
        )
        example = {k: v[top : top + crop_size, left : left + crop_size] for k, v in example.items()}
    u = tf.random.stateless_uniform((2,), seeds[2])
    k = tf.random.stateless_uniform((), seeds[3], maxval=4, dtype=tf.int32)

    def move(x):
        expanded = x if x.shape.rank == 3 else x[..., None]
        expanded = tf.cond(u[0] < 0.5, lambda: tf.reverse(expanded, [1]), lambda: expanded)
        expanded = tf.cond(u[1] < 0.5, lambda: tf.reverse(expanded, [0]), lambda: expanded)
        expanded = tf.image.rot90(expanded, k)
        return expanded if x.shape.rank == 3 else expanded[..., 0]

    out = {key: move(value) for key, value in example.items()}
    if intensity_scale or intensity_shift:
        m = out["modalities"].shape[-1]
        jitter = tf.random.stateless_uniform((2, m), seeds[4], minval=-1.0, maxval=1.0)
        mods = out["modalities"] * (1.0 + intensity_scale * jitter[0]) + intensity_shift * jitter[1]
        brain = out["mask"][..., None] > 0
        out["modalities"] = tf.where(brain, tf.clip_by_value(mods, 0.0, 1.0), out["modalities"])
    return out


def _centre_crop(example, size):
    shape = tf.shape(example["label"])
    top, left = (shape[0] - size) // 2, (shape[1] - size) // 2
    return {k: v[top : top + size, left : left + size] for k, v in example.items()}


def check_train_batch(label_shape, batch_size: int, process_count: int = 1,
                      crop_size: int | None = None):  # fmt: skip
    """ConfigError (naming the key) for a global batch or crop that training examples of
    label shape (n, height, width) cannot give; the trainer calls it before it writes
    anything to the workdir, train_iterator again."""
    from fuse4seg_jax.config_validation import ConfigError  # a ValueError: one line in train

    n, height, width = label_shape[:3]
    if batch_size % process_count:
        raise ConfigError(
            f"train.batch_size={batch_size} is not divisible by the {process_count} processes"
        )
    if n < batch_size:
        raise ConfigError(
            f"train.batch_size={batch_size}: the training split has only {n} examples; "
            "lower the batch size or add training cases"
        )
    if crop_size is not None and (crop_size > min(height, width)):
        raise ConfigError(f"data.image_size={crop_size} is larger than the {height}x{width} images")


def train_iterator(
    arrays: dict,
    *,
    batch_size: int,
    seed: int,
    augment_data: bool = True,
    start_batch: int = 0,
    shuffle_buffer: int = 4096,
    process_index: int = 0,
    process_count: int = 1,
    crop_size: int | None = None,
    intensity_scale: float = 0.0,
    intensity_shift: float = 0.0,
):
    """Endless iterator of this process's training batches (numpy dicts).

    arrays: dict of numpy arrays with a shared leading example axis; the keys in
      TRAIN_KEYS are used.
    batch_size: the GLOBAL batch size; each process yields batch_size // process_count rows.
    start_batch: batches already consumed (resume position).
    crop_size: crop examples to this size (random when augmenting, else central);
      None or the full size keeps them whole.
    """
    check_train_batch(arrays["label"].shape, batch_size, process_count, crop_size)
    local_batch = batch_size // process_count
    n = len(arrays["label"])
    height, width = arrays["label"].shape[1:3]
    if crop_size == height == width:
        crop_size = None
    ds = tf.data.Dataset.from_tensor_slices({k: arrays[k] for k in TRAIN_KEYS})
    ds = ds.shard(process_count, process_index)
    ds = ds.shuffle(min(shuffle_buffer, n), seed=seed, reshuffle_each_iteration=True)
    ds = ds.repeat().enumerate().skip(start_batch * local_batch)
    if augment_data:

        def fn(index, example):
            example_seed = tf.stack([tf.constant(seed, tf.int64), index])
            return augment(
                example,
                example_seed,
                crop_size=crop_size,
                intensity_scale=intensity_scale,
                intensity_shift=intensity_shift,
            )

    elif crop_size is not None:

        def fn(index, example):
            return _centre_crop(example, crop_size)

    else:

        def fn(index, example):
            return example

    ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(local_batch, drop_remainder=True).prefetch(2)
    yield from ds.as_numpy_iterator()


def eval_batches(arrays: dict, *, batch_size: int, multiple_of: int = 1):
    """Yields (batch, num_valid) over all examples in order, no shuffling or augmentation.

    The last batch is zero-padded to `batch_size` rounded up to `multiple_of`
    (the device count) so every batch has one static shape; `num_valid` says
    how many rows are real.
    """
    batch_size = -(-batch_size // multiple_of) * multiple_of
    n = len(arrays["label"])
    for start in range(0, n, batch_size):
        batch = {k: np.asarray(arrays[k][start : start + batch_size]) for k in TRAIN_KEYS}
        valid = len(batch["label"])
        if valid < batch_size:
            batch = {
                k: np.concatenate([v, np.zeros((batch_size - valid, *v.shape[1:]), v.dtype)])
                for k, v in batch.items()
            }
        yield batch, valid
