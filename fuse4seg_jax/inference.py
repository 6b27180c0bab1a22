"""Run a trained run's networks on arrays of 2D images: `load_trained(config, workdir)`.

Owns restoring a checkpoint for inference and batching images through the eval step:

    predictor = inference.load_trained(config, "runs/brats_fuse")
    out = predictor.predict(modalities)  # (N, H, W, M) float32 in [0, 1], NHWC
    out["pred"]   # (N, H, W) int32 labels 0..3 (3 = enhancing tumour), when segmenting
    out["fused"]  # (N, H, W) float32 in [0, 1], when the model makes a fused image

Which keys exist depends on the model (`predictor.output_keys(M)`, known before any image is
run): Fuse4Seg and the image-level baselines give both; feature-level baselines
(early fusion, dual encoder) only "pred"; fusion-only runs only "fused". Other outputs
of the eval step (e.g. per-image losses) are dropped inside the compiled function.
The per-class probabilities "probs" (N, H, W, C) float32 (regions.probabilities: C = 4
classes for model.seg_mode "softmax", 3 regions WT, TC, ET for "regions") are computed
only when asked: `load_trained(..., keys=PROB_KEYS)`.

`load_trained(config, workdir, step)`: step None (the latest checkpoint), an int, or
"best" (the best checkpoint, saved apart by the trainer in `<workdir>/checkpoint_best`).

Fixed shapes, so each image size compiles once: images go through in batches of
`batch_size`, the last batch padded with zero images; H and W are padded with zeros at
the bottom / right up to a multiple of `multiple` (the networks downsample; 16 covers
the U-Nets of the model zoo) and the outputs cropped back. Zero is the background of
normalised scans, but the networks' instance/group norms see the padded image, so a
padded image's outputs can differ slightly from those of the same image at a size that
needs no padding (BraTS's 240 x 240 needs none).

The batch is split over the local devices (data parallel, state replicated) when
`batch_size` allows: the largest device count <= the visible devices dividing it.
Single process only.
"""

import json

import jax
import numpy as np

from fuse4seg_jax import checkpointing, recipe, regions, sharding, storage

OUTPUT_KEYS = ("pred", "fused")  # what a Predictor computes by default
PROB_KEYS = ("pred", "fused", "probs")  # ... and with the per-class probabilities
ALL_KEYS = PROB_KEYS
# Config keys that decide the networks and what they compute; a checkpoint restored under
# different values would be wrong or fail to restore (compute_dtype may differ).
_MODEL_KEYS = ("kind", "fusion", "fusion_merge", "segmentation", "seg_mode")


def _devices_for(batch_size: int) -> int:
    n = min(jax.local_device_count(), batch_size)
    while batch_size % n:
        n -= 1
    return n


