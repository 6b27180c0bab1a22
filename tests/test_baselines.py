"""The baselines (model.kind): what each trains, what it feeds the segmentation network,
two_stage's freeze, their config errors, and one end-to-end run through the trainer."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from fuse4seg_jax import classical, recipe, trainer
from fuse4seg_jax.config_validation import ConfigError, validate
from fuse4seg_jax.data import phantom


def _config(kind, **model):
    config = tiny.get_config()
    config.model.kind = kind
    config.model.update(model)
    config.optim.learning_rate = 1e-2
    return config


def _batch(config, n=8):
    data = phantom.make_dataset(
        seed=0, num_cases=2, slices_per_case=n // 2, image_size=config.data.image_size,
        modalities=tuple(config.data.modalities),
    )  # fmt: skip
    return {k: jnp.asarray(data[k]) for k in ("modalities", "label", "mask")}


def _built(config):
    run = recipe.build(config)
    return run.init_state(), jax.jit(run.train_step), jax.jit(run.eval_step), run.parts


def _leaves_equal(a, b):
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return all(np.array_equal(x, y) for x, y in pairs)


@pytest.mark.slow
def test_two_stage_trains_fusion_alone_then_freezes_it():
    config = _config("two_stage")
    config.train.num_steps, config.train.fusion_steps = 4, 2
    state, train, _, _ = _built(config)
    batch = _batch(config)
    theta0, phi0 = state.fusion.params, state.seg.params
    stages = []
    for _ in range(2):
        state, metrics = train(state, batch)
        stages.append(float(metrics["stage"]))
    assert not _leaves_equal(state.fusion.params, theta0)  # stage 1 moved the fusion net
    assert _leaves_equal(state.seg.params, phi0)  # ... and left segmentation alone
    theta1 = state.fusion.params
    for _ in range(2):
        state, metrics = train(state, batch)
        stages.append(float(metrics["stage"]))
        assert np.isfinite(float(metrics["loss_seg"])) and np.isfinite(float(metrics["loss_fuse"]))
    assert stages == [1.0, 1.0, 2.0, 2.0]
    assert _leaves_equal(state.fusion.params, theta1)  # frozen in stage 2
    assert not _leaves_equal(state.seg.params, phi0)
    assert int(state.step) == 4


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mean", "max", "pca", "laplacian"])
def test_classical_kind_segments_the_classical_fusion(method):
    config = _config("classical", classical=method)
    state, train, evaluate, _ = _built(config)
    batch = _batch(config)
    assert jax.tree.leaves(state.fusion.params) == []  # nothing to train on the fusion side
    out = evaluate(state, batch)
    expected = classical.get(method)(batch["modalities"])[..., 0]
    np.testing.assert_allclose(np.asarray(out["fused"]), np.asarray(expected), atol=1e-6)
    phi0 = state.seg.params
    state, metrics = train(state, batch)
    assert not _leaves_equal(state.seg.params, phi0) and "loss_fuse" in metrics


def test_single_modality_kind_feeds_that_channel():
    config = _config("single", single_modality="t1ce")
    state, _, evaluate, _ = _built(config)
    batch = _batch(config)
    out = evaluate(state, batch)
    np.testing.assert_array_equal(np.asarray(out["fused"]), np.asarray(batch["modalities"][..., 0]))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["early_fusion", "dual_encoder"])
def test_feature_level_kinds_see_every_modality_and_make_no_fused_image(kind):
    config = _config(kind)
    state, train, evaluate, pipe = _built(config)
    batch = _batch(config)
    assert pipe.fuse is None
    out = evaluate(state, batch)
    assert "fused" not in out and out["pred"].shape == batch["label"].shape
    # the prediction depends on both modalities
    swapped = dict(batch, modalities=batch["modalities"].at[..., 1].set(0.0))
    logits = pipe.segment(state.seg.params, pipe.seg_input(state.fusion.params, batch))
    logits_b = pipe.segment(state.seg.params, pipe.seg_input(state.fusion.params, swapped))
    assert float(jnp.max(jnp.abs(logits - logits_b))) > 1e-4
    state, metrics = train(state, batch)
    assert "loss_fuse" not in metrics and np.isfinite(float(metrics["loss_seg"]))


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("kind", "feature", "model.kind="),
        ("classical", "median", "model.classical="),
        ("single_modality", "t2", "model.single_modality="),
    ],
)
def test_bad_baseline_keys_are_named(key, value, match):
    config = _config("classical" if key == "classical" else "single")
    if key == "kind":
        config.model.kind = value
    else:
        config.model[key] = value
    with pytest.raises(ConfigError, match=match):
        validate(config, num_devices=1)


def test_two_stage_fusion_steps_out_of_range_is_named():
    config = _config("two_stage")
    config.train.fusion_steps = config.train.num_steps + 1
    with pytest.raises(ConfigError, match="train.fusion_steps="):
        validate(config, num_devices=1)


@pytest.mark.slow
def test_dual_encoder_through_the_trainer_writes_results_without_a_fused_image(tmp_path):
    config = _config("dual_encoder")
    config.train.num_steps, config.train.eval_every = 4, 100
    dice = trainer.train_and_evaluate(config, str(tmp_path))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["dice_mean"] == pytest.approx(dice)
    assert results["part_contrast"] is None  # no fused image to measure
    assert (tmp_path / "figure.png").read_bytes()[:4] == b"\x89PNG"
    assert recipe.seg_model_name(config) == "dual_unet_tiny"
