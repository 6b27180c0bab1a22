"""A workdir belongs to one run: one config, one trainer at a time.

- `check_config(config, workdir)`: compares a config with the workdir's `config.json`
  (read only); a difference in anything but `RESUMABLE_KEYS` raises ConfigError (one line
  naming the keys and both values) unless `train.allow_config_change` is set or the
  workdir has no checkpoint yet (a run that stopped before its first save).
- `finished_results(config, workdir)`: the stored results of a run that is already
  finished (latest checkpoint at `train.num_steps` and `results.json` present), else None.
- `saved_config(workdir)`: the run's config, read back from `<workdir>/config.json` (what
  predict uses when no --config is given).
- `lock(workdir)`: an exclusive `fcntl.flock` on `<workdir>/.lock` (the holder's pid is
  written into it) for the run; released on any exit, and by the OS when the process dies,
  so a stale lock never blocks. A second trainer gets WorkdirBusyError (a ConfigError).
  Cloud workdirs (gs://...) have no file locks: the lock is skipped there, with a note.

The workdir may be a local folder or a cloud URL (storage.py).
"""

import contextlib
import fcntl
import json
import os

import ml_collections

from fuse4seg_jax import checkpointing, storage
from fuse4seg_jax.config_files import flatten
from fuse4seg_jax.config_validation import ConfigError

# Config keys that may differ from the workdir's config.json on resume: they change the
# cadence, where data is read from or how many devices run, not what is trained.
# train.num_steps may only grow (checked apart).
RESUMABLE_KEYS = (
    "train.num_steps",
    "train.log_every",
    "train.eval_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.check_replicas_every",
    "train.allow_config_change",
    "bilevel.diagnose_every",
    "data.tfds_dir",
    "mesh.num_devices",
)
LOCK_NAME = ".lock"


class WorkdirBusyError(ConfigError):
    """Another process holds the workdir's lock."""


def config_differences(config, workdir: str) -> list[str]:
    """'key: a in the workdir, b here' for each key outside RESUMABLE_KEYS where `config`
    differs from `<workdir>/config.json` (and for train.num_steps going down). Keys that
    only one side has (a workdir written by an older or newer version, whose config had
    fewer or other keys) are not compared."""
    path = storage.join(workdir, "config.json")
    if not storage.isfile(path):
        return []
    stored = flatten(json.loads(storage.read_text(path)))
    given = flatten(json.loads(config.to_json_best_effort()))
    diffs = []
    for key in sorted(set(stored) & set(given)):
        old, new = stored[key], given[key]
        if old == new:
            continue
        if key == "train.num_steps":
            if isinstance(old, int) and isinstance(new, int) and new > old:
                continue
        elif key in RESUMABLE_KEYS:
            continue
        diffs.append(f"{key} {old!r} in the workdir, {new!r} here")
    return diffs


def trained(workdir: str) -> bool:
    """Whether the workdir holds a complete checkpoint (periodic or best)."""
    return bool(
        checkpointing.available_steps(workdir) or checkpointing.available_steps(workdir, best=True)
    )


def check_config(config, workdir: str, *, announce: bool = True):
    """Raises ConfigError (one line) when `config` is not the workdir's run config. A
    workdir without a checkpoint (a run that stopped before its first save) trained
    nothing to keep: another config starts afresh there (the trainer replaces config.json
    and trims the metrics to step 0), with a note when `announce`."""
    if config.train.allow_config_change:
        return
    diffs = config_differences(config, workdir)
    if diffs and not trained(workdir):
        if announce:
            from fuse4seg_jax.metric_writer import log

            log(
                f"{storage.absolute(workdir)}: its config.json is from a run that saved no "
                f"checkpoint ({diffs[0]}{', ...' if len(diffs) > 1 else ''}); starting afresh"
            )
        return
    if diffs:
        hint = "" if len(diffs) <= 6 else f" (and {len(diffs) - 6} more)"
        raise ConfigError(
            f"{storage.absolute(workdir)} belongs to another config: {'; '.join(diffs[:6])}{hint}"
            "; use a new workdir or --config.train.allow_config_change=True"
        )


def finished_results(config, workdir: str):
    """What train_and_evaluate returned for a finished run (latest checkpoint step ==
    train.num_steps and results.json written): Dice per region, or for fusion-only runs the
    held-out scores, read from results.json. None when the run is not finished."""
    path = storage.join(workdir, "results.json")
    if not storage.isfile(path):
        return None
    steps = checkpointing.available_steps(workdir)
    if not steps or steps[-1] != config.train.num_steps:
        return None
    results = json.loads(storage.read_text(path))
    return results.get("dice_mean", results.get("eval", results))


def _tuples(value):
    """JSON values as the config had them: lists (JSON's only sequence) back to tuples."""
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def saved_config(workdir: str) -> ml_collections.ConfigDict:
    """The run's config as the trainer saved it in `<workdir>/config.json`
    (config.to_json_best_effort), as a ConfigDict: sequences come back as tuples, as the
    config files write them, so validation, recipe.build and the readers take it as the
    original. ConfigError (one line naming the file) when it is missing or unreadable."""
    path = storage.join(storage.absolute(workdir), "config.json")
    if not storage.isfile(path):
        raise ConfigError(f"{path}: no such file: the run's config is needed (or pass --config)")
    try:
        tree = json.loads(storage.read_text(path))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{path}: cannot be read as JSON: {type(e).__name__}: {e}") from e
    sections = ("data", "model")
    if not isinstance(tree, dict) or not all(isinstance(tree.get(k), dict) for k in sections):
        raise ConfigError(f"{path}: not a run config (no data and model sections)")
    return ml_collections.ConfigDict(_tuples(tree))


@contextlib.contextmanager
def lock(workdir: str):
    """Holds an exclusive lock on `workdir` (created if missing) for the block; a cloud
    workdir is created and not locked (no file locks there), with a note."""
    if storage.is_cloud(workdir):
        storage.makedirs(workdir)
        from fuse4seg_jax.metric_writer import log

        log(f"{workdir}: cloud storage has no file locks; run one trainer at a time on it")
        yield
        return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise WorkdirBusyError(
                f"{os.path.abspath(workdir)} is in use by another trainer (process id "
                f"{holder}); wait for it to end or use a new workdir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
