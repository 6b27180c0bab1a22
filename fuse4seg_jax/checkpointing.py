"""Checkpoints: the only module that touches Orbax.

A checkpoint holds the train state (both networks, optimiser states, step)
and a small JSON record (the input pipeline position and the config).
Orbax writes each checkpoint to a temporary folder and renames it when
complete, so an interrupted save never replaces the last good checkpoint.
Restoring uses an abstract target carrying the current shardings, so a run
can resume on a different number of devices.
"""

import os

import jax
import orbax.checkpoint as ocp


def directory(workdir: str) -> str:
    """The folder of a workdir's checkpoints (absolute)."""
    return os.path.abspath(os.path.join(workdir, "checkpoints"))


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

    def wait(self):
        self._manager.wait_until_finished()

    def close(self):
        self._manager.wait_until_finished()
        self._manager.close()
