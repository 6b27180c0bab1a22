"""The one metric writer: TensorBoard event files plus `<workdir>/metrics.jsonl`, and `log`
for the run's progress lines on stdout. TensorBoard also gets the run's config (text) and,
at the end, its figure (`write_figure`).

Written (and printed) by process 0 only. Each JSONL line is one JSON object with `step` and
namespaced names (`train/loss_seg`, `eval/dice_wt`, ...). On resume the JSONL
is trimmed to the restored step, so a run interrupted after its last
checkpoint does not leave duplicate rows.

A cloud workdir (gs://...; storage.py) gets the same files: metrics.jsonl is rewritten
whole on each write (cloud objects cannot be appended to; the file stays small), and the
TensorBoard events are written to a local folder and uploaded after each flush.
"""

import io
import json
import tempfile

import jax

from fuse4seg_jax import atomic_files, storage
from fuse4seg_jax.config_files import flatten


def log(message: str):
    """Prints a progress line (process 0 only), flushed at once."""
    if jax.process_index() == 0:
        print(message, flush=True)


class MetricWriter:
    def __init__(self, workdir: str, *, resume_step: int = 0):
        self.enabled = jax.process_index() == 0
        self.path = storage.join(workdir, "metrics.jsonl")
        self._tb = None
        if not self.enabled:
            return
        storage.makedirs(workdir)
        _trim_jsonl(self.path, resume_step)
        from tensorboardX import SummaryWriter  # lazy: keeps imports light for library users

        self._events = _Events(workdir)
        self._tb = SummaryWriter(self._events.local, purge_step=resume_step + 1)

    def write(self, step: int, scalars: dict, *, once: bool = False):
        """Appends a row; once: not when the file has a row of this step with these names
        already (the final evaluation of a rerun that resumed at the last step)."""
        if not self.enabled or not scalars:
            return
        if once and _has_row(self.path, int(step), scalars):
            return
        row = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        line = json.dumps(row) + "\n"
        if storage.is_cloud(self.path):  # no appending to an object: rewrite it
            old = storage.read_text(self.path) if storage.exists(self.path) else ""
            atomic_files.write_text(self.path, old + line)
        else:
            with open(self.path, "a") as f:
                f.write(line)
        for k, v in row.items():
            if k != "step":
                self._tb.add_scalar(k, v, int(step))
        self._tb.flush()
        self._events.upload()

    def write_config(self, config_json: str):
        """The run's config as TensorBoard text (tag "config"), shown beside its curves."""
        if self.enabled:
            self._tb.add_text("config", "```\n" + config_json + "\n```", 0)
            self._tb.flush()
            self._events.upload()

    def write_hparams(self, config_json: str, scores: dict):
        """The run's config as TensorBoard hyperparameters (the HParams dashboard, run
        "tensorboard/hparams"), each config key a column, with the final held-out scores."""
        if not self.enabled:
            return
        hparams = {
            key: value if isinstance(value, int | float | str | bool) else str(value)
            for key, value in flatten(json.loads(config_json)).items()
        }
        self._tb.add_hparams(hparams, {k: float(v) for k, v in scores.items()}, name="hparams")
        self._events.upload()

    def close(self):
        if self._tb is not None:
            self._tb.close()
            self._events.upload()
            self._events.cleanup()


class _Events:
    """Where TensorBoard event files are written: `<workdir>/tensorboard` itself, or for a
    cloud workdir a local folder whose files `upload` copies there."""

    def __init__(self, workdir):
        self.remote = storage.join(workdir, "tensorboard")
        if storage.is_cloud(workdir):
            self.local = tempfile.mkdtemp(prefix="fuse4seg-events-")
        else:
            self.local, self.remote = self.remote, None

    def upload(self):
        if self.remote is not None:
            storage.upload_tree(self.local, self.remote)

    def cleanup(self):
        if self.remote is not None:
            storage.rmtree(self.local)


def write_figure(workdir: str, tag: str, png_path: str, step: int):
    """A PNG written by the run (figure.png, ...) as a TensorBoard image at `step`, in the
    run's event folder (a new event file beside the scalars'). Process 0 only."""
    if jax.process_index() != 0 or not storage.exists(png_path):
        return
    import numpy as np
    from PIL import Image
    from tensorboardX import SummaryWriter

    data = storage.epath(png_path).read_bytes() if storage.is_cloud(png_path) else png_path
    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
        pixels = np.asarray(image.convert("RGB"))
    # a suffix of its own: event file names carry only the second, and a second writer in
    # the same second would otherwise replace the scalars' file
    events = _Events(workdir)
    tb = SummaryWriter(events.local, filename_suffix=f".{tag}")
    try:
        tb.add_image(tag, pixels, int(step), dataformats="HWC")
    finally:
        tb.close()
        events.upload()
        events.cleanup()


def _trim_jsonl(path: str, max_step: int):
    """Drop rows with step > max_step (atomically); keep everything when the file is fine.
    An incomplete last line (the process died while writing it) is dropped with a note."""
    if not storage.exists(path):
        return
    lines = storage.read_text(path).splitlines(keepends=True)
    keep = []
    for i, ln in enumerate(lines):
        if not ln.strip():
            continue
        try:
            row = json.loads(ln)
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise ValueError(
                    f"{path}: line {i + 1} is not JSON (only the last may be torn)"
                ) from None
            log(f"{path}: dropped an incomplete last line ({len(ln)} characters)")
            continue
        if row.get("step", 0) <= max_step:
            keep.append(ln if ln.endswith("\n") else ln + "\n")
    if keep == lines:
        return
    atomic_files.write_text(path, "".join(keep))


def _has_row(path: str, step: int, keys) -> bool:
    """Whether metrics.jsonl has a row of `step` with exactly these metric names."""
    if not storage.exists(path):
        return False
    wanted = {"step", *keys}
    return any(r.get("step") == step and set(r) == wanted for r in read_jsonl(path))


def read_jsonl(path: str) -> list[dict]:
    return [json.loads(ln) for ln in storage.read_text(path).splitlines() if ln.strip()]
