"""What every command (train, ablate, evaluate, predict, export) shares: process set-up
before JAX starts, one-line errors, and flag parsing that names unknown config keys.

Commands define their absl flags inside `run` (not at import), so that several of them
can be imported into one process (tests, notebooks) without duplicate-flag errors.
"""

import errno
import logging
import os
import sys
import threading

# Exit status of a command stopped by a bad command line or config (absl's convention).
EXIT_USAGE = 2


def default_cpu_devices():
    """One XLA CPU device per core unless the user chose: XLA:CPU leaves cores idle within
    one device (docs/stack.md), and the batch is split over devices. Only affects the CPU
    platform; must run before jax is imported."""
    flag_text = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flag_text:
        count = int(os.environ.get("FUSE4SEG_CPU_DEVICES", os.cpu_count() or 1))
        os.environ["XLA_FLAGS"] = (
            f"{flag_text} --xla_force_host_platform_device_count={count}".strip()
        )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # silences TensorFlow's notice


def use_compilation_cache():
    """Persist compiled XLA programs across runs ($FUSE4SEG_JAX_CACHE or ~/.cache)."""
    import jax

    cache = os.path.expanduser(os.environ.get("FUSE4SEG_JAX_CACHE", "~/.cache/fuse4seg_jax/xla"))
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def one_line(text) -> str:
    """text on one line: a KeyError's repr unquoted and unescaped, whitespace collapsed."""
    text = str(text)
    if len(text) > 1 and text[0] == text[-1] == "'":
        text = text[1:-1].replace("\\n", " ").replace("\\'", "'")
    return " ".join(text.split())


# OSErrors that a user fixes (disk full, no permission, a file where a folder should be):
# shown as one line naming the file, unlike OSErrors that mean a bug.
USER_OS_ERRORS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR,
     errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG}
)  # fmt: skip


def os_error_line(e: OSError) -> str | None:
    """`<file>: <reason>` for an OSError in USER_OS_ERRORS, else None (a bug: keep the
    traceback)."""
    if e.errno not in USER_OS_ERRORS:
        return None
    where = e.filename if e.filename is not None else "a file"
    return f"{where}: {e.strerror or e}"


def fail_os_error(e: OSError):
    """One `error:` line (status 1) for an OSError a user fixes (os_error_line); re-raises
    any other, so a bug keeps its traceback. Call it from an `except OSError` clause."""
    line = os_error_line(e)
    if line is None:
        raise e
    fail(line, 1)


_error_reported = False  # True once `fail` has printed the command's error line


def fail(message, status: int = 1):
    """Print `error: message` (one line) to stderr and exit with status. In a command
    (`run`), what background work (e.g. TensorStore reads of the checkpoint whose restore
    failed) reports while the process exits says nothing more, so from here on it is
    dropped: `run` switches logging off and the unraisable hook drops everything."""
    global _error_reported
    print(f"error: {one_line(message)}", file=sys.stderr, flush=True)
    _error_reported = True
    sys.exit(status)


STEP_HELP = "Checkpoint to use: a step number or 'best' (default: the latest)."


def checkpoint_step(text):
    """The value of a --step flag: None (not given), "best" or a step number >= 0; exits
    with a usage error naming the flag otherwise."""
    if text is None or text == "best":
        return text
    try:
        step = int(text)
    except ValueError:
        step = -1
    if step < 0:
        fail(f"--step={text}: expected a checkpoint step (an integer >= 0) or 'best'", EXIT_USAGE)
    return step


def _drop_closed_loop_noise(unraisable):
    """sys.unraisablehook of the commands: after a failed checkpoint restore (reported in
    one line), TensorStore reads that finish once Orbax has closed its asyncio loop are
    reported as unraisable "Event loop is closed" errors while the process exits; they say
    nothing more, so they are dropped, as is everything once `fail` has reported the
    command's error. Everything else goes to Python's default hook."""
    error = unraisable.exc_value
    closed_loop = isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
    if _error_reported or closed_loop:
        return
    sys.__unraisablehook__(unraisable)


def _drop_thread_noise_after_error(args):
    """threading.excepthook of the commands: silent once `fail` has reported the error
    (a background thread of the failed restore dying on its way out); else the default."""
    if not _error_reported:
        threading.__excepthook__(args)


def _overrides(argv: list) -> list:
    """The `--config.<key>` flags of argv, without their values."""
    return [a.split("=")[0] for a in argv if a.startswith("--config.")]


def _resolve_config(argv: list) -> list:
    """argv with a `--config` naming a shipped config (`--config demo`) replaced by its path
    (config_files.resolve); an unknown name, or a `--config.<key>` override without a
    `--config` (evaluate and predict may take the run's saved config), is a one-line
    usage error."""
    from fuse4seg_jax import config_files

    out = list(argv)
    for i, arg in enumerate(out):
        try:
            if arg == "--config" and i + 1 < len(out):
                out[i + 1] = config_files.resolve(out[i + 1])
            elif arg.startswith("--config="):
                out[i] = "--config=" + config_files.resolve(arg.split("=", 1)[1])
        except ValueError as e:
            fail(e, EXIT_USAGE)
    overrides = _overrides(out)
    has_config = any(a == "--config" or a.startswith("--config=") for a in out)
    if overrides and not has_config:  # absl would say "Unknown command line flag"
        fail(f"{overrides[0]}: an override needs --config (a shipped config's name or a "
             "config file)", EXIT_USAGE)  # fmt: skip
    return out


def _show_flags_in_help(defining_module: str):
    """`--help` lists the main module's flags; a command whose flags another module defines
    (ablate uses train's) gets them listed too."""
    from absl import flags

    if defining_module == "__main__":
        return
    for flag in flags.FLAGS.get_key_flags_for_module(defining_module):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)


def run(main, define_flags, argv=None):
    """Define the command's flags, parse argv and call main(argv); an unknown
    `--config.<key>` override stops with one line naming it (ml-collections raises a
    multi-line KeyError/AttributeError while parsing)."""
    from absl import app

    define_flags()
    _show_flags_in_help(define_flags.__module__)
    sys.unraisablehook = _drop_closed_loop_noise
    threading.excepthook = _drop_thread_noise_after_error
    argv = _resolve_config(list(sys.argv if argv is None else argv))
    try:
        app.run(main, argv=argv)
    except SystemExit:
        if _error_reported:  # the error line is out; the process is going down
            logging.disable(logging.CRITICAL)
        raise
    except OSError as e:  # ml-collections loads --config lazily and reports it as an OSError
        if "Failed loading config file" not in str(e):
            raise
        reason = [line.strip() for line in str(e).splitlines() if line.strip()][-1]
        fail(f"--config: cannot load the config file: {reason}", EXIT_USAGE)
    except (KeyError, AttributeError) as e:
        overrides = _overrides(argv)
        if not overrides:
            raise
        hint = one_line(e.args[0] if e.args else e)
        fail(f"unknown config key in {' '.join(overrides)}: {hint}", EXIT_USAGE)
