"""The optimisers of a run: optax for every network trained by plain gradients, and the
differentiable inner optimiser of the bi-level method (fuse4seg_jax.bilevel).

`outer(config.optim, num_steps)` is the recipe every optax-trained network gets (warm-up,
schedule, global-norm clipping); `inner(config.bilevel, config.optim, num_steps)` is the
follower's optimiser, the one the hypergradient differentiates through: at a constant
rate without clipping, or (bilevel.inner_schedule = "outer") with the outer recipe.
"""

import optax

from fuse4seg_jax import bilevel

OUTER_NAMES = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "constant")


def schedule(optim_config, num_steps: int, peak: float | None = None):
    """The learning-rate schedule of `outer`: linear warm-up over `warmup_steps` to `peak`
    (default optim.learning_rate), then `schedule` over the remaining steps."""
    lr, warmup = optim_config.learning_rate if peak is None else peak, optim_config.warmup_steps
    if optim_config.schedule == "cosine":
        main = optax.cosine_decay_schedule(lr, max(num_steps - warmup, 1), alpha=0.01)
    elif optim_config.schedule == "constant":
        main = optax.constant_schedule(lr)
    else:
        raise ValueError(f"optim.schedule={optim_config.schedule!r}: expected one of {SCHEDULES}")
    if warmup <= 0:
        return main
    # linear warm-up from lr / warmup, so even the first step moves
    return optax.join_schedules([optax.linear_schedule(lr / warmup, lr, warmup), main], [warmup])


def outer(optim_config, num_steps: int) -> optax.GradientTransformation:
    """The optax optimiser of a network trained for `num_steps` steps: linear warm-up over
    `warmup_steps`, then the schedule, with global-norm clipping at `grad_clip` (0: off)."""
    rate = schedule(optim_config, num_steps)
    makers = {
        "adam": lambda: optax.adam(rate),
        "adamw": lambda: optax.adamw(rate, weight_decay=optim_config.weight_decay),
        "sgd": lambda: optax.sgd(rate, momentum=0.9),
    }
    if optim_config.name not in makers:
        raise ValueError(f"optim.name={optim_config.name!r}: expected one of {OUTER_NAMES}")
    chain = [optax.clip_by_global_norm(optim_config.grad_clip)] if optim_config.grad_clip else []
    return optax.chain(*chain, makers[optim_config.name]())


INNER_SCHEDULES = ("constant", "outer")


def inner(bilevel_config, optim_config=None, num_steps: int = 0) -> bilevel.InnerOptimizer:
    """The follower's differentiable optimiser: `inner_optimizer` (sgd also takes
    `inner_momentum`). bilevel.inner_schedule "constant": at `inner_lr` throughout, no
    clipping (the original recipe). "outer": the outer recipe of `optim_config` (the same
    warm-up, schedule shape and global-norm clipping at optim.grad_clip) with peak
    `inner_lr`, counted in inner steps: `inner_steps` per outer step, so the warm-up
    lasts warmup_steps * inner_steps inner steps and the schedule num_steps * inner_steps.
    """
    kwargs = {}
    if bilevel_config.inner_optimizer == "sgd":
        kwargs["momentum"] = bilevel_config.inner_momentum
    how = bilevel_config.get("inner_schedule", "constant")  # runs saved before the key
    if how == "constant":
        rate = bilevel_config.inner_lr
    elif how == "outer":
        if optim_config is None:
            raise ValueError('bilevel.inner_schedule="outer" needs the outer optimiser config')
        k = max(int(bilevel_config.inner_steps), 1)
        scaled = optim_config.copy_and_resolve_references()
        with scaled.unlocked():
            scaled.warmup_steps = optim_config.warmup_steps * k
        rate = schedule(scaled, num_steps * k, peak=bilevel_config.inner_lr)
        kwargs["clip_norm"] = float(optim_config.grad_clip)
    else:
        raise ValueError(f"bilevel.inner_schedule={how!r}: expected one of {INNER_SCHEDULES}")
    return bilevel.make_inner_optimizer(bilevel_config.inner_optimizer, rate, **kwargs)
