"""Preemption: turn SIGTERM / SIGINT into "save a checkpoint after this step and stop".

Preemptible VMs, SLURM and TPU maintenance send SIGTERM; Ctrl-C sends SIGINT.
`StopSignal` records the signal; the training loop asks `should_stop()` after
each step, saves a checkpoint (state and input position) and raises
`Preempted`, which the CLI turns into exit status 75 (EX_TEMPFAIL: rerun the
same command to resume). A second SIGINT stops at once, without saving.

With several processes the decision is shared: each process contributes its
flag and all stop at the same step when any of them was signalled, so the
collective checkpoint save cannot deadlock.
"""

import signal
import threading

import numpy as np

EXIT_PREEMPTED = 75  # sysexits.h EX_TEMPFAIL


class Preempted(RuntimeError):
    """Training stopped on a signal after saving a checkpoint; rerunning resumes."""


class StopSignal:
    """Context manager installing the handlers (main thread only) and restoring the old ones."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.received = signal.Signals(signum).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        return False

    def should_stop(self) -> bool:
        """True when this process (or, multi-process, any process) was signalled."""
        import jax

        flag = self.received is not None
        if jax.process_count() == 1:
            return flag
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.int32(flag))
        if np.any(flags) and self.received is None:
            self.received = "a signal to another process"
        return bool(np.any(flags))
