"""Test set-up: 8 fake CPU devices, a persistent compilation cache, and a TFDS folder of
this test process's own.

XLA_FLAGS must be set before jax is imported anywhere, which is why this lives
in conftest.py (imported by pytest before any test module). Configs that keep the
default data.tfds_dir build their datasets in a fresh folder per pytest process
(FUSE4SEG_TFDS_DIR, inherited by the commands tests start): xdist workers never build
the same dataset at once, and no test reads a dataset left by an older version.

Wall-clock limits: every timeout and wait in the tests is `timeouts.limit(seconds)`
(tests/timeouts.py), sized for a machine 3-4x slower than a loaded 2-core CPU VM, times
FUSE4SEG_TEST_TIMEOUT_SCALE (default 1; e.g. 3 on a slow or busy machine). A command that
overruns fails its test naming the command and this variable (`pytest_runtest_makereport`
below adds the advice to subprocess.TimeoutExpired). No test sleeps to let something happen.

Tiers: tests marked `slow` (multi-process, preemption, finite differences, end-to-end
training and CLI runs, the 8-device step of every kind) are left out by
`bash launch/test.sh --fast` (pytest -m "not slow"); the plain command runs all of them.
"""

import atexit
import os
import shutil
import subprocess
import tempfile

import pytest
import timeouts

timeouts.scale()  # a bad FUSE4SEG_TEST_TIMEOUT_SCALE stops the run here, not in a test

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


@pytest.fixture
def umask_022():
    """umask 022 for the test (the usual one), so output modes can be checked exactly."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test that failed on subprocess.TimeoutExpired (whose message names the command and
    the seconds) also says how to raise the limit."""
    outcome = yield
    report = outcome.get_result()
    if (
        report.failed
        and call.excinfo is not None
        and call.excinfo.errisinstance(subprocess.TimeoutExpired)
        and hasattr(report.longrepr, "addsection")
    ):
        report.longrepr.addsection(timeouts.SCALE_ENV, timeouts.explain(call.excinfo.value.timeout))
