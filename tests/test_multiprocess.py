"""Multi-process data parallelism on one machine: two JAX processes on localhost (CPU, gloo
collectives, `jax.distributed`) train a tiny config together through the CLI, their
parameter copies agree after every step, and a checkpoint they saved is restored."""

import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timeouts
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fuse4seg_jax import sharding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _train_two_processes(workdir, tfds_dir, num_steps):
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    procs, logs = [], []
    for i in range(2):
        # Output to files, not pipes: a process blocked on a full pipe would stall the
        # other one at their next collective.
        out, err = (workdir.parent / f"process_{i}_{num_steps}.{x}" for x in ("out", "err"))
        logs.append((out, err))
        with open(out, "w") as stdout, open(err, "w") as stderr:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "fuse4seg_jax.train",
                        "--config",
                        "configs/tiny.py",
                        "--workdir",
                        str(workdir),
                        "--distributed",
                        f"--coordinator_address=localhost:{port}",
                        "--num_processes=2",
                        f"--process_id={i}",
                        f"--config.train.num_steps={num_steps}",
                        "--config.train.check_replicas_every=1",
                        f"--config.data.tfds_dir={tfds_dir}",
                    ],  # fmt: skip
                    cwd=ROOT,
                    env=env,
                    stdout=stdout,
                    stderr=stderr,
                )
            )
    what = f"two training processes ({num_steps} steps; logs: {workdir.parent}/process_*)"
    timeouts.wait_all(procs, timeout=600, what=what)
    for p, (_, err) in zip(procs, logs, strict=True):
        assert p.returncode == 0, err.read_text()[-3000:]
    return logs[0][0].read_text()  # process 0 logs


@pytest.mark.slow
def test_two_processes_train_together_and_resume(tmp_path):
    work, tfds = tmp_path / "run", tmp_path / "tfds"
    first = _train_two_processes(work, tfds, num_steps=2)
    assert "processes: 2, devices: 4 x cpu (2 per process)" in first
    assert "8 rows read per process" in first
    for step in (1, 2):
        assert f"replicas agree after step {step} (2 processes)" in first
    assert (work / "checkpoints" / "2").is_dir()
    second = _train_two_processes(work, tfds, num_steps=4)
    assert "resumed from checkpoint at step 2" in second
    for step in (3, 4):
        assert f"replicas agree after step {step} (2 processes)" in second
    assert "held-out Dice over 2 cases" in second and (work / "results.json").exists()


def test_replica_check_catches_a_diverged_copy():
    mesh = sharding.make_mesh(0)
    devices = list(mesh.devices.flat)
    replicated = NamedSharding(mesh, P())
    same = jax.device_put(jnp.arange(6.0), replicated)
    assert sharding.replicas_agree({"w": same})
    copies = [jax.device_put(np.arange(6.0, dtype=np.float32), d) for d in devices]
    copies[-1] = jax.device_put(np.arange(6.0, dtype=np.float32) + 1e-3, devices[-1])
    diverged = jax.make_array_from_single_device_arrays((6,), replicated, copies)
    assert not sharding.replicas_agree({"w": same, "v": diverged})
