"""train_and_evaluate(config, workdir): the training loop and its cadence.

Builds the mesh, the data, the run's recipe (recipe.py: networks, bound steps, fresh
state) and the compiled steps, then runs the loop: log every `train.log_every` steps
(progress line, TensorBoard, metrics.jsonl), evaluate on held-out cases every
`train.eval_every`, save an Orbax checkpoint every `train.checkpoint_every` and, for runs
that segment, the best checkpoint so far by held-out mean Dice over WT, TC and ET (at each
evaluation, in `<workdir>/checkpoint_best`, one step kept; `--step best` of evaluate,
predict and export picks it). Rerunning
with the same workdir resumes from the latest checkpoint (state and input position). At
the end, final_report.py writes `results.json` and `figure.png`. The checkpoint manager
and the metric writer are closed however the loop ends (a pending asynchronous save is
finished, TensorBoard flushed).

A workdir belongs to one config and one trainer (workdir.py): a rerun with a config that
differs in more than `workdir.RESUMABLE_KEYS` is refused before anything is written, a
finished run returns its stored results, and a second trainer on a workdir in use stops
with workdir.WorkdirBusyError. Resume falls back past unreadable checkpoints.
"""

import contextlib
import functools
import json
import time

import jax
import numpy as np

from fuse4seg_jax import (
    atomic_files,
    final_report,
    metric_writer,
    preemption,
    recipe,
    run_geometry,
    sharding,
)
from fuse4seg_jax.checkpointing import BestCheckpoint, Checkpointer
from fuse4seg_jax.config_validation import validate
from fuse4seg_jax.data import pipeline, sources
from fuse4seg_jax.heartbeat import heartbeat
from fuse4seg_jax.metric_writer import MetricWriter, log
from fuse4seg_jax.metrics import segmentation as seg_metrics
from fuse4seg_jax.regions import REGION_NAMES
from fuse4seg_jax.workdir import check_config, finished_results
from fuse4seg_jax.workdir import lock as lock_workdir


class NonFiniteLossError(FloatingPointError):
    pass


def _eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def evaluate(p_eval, state, examples, mesh, batch_size: int) -> dict:
    """Runs the eval step over all examples; returns its outputs (padding dropped) and
    `scores`: mean Dice per region, or with the segmentation side off the mean fusion loss."""
    outputs = []
    for batch, valid in pipeline.eval_batches(
        examples, batch_size=batch_size, multiple_of=mesh.devices.size
    ):
        local = sharding.process_rows(batch)  # each process feeds its share of the rows
        out = sharding.gather(p_eval(state, sharding.shard_batch(local, mesh)))
        outputs.append({k: v[:valid] for k, v in out.items()})
    result = {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}
    if "pred" in result:
        result["per_case"] = seg_metrics.dice_per_case(
            result["pred"], examples["label"], examples["case_id"]
        )
        dice = seg_metrics.mean_dice(result["per_case"])
        result["scores"] = {f"dice_{r}": dice[r] for r in REGION_NAMES}
    else:
        result["scores"] = {"loss_fuse": float(np.mean(result["loss_fuse"]))}
    return result


def _load_data(config):
    """sources.load; with several processes the first builds the TFDS dataset, then the rest
    read it (no two processes write one dataset folder)."""
    if jax.process_count() == 1:
        return sources.load(config.data, config.seed)
    from jax.experimental import multihost_utils

    data = sources.load(config.data, config.seed) if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices("fuse4seg_jax: dataset prepared")
    return data if data is not None else sources.load(config.data, config.seed)


