"""The optimisers of a run: optax for every network trained by plain gradients, and the
differentiable inner optimiser of the bi-level method (fuse4seg_jax.bilevel).

`outer(config.optim, num_steps)` is the recipe every optax-trained network gets (warm-up,
schedule, global-norm clipping); `inner(config.bilevel)` is the follower's optimiser, the
one the hypergradient differentiates through.
"""

import optax

from fuse4seg_jax import bilevel

OUTER_NAMES = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "constant")


def outer(optim_config, num_steps: int) -> optax.GradientTransformation:
    """The optax optimiser of a network trained for `num_steps` steps: linear warm-up over
    `warmup_steps`, then the schedule, with global-norm clipping at `grad_clip` (0: off)."""
    lr, warmup = optim_config.learning_rate, optim_config.warmup_steps
    if optim_config.schedule == "cosine":
        main = optax.cosine_decay_schedule(lr, max(num_steps - warmup, 1), alpha=0.01)
    elif optim_config.schedule == "constant":
        main = optax.constant_schedule(lr)
    else:
        raise ValueError(f"optim.schedule={optim_config.schedule!r}: expected one of {SCHEDULES}")
    schedule = main
    if warmup > 0:  # linear warmup from lr / warmup, so even the first step moves
        schedule = optax.join_schedules(
            [optax.linear_schedule(lr / warmup, lr, warmup), main], [warmup]
        )
    makers = {
        "adam": lambda: optax.adam(schedule),
        "adamw": lambda: optax.adamw(schedule, weight_decay=optim_config.weight_decay),
        "sgd": lambda: optax.sgd(schedule, momentum=0.9),
    }
    if optim_config.name not in makers:
        raise ValueError(f"optim.name={optim_config.name!r}: expected one of {OUTER_NAMES}")
    chain = [optax.clip_by_global_norm(optim_config.grad_clip)] if optim_config.grad_clip else []
    return optax.chain(*chain, makers[optim_config.name]())


def inner(bilevel_config) -> bilevel.InnerOptimizer:
    """The follower's differentiable optimiser: `inner_optimizer` at `inner_lr` (sgd also
    takes `inner_momentum`)."""
    kwargs = {}
    if bilevel_config.inner_optimizer == "sgd":
        kwargs["momentum"] = bilevel_config.inner_momentum
    return bilevel.make_inner_optimizer(
        bilevel_config.inner_optimizer, bilevel_config.inner_lr, **kwargs
    )
