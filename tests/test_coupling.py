"""Does the bi-level coupling act? The implicit term's share of the update at the defaults.

`implicit_fraction` = |hypergradient - F_x| / |hypergradient| (bilevel aux), where F_x is
the outer loss's partial derivative: the share of the update that the follower's response
contributes. Zero means the method is `first_order` in disguise.
"""

import jax
import pytest

from configs import tiny
from fuse4seg_jax import recipe
from fuse4seg_jax.data import sources


def _fractions(config, steps=3):
    run = recipe.build(config)
    examples, _ = sources.load(config.data, config.seed)
    batch = {k: examples[k][:16] for k in ("modalities", "label", "mask")}
    state = jax.jit(run.init_state)()
    step = jax.jit(run.train_step)
    fractions = []
    for _ in range(steps):
        state, metrics = step(state, batch)
        fractions.append(float(metrics["implicit_fraction"]))
    return fractions


def _tiny(tmp_path, **bilevel):
    config = tiny.get_config()
    config.data.tfds_dir = str(tmp_path)
    config.bilevel.method = "unrolled"
    config.bilevel.update(bilevel)
    return config


@pytest.mark.slow  # compiles four unrolled steps (about a minute)
@pytest.mark.parametrize("inner", ["fusion", "segmentation"])
def test_fresh_adam_unroll_has_no_implicit_term_and_the_default_has_one(tmp_path, inner):
    """Through a fresh Adam state the first inner step is lr * g / sqrt(g^2 + eps), about lr *
    sign(g), whose derivative eps / (g^2 + eps)^1.5 vanishes but where g is tiny: the
    implicit term is 0 up to that (the old defaults: adam 1e-3, one step, mu 0.1). Plain
    SGD is linear in the gradient, so the default gives the implicit term a share from
    the first step on, in both orientations."""
    adam = _tiny(tmp_path, inner=inner, inner_optimizer="adam", inner_lr=1e-3, inner_steps=1)
    adam.bilevel.mu = 0.1
    (fresh,) = _fractions(adam, steps=1)
    assert 0.0 <= fresh < 1e-6
    fractions = _fractions(_tiny(tmp_path, inner=inner))
    assert min(fractions) > 1e-3, fractions
