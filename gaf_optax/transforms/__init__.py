"""Gradient transformations: one method per module."""

from gaf_optax.transforms._amplification import AMPLIFICATION_STATIC_ARGS
from gaf_optax.transforms._amplification import amplification_factors
from gaf_optax.transforms._amplification import AmplificationState
from gaf_optax.transforms._amplification import gradient_amplification
from gaf_optax.transforms._gaf import adam_gaf
from gaf_optax.transforms._gaf import adaptive_gaf
from gaf_optax.transforms._gaf import fast_arctan
from gaf_optax.transforms._gaf import gaf
from gaf_optax.transforms._gaf import GafState
from gaf_optax.transforms._gaf import rmsprop_gaf
from gaf_optax.transforms._gaf import sgd_gaf

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
