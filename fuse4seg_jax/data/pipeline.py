"""The tf.data input pipeline: the only module that imports TensorFlow.

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
import tensorflow as tf  # noqa: E402

# JAX owns the accelerators; TensorFlow only runs the host pipeline.
tf.config.set_visible_devices([], "GPU")
tf.config.set_visible_devices([], "TPU") if tf.config.list_physical_devices("TPU") else None

TRAIN_KEYS = ("modalities", "label", "mask")


def augment(example, seed):
    """Random flips and 90-degree rotations, the same for images and labels.

    example: modalities (H, W, M) float32, label (H, W) int32, mask (H, W) float32.
    seed: int64 tensor of shape (2,) for the stateless random ops. Rotations need
    H == W (they are square here).
    """
    u = tf.random.stateless_uniform((3,), seed=seed)
    k = tf.cast(tf.random.stateless_uniform((), seed=seed + 7, maxval=4, dtype=tf.int32), tf.int32)

    def move(x):
        expanded = x if x.shape.rank == 3 else x[..., None]
        expanded = tf.cond(u[0] < 0.5, lambda: tf.reverse(expanded, [1]), lambda: expanded)
        expanded = tf.cond(u[1] < 0.5, lambda: tf.reverse(expanded, [0]), lambda: expanded)
        expanded = tf.image.rot90(expanded, k)
        return expanded if x.shape.rank == 3 else expanded[..., 0]

    return {key: move(value) for key, value in example.items()}


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
):
    """Endless iterator of this process's training batches (numpy dicts).

    arrays: dict of numpy arrays with a shared leading example axis; the keys in
      TRAIN_KEYS are used.
    batch_size: the GLOBAL batch size; each process yields batch_size // process_count rows.
    start_batch: batches already consumed (resume position).
    """
    if batch_size % process_count:
        raise ValueError(
            f"train.batch_size={batch_size} is not divisible by the {process_count} processes"
        )
    local_batch = batch_size // process_count
    n = len(arrays["label"])
    if n < local_batch * process_count:
        raise ValueError(f"only {n} training examples for a global batch of {batch_size}")
    ds = tf.data.Dataset.from_tensor_slices({k: arrays[k] for k in TRAIN_KEYS})
    ds = ds.shard(process_count, process_index)
    ds = ds.shuffle(min(shuffle_buffer, n), seed=seed, reshuffle_each_iteration=True)
    ds = ds.repeat().batch(local_batch, drop_remainder=True)
    ds = ds.enumerate().skip(start_batch)
    if augment_data:

        def augment_batch(index, batch):
            base = tf.stack([tf.constant(seed, tf.int64), index * 1_000_003])
            seeds = base[None, :] + tf.stack(
                [tf.zeros(local_batch, tf.int64), tf.range(local_batch, dtype=tf.int64)], axis=1
            )
            return tf.map_fn(
                lambda args: augment(args[0], args[1]),
                (batch, seeds),
                fn_output_signature={k: batch[k].dtype for k in batch},
            )

        ds = ds.map(augment_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        ds = ds.map(lambda index, batch: batch)
    ds = ds.prefetch(2)
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
