"""gaf_optax: gradient-shaping methods for JAX, as optax transformations.

GAF (gradient activation functions, arXiv:2107.04228) is available now; the
other methods of the project (GAAF, ANAct, gradient amplification) land in
their own modules.
"""

from gaf_optax.transforms import GafState
from gaf_optax.transforms import adam_gaf
from gaf_optax.transforms import adaptive_gaf
from gaf_optax.transforms import fast_arctan
from gaf_optax.transforms import gaf
from gaf_optax.transforms import rmsprop_gaf
from gaf_optax.transforms import sgd_gaf

__version__ = "0.1.0"

__all__ = [
    "GafState",
    "adam_gaf",
    "adaptive_gaf",
    "fast_arctan",
    "gaf",
    "rmsprop_gaf",
    "sgd_gaf",
]
