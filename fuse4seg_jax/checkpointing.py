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

import jax
import orbax.checkpoint as ocp

from fuse4seg_jax import storage

BEST_DIR = "checkpoint_best"  # the best checkpoint by held-out mean Dice (one step kept)


def directory(workdir: str, *, best: bool = False) -> str:
    """The folder of a workdir's checkpoints (absolute, or a cloud URL); best: that of the
    best checkpoint."""
    return storage.join(storage.absolute(workdir), BEST_DIR if best else "checkpoints")


UNREADABLE_DIR = "checkpoints_unreadable"
# Words of TensorStore / Orbax errors about files that cannot be read (lower case); a shape
# or structure mismatch says none of them.
_READ_ERROR_WORDS = ("error while reading", "error reading", "data_loss", "out_of_range", "corrupt")


def unreadable_reason(workdir: str, step: int, error: BaseException, *, best: bool = False):
    """A short reason when `error` (raised restoring checkpoint `step`) says the files are
    missing or damaged; None when it looks like a structure mismatch (other networks)."""
    state_dir = storage.join(directory(workdir, best=best), str(step), "state")
    metadata = storage.join(state_dir, "_METADATA")
    if not storage.isfile(metadata):
        return "state/_METADATA is missing"
    try:
        json.loads(storage.read_text(metadata))
    except (OSError, ValueError) as e:
        return f"state/_METADATA is damaged ({type(e).__name__})"
    text = " ".join(str(error).split())
    if isinstance(error, OSError):
        return f"{type(error).__name__}: {text[:160]}"
    lowered = text.lower()
    if any(w in lowered for w in _READ_ERROR_WORDS):
        return "an array's data could not be read (file truncated or damaged)"
    return None


def available_steps(workdir: str, *, best: bool = False) -> list[int]:
    """Sorted steps of the complete checkpoints of `workdir` ([] when it has none; best: of
    the best-checkpoint folder, at most one). Orbax writes to a temporary name and renames
    when complete, so a save that was interrupted is not listed."""
    folder = directory(workdir, best=best)
    if not storage.isdir(folder):
        return []
    manager = ocp.CheckpointManager(
        folder, options=ocp.CheckpointManagerOptions(create=False, read_only=True)
    )
    try:
        return sorted(int(s) for s in manager.all_steps())
    finally:
        manager.close()


class Checkpointer:
    """Saves every `every` steps into `<workdir>/checkpoints`, keeping the last `keep`.
    read_only: for restoring only (nothing is created, saved or deleted). best: the
    best-checkpoint folder `<workdir>/checkpoint_best` instead (the trainer saves there with
    force=True when the held-out mean Dice improves, keep=1)."""

    def __init__(self, workdir: str, *, every: int, keep: int = 2, read_only: bool = False,
                 best: bool = False):  # fmt: skip
        self.directory = directory(workdir, best=best)
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

    def restore_meta(self, step) -> dict:
        """The JSON record of checkpoint `step` alone (no arrays are read)."""
        return self._manager.restore(
            step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
        ).meta

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
        aside = storage.join(os.path.dirname(self.directory), UNREADABLE_DIR)
        if jax.process_index() == 0:
            storage.makedirs(aside)
            for step in steps:
                target = storage.join(aside, str(step))
                storage.move_tree(storage.join(self.directory, str(step)), target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("fuse4seg_jax: unreadable checkpoints moved")
        self._manager.reload()

    def wait(self):
        self._manager.wait_until_finished()

    def close(self):
        self._manager.wait_until_finished()
        self._manager.close()


class BestCheckpoint:
    """The best checkpoint of a run by a held-out score (higher is better), one step kept in
    `<workdir>/checkpoint_best` beside the last ones. The score is stored in the
    checkpoint's JSON record ("best_score"), so a resumed run goes on comparing with it."""

    def __init__(self, workdir: str):
        self._ckpt = Checkpointer(workdir, every=0, keep=1, best=True)
        step = self._ckpt.latest_step()
        self.step = step
        self.score = None if step is None else self._ckpt.restore_meta(step).get("best_score")

    def offer(self, step: int, state, meta: dict, score: float) -> bool:
        """Saves `state` as the best checkpoint if `score` beats the best so far (a NaN
        score never does); returns whether it saved."""
        if not score == score or (self.score is not None and score <= self.score):
            return False
        if self.step == step:  # already saved at this step (a resumed run re-evaluating it)
            return False
        self._ckpt.save(step, state, meta | {"best_score": float(score)}, force=True)
        self.step, self.score = step, float(score)
        return True

    def close(self):
        self._ckpt.close()
