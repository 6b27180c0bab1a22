"""Test set-up: 8 fake CPU devices, a persistent compilation cache, and a TFDS folder of
this test process's own.

XLA_FLAGS must be set before jax is imported anywhere, which is why this lives
in conftest.py (imported by pytest before any test module). Configs that keep the
default data.tfds_dir build their datasets in a fresh folder per pytest process
(FUSE4SEG_TFDS_DIR, inherited by the commands tests start): xdist workers never build
the same dataset at once, and no test reads a dataset left by an older version.
"""

import atexit
import os
import shutil
import tempfile

_TFDS = tempfile.mkdtemp(prefix="fuse4seg-tests-tfds-")
atexit.register(shutil.rmtree, _TFDS, ignore_errors=True)
os.environ["FUSE4SEG_TFDS_DIR"] = _TFDS

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

jax.config.update(
    "jax_compilation_cache_dir",
    os.environ.get(
        "FUSE4SEG_JAX_CACHE", os.path.join(os.path.dirname(__file__), "..", ".jax_cache")
    ),
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