def train_and_evaluate(config, workdir: str, *, stop_at: int | None = None) -> dict | None:
    """Trains, evaluates and reports; returns the final held-out Dice per region (fusion-only
    runs: the held-out scores).

    stop_at: stop after this step with a checkpoint, as an interrupted run
    would (no final evaluation; returns None). Rerunning resumes.
    """
    validate(config, config.mesh.num_devices or jax.device_count())  # before any work
    check_config(config, workdir)  # read only: refused before anything is written
    done = finished_results(config, workdir)
    if done is not None:
        log(
            f"{workdir} is a finished run ({config.train.num_steps} steps, results.json): "
            "nothing to do; raise train.num_steps to train further"
        )
        return done
    with contextlib.ExitStack() as stack:
        if jax.process_index() == 0:  # one trainer per workdir (processes of a run share it)
            stack.enter_context(lock_workdir(workdir))
            # again under the lock: another run may have ended
            check_config(config, workdir, announce=False)
        return _train(config, workdir, stop_at)


def _train(config, workdir, stop_at):
    """train_and_evaluate once the workdir is checked and locked."""
    mesh = sharding.make_mesh(config.mesh.num_devices)
    num_devices = mesh.devices.size
    log(
        f"processes: {jax.process_count()}, devices: {num_devices} x "
        f"{mesh.devices.flat[0].platform} ({jax.local_device_count()} per process) on mesh "
        f"axis '{sharding.DATA_AXIS}', global batch {config.train.batch_size} "
        f"({config.train.batch_size // jax.process_count()} rows read per process)"
    )
    t0 = time.time()
    train_examples, eval_examples = _load_data(config)
    for part in (train_examples, eval_examples):
        sources.check_batch(part, len(config.data.modalities))
    pipeline.check_train_batch(train_examples["label"].shape, config.train.batch_size,
                               jax.process_count(), config.data.image_size)  # fmt: skip
    log(
        f"data: {config.data.name}, {len(train_examples['label'])} training and "
        f"{len(eval_examples['label'])} held-out images "
        f"({len(np.unique(eval_examples['case_id']))} cases), "
        f"{config.data.image_size}x{config.data.image_size}, modalities "
        f"{', '.join(config.data.modalities)} ({time.time() - t0:.1f}s)"
    )

    run = recipe.build(config)
    repl = sharding.replicated(mesh)
    state = jax.jit(run.init_state, out_shardings=repl)()
    log(f"networks: {run.describe(state)}")

    ckpt = Checkpointer(
        workdir, every=config.train.checkpoint_every, keep=config.train.keep_checkpoints
    )
    writer = best = None
    try:
        state, start = _resume(ckpt, state)
        if run.kind != "fusion_only":  # segmenting runs keep their best checkpoint too
            best = BestCheckpoint(workdir)
        if jax.process_index() == 0:
            atomic_files.write_json(
                f"{workdir}/config.json", json.loads(config.to_json_best_effort())
            )
            run_geometry.write(workdir, run_geometry.training_geometry(config))
        writer = MetricWriter(workdir, resume_step=start)
        writer.write_config(config.to_json_best_effort(indent=2))
        batch_sh = sharding.batch_sharding(mesh)
        p_eval = jax.jit(_without_probs(run.eval_step), in_shardings=(repl, batch_sh),
                         out_shardings=batch_sh)  # fmt: skip
        state, loop_stats = _loop(config, run, mesh, state, start, (train_examples, eval_examples),
                                  p_eval, (ckpt, best), writer, stop_at)  # fmt: skip
        if loop_stats is None:  # stopped at `stop_at`
            return None
        result = evaluate(p_eval, state, eval_examples, mesh, config.train.eval_batch_size)
        final_scores = {f"eval/{k}": v for k, v in result["scores"].items()}
        writer.write(config.train.num_steps, final_scores, once=True)  # once: a rerun at the end
        writer.write_hparams(config.to_json_best_effort(), final_scores)
        _offer_best(best, config.train.num_steps, state, result["scores"], config)
    finally:  # however the run ends: finish pending checkpoint saves, flush TensorBoard
        ckpt.close()
        for closing in (best, writer):
            if closing is not None:
                closing.close()
    report = final_report.write(config, workdir, eval_examples, result, loop_stats)
    metric_writer.write_figure(workdir, "figure", f"{workdir}/figure.png", config.train.num_steps)
    return report


def _without_probs(eval_step):
    """eval_step without its per-class probabilities (unused here: XLA drops them)."""

    def step(state, batch):
        return {k: v for k, v in eval_step(state, batch).items() if k != "probs"}

    return step


