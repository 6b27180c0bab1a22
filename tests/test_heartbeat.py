"""The heartbeat of long silent work: lines while the block runs, none after it, none for
a block that ends before the first beat."""

import threading

import timeouts

from fuse4seg_jax.heartbeat import heartbeat


def test_beats_while_the_block_runs_and_stops_after():
    lines, two = [], threading.Event()

    def log(line):
        lines.append(line)
        if len(lines) >= 2:
            two.set()

    with heartbeat("compiling the train step", log, first=0.01, every=0.01):
        assert two.wait(timeouts.limit(30))  # the block lasts until two beats were logged
    count = len(lines)
    assert all(line.startswith("compiling the train step ... ") for line in lines)
    assert all(line.endswith(" s") for line in lines)
    assert not [t for t in threading.enumerate() if t.name == "heartbeat"]  # joined: no more
    assert len(lines) == count


def test_a_short_block_logs_nothing():
    lines = []
    with heartbeat("compiling", lines.append, first=60.0):
        pass
    assert lines == []
