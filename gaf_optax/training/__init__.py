"""Data-parallel training of Flax models with any optax transformation.

:class:`Trainer` takes objects (a Flax model, an optax transformation, a
:class:`gaf_optax.data.Dataset`) and trains them with :meth:`Trainer.fit`
(Linen or NNX; a jitted, sharded step in a Python loop, with checkpoints, resume and
metric files) or :meth:`Trainer.fit_seeds` (``vmap`` over seeds and
``lax.scan`` over steps, for small models). The pure pieces
(:func:`init_state`, :func:`make_train_step`, :func:`make_eval_step`) are
public for custom drivers, and :class:`Telemetry` adds per-step, per-layer
diagnostics. A run survives preemption (SIGTERM: checkpoint, then
:class:`Preempted`) and divergence (:class:`NonFiniteError`; good
checkpoints are kept). ``Trainer.from_config`` / :func:`train_and_evaluate` are the
config-by-name path of ``experiments/main.py``: models, activations and
optimizers are chosen by name from the explicit dicts in this package.

Needs the ``training`` extra (``pip install 'gaf-optax[training]'``: Orbax,
ml-collections, tqdm, tensorboardX, and the data pipeline's packages).
"""

import importlib as _importlib

for _module, _package in (("orbax.checkpoint", "orbax-checkpoint"),):
  try:
    _importlib.import_module(_module)
  except ImportError as _e:
    raise ImportError(
        f"gaf_optax.training needs {_package}, which comes with the "
        "'training' extra: pip install 'gaf-optax[training]'.") from _e

from gaf_optax.training._build import ACTIVATIONS
from gaf_optax.training._build import OPTIMIZERS
from gaf_optax.training._build import RESUMABLE_FIELDS
from gaf_optax.training._build import build_model
from gaf_optax.training._build import build_optimizer
from gaf_optax.training._build import build_schedule
from gaf_optax.training._build import build_telemetry
from gaf_optax.training._build import get_activation
from gaf_optax.training._build import layer_labels
from gaf_optax.training._build import validate_config
from gaf_optax.training._checkpoint import CheckpointWriteError
from gaf_optax.training._checkpoint import Checkpointer
from gaf_optax.training._guard import NonFiniteError
from gaf_optax.training._guard import Preempted
from gaf_optax.training._guard import TrainingStopped
from gaf_optax.training._guard import all_finite
from gaf_optax.training._lock import WorkdirLock
from gaf_optax.training._lock import WorkdirLocked
from gaf_optax.training._metrics import MetricWriter
from gaf_optax.training._sharding import fsdp_spec
from gaf_optax.training._sharding import per_device_bytes
from gaf_optax.training._sharding import state_shardings
from gaf_optax.training._metrics import read_records
from gaf_optax.training._nnx import NNXFunctional
from gaf_optax.training._nnx import functional
from gaf_optax.training._step import Preprocess
from gaf_optax.training._step import Telemetry
from gaf_optax.training._step import TrainState
from gaf_optax.training._step import anact_lambda_names
from gaf_optax.training._step import init_state
from gaf_optax.training._step import layer_names
from gaf_optax.training._step import make_eval_step
from gaf_optax.training._step import make_train_step
from gaf_optax.training._step import softmax_cross_entropy
from gaf_optax.training._train import CPU_NO_YNN
from gaf_optax.training._train import Trainer
from gaf_optax.training._train import default_compiler_options
from gaf_optax.training._train import initialize_distributed
from gaf_optax.training._train import make_mesh
from gaf_optax.training._train import train_and_evaluate

__all__ = [
    "ACTIVATIONS",
    "CPU_NO_YNN",
    "CheckpointWriteError",
    "Checkpointer",
    "MetricWriter",
    "NNXFunctional",
    "NonFiniteError",
    "OPTIMIZERS",
    "Preempted",
    "Preprocess",
    "RESUMABLE_FIELDS",
    "Telemetry",
    "TrainState",
    "Trainer",
    "TrainingStopped",
    "WorkdirLock",
    "WorkdirLocked",
    "all_finite",
    "anact_lambda_names",
    "build_model",
    "build_optimizer",
    "build_schedule",
    "build_telemetry",
    "default_compiler_options",
    "fsdp_spec",
    "functional",
    "get_activation",
    "init_state",
    "initialize_distributed",
    "layer_labels",
    "layer_names",
    "make_eval_step",
    "make_mesh",
    "make_train_step",
    "per_device_bytes",
    "read_records",
    "softmax_cross_entropy",
    "state_shardings",
    "train_and_evaluate",
    "validate_config",
]