def _meta(config, step: int) -> dict:
    """The JSON record saved with checkpoint `step`."""
    return {"data_position": step, "config": json.loads(config.to_json_best_effort())}


def _offer_best(best, step, state, scores, config):
    """Saves the best checkpoint when the held-out mean Dice (over WT, TC, ET) improved."""
    if best is None:
        return
    mean_dice = float(np.mean([scores[f"dice_{r}"] for r in REGION_NAMES]))
    if best.offer(step, state, _meta(config, step), mean_dice):
        log(f"best checkpoint so far: step {step}, held-out mean Dice {mean_dice:.4f}")


def _loop(config, run, mesh, state, start, data, p_eval, checkpointers, writer, stop_at):
    """Steps `start + 1 .. train.num_steps` with their logging, evaluation (`p_eval` on the
    held-out part of `data`), diagnostics and checkpoints (`checkpointers`: the Checkpointer
    and the BestCheckpoint or None). Returns (state, run statistics),
    or (state, None) when stopped at `stop_at` (checkpoint saved); raises
    preemption.Preempted after a stop signal (checkpoint saved)."""
    repl, batch_sh = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    p_train = jax.jit(
        run.train_step, in_shardings=(repl, batch_sh), out_shardings=(repl, repl),
        donate_argnums=0,
    )  # fmt: skip
    train_examples, eval_examples = data
    ckpt, best = checkpointers
    sync_each_step = sharding.needs_sync_every_step(mesh)
    diagnose_every = config.bilevel.diagnose_every if run.diagnose_step else 0
    p_diagnose = None
    if diagnose_every:
        p_diagnose = jax.jit(run.diagnose_step, in_shardings=(repl, batch_sh), out_shardings=repl)
    num_steps = config.train.num_steps
    check_every = config.train.check_replicas_every
    batches = pipeline.train_iterator(
        train_examples,
        batch_size=config.train.batch_size,
        seed=config.seed,
        augment_data=config.data.augment,
        start_batch=start,
        shuffle_buffer=config.data.shuffle_buffer,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        crop_size=config.data.image_size,
        intensity_scale=config.data.intensity_scale,
        intensity_shift=config.data.intensity_shift,
    )

    meta = functools.partial(_meta, config)

    window, timed, window_start = [], 0, time.time()
    loop_start, first_step_time, step_fn, step_memory = time.time(), None, None, None
    with preemption.StopSignal() as stopper:  # SIGTERM/SIGINT: checkpoint, then stop
        for step in range(start + 1, num_steps + 1):
            batch = sharding.shard_batch(next(batches), mesh)
            if step_fn is None:  # compile ahead of time once: exposes the step's memory use and
                with heartbeat("compiling the train step", log):  # can never silently recompile
                    step_fn = p_train.lower(state, batch).compile()
                step_memory = _memory_bytes(step_fn)
                if step_memory:
                    mib = step_memory / 2**20
                    log(f"train step memory (XLA estimate, per device): {mib:.1f} MiB")
            if p_diagnose is not None and step % diagnose_every == 0:  # before the step: its
                jax.block_until_ready(state)  # input state is donated. Not counted in steps/s:
                diag_start = time.time()
                with heartbeat("computing the hypergradient diagnostic", log):
                    diag = jax.device_get(p_diagnose(state, batch))
                writer.write(step, {f"train/diag_{k}": float(v) for k, v in diag.items()})
                window_start += time.time() - diag_start
            state, metrics = step_fn(state, batch)
            if sync_each_step:
                jax.block_until_ready(metrics)
            window.append(metrics)
            if first_step_time is None:  # the first step includes compilation: time it apart
                with heartbeat("running the first train step", log):
                    jax.block_until_ready(metrics)
                first_step_time = time.time() - loop_start
                log(f"compiled and ran the first train step in {first_step_time:.1f}s")
                window_start = time.time()
            else:
                timed += 1
            if step % config.train.log_every == 0 or step == num_steps:
                jax.block_until_ready(metrics)  # steps are dispatched ahead: time finished ones
                rate = max(timed, 1) / max(time.time() - window_start, 1e-9)
                _log_window(window, step, num_steps, rate, writer, ckpt.latest_step())
                window, timed, window_start = [], 0, time.time()
            if step % config.train.eval_every == 0 and step != num_steps:
                jax.block_until_ready(state)  # the steps before it stay in their window
                eval_start = time.time()
                scores = evaluate(p_eval, state, eval_examples, mesh, config.train.eval_batch_size)[
                    "scores"
                ]
                writer.write(step, {f"eval/{k}": v for k, v in scores.items()})
                log("eval " + " ".join(f"{k} {v:.4f}" for k, v in scores.items()))
                _offer_best(best, step, state, scores, config)
                window_start += time.time() - eval_start  # not counted in steps/s
            if check_every and step % check_every == 0:
                if not sharding.replicas_agree(state):
                    raise RuntimeError(f"parameter replicas differ after step {step}")
                log(f"replicas agree after step {step} ({jax.process_count()} processes)")
            ckpt.save(step, state, meta(step))
            preempted = stopper.should_stop()
            if preempted or (stop_at is not None and step >= stop_at):
                ckpt.save(step, state, meta(step), force=True)
                if preempted:
                    raise preemption.Preempted(
                        f"stopped by {stopper.received} after step {step}: checkpoint saved "
                        f"in {ckpt.directory}; rerun the same command to resume"
                    )
                log(f"stopped at step {step} as asked; rerun to resume")
                return state, None

    ckpt.save(num_steps, state, meta(num_steps), force=True)
    stats = {
        "train_loop_seconds": time.time() - loop_start,  # this invocation (not resumed parts)
        "step_memory_bytes": step_memory,
    }
    return state, stats


