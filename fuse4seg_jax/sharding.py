"""Device mesh and shardings for data parallelism with `jax.jit`.

The global batch is split across devices on the mesh's `data` axis and the
train state is replicated. XLA's SPMD partitioner inserts the gradient
all-reduces; this is what `jax.pmap` itself is built on in current JAX, and the
same code runs on one CPU, eight fake CPU devices, a GPU node or a TPU slice.
Each process passes only its own share of the batch
(`jax.make_array_from_process_local_data`).
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(num_devices: int = 0) -> Mesh:
    """A 1D mesh over the first `num_devices` devices (0 = all), axis name `data`."""
    devices = jax.devices()
    if num_devices < 0 or num_devices > len(devices):
        raise ValueError(
            f"mesh.num_devices={num_devices}: must be between 0 (all) and the "
            f"{len(devices)} visible devices"
        )
    if num_devices:
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over `data`, other axes whole."""
    return NamedSharding(mesh, P(DATA_AXIS))


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """Host-local numpy batch -> global jax arrays sharded on the batch axis.

    Each process passes only its own rows; the global batch is their
    concatenation in process order.
    """
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
    }


def process_rows(batch: dict) -> dict:
    """This process's contiguous share of a global host batch (all of it with one process)."""
    count, index = jax.process_count(), jax.process_index()
    if count == 1:
        return batch
    n = len(next(iter(batch.values())))
    if n % count:
        raise ValueError(f"batch of {n} rows does not split over {count} processes")
    share = n // count
    return {k: v[index * share : (index + 1) * share] for k, v in batch.items()}


def gather(tree):
    """A pytree of (possibly multi-process) global arrays as host numpy, on every process."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def replicas_agree(tree) -> bool:
    """Whether every copy of a replicated pytree, on every device of every process, is
    bitwise equal: the fingerprints (sum and sum of squares per leaf, float64) of each
    local copy are gathered from all processes and compared."""
    prints = []
    for leaf in jax.tree.leaves(tree):
        copies = [np.asarray(s.data, np.float64) for s in leaf.addressable_shards]
        prints.append([(c.sum(), np.square(c).sum()) for c in copies])
    local = np.asarray(prints, np.float64).transpose(1, 0, 2)  # (local devices, leaves, 2)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        local = multihost_utils.process_allgather(local, tiled=True)
    return bool(np.all(local == local[:1]))


def needs_sync_every_step(mesh: Mesh) -> bool:
    """Several CPU devices can deadlock in an all-reduce when many small steps are
    dispatched asynchronously (docs/stack.md); wait on every step there."""
    return mesh.devices.size > 1 and mesh.devices.flat[0].platform == "cpu"
