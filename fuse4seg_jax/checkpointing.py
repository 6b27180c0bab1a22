"""Checkpoints: the only module that touches Orbax.

A checkpoint holds the train state (both networks, optimiser states, step)
and a small JSON record (the input pipeline position and the config).
Orbax writes each checkpoint to a temporary folder and renames it when
complete, so an interrupted save never replaces the last good checkpoint.
Restoring uses an abstract target carrying the current shardings, so a run
can resume on a different number of devices.

A checkpoint that is on disk but cannot be read (a file truncated or lost after the save)
is told apart from one that does not fit the networks (`unreadable_reason`); resuming
falls back to the newest checkpoint that restores (`restore_newest`) and moves the
unreadable newer ones aside to `<workdir>/checkpoints_unreadable/`.
"""

import json
import os
import shutil

import jax
import orbax.checkpoint as ocp


def directory(workdir: str) -> str:
    """The folder of a workdir's checkpoints (absolute)."""
    return os.path.abspath(os.path.join(workdir, "checkpoints"))


UNREADABLE_DIR = "checkpoints_unreadable"
# Words of TensorStore / Orbax errors about files that cannot be read (lower case); a shape
# or structure mismatch says none of them.
_READ_ERROR_WORDS = ("error while reading", "error reading", "data_loss", "out_of_range", "corrupt")


def unreadable_reason(workdir: str, step: int, error: BaseException):
    """A short reason when `error` (raised restoring checkpoint `step`) says the files are
    missing or damaged; None when it looks like a structure mismatch (other networks)."""
    state_dir = os.path.join(directory(workdir), str(step), "state")
    metadata = os.path.join(state_dir, "_METADATA")
    if not os.path.isfile(metadata):
        return "state/_METADATA is missing"
    try:
        with open(metadata) as f:
            json.load(f)
    except (OSError, ValueError) as e:
        return f"state/_METADATA is damaged ({type(e).__name__})"
    text = " ".join(str(error).split())
    if isinstance(error, OSError):
        return f"{type(error).__name__}: {text[:160]}"
    lowered = text.lower()
    if any(w in lowered for w in _READ_ERROR_WORDS):
        return "an array's data could not be read (file truncated or damaged)"
    return None


def available_steps(workdir: str) -> list[int]:
    """Sorted steps of the complete checkpoints of `workdir` ([] when it has none). Orbax
    writes to a temporary name and renames when complete, so a save that was interrupted is
    not listed."""
    if not os.path.isdir(directory(workdir)):
        return []
    manager = ocp.CheckpointManager(
        directory(workdir), options=ocp.CheckpointManagerOptions(create=False, read_only=True)
    )
    try:
        return sorted(int(s) for s in manager.all_steps())
    finally:
        manager.close()


class Checkpointer:
    """Saves every `every` steps into `<workdir>/checkpoints`, keeping the last `keep`.
    read_only: for restoring only (nothing is created, saved or deleted)."""

    def __init__(self, workdir: str, *, every: int, keep: int = 2, read_only: bool = False):
        self.directory = directory(workdir)
        self.every = every
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=not read_only, read_only=read_only
            ),
        )

    def latest_step(self):
        return self._manager.latest_step()

    def save(self, step: int, state, meta: dict, *, force: bool = False) -> bool:
        """Save if `step` is on the cadence (or `force`); returns whether it saved."""
        if not force and (self.every <= 0 or step % self.every):
            return False
        if self._manager.latest_step() == step:
            return False
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        return True

    def restore(self, state_like, step=None):
        """(state, meta) of `step` (default latest), laid out like `state_like`."""
        step = self._manager.latest_step() if step is None else step
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state_like
        )
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
            ),
        )
        return restored.state, restored.meta

    def restore_newest(self, state_like):
        """(state, meta, step, skipped) from the newest checkpoint that restores, trying
        older ones when a newer one is unreadable (unreadable_reason). skipped: (step,
        reason) of each unreadable newer checkpoint, moved to `<workdir>/checkpoints_
        unreadable/<step>` so that later saves and the step count go on from the restored
        one. Raises the newest checkpoint's error when none restores or its failure is not
        a read error (a structure mismatch)."""
        workdir = os.path.dirname(self.directory)
        skipped = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                state, meta = self.restore(state_like, step)
            except Exception as e:
                reason = unreadable_reason(workdir, step, e)
                if reason is None:
                    raise
                skipped.append((step, reason, e))
                continue
            if skipped:
                self._move_aside([s for s, _, _ in skipped])
            return state, meta, step, [(s, r) for s, r, _ in skipped]
        if skipped:
            raise skipped[0][2]
        raise FileNotFoundError(f"no checkpoint in {self.directory}")

    def _move_aside(self, steps):
        aside = os.path.join(os.path.dirname(self.directory), UNREADABLE_DIR)
        if jax.process_index() == 0:
            os.makedirs(aside, exist_ok=True)
            for step in steps:
                target = os.path.join(aside, str(step))
                if os.path.exists(target):
                    shutil.rmtree(target)
                shutil.move(os.path.join(self.directory, str(step)), target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("fuse4seg_jax: unreadable checkpoints moved")
        self._manager.reload()

    def wait(self):
        self._manager.wait_until_finished()

    def close(self):
        self._manager.wait_until_finished()
        self._manager.close()
