"""gaf_optax: gradient-shaping methods for JAX, as optax transformations.

Optimizer-side methods live at the top level: GAF (gradient activation
functions, arXiv:2107.04228) and the gradient-amplification controller
(Basodi et al.). Model-side methods (GAAF and ANAct activations,
amplification points) live in :mod:`gaf_optax.nn` (Linen) and
:mod:`gaf_optax.nnx`; the reference models in :mod:`gaf_optax.models`, the
datasets in :mod:`gaf_optax.data` and the trainer in
:mod:`gaf_optax.training`.

Those subpackages are attributes of ``gaf_optax``, imported on first
access (PEP 562, as ``optax.contrib``), so ``import gaf_optax`` imports
neither Flax nor the ``training`` extra's packages. ``gaf_optax.training``
and ``gaf_optax.data`` need that extra; without it, accessing them raises
the ImportError that importing them does, naming it.

Example:
  >>> import gaf_optax
  >>> gaf_optax.models.get("mlp", features=(8,)).num_amplification_points
  1
"""

import importlib as _importlib
import typing as _typing

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

# Imported on first access (PEP 562): Flax, Orbax, Grain and the datasets'
# packages stay out of `import gaf_optax`.
_SUBPACKAGES = ("data", "models", "nn", "nnx", "training", "transforms")

if _typing.TYPE_CHECKING:
  from gaf_optax import data  # pylint: disable=g-bad-import-order
  from gaf_optax import models
  from gaf_optax import nn
  from gaf_optax import nnx
  from gaf_optax import training
  from gaf_optax import transforms


def __getattr__(name: str):
  if name in _SUBPACKAGES:
    # import_module binds the attribute: later accesses skip this function.
    return _importlib.import_module(f"{__name__}.{name}")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(_SUBPACKAGES))
