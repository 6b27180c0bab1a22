"""Building a TFDS dataset quietly: our own progress lines instead of TFDS's banners.

TFDS prints "Downloading and preparing dataset ..." (our builders download nothing),
progress bars per split and a "downloaded and prepared" banner, and its feature code logs
deprecation warnings; none of it helps our users. `quiet_tfds` hides TFDS's log records
below ERROR for the rest of the process; `prepare` builds a dataset that is not
built yet with all of that silenced, saying instead what is built, where, and how long it
took; an already built dataset is reused without a word. Errors are raised as they are
(their messages are not printed to stdout), and TFDS still writes into a temporary
folder renamed on success, so a failed build leaves no half-built dataset.
"""

import contextlib
import io
import logging
import sys
import time


class _DropTfdsNoise(logging.Filter):
    """Drops TFDS's log records below ERROR (deprecation notes, build chatter)."""

    def filter(self, record):
        from_tfds = "tensorflow_datasets" in record.pathname or record.name.startswith(
            "tensorflow_datasets"
        )
        return not (from_tfds and record.levelno < logging.ERROR)


_NOISE = _DropTfdsNoise()


def quiet_tfds():
    """From now on, TFDS's log records below ERROR are not shown (idempotent)."""
    for handler in logging.getLogger().handlers + logging.getLogger("absl").handlers:
        if _NOISE not in handler.filters:
            handler.addFilter(_NOISE)


def prepare(builder, download_config, what: str, log=None):
    """builder.download_and_prepare(download_config=...) without TFDS's own output; `what`
    describes the dataset in our progress lines (to stderr by default)."""
    import tensorflow_datasets as tfds

    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    quiet_tfds()
    if builder.is_prepared():
        return builder
    log(f"building the {what} dataset in {builder.data_dir} (first use only) ...")
    start = time.perf_counter()
    tfds.disable_progress_bar()
    quiet_tfds()
    with contextlib.redirect_stdout(io.StringIO()):  # the banners, printed by termcolor
        builder.download_and_prepare(download_config=download_config)
    splits = ", ".join(f"{n} {s.num_examples}" for n, s in builder.info.splits.items())
    log(f"built the {what} dataset in {time.perf_counter() - start:.0f} s ({splits} examples)")
    return builder
