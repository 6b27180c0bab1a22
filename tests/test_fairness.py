"""Which images of a step reach which network: in the comparison config every network of
every kind learns from every image of the batch (a perturbed image changes each trained
network's update); with batch_split "halves" the follower learns from half of them."""

import copy

import jax
import numpy as np
import pytest

from configs import compare, tiny
from fuse4seg_jax import ablate, recipe
from fuse4seg_jax.data import sources


def _tiny_run(config):
    small = tiny.get_config()
    config = copy.deepcopy(config)
    config.data = small.data
    config.model.fusion, config.model.segmentation = small.model.fusion, small.model.segmentation
    config.train.batch_size = 4
    return config


def _rows_seen(config, tmp_path):
    """{"fusion" | "seg": sorted rows of a 4-image batch whose perturbation changes that
    network's parameters after one train step} (networks the kind does not train: absent)."""
    config.data.tfds_dir = str(tmp_path)
    run = recipe.build(config)
    examples, _ = sources.load(config.data, config.seed)
    batch = {k: examples[k][:4] for k in ("modalities", "label", "mask")}
    step = jax.jit(run.train_step)
    state = run.init_state()
    base = jax.device_get(step(state, batch)[0])
    seen = {}
    for i in range(4):
        moved = dict(batch, modalities=batch["modalities"].copy())
        moved["modalities"][i] = np.flip(moved["modalities"][i], axis=0)
        after = jax.device_get(step(state, moved)[0])
        for net in ("fusion", "seg"):
            a, b = (jax.tree.leaves(getattr(s, net).params) for s in (base, after))
            before = jax.tree.leaves(getattr(state, net).params)
            if not a or all(np.array_equal(x, y) for x, y in zip(a, before, strict=True)):
                continue  # not trained by this kind
            if any(not np.array_equal(x, y) for x, y in zip(a, b, strict=True)):
                seen.setdefault(net, []).append(i)
            else:
                seen.setdefault(net, [])
    return seen


@pytest.mark.slow
def test_every_network_of_the_comparison_learns_from_every_image(tmp_path):
    config = compare.get_config()
    kinds = {"unrolled-fusion", "joint-fusion", "two_stage", "early_fusion", "classical-mean"}
    runs = [r for r in ablate.run_configs(config) if r[0].split("-seed")[0] in kinds and r[3] == 0]
    assert len(runs) == len(kinds)
    for name, *_, run_config in runs:
        seen = _rows_seen(_tiny_run(run_config), tmp_path)
        assert seen and all(rows == [0, 1, 2, 3] for rows in seen.values()), (name, seen)
    halves = _tiny_run(runs[0][4])
    halves.bilevel.batch_split = "halves"
    seen = _rows_seen(halves, tmp_path)  # the follower (fusion) learns from the even rows only;
    assert seen["fusion"] == [0, 2] and {1, 3} <= set(seen["seg"]), seen  # the leader from
    # the odd rows (and the even ones only through an implicit term)
