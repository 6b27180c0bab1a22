"""Wall-clock limits of the tests, in one place, scaled for slow or loaded machines.

Every limit a test puts on a command or a wait is `limit(seconds)`: the seconds written in
the test times FUSE4SEG_TEST_TIMEOUT_SCALE (default 1). The written seconds are generous
already: at least 10x the longest time measured (2026-11-30) on a 2-core CPU VM under a
load average of 5-8 with a cold compilation cache, so with the default a machine 3-4x
slower than that still passes with room to spare. On a slower or busier machine
(emulation, a shared CI runner, many pytest workers) raise the scale, e.g.
`FUSE4SEG_TEST_TIMEOUT_SCALE=3 bash launch/test.sh`.

- `subprocess.run(..., timeout=limit(s))`: a command that overruns is killed and raises
  subprocess.TimeoutExpired, which names the command; tests/conftest.py adds to that
  failure how to raise the limit (`explain`).
- `wait_all(procs, ...)`: waits for started processes within one deadline.
- `wait_for_line(path, ...)`: no test sleeps for a fixed time to let something happen; it
  waits for the event itself (a line a command prints) until a scaled deadline.

A limit that is hit fails the test with what overran and the variable to raise.
"""

import os
import subprocess
import time

import pytest

SCALE_ENV = "FUSE4SEG_TEST_TIMEOUT_SCALE"


def scale() -> float:
    """FUSE4SEG_TEST_TIMEOUT_SCALE as a positive number (default 1)."""
    text = os.environ.get(SCALE_ENV, "").strip() or "1"
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:  # also catches nan
        raise ValueError(f"{SCALE_ENV}={text!r}: must be a positive number, e.g. 3")
    return value


def limit(seconds: float) -> float:
    """`seconds` (a generous limit for this machine class) times FUSE4SEG_TEST_TIMEOUT_SCALE."""
    return seconds * scale()


def explain(seconds: float | None = None) -> str:
    """How a hit limit was set and how to raise it."""
    hit = f" of {seconds:.3g} s" if seconds is not None else ""
    return (
        f"The test's wall-clock limit{hit} was hit (its seconds x {SCALE_ENV}={scale():g}). "
        f"On a slow or busy machine raise it, e.g. {SCALE_ENV}={max(2 * scale(), 3):g} "
        "(see tests/timeouts.py)."
    )


def _overran(what: str, seconds: float, tail: str = "") -> BaseException:
    """The test failure for a limit that was hit: what overran and how to raise the limit."""
    message = f"timed out after {limit(seconds):.3g} s: {what}\n{explain()}"
    if tail:
        message += f"\nEnd of its output:\n{tail[-2000:]}"
    return pytest.fail.Exception(message, pytrace=False)


def _tail(path) -> str:
    if path is None or not os.path.exists(path):
        return ""
    with open(path, "rb") as f:
        return f.read()[-2000:].decode(errors="replace")


def wait_all(procs, *, timeout: float, what: str) -> list[tuple]:
    """communicate() with every process in `procs` within one scaled deadline; on overrun
    kill them all and fail the test naming `what`."""
    deadline = time.monotonic() + limit(timeout)
    try:
        return [p.communicate(timeout=max(deadline - time.monotonic(), 0.1)) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
            p.wait()
        raise _overran(what, timeout) from None


def wait_for_line(path, predicate, proc, *, timeout: float, what: str, stderr_path=None) -> str:
    """Poll the file `path` (where `proc` writes its stdout) until a line satisfies
    `predicate`, and return that line. Fails the test if `proc` exits first, or kills it
    and fails once the scaled deadline has passed; either failure shows the end of the
    file `stderr_path` if given."""
    deadline = time.monotonic() + limit(timeout)
    seen = 0
    while True:
        with open(path, "rb") as f:
            f.seek(seen)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # whole lines only
        seen += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            if predicate(line):
                return line
        if proc.poll() is not None:
            pytest.fail(
                f"{what}: exited with {proc.returncode} before the line waited for\n"
                + _tail(stderr_path),
                pytrace=False,
            )
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise _overran(what, timeout, _tail(stderr_path))
        time.sleep(0.1)  # polling interval, not a wait for the event
