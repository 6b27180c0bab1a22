"""A heartbeat for long silent work (compilation): "compiling the train step ... 30 s".

XLA compiles a bi-level step in seconds on a laptop and in minutes for large networks or
TPU pods; without a sign of life that looks like a hang. `heartbeat(what, log)` logs
`what ... <seconds> s` after `first` seconds and then every `every` seconds until the
block ends, from a daemon thread; a block that ends sooner logs nothing.
"""

import contextlib
import threading
import time


@contextlib.contextmanager
def heartbeat(what: str, log, *, first: float = 10.0, every: float = 15.0):
    stop = threading.Event()
    start = time.monotonic()

    def beat():
        wait = first
        while not stop.wait(wait):
            log(f"{what} ... {time.monotonic() - start:.0f} s")
            wait = every

    thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
