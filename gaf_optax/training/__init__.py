"""Data-parallel training of the reference models with any of the methods.

``train_and_evaluate(config, workdir)`` is the whole loop (see
``experiments/main.py``); :class:`Trainer` exposes its jitted steps for
tests and custom loops; models, activations and optimizers are chosen by
name from the explicit dicts in this package.
"""

from gaf_optax.training._build import ACTIVATIONS
from gaf_optax.training._build import OPTIMIZERS
from gaf_optax.training._build import build_model
from gaf_optax.training._build import build_optimizer
from gaf_optax.training._build import build_schedule
from gaf_optax.training._build import get_activation
from gaf_optax.training._build import layer_labels
from gaf_optax.training._checkpoint import Checkpointer
from gaf_optax.training._metrics import MetricWriter
from gaf_optax.training._metrics import read_records
from gaf_optax.training._train import TrainState
from gaf_optax.training._train import Trainer
from gaf_optax.training._train import initialize_distributed
from gaf_optax.training._train import make_mesh
from gaf_optax.training._train import train_and_evaluate

__all__ = [
    "ACTIVATIONS",
    "Checkpointer",
    "MetricWriter",
    "OPTIMIZERS",
    "TrainState",
    "Trainer",
    "build_model",
    "build_optimizer",
    "build_schedule",
    "get_activation",
    "initialize_distributed",
    "layer_labels",
    "make_mesh",
    "read_records",
    "train_and_evaluate",
]
