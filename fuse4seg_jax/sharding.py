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


def needs_sync_every_step(mesh: Mesh) -> bool:
    """Several CPU devices can deadlock in an all-reduce when many small steps are
    dispatched asynchronously (STACK.md); wait on every step there."""
    return mesh.devices.size > 1 and mesh.devices.flat[0].platform == "cpu"