class Predictor:
    """A restored state and its compiled eval step; `predict` runs arrays of images.

    eval_fn(state, {"modalities": x (B,H,W,M)}) -> dict with "pred" (B,H,W) int32 and/or
    "fused" (B,H,W) float32, and "probs" (B,H,W,C) float32 with "pred" (recipe.Recipe.
    eval_step). `step`: the checkpoint's step. keys: the outputs to compute (a subset of
    ALL_KEYS), e.g. ("fused",) for the fusion network alone (XLA drops the unused
    segmentation network from the compiled function); "probs" only when asked.
    seg_mode: the run's model.seg_mode, what "probs" holds (regions.probabilities).
    """

    def __init__(self, eval_fn, state, *, batch_size=16, multiple=16, step=None,
                 keys=OUTPUT_KEYS, seg_mode="softmax"):  # fmt: skip
        if batch_size < 1 or multiple < 1:
            raise ValueError(f"batch_size={batch_size} and multiple={multiple} must be >= 1")
        unknown = set(keys) - set(ALL_KEYS)
        if unknown:
            raise ValueError(f"keys {sorted(unknown)}: expected a subset of {ALL_KEYS}")
        if seg_mode not in regions.SEG_MODES:
            raise ValueError(f"seg_mode={seg_mode!r}: expected one of {regions.SEG_MODES}")
        self.batch_size, self.multiple, self.step = int(batch_size), int(multiple), step
        self.keys, self.seg_mode = tuple(keys), seg_mode
        self.mesh = sharding.make_mesh(_devices_for(self.batch_size))
        repl, batch_sh = sharding.replicated(self.mesh), sharding.batch_sharding(self.mesh)
        self.state = jax.device_put(state, repl)
        self._batch_sharding = batch_sh

        def run(state, x):
            out = eval_fn(state, {"modalities": x})
            return {k: out[k] for k in self.keys if k in out}

        self._run = jax.jit(run, in_shardings=(repl, batch_sh), out_shardings=batch_sh)
        self._eval_fn = eval_fn
        self._keys_for = {}  # num_modalities -> output keys
        self.executables = {}  # (B, H', W', M) -> compiled executable

    def output_keys(self, num_modalities: int) -> tuple:
        """The keys `predict` returns for images with `num_modalities` channels (traced
        once per channel count)."""
        if num_modalities not in self._keys_for:
            x = jax.ShapeDtypeStruct((1, self.multiple, self.multiple, num_modalities), np.float32)
            out = jax.eval_shape(lambda s, b: self._eval_fn(s, {"modalities": b}), self.state, x)
            self._keys_for[num_modalities] = tuple(k for k in self.keys if k in out)
        return self._keys_for[num_modalities]

    def padded_shape(self, h: int, w: int) -> tuple:
        """(batch_size, H', W'): the shape one compiled call sees for H x W images."""
        m = self.multiple
        return self.batch_size, -(-h // m) * m, -(-w // m) * m

    def compile(self, h: int, w: int, num_modalities: int, batch: int | None = None):
        """The executable for `batch` (default batch_size) H x W images with M channels,
        compiled on first use (ahead of time, so callers can time it apart from running)
        and kept for later calls."""
        b, hp, wp = self.padded_shape(h, w)
        key = (batch or b, hp, wp, num_modalities)
        if key not in self.executables:
            x = jax.ShapeDtypeStruct(key, np.float32, sharding=self._batch_sharding)
            self.executables[key] = self._run.lower(self.state, x).compile()
        return self.executables[key]

    def predict(self, modalities) -> dict:
        """modalities (N, H, W, M) float32 in [0, 1] -> {"pred": (N,H,W) int32, "fused":
        (N,H,W) float32, "probs": (N,H,W,C) float32} (those of `keys` the model has; module
        docstring), host numpy arrays."""
        x = np.asarray(modalities, np.float32)
        if x.ndim != 4:
            raise ValueError(f"modalities must be (N, H, W, M), got shape {x.shape}")
        n, h, w, m = x.shape
        b, hp, wp = self.padded_shape(h, w)
        devices = self.mesh.size
        results, pending = [], None
        for start in range(0, max(n, 1), b):
            chunk = x[start : start + b]
            # The last, partial batch runs padded only to a multiple of the devices, not to
            # batch_size: the padding is computed for nothing (at most batch_size / devices
            # more executables per image size, each compiled once).
            rows = min(b, -(-max(len(chunk), 1) // devices) * devices)
            batch = np.zeros((rows, hp, wp, m), np.float32)
            batch[: len(chunk), :h, :w] = chunk
            run = self.compile(h, w, m, rows)
            out = run(self.state, jax.device_put(batch, self._batch_sharding))
            if pending is not None:  # fetch the previous batch while this one runs
                results.append(_fetch(*pending, h, w))
            pending = (out, len(chunk))
        results.append(_fetch(*pending, h, w))
        return {k: np.concatenate([r[k] for r in results])[:n] for k in results[0]}


def _fetch(out, valid: int, h: int, w: int) -> dict:
    return {k: np.asarray(v)[:valid, :h, :w] for k, v in out.items()}


def _run_config_mismatch(config, workdir: str) -> list[str]:
    """The network-deciding keys where `config` differs from workdir's config.json."""
    path = storage.join(workdir, "config.json")
    if not storage.isfile(path):
        return []
    run = json.loads(storage.read_text(path))
    given = json.loads(config.to_json_best_effort())
    kind = run["model"]["kind"]
    keys = [("model", k) for k in _MODEL_KEYS] + [("data", "modalities")]
    keys += [("model", "classical")] if kind == "classical" else []
    keys += [("model", "single_modality")] if kind == "single" else []
    diffs = []
    for section, key in keys:
        ran, here = run.get(section, {}), given.get(section, {})
        if key in ran and ran[key] != here.get(key):
            diffs.append(f"{section}.{key} is {ran[key]!r} in the run, {here.get(key)!r} here")
    return diffs


def _resolve_step(workdir: str, step):
    """(step, best) of load_trained's `step` (None, an int or "best"); FileNotFoundError
    naming the folder when there is no such checkpoint."""
    best = isinstance(step, str) and step == "best"
    if isinstance(step, str) and not best:
        raise ValueError(f"step={step!r}: expected a checkpoint step, None (latest) or 'best'")
    found = checkpointing.available_steps(workdir, best=best)
    directory = checkpointing.directory(workdir, best=best)
    if best:
        if not found:
            raise FileNotFoundError(
                f"{directory}: no best checkpoint (the trainer saves one there when it "
                "evaluates on held-out data)"
            )
        return found[-1], True
    if not found:
        raise FileNotFoundError(f"{workdir}: no checkpoint found in {directory}")
    if step is not None and int(step) not in found:
        raise FileNotFoundError(f"{directory}: no checkpoint of step {step} (found {found})")
    return (found[-1] if step is None else int(step)), False


def load_trained(config, workdir: str, step=None, **predictor_options):
    """A Predictor with the state of workdir's checkpoint `step`: None (default) the latest,
    an int that step, "best" the best checkpoint (`<workdir>/checkpoint_best`, saved by the
    trainer; its step is `predictor.step`).

    `config` must be the run's (its networks); the restored state is laid out like the
    fresh state of its recipe (recipe.build(config).init_state). Raises FileNotFoundError
    (one line naming the folder) when there is no such checkpoint, ValueError when the
    config does not match the run (its config.json, or a state that does not restore into
    the config's networks) and ValueError "checkpoint N is unreadable: <reason>" when its
    files are missing or damaged (checkpointing.unreadable_reason).
    predictor_options: batch_size, multiple, keys of Predictor (seg_mode comes from config).
    """
    workdir = storage.absolute(workdir)
    step, best = _resolve_step(workdir, step)
    directory = checkpointing.directory(workdir, best=best)
    mismatch = _run_config_mismatch(config, workdir)
    if mismatch:
        raise ValueError(f"{workdir}: --config is not the run's: {'; '.join(mismatch)}")
    run = recipe.build(config)
    template = jax.eval_shape(run.init_state)
    device = sharding.replicated(sharding.make_mesh(1))
    template = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), template
    )
    ckpt = checkpointing.Checkpointer(workdir, every=0, read_only=True, best=best)
    try:
        state, _ = ckpt.restore(template, step)
    except Exception as e:  # Orbax reports a structure / shape mismatch in many lines
        reason = checkpointing.unreadable_reason(workdir, step, e, best=best)
        if reason is not None:
            raise ValueError(f"{directory}: checkpoint {step} is unreadable: {reason}") from e
        detail = " ".join(str(e).split())[:200]
        raise ValueError(
            f"{directory}/{step}: does not restore into the networks of --config "
            f"(model.fusion={config.model.fusion}, model.segmentation="
            f"{config.model.segmentation}): {type(e).__name__}: {detail}"
        ) from e
    finally:
        ckpt.close()
    options = {"seg_mode": config.model.seg_mode} | predictor_options
    return Predictor(run.eval_step, state, step=step, **options)
