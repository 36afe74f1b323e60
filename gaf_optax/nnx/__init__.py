"""Model-side methods for Flax NNX: ANAct activations, amplification points.

The NNX forms of :mod:`gaf_optax.nn` (GAAF activations are plain functions
and serve both APIs from there). The optimizer side needs nothing new: every
``gaf_optax`` transformation works in ``nnx.Optimizer(model, tx,
wrt=nnx.Param)``, and :func:`gaf_optax.amplification_factors` reads its state.
The reference models are available as NNX modules through
:func:`gaf_optax.models.get_nnx`.
"""

from gaf_optax.nnx._amplify import AmplificationFactors
from gaf_optax.nnx._amplify import AmplificationPoint
from gaf_optax.nnx._amplify import amplification_signal_norms
from gaf_optax.nnx._amplify import num_amplification_points
from gaf_optax.nnx._amplify import set_amplification_factors
from gaf_optax.nnx._anact import ANAct
from gaf_optax.nnx._anact import NGELU
from gaf_optax.nnx._anact import NReLU
from gaf_optax.nnx._anact import NSwish
from gaf_optax.nnx._anact import NTanh

__all__ = [
    "ANAct",
    "AmplificationFactors",
    "AmplificationPoint",
    "NGELU",
    "NReLU",
    "NSwish",
    "NTanh",
    "amplification_signal_norms",
    "num_amplification_points",
    "set_amplification_factors",
]
