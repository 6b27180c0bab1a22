"""Training state: one pytree holding both networks, their optimisers and the step.

The state is a pure value (flax.struct dataclasses), so a train step is a
function `(state, batch) -> (state, metrics)` that can be jitted, sharded,
donated and checkpointed as a whole.

Which optimiser a network's `opt_state` belongs to depends on its role in the
bi-level problem (config.bilevel.inner): the outer network is updated by an
optax optimiser with the hypergradient; the inner network by the explicit,
differentiable inner optimiser of fuse4seg_jax.bilevel (the same one the
hypergradient differentiates through).
"""

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class NetState:
    """Parameters of one network and the state of the optimiser that updates them."""

    params: Any
    opt_state: Any


@flax.struct.dataclass
class TrainState:
    """Everything a train step reads and writes.

    step: int32 scalar, number of completed train steps.
    fusion, seg: the fusion network F_theta and the segmentation network S_phi (a network
    a kind of run does not train is NetState({}, ())).

    No step draws random numbers (augmentation happens in the input pipeline, seeded per
    example), so the state holds no PRNG key.
    """

    step: jax.Array
    fusion: NetState
    seg: NetState

    def nets(self, inner: str):
        """(outer, inner) NetStates for an orientation: inner is "fusion" or "segmentation"."""
        if inner == "fusion":
            return self.seg, self.fusion
        return self.fusion, self.seg

    def with_nets(self, inner: str, outer_net: NetState, inner_net: NetState):
        """A copy with the networks replaced, given in (outer, inner) order."""
        if inner == "fusion":
            return self.replace(seg=outer_net, fusion=inner_net)
        return self.replace(fusion=outer_net, seg=inner_net)
