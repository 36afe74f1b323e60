"""Gradient transformations: one method per module."""

from gaf_optax.transforms._gaf import GafState
from gaf_optax.transforms._gaf import adam_gaf
from gaf_optax.transforms._gaf import adaptive_gaf
from gaf_optax.transforms._gaf import fast_arctan
from gaf_optax.transforms._gaf import gaf
from gaf_optax.transforms._gaf import rmsprop_gaf
from gaf_optax.transforms._gaf import sgd_gaf

__all__ = [
    "GafState",
    "adam_gaf",
    "adaptive_gaf",
    "fast_arctan",
    "gaf",
    "rmsprop_gaf",
    "sgd_gaf",
]