def _resume(ckpt, state):
    """(state, first step) from the newest checkpoint that restores, or (state, 0) without
    one. Unreadable newer checkpoints are skipped (and moved aside) with a line each."""
    if ckpt.latest_step() is None:
        return state, 0
    state, meta, step, skipped = ckpt.restore_newest(state)
    for bad, reason in skipped:
        log(f"skipped checkpoint {bad} (unreadable: {reason}); resuming from checkpoint {step}")
    start = int(state.step)
    if meta.get("data_position") != start:
        raise RuntimeError(
            f"checkpoint {step} in {ckpt.directory} is inconsistent: state step "
            f"{start}, input position {meta.get('data_position')}"
        )
    log(f"resumed from checkpoint at step {start} in {ckpt.directory}")
    return state, start


def _log_window(window, step, num_steps, rate, writer, last_checkpoint):
    """Means of the window's step metrics: checked finite, written and printed."""
    values = jax.device_get(window)
    means = {k: float(np.mean([v[k] for v in values])) for k in values[0]}
    bad = [k for k, v in means.items() if not np.isfinite(v)]
    if bad:
        raise NonFiniteLossError(
            f"non-finite {', '.join(bad)} at step {step}: stopping (last checkpoint: "
            f"{last_checkpoint}); try a lower optim.learning_rate or bilevel.inner_lr"
        )
    writer.write(
        step, {f"train/{k}": v for k, v in means.items()} | {"train/steps_per_second": rate}
    )
    losses = " ".join(f"{k} {means[k]:.4f}" for k in ("loss_seg", "loss_fuse") if k in means)
    log(
        f"step {step:>6}/{num_steps} | {losses} | {rate:.2f} steps/s | "
        f"ETA {_eta((num_steps - step) / rate)}"
    )


def _memory_bytes(compiled):
    """Arguments + outputs + temporaries of a compiled step (XLA's estimate), or None."""
    try:
        m = compiled.memory_analysis()
        return int(
            m.argument_size_in_bytes
            + m.output_size_in_bytes
            + m.temp_size_in_bytes
            - m.alias_size_in_bytes
        )
    except Exception:  # not every backend reports it
        return None
