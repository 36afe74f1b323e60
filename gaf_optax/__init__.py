"""gaf_optax: gradient-shaping methods for JAX, as optax transformations.

Optimizer-side methods live at the top level: GAF (gradient activation
functions, arXiv:2107.04228) and the gradient-amplification controller
(Basodi et al.). Model-side methods (GAAF and ANAct activations,
amplification points) live in :mod:`gaf_optax.nn`.
"""

from gaf_optax.transforms import adam_gaf
from gaf_optax.transforms import adaptive_gaf
from gaf_optax.transforms import AMPLIFICATION_STATIC_ARGS
from gaf_optax.transforms import amplification_factors
from gaf_optax.transforms import AmplificationState
from gaf_optax.transforms import fast_arctan
from gaf_optax.transforms import gaf
from gaf_optax.transforms import GafState
from gaf_optax.transforms import gradient_amplification
from gaf_optax.transforms import rmsprop_gaf
from gaf_optax.transforms import sgd_gaf

__version__ = "0.1.0"

__all__ = [
    "AMPLIFICATION_STATIC_ARGS",
    "AmplificationState",
    "GafState",
    "adam_gaf",
    "adaptive_gaf",
    "amplification_factors",
    "fast_arctan",
    "gaf",
    "gradient_amplification",
    "rmsprop_gaf",
    "sgd_gaf",
]
