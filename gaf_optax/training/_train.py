"""The trainer: a model, an optax transformation and a dataset, on a mesh.

``jax.jit`` over a one-axis device ``Mesh``: the state is replicated
(``P()``), the batch is sharded over ``"data"``, and XLA inserts the gradient
all-reduce. The same code runs on 1..N devices and on several hosts: each
process reads its own slice of every global batch and the global array is
assembled with ``jax.make_array_from_process_local_data``.

Exact resumption: the data order depends only on ``(seed, epoch)``, random
augmentation and dropout keys on ``(seed, step)``, and the checkpoint holds the
whole state (params, BN/ANAct statistics, optimizer and amplification
controller state, and the current epoch's metric sums), so a resumed run
continues with the same batches and reports the same metrics as an
uninterrupted one.

Nothing good is lost when a run ends early (:mod:`._guard`): SIGTERM and
SIGINT checkpoint the current step and raise :class:`Preempted`; a
non-finite loss or gradient raises :class:`NonFiniteError` without saving
the diverged state; a resume checks ``WORKDIR/run.json`` against the run's
step-defining settings (:mod:`._workdir`).

Two drivers share the pure step of :mod:`gaf_optax.training._step`:
:meth:`Trainer.fit` (a Python loop over the jitted, sharded step, with
checkpoints and metric files; what convolutions on XLA:CPU want) and
:meth:`Trainer.fit_seeds` (one jitted function: ``vmap`` over seeds,
``lax.scan`` over epochs and steps; fastest for small dense models).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gaf_optax import data as data_lib
from gaf_optax.data import _batching
from gaf_optax.training import _build
from gaf_optax.training import _guard
from gaf_optax.training import _lock
from gaf_optax.training import _nnx
from gaf_optax.training import _sharding
from gaf_optax.training import _step
from gaf_optax.training import _workdir
from gaf_optax.training._checkpoint import Checkpointer
from gaf_optax.training._metrics import MetricWriter
from gaf_optax.training._step import Preprocess
from gaf_optax.training._step import Telemetry
from gaf_optax.training._step import TrainState

__all__ = [
    "CPU_NO_YNN",
    "Trainer",
    "default_compiler_options",
    "initialize_distributed",
    "make_mesh",
    "train_and_evaluate",
]

Probe = Callable[[TrainState], dict]


def _own_buffers(tree):
  """A copy in which no two leaves share a buffer (the step donates them).

  Initializers may return one array for several leaves (equal zeros, say);
  donating such a state fails, so every leaf gets its own copy.
  """
  return jax.tree.map(lambda x: x.copy(), tree)


def initialize_distributed(config) -> None:
  """``jax.distributed.initialize`` when ``config.distributed`` asks for it.

  ``distributed.auto``: no addresses needed where JAX detects the cluster
  (Cloud TPU, SLURM, Open MPI, Kubernetes jobs); any of
  ``coordinator_address``, ``num_processes``, ``process_id`` and
  ``local_device_ids`` that are set are passed on. Without ``auto``, only an
  explicit ``coordinator_address`` starts it. Nothing happens if the
  runtime is already initialized.
  """
  dist = config.distributed
  if not (dist.auto or dist.coordinator_address):
    return
  is_initialized = getattr(jax.distributed, "is_initialized", None)
  if is_initialized is not None and is_initialized():
    return
  kwargs = {k: dist[k] for k in ("coordinator_address", "num_processes",
                                 "process_id", "local_device_ids")
            if dist[k] is not None}
  jax.distributed.initialize(**kwargs)


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A one-axis ``("data",)`` mesh over all (or the first n) devices."""
  devices = jax.devices()
  if num_devices is not None:
    if not 1 <= num_devices <= len(devices):
      raise ValueError(f"num_devices must be in [1, {len(devices)}]; got "
                       f"{num_devices}.")
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), ("data",))


# XLA:CPU options the trainer compiles with unless given others: convolutions
# run on XLA's Eigen kernels instead of the YNNPACK library fusions of
# recent jaxlib releases, whose kernel-gradient convolutions were the slower
# ones in our measurements (README.md, "Models: training throughput on this
# CPU", made with experiments/benchmarks/models.py --profile).
CPU_NO_YNN = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def _cpu_option_known(key: str, value: str) -> bool:
  try:
    jax.jit(lambda x: x + 1, backend="cpu").lower(1.0).compile(
        compiler_options={key: value})
  except Exception:  # pylint: disable=broad-except
    return False  # an older jaxlib: "No such compile option"
  return True


def default_compiler_options(mesh: Mesh | None = None
                             ) -> dict[str, Any] | None:
  """The XLA options the trainer compiles with when given none.

  On CPU (``mesh``'s devices, default JAX's default backend), where the
  jaxlib knows the option, :data:`CPU_NO_YNN`; elsewhere None (XLA's own
  defaults). ``Trainer(compiler_options={})`` compiles with XLA's own
  defaults everywhere.
  """
  platform = (mesh.devices.flat[0].platform if mesh is not None
              else jax.default_backend())
  if platform == "cpu" and all(_cpu_option_known(k, v)
                               for k, v in CPU_NO_YNN.items()):
    return dict(CPU_NO_YNN)
  return None


def _check_int(name: str, value, low: int) -> None:
  if (not isinstance(value, (int, np.integer)) or isinstance(value, bool) or
      value < low):
    raise ValueError(f"{name} must be an int >= {low}; got {value!r}.")


def _check_workdir(workdir: str) -> None:
  if not isinstance(workdir, (str, os.PathLike)):
    raise TypeError(f"workdir must be a path (str) or None; got "
                    f"{type(workdir).__name__}.")
  if not os.fspath(workdir):
    raise ValueError("workdir is '' (empty); give a directory path, e.g. "
                     "'runs/digits' ('.' for the current one), or None to "
                     "write nothing.")
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"workdir {workdir!r} is a file; it must be a directory "
                     "(or a path that does not exist yet).")


def _progress(total, desc, enabled):
  if not enabled:
    return None
  try:
    from tqdm import auto as tqdm  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return tqdm.tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def _host(tree):
  return jax.tree.map(lambda x: np.asarray(x).tolist(), jax.device_get(tree))


class Trainer:
  """Trains a Flax model with an optax transformation on a dataset.

  Args:
    model: any Flax Linen module (a ``gaf_optax.models`` model or your
      own), or any Flax NNX module (``gaf_optax.models.get_nnx`` or your
      own; ``.train()``/``.eval()`` switch its mode, and its
      ``gaf_optax.nnx.AmplificationPoint`` s take the controller's factors).
      It is called on the batch with ``train=`` (the mode),
      ``deterministic=`` (``not train``, Flax's Dropout convention),
      ``amp_factors=`` (Linen) and ``rngs=`` (NNX, in training), each only
      where its ``__call__`` takes it (read once, here; another required
      parameter is a TypeError naming it; see
      :mod:`gaf_optax.training._calls`). Linen models get a ``dropout`` RNG
      stream in training, and the collections their ``init`` made
      (``batch_stats``, ...) are mutable there. An NNX module brings its
      parameters, so ``seed`` keys the data order, augmentation and dropout
      only, and :meth:`fit_seeds` needs a Linen model. Both run through the
      same functional step (:func:`functional`).
    tx: any optax transformation, e.g. ``gaf_optax.sgd_gaf(0.1)``; with a
      :func:`gaf_optax.gradient_amplification` controller first in the chain
      when ``amplification_points`` is true.
    dataset: a :class:`gaf_optax.data.Dataset` (``gaf_optax.data.get``).
    batch_size: the global batch size (all devices and processes).
    num_epochs: epochs :meth:`fit` trains.
    seed: keys the initialization, data order, augmentation and dropout.
    eval_batch_size: evaluation batch size (default ``batch_size``).
    mesh: the device mesh (default: all devices).
    preprocess: the on-device image pipeline (default: normalise with the
      dataset's statistics, no augmentation;
      ``Preprocess.for_dataset(dataset, augment=True)`` adds the CIFAR crop
      + flip in training).
    amplification_points: the chain's controller drives the model's
      amplification points (its ``update`` gets ``layer_stats=``); a
      ValueError naming this argument for a model without points.
    telemetry: per-step diagnostics (:class:`Telemetry`); None: only the
      step loss and the global gradient norm.
    learning_rate: the schedule (or float) ``tx`` uses, for the records'
      ``learning_rate`` column (None: no column).
    loss_fn: per-example loss of ``(logits, labels)``.
    compiler_options: XLA compiler options for the jitted steps; None
      (default): :func:`default_compiler_options` (on CPU, convolutions
      without YNNPACK fusions); ``{}``: XLA's own defaults.
    skip_nonfinite_steps: how many consecutive steps with a non-finite loss
      or gradient to ride out. 0 (default): :meth:`fit` stops at the first
      with :class:`NonFiniteError`. N > 0: ``tx`` is wrapped in
      ``optax.apply_if_finite(tx, N)`` (pass the bare ``tx``), so such a
      step changes no parameter or optimizer state, and the step leaves the
      model state and the epoch sums alone; the N+1-th in a row stops the
      run.
    sharding: the state's layout on the mesh: ``"replicated"`` (default) or
      ``"fsdp"``, every state array of at least ``fsdp_min_bytes`` split over
      the data axis along its largest divisible dimension
      (:mod:`gaf_optax.training._sharding`). The results are the same up to
      float32 reduction order; checkpoints restore onto either layout and
      any device count.
    fsdp_min_bytes: arrays below this size stay replicated under FSDP.
    data_workers: Grain worker processes that read, decode and crop batches
      ahead of the step (``gaf_optax.data.batches(num_workers=...)``): for
      lazy sets (TFDS, large image folders); 0 (default) reads in this
      process, which is fastest for sets held in memory. The batches, and
      so the run, do not depend on it.
    device_data: hold the training set on the devices (uint8, replicated)
      and send only each batch's row indices: the step gathers the images
      there. Needs an in-memory set (``ArraySource``: digits, cached
      folders, subsets, or ``gaf_optax.data.in_memory(dataset)``); the
      batches, and so the run, are the same as without it.

  Example:
    >>> import gaf_optax
    >>> from gaf_optax import data, models, training
    >>> ds = data.get("digits")
    >>> trainer = training.Trainer(
    ...     models.MLP(features=(32,), num_classes=10),
    ...     gaf_optax.sgd_gaf(0.1, momentum=0.9), ds, batch_size=64,
    ...     num_epochs=2, mesh=training.make_mesh(1))
    >>> summary = trainer.fit(progress=False, log_to_stdout=False)
    >>> [r["epoch"] for r in summary["records"]]
    [1, 2]
    >>> summary["last_test_accuracy"] > 0.8
    True
  """

  def __init__(self, model, tx: optax.GradientTransformation, dataset, *,
               batch_size: int, num_epochs: int = 1, seed: int = 0,
               eval_batch_size: int | None = None, mesh: Mesh | None = None,
               preprocess: Preprocess | None = None,
               amplification_points: bool = False,
               telemetry: Telemetry | None = None,
               learning_rate: optax.ScalarOrSchedule | None = None,
               loss_fn: _step.LossFn = _step.softmax_cross_entropy,
               compiler_options: dict[str, Any] | None = None,
               skip_nonfinite_steps: int = 0,
               sharding: _sharding.Layout = "replicated",
               fsdp_min_bytes: int = 1 << 20, data_workers: int = 0,
               device_data: bool = False):
    if not isinstance(tx, optax.GradientTransformation):
      raise TypeError(f"tx must be an optax.GradientTransformation; got "
                      f"{type(tx).__name__}.")
    _check_int("batch_size", batch_size, 1)
    _check_int("num_epochs", num_epochs, 1)
    if eval_batch_size is not None:  # None (only): batch_size
      _check_int("eval_batch_size", eval_batch_size, 1)
    _check_int("seed", seed, 0)
    _check_int("skip_nonfinite_steps", skip_nonfinite_steps, 0)
    _check_int("data_workers", data_workers, 0)
    if skip_nonfinite_steps:
      tx = optax.apply_if_finite(tx, skip_nonfinite_steps)
    if not isinstance(dataset, data_lib.Dataset):
      raise TypeError(
          "dataset must be a gaf_optax.data.Dataset (gaf_optax.data.get(...)"
          f"); got {type(dataset).__name__}.")
    self.model = model
    # NNX modules run through the same functional step (training/_nnx.py).
    model = self._model = _nnx.functional(model)
    self.tx = tx
    self.dataset = dataset
    self.batch_size = int(batch_size)
    self.eval_batch_size = int(batch_size if eval_batch_size is None
                               else eval_batch_size)
    self.num_epochs = int(num_epochs)
    self.seed = int(seed)
    self.mesh = mesh or make_mesh()
    self.preprocess = preprocess or Preprocess.for_dataset(dataset)
    self.amplification_points = amplification_points
    self.telemetry = telemetry
    self.learning_rate = learning_rate
    self.skip_nonfinite_steps = skip_nonfinite_steps
    self.data_workers = data_workers
    if device_data and not isinstance(dataset.train, data_lib.ArraySource):
      raise ValueError(
          "device_data=True needs a training set held in memory "
          "(gaf_optax.data.ArraySource); dataset.train is a "
          f"{type(dataset.train).__name__}. Read it into memory first "
          "(gaf_optax.data.in_memory(dataset)), or use data_workers for "
          "sets too large for that.")
    self.device_data = bool(device_data)
    self._resident = None  # the training set on the devices (device_data)
    self.config = None  # set by from_config
    num_devices = self.mesh.devices.size
    for name, size in (("batch_size", self.batch_size),
                       ("eval_batch_size", self.eval_batch_size)):
      if not isinstance(size, int) or size < 1:
        raise ValueError(f"{name} must be a positive int; got {size!r}.")
      if size % num_devices or size % jax.process_count():
        raise ValueError(
            f"{name}={size} must be divisible by the number of devices "
            f"({num_devices}) and processes ({jax.process_count()}).")
    self.steps_per_epoch = data_lib.steps_per_epoch(dataset, batch_size)
    if self.steps_per_epoch < 1:
      raise ValueError(
          f"batch_size={batch_size} is larger than the training set "
          f"({dataset.num_train} examples).")
    self.total_steps = num_epochs * self.steps_per_epoch
    self.replicated = NamedSharding(self.mesh, P())
    self.batch_sharding = NamedSharding(self.mesh, P("data"))
    self.sharding = sharding
    self.state_sharding = _sharding.state_shardings(
        jax.eval_shape(lambda: _step.init_state(
            model, self.tx, 0, dataset.image_shape)),
        self.mesh, sharding, min_bytes=fsdp_min_bytes)
    self.step_fn = _step.make_train_step(
        model, tx, self.preprocess, amplification_points=amplification_points,
        telemetry=telemetry, loss_fn=loss_fn)
    self.eval_fn = _step.make_eval_step(model, self.preprocess,
                                        loss_fn=loss_fn)
    self._check_labels()
    if compiler_options is None:
      compiler_options = default_compiler_options(self.mesh)
    self.compiler_options = compiler_options or None
    self._state = None  # built on first use (fit_seeds does not need it)
    self._seeds_compiled = None  # fit_seeds' per-epoch programs
    compiler_options = self.compiler_options
    self._train_step = jax.jit(self.step_fn, donate_argnums=0,
                               out_shardings=(self.state_sharding, None),
                               compiler_options=compiler_options)
    self._eval_step = jax.jit(self.eval_fn, compiler_options=compiler_options)
    self._rows_step = jax.jit(
        lambda state, rows, images, labels: self.step_fn(
            state, {"image": images[rows], "label": labels[rows]}),
        donate_argnums=0, out_shardings=(self.state_sharding, None),
        compiler_options=compiler_options)

  # ------------------------------------------------------------- building
  @classmethod
  def from_config(cls, config, mesh: Mesh | None = None) -> "Trainer":
    """The config-by-name path of ``experiments/main.py``.

    Args:
      config: a complete ``ml_collections.ConfigDict`` (the fields of
        ``experiments/configs/default.py``, the one place defaults live).
      mesh: the device mesh (default: ``config.num_devices`` devices).

    Raises:
      ValueError: for a field with a value it does not accept, naming it
        (:func:`validate_config`), before any data are read.
    """
    _build.validate_config(config)
    dataset = data_lib.get(
        config.dataset, data_dir=config.data_dir,
        train_size=config.train_size, test_size=config.test_size,
        image_size=config.image_size)
    model = _build.build_model(config, dataset.num_classes)
    mesh = mesh or make_mesh(config.num_devices)
    steps_per_epoch = data_lib.steps_per_epoch(dataset, config.batch_size)
    if steps_per_epoch < 1:
      raise ValueError(
          f"config.batch_size={config.batch_size} is larger than the "
          f"training set ({dataset.num_train} examples).")
    shapes = jax.eval_shape(lambda: _step.init_state(
        model, optax.identity(), 0, dataset.image_shape).params)
    tx, uses_points = _build.build_optimizer(
        config, steps_per_epoch=steps_per_epoch, params=shapes,
        num_points=getattr(model, "num_amplification_points", 0))
    preprocess = Preprocess.for_dataset(
        dataset, augment=config.augment, crop_padding=config.crop_padding,
        flip=config.flip,
        dtype=jnp.bfloat16 if config.half_precision else jnp.float32)
    trainer = cls(
        model, tx, dataset, batch_size=config.batch_size,
        num_epochs=config.num_epochs, seed=config.seed,
        eval_batch_size=config.eval_batch_size, mesh=mesh,
        preprocess=preprocess, amplification_points=uses_points,
        telemetry=_build.build_telemetry(config),
        learning_rate=_build.build_schedule(config, steps_per_epoch),
        skip_nonfinite_steps=config.skip_nonfinite_steps,
        sharding=config.sharding, fsdp_min_bytes=config.fsdp_min_bytes,
        data_workers=config.data_workers, device_data=config.device_data)
    trainer.config = config
    return trainer

  @property
  def state(self) -> TrainState:
    """The run's current state (initialized from ``seed`` on first use)."""
    if self._state is None:
      self._state = self.init_state(self.seed)
    return self._state

  @state.setter
  def state(self, value: TrainState) -> None:
    self._state = value

  def init_state(self, seed: int) -> TrainState:
    """A fresh, replicated state for ``seed``."""
    init = jax.jit(lambda: _step.init_state(self._model, self.tx, seed,
                                            self.dataset.image_shape),
                   out_shardings=self.state_sharding)
    return _own_buffers(init())

  def output_width(self) -> int | None:
    """The model's number of outputs (its logits' last dimension).

    Traced once without computing anything (``jax.eval_shape``); None for a
    model whose output is not a ``[batch, classes]`` array.
    """
    model, sig = _step._prepared(self._model)  # pylint: disable=protected-access
    shape = self.dataset.image_shape

    def logits():
      state = _step.init_state(self._model, optax.identity(), 0, shape)
      out, _ = _step._apply(  # pylint: disable=protected-access
          model, sig, state.params, state.model_state,
          jnp.zeros((1, *shape), jnp.float32), train=False)
      return out

    out = jax.eval_shape(logits)
    return int(out.shape[-1]) if getattr(out, "ndim", 0) >= 2 else None

  def _check_labels(self) -> None:
    """Refuses labels that the model's outputs cannot be scored against.

    Checked once, here, not per step: a label at or above the number of
    outputs makes the cross-entropy NaN, which the run would otherwise
    report as a divergence. In-memory sets (``ArraySource``) are checked
    label by label; for others, ``dataset.num_classes`` is compared with
    the model's width.
    """
    width = self.output_width()
    if width is None:
      return
    for name in ("train", "test"):
      src = getattr(self.dataset, name)
      labels = getattr(src, "labels", None)
      if (isinstance(src, data_lib.ArraySource) and labels is not None and
          np.issubdtype(np.asarray(labels).dtype, np.integer) and
          np.size(labels)):
        low, high = int(np.min(labels)), int(np.max(labels))
        what = f"dataset.{name} has labels in [{low}, {high}]"
      else:
        low, high = 0, self.dataset.num_classes - 1
        what = f"the dataset has {self.dataset.num_classes} classes"
      if low < 0 or high >= width:
        raise ValueError(
            f"{what}, but the model has {width} outputs: labels must be "
            f"class indices in [0, {width - 1}]. Build the model with "
            f"num_classes=dataset.num_classes ({self.dataset.num_classes}), "
            "or relabel the data. (Checked before training, since such a "
            "label makes the loss NaN, which would read as a divergence.)")

  # ------------------------------------------------------------- names
  def telemetry_names(self) -> dict[str, list[str]]:
    """Labels of the per-layer telemetry vectors (``layer_*``, lambdas)."""
    shapes = jax.eval_shape(lambda: _step.init_state(
        self._model, self.tx, 0, self.dataset.image_shape))
    names = {"layer": _step.layer_names(shapes.params),
             "anact_lambda": _step.anact_lambda_names(shapes.model_state)}
    points = getattr(self._model, "num_amplification_points", 0)
    names["point"] = [str(i) for i in range(points)]
    return names

  # ------------------------------------------------------------- data
  def _global(self, local_batch):
    return {k: jax.make_array_from_process_local_data(self.batch_sharding, v)
            for k, v in local_batch.items()}

  def train_batches(self, epoch: int, start_batch: int = 0,
                    num_epochs: int = 1):
    """This process's share of the training batches from ``epoch`` on.

    One stream over ``num_epochs`` epochs, starting at batch
    ``start_batch`` of ``epoch`` (read in ``data_workers`` Grain processes
    when set; close it to stop them early).
    """
    where = dict(seed=self.seed, epoch=epoch, shuffle=True,
                 process_index=jax.process_index(),
                 process_count=jax.process_count(), start_batch=start_batch,
                 num_epochs=num_epochs)
    if self.device_data:  # {"rows": ...}: the step gathers on the device
      return data_lib.batch_rows(self.dataset.num_train, self.batch_size,
                                 **where)
    return data_lib.batches(self.dataset.train, self.batch_size,
                            drop_remainder=True,
                            num_workers=self.data_workers, **where)

  def _resident_train(self) -> tuple[jax.Array, jax.Array]:
    """The training images and labels on the devices, replicated."""
    if self._resident is None:
      src = self.dataset.train
      self._resident = tuple(
          jax.make_array_from_callback(a.shape, self.replicated,
                                       lambda index, a=a: a[index])
          for a in (src.images, src.labels))
    return self._resident

  # ------------------------------------------------------------- steps
  def train_step(self, local_batch) -> dict:
    """One step on a process-local batch; returns the step's metrics.

    The batch is ``{"image", "label"}``, or ``{"rows"}`` (indices into the
    training set held on the devices, ``device_data``).
    """
    batch = self._global(local_batch)
    if "rows" in batch:
      self.state, metrics = self._rows_step(self.state, batch["rows"],
                                            *self._resident_train())
    else:
      self.state, metrics = self._train_step(self.state, batch)
    return metrics

  def evaluate(self, state: TrainState | None = None) -> dict[str, float]:
    """Test loss and accuracy of ``state`` (default: the current one)."""
    state = self.state if state is None else state
    totals = None
    # Inside fit() with data_workers: one pass of the fit's evaluation
    # stream, whose workers are started once per fit.
    passes = getattr(self, "_eval_passes", None)
    if passes is not None:
      stream = itertools.islice(passes[1], passes[0])
    else:
      stream = data_lib.batches(
          self.dataset.test, self.eval_batch_size, seed=0, epoch=0,
          shuffle=False, drop_remainder=False,
          process_index=jax.process_index(),
          process_count=jax.process_count(), num_workers=self.data_workers)
    beat = getattr(self, "_beat", None)
    for batch in stream:
      if beat is not None:
        beat()  # progress, for the stop watchdog
      out = self._eval_step(state, self._global(batch))
      totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    totals = jax.device_get(totals)
    count = max(float(totals["count"]), 1.0)
    return {"test_loss": float(totals["loss"]) / count,
            "test_accuracy": float(totals["correct"]) / count}

  def take_epoch_sums(self) -> dict[str, float]:
    """Train loss/accuracy of the epoch so far; resets the sums."""
    sums = jax.device_get(self.state.sums)
    # Skipped non-finite steps add nothing; no finite step: NaN, not 0.
    count = float(sums["count"]) or float("nan")
    self.state = self.state.replace(
        sums=_own_buffers(jax.device_put(_step.zero_sums(), self.replicated)))
    return {"train_loss": float(sums["loss"]) / count,
            "train_accuracy": float(sums["correct"]) / count}

  def _lr(self, step: int) -> float | None:
    if self.learning_rate is None:
      return None
    if callable(self.learning_rate):
      return float(self.learning_rate(step))
    return float(self.learning_rate)

  # ------------------------------------------------------------- drivers
  def run_info(self) -> dict[str, Any]:
    """The settings that give this run's step count its meaning.

    Stored as ``WORKDIR/run.json`` at a fresh start; :meth:`fit` refuses to
    resume a checkpoint whose run had other values. From a config, the
    config's fields too, apart from those that only say how to run
    (:data:`gaf_optax.training.RESUMABLE_FIELDS`). ``fingerprint``
    identifies the model's parameters and the optimizer (its state's
    structure and a digest of its update's computation, which changes with
    the learning rate and every other constant); what it does and does not
    detect: :func:`gaf_optax.training._workdir.fingerprint`.
    """
    info = {"dataset": self.dataset.name, "num_train": self.dataset.num_train,
            "image_shape": list(self.dataset.image_shape),
            "num_classes": self.dataset.num_classes,
            "batch_size": self.batch_size, "seed": self.seed,
            "steps_per_epoch": self.steps_per_epoch,
            "model": type(self.model).__name__,
            "skip_nonfinite_steps": self.skip_nonfinite_steps}
    if self.config is not None:
      info["config"] = _build.step_defining_fields(self.config)
    shapes = jax.eval_shape(lambda: _step.init_state(
        self._model, self.tx, 0, self.dataset.image_shape))
    extra = {}
    if self.amplification_points:  # the step's tx.update(layer_stats=...)
      extra["layer_stats"] = jax.ShapeDtypeStruct(
          (getattr(self._model, "num_amplification_points", 0),),
          jnp.float32)
    info["fingerprint"] = _workdir.fingerprint(self.tx, shapes, extra)
    return info

  def _open_workdir(self, workdir: str, ckpt: Checkpointer, step: int,
                    restore_step: int | None) -> None:
    """Checks a resume against ``run.json``, or starts the workdir anew."""
    steps = ckpt.all_steps()
    if restore_step is not None and restore_step not in steps:
      raise ValueError(
          f"restore_step={restore_step}, but {ckpt.directory} holds no "
          f"checkpoint of that step; its steps: {steps or 'none'}. Set "
          "restore_step to one of them, or to None to resume the latest (or "
          "start anew without one).")
    if steps:
      _workdir.check_run_info(
          workdir, self.run_info(),
          step=steps[-1] if restore_step is None else restore_step,
          explicit=restore_step is not None)
      return
    info = self.run_info()
    if step:  # a second fit() of this trainer: continuing its own run?
      try:
        _workdir.check_run_info(workdir, info, step=step)
        return
      except ValueError:
        pass  # another run's outputs, or none: start the workdir anew
    _workdir.set_aside_outputs(workdir)
    _workdir.write_run_info(workdir, info)

  def _save(self, ckpt: Checkpointer, step: int) -> None:
    """Checkpoints the state unless it diverged (then raises)."""
    self._check_health(ckpt)
    self._check_finite(ckpt, step)
    ckpt.save(step, self.state)  # asynchronous; a no-op if step is saved

  def _check_finite(self, ckpt: Checkpointer | None, step: int) -> None:
    """Raises NonFiniteError when the state holds a NaN or an infinity.

    The step's own check sees only the loss and gradient; an update can
    still overflow (or a transformation make NaN) with both finite. So the
    whole state is checked (one reduction) before every save, at every
    epoch's end (before its evaluation is recorded) and where ``fit``
    stops: a run that returns has a finite state.
    """
    if bool(_guard.all_finite(self.state)):
      return
    checkpoint = None if ckpt is None else ckpt.latest_step()
    last = _guard._last(  # pylint: disable=protected-access
        checkpoint, None if ckpt is None else ckpt.directory)
    raise _guard.NonFiniteError(
        f"The state after step {step} holds non-finite values (parameters, "
        "model or optimizer state) although every loss and gradient norm "
        "was finite: an update overflowed, or the transformation made "
        "them. The run stops and this state was not saved; "
        f"{last}.", step=step, checkpoint=checkpoint)

  def _check_health(self, ckpt: Checkpointer | None) -> None:
    h = _guard.health(self.state)
    if h["streak"] > self.skip_nonfinite_steps:
      raise _guard.nonfinite_error(
          h, allowed=self.skip_nonfinite_steps,
          checkpoint=None if ckpt is None else ckpt.latest_step(),
          directory=None if ckpt is None else ckpt.directory)

  def fit(self, workdir: str | None = None, *, max_steps: int | None = None,
          checkpoint_every_steps: int = 1000,
          checkpoint_at_end: bool = True,
          keep_checkpoints: int = 3, restore_step: int | None = None,
          tensorboard: bool = True, log_to_stdout: bool = True,
          progress: bool = True, probe: Probe | None = None,
          check_every: int = 100) -> dict[str, Any]:
    """Trains ``num_epochs`` and evaluates after each; resumes from workdir.

    A run never loses good work (:mod:`gaf_optax.training._guard`):

    - a checkpoint in ``workdir`` is resumed, with the records up to its
      step (a torn last line is dropped), if ``WORKDIR/run.json`` shows the
      same step-defining settings and model/optimizer fingerprint
      (:meth:`run_info`), else a ValueError names the ones that differ (a
      missing or unreadable ``run.json`` is a ValueError too, unless
      ``restore_step`` names the step); without a checkpoint, earlier
      outputs are set aside (``metrics.jsonl.old1`` ...), ``run.json`` is
      written and the run starts anew (a second ``fit`` of this trainer
      into the workdir of its first continues its records);
    - SIGTERM or SIGINT finishes the current step, checkpoints it (when
      there is a workdir), flushes the writers and raises
      :class:`Preempted`;
    - a non-finite loss or gradient (beyond ``skip_nonfinite_steps`` in a
      row) raises :class:`NonFiniteError`, naming the step and the last good
      checkpoint; a diverged state is never saved, so checkpoint rotation
      keeps the good ones;
    - so does a state that became non-finite with a finite loss and
      gradient (an overflowing update), found at the epoch's end or where
      ``max_steps`` stops, with or without a workdir: a run that returns
      has a finite state;
    - one run at a time per workdir: a second one raises
      :class:`WorkdirLocked` at once (``WORKDIR/lock``; the kernel frees it
      when the holder exits, so a crash leaves no stale lock);
    - a checkpoint that cannot be written (a full disk) raises
      :class:`CheckpointWriteError` in one line, naming the step; the
      earlier checkpoints are kept.

    Args:
      workdir: output directory (``metrics.jsonl``, ``telemetry.jsonl``,
        ``tensorboard/``, ``checkpoints/``, ``run.json``); a checkpoint there
        is resumed. None: nothing is written and nothing resumed.
      max_steps: stop after this global step without a final checkpoint, as
        a hard kill would (for time-boxed runs and resume tests).
      checkpoint_every_steps: also checkpoint every this many steps (0: no),
        so that a hard kill loses at most that many.
      checkpoint_at_end: checkpoint after the last step.
      keep_checkpoints: checkpoints kept (>= 1).
      restore_step: resume from this step instead of the latest (a
        ValueError naming the steps there if it has none of that step). The
        later checkpoints are set aside in ``WORKDIR/checkpoints.aside/``,
        so the steps after it are trained and saved anew and the next plain
        run resumes those: the remedy for a damaged latest checkpoint. Also
        the explicit consent to resume a checkpoint whose ``run.json`` is
        missing (``run.json`` is then written for this run's settings).
      tensorboard: also write TensorBoard scalars.
      log_to_stdout: print each epoch's record.
      progress: show a progress bar per epoch (process 0).
      probe: ``state -> dict`` of arrays, jitted and added to each epoch's
        record (e.g. activation statistics of the trained network).
      check_every: read the non-finite step count from the device every this
        many steps (also before each checkpoint and at each epoch's end).

    Returns:
      A summary: ``records`` (one per epoch), ``last_test_accuracy``,
      ``best_test_accuracy``, ``final_train_loss``, ``step_loss`` (the loss
      of every step this call ran), ``telemetry`` (the kept steps' values,
      ``{key: [per step]}`` with a ``step`` key), ``telemetry_names``,
      ``nonfinite_steps`` (steps ridden out) and the final ``state``.

    Raises:
      NonFiniteError: the run diverged.
      Preempted: a stop signal arrived (the state is saved).
      WorkdirLocked: another run is using ``workdir``.
      CheckpointWriteError: a checkpoint could not be written.
      ValueError: bad arguments, or a checkpoint of a run with other
        settings.
    """
    for name, value, low in (("checkpoint_every_steps",
                              checkpoint_every_steps, 0),
                             ("keep_checkpoints", keep_checkpoints, 1),
                             ("check_every", check_every, 1)):
      _check_int(name, value, low)
    if max_steps is not None:
      _check_int("max_steps", max_steps, 0)
    if restore_step is not None:
      _check_int("restore_step", restore_step, 0)
      if workdir is None:
        raise ValueError(f"restore_step={restore_step} needs a workdir to "
                         "restore from; got workdir=None.")
    ckpt = None
    records: list[dict] = []
    step = int(jax.device_get(self.state.step))  # a second fit() continues
    # What the run holds, let go of in reverse order however it ends.
    cleanup = contextlib.ExitStack()
    if workdir is not None:
      _check_workdir(workdir)
      os.makedirs(workdir, exist_ok=True)
      with contextlib.ExitStack() as setup:
        # One run per workdir (_lock.py): a second one fails here, at once.
        setup.enter_context(_lock.WorkdirLock(
            workdir, process_index=jax.process_index()))
        ckpt = Checkpointer(workdir, max_to_keep=keep_checkpoints)
        setup.callback(ckpt.close)
        self._open_workdir(workdir, ckpt, step, restore_step)
        writer = MetricWriter(workdir, tensorboard=tensorboard,
                              stdout=log_to_stdout)
        cleanup = setup.pop_all()
    else:
      writer = MetricWriter(None, tensorboard=False, stdout=log_to_stdout)
    cleanup.callback(writer.close)
    stop = self.total_steps if max_steps is None else min(max_steps,
                                                          self.total_steps)
    probe_fn = jax.jit(probe) if probe is not None else None
    every = self.telemetry.every if self.telemetry is not None else 0
    names = self.telemetry_names() if self.telemetry is not None else {}
    spe = self.steps_per_epoch
    show = progress and jax.process_index() == 0
    step_loss: list[float] = []
    kept: list[tuple[int, dict]] = []
    telemetry: dict[str, list] = {}

    def flush_telemetry():
      for s, m in kept:
        row = {"step": s, **_host(m)}
        writer.write_telemetry(row, names)
        for k, v in row.items():
          telemetry.setdefault(k, []).append(v)
      kept.clear()

    def stop_for_signal():
      flush_telemetry()
      if ckpt is not None:
        self._save(ckpt, step)
      raise _guard.preempted(
          step, signals.signum, None if ckpt is None else ckpt.latest_step(),
          None if ckpt is None else ckpt.directory)

    stream = None
    try:
      if ckpt is not None and ckpt.latest_step() is not None:
        step, state = ckpt.restore(self.state, restore_step)
        self.state = _own_buffers(jax.device_put(state,
                                                 self.state_sharding))
        if restore_step is not None:  # redo the later steps, and keep them
          ckpt.set_aside_after(step)
        records = writer.truncate_after(step)
      # One stream for the rest of the run: Grain workers start once.
      stream = self.train_batches(*divmod(step, spe),
                                  num_epochs=max(self.num_epochs - step // spe,
                                                 1))
      if self.data_workers:  # as many passes as evaluate() asks for
        self._eval_passes = _batching.evaluation_passes(
            self.dataset.test, self.eval_batch_size, passes=1 << 40,
            num_workers=self.data_workers,
            process_index=jax.process_index(),
            process_count=jax.process_count())
      with _guard.StopSignals() as signals:
        self._beat = signals.beat
        while step < stop:
          epoch, start_batch = divmod(step, spe)
          bar = _progress(spe, f"epoch {epoch + 1}/{self.num_epochs}", show)
          if bar is not None:
            bar.update(start_batch)
          t0 = time.perf_counter()
          steps_run = 0
          losses = []
          for batch in itertools.islice(stream, min(spe - start_batch,
                                                    stop - step)):
            metrics = self.train_step(batch)
            step += 1
            steps_run += 1
            losses.append(metrics["loss"])
            if every and step % every == 0:
              kept.append((step, metrics))
            if bar is not None:
              bar.update(1)
            if step % check_every == 0:
              self._check_health(ckpt)
            if ckpt is not None and checkpoint_every_steps and (
                step % checkpoint_every_steps == 0 and step % spe):
              self._save(ckpt, step)
            # An epoch's last step is asked after its record is written, so
            # a stop there keeps the epoch's evaluation.
            if step % spe and signals.should_stop(step):
              if bar is not None:
                bar.close()
              stop_for_signal()
          jax.block_until_ready(self.state)
          seconds = time.perf_counter() - t0
          if bar is not None:
            bar.close()
          step_loss += [float(x) for x in jax.device_get(losses)]
          flush_telemetry()
          self._check_health(ckpt)
          self._check_finite(ckpt, step)  # before its evaluation is kept
          if step % spe:  # stopped inside the epoch (max_steps)
            break
          record = {"step": step, "epoch": epoch + 1,
                    **self.take_epoch_sums(), **self.evaluate()}
          best = max([r["test_accuracy"] for r in records] +
                     [record["test_accuracy"]])
          record.update(
              best_test_accuracy=best, epoch_seconds=seconds,
              images_per_second=steps_run * self.batch_size / max(seconds,
                                                                  1e-9))
          lr = self._lr(step - 1)
          if lr is not None:
            record["learning_rate"] = lr
          if self.skip_nonfinite_steps:
            record["nonfinite_steps"] = _guard.health(self.state)["total"]
          if probe_fn is not None:
            record.update(_host(probe_fn(self.state)))
          records.append(record)
          writer.write(record)
          if ckpt is not None and (
              (checkpoint_every_steps and step % checkpoint_every_steps == 0)
              or (checkpoint_at_end and step == self.total_steps)):
            self._save(ckpt, step)
          if step < stop and signals.should_stop(step):
            stop_for_signal()
    finally:
      # The data workers, then the writers, the checkpoints (a failed save
      # raises its CheckpointWriteError here) and the workdir's lock.
      with cleanup:
        self._beat = None
        passes, self._eval_passes = getattr(self, "_eval_passes", None), None
        for it in (stream, passes and passes[1]):
          if hasattr(it, "close"):
            it.close()  # stops data workers
    last = records[-1] if records else {}
    return {
        "records": records,
        "last_test_accuracy": last.get("test_accuracy"),
        "best_test_accuracy": max((r["test_accuracy"] for r in records),
                                  default=None),
        "final_train_loss": last.get("train_loss"),
        "step_loss": step_loss,
        "telemetry": telemetry,
        "telemetry_names": names,
        "nonfinite_steps": _guard.health(self.state)["total"],
        "state": self.state,
    }

  def fit_seeds(self, seeds: Sequence[int], *, probe: Probe | None = None,
                on_epoch: Callable[[int, dict], Any] | None = None
                ) -> dict[str, Any]:
    """Trains one run per seed in one jitted function, on one device.

    ``jax.vmap`` over the seeds, ``lax.scan`` over epochs and steps: the
    same step, batches (order by ``(seed, epoch)``), keys and evaluation as
    :meth:`fit` with ``Trainer(seed=s)``, without a host round trip per step
    (tested equal). Fast for small dense models; XLA:CPU runs convolutions
    inside loop bodies slowly (https://github.com/jax-ml/jax/issues/12868),
    so use :meth:`fit` for CNNs there. The datasets must be in memory
    (:class:`gaf_optax.data.ArraySource`, e.g. digits or any
    :func:`gaf_optax.data.subset`); the whole test set is one batch.

    With ``on_epoch`` the epochs run as one jitted program each, called
    from a Python loop (the same vmapped steps and evaluation; tested equal
    to the single program), so that a caller can report, or stop, between
    epochs. Design: a program per epoch rather than a host callback inside
    the scan, which would stall the device at every epoch and could not end
    the run. :meth:`compile_seeds` compiles these programs ahead of time.

    A seed whose run diverges does not stop the others (design: one jitted
    program trains them all, and a study wants the finished seeds). Its
    values are NaN from there on (accuracy is then meaningless), its
    ``finite`` entries are False, and a ``RuntimeWarning`` names it;
    :meth:`fit` raises :class:`NonFiniteError` instead.

    Args:
      seeds: the runs' seeds (a non-empty sequence of ints >= 0).
      probe: ``state -> dict`` of arrays, traced into every epoch's end.
      on_epoch: ``(epoch, record) -> stop`` after each epoch (``epoch``
        counts from 1; ``record`` is that epoch's values as host arrays
        ``[seeds, ...]``, the keys below); a true return ends training
        after that epoch.

    Returns:
      ``{key: array [seeds, epochs, ...]}``: ``train_loss``,
      ``train_accuracy``, ``test_loss``, ``test_accuracy``, the epoch mean of
      every per-step metric (``loss``, ``grad_norm`` and the telemetry's),
      the probe's values; ``steps``: every step's metrics ``[seeds, epochs,
      steps_per_epoch, ...]``; ``finite`` (bool ``[seeds, epochs]``: the
      whole state was finite after the epoch); ``telemetry_names``.
      ``epochs`` is the number run (fewer than ``num_epochs`` when
      ``on_epoch`` stopped it).

    Raises:
      ValueError: ``seeds`` is empty or holds something else than ints
        >= 0.
    """
    seeds = self._checked_seeds(seeds)
    self._check_seeds_sources()
    train, test = self.dataset.train, self.dataset.test
    spe, bs, n = self.steps_per_epoch, self.batch_size, len(train)
    idx = np.stack([np.stack([
        data_lib.epoch_order(n, seed=s, epoch=e)[:spe * bs].reshape(spe, bs)
        for e in range(self.num_epochs)]) for s in seeds]).astype(np.int32)
    device = self.mesh.devices.flat[0]
    if on_epoch is not None:
      compiled = self._seeds_compiled_for(len(seeds), probe)
      put = lambda x: jax.device_put(x, device)
      xtr, ytr = put(train.images), put(train.labels)
      test_batch = {"image": put(test.images), "label": put(test.labels)}
      state = compiled["init"](put(np.asarray(seeds, np.int32)))
      records = []
      for e in range(self.num_epochs):
        state, record = compiled["epoch"](state, put(idx[:, e]), xtr, ytr,
                                          test_batch)
        records.append(jax.tree.map(np.asarray, record))
        if on_epoch(e + 1, records[-1]):
          break
      out = jax.tree.map(lambda *xs: np.stack(xs, 1), *records)
      out["telemetry_names"] = self.telemetry_names()
      _warn_diverged(seeds, out["finite"])
      return out

    init, epoch = self._seeds_program(probe)

    # The data are arguments, not closed-over constants: XLA compiles a
    # program with large constants much more slowly.
    def run(seed, order, xtr, ytr, test_batch):
      _, history = jax.lax.scan(
          lambda state, rows: epoch(state, rows, xtr, ytr, test_batch),
          init(seed), order)
      return history

    fn = jax.jit(jax.vmap(run, in_axes=(0, 0, None, None, None)),
                 compiler_options=self.compiler_options)
    with jax.default_device(device):
      history = fn(jnp.asarray(seeds, jnp.int32), jnp.asarray(idx),
                   jnp.asarray(train.images), jnp.asarray(train.labels),
                   {"image": jnp.asarray(test.images),
                    "label": jnp.asarray(test.labels)})
    out = jax.tree.map(np.asarray, history)
    out["telemetry_names"] = self.telemetry_names()
    _warn_diverged(seeds, out["finite"])
    return out

  @staticmethod
  def _checked_seeds(seeds) -> list[int]:
    if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__iter__"):
      raise ValueError("seeds must be a non-empty sequence of ints >= 0; got "
                       f"{seeds!r}.")
    seeds = list(seeds)
    if not seeds:
      raise ValueError("seeds must be a non-empty sequence of ints >= 0; got "
                       "none (fit_seeds trains one run per seed).")
    for s in seeds:
      _check_int("each of seeds", s, 0)
    return [int(s) for s in seeds]

  def compile_seeds(self, seeds: Sequence[int], *,
                    probe: Probe | None = None) -> float:
    """Compiles the programs of ``fit_seeds(seeds, on_epoch=...)`` ahead.

    They depend on the number of seeds (not their values) and the probe;
    :meth:`fit_seeds` with ``on_epoch`` then runs them without compiling.
    Safe to call from another thread while other trainers run (e.g. to
    compile the next run of a sequence during this one).

    Args:
      seeds: the runs' seeds (only their number matters).
      probe: as for :meth:`fit_seeds`.

    Returns:
      The seconds that compiling took (0 when already compiled).
    """
    seeds = self._checked_seeds(seeds)
    self._check_seeds_sources()
    start = time.perf_counter()
    kept = self._seeds_compiled
    self._seeds_compiled_for(len(seeds), probe)
    return 0.0 if kept is self._seeds_compiled else (time.perf_counter() -
                                                     start)

  def _seeds_compiled_for(self, num_seeds: int, probe: Probe | None) -> dict:
    """The compiled per-epoch programs (``init``, ``epoch``), kept."""
    kept = self._seeds_compiled
    if kept is not None and kept["key"] == (num_seeds, probe):
      return kept
    init, epoch = self._seeds_program(probe)
    where = jax.sharding.SingleDeviceSharding(self.mesh.devices.flat[0])
    spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype,
                                                     sharding=where)
    train, test = self.dataset.train, self.dataset.test
    init_fn = jax.jit(jax.vmap(init), compiler_options=self.compiler_options)
    seeds_spec = spec((num_seeds,), np.int32)
    state_spec = jax.tree.map(lambda x: spec(x.shape, x.dtype),
                              jax.eval_shape(init_fn, seeds_spec))
    epoch_fn = jax.jit(jax.vmap(epoch, in_axes=(0, 0, None, None, None)),
                       donate_argnums=0,
                       compiler_options=self.compiler_options)
    self._seeds_compiled = {
        "key": (num_seeds, probe),
        "init": init_fn.lower(seeds_spec).compile(),
        "epoch": epoch_fn.lower(
            state_spec,
            spec((num_seeds, self.steps_per_epoch, self.batch_size),
                 np.int32),
            spec(train.images.shape, train.images.dtype),
            spec(train.labels.shape, train.labels.dtype),
            {"image": spec(test.images.shape, test.images.dtype),
             "label": spec(test.labels.shape, test.labels.dtype)}).compile()}
    return self._seeds_compiled

  def _check_seeds_sources(self) -> None:
    for name, src in (("train", self.dataset.train),
                      ("test", self.dataset.test)):
      if not isinstance(src, data_lib.ArraySource):
        raise ValueError(
            f"fit_seeds needs in-memory sources; dataset.{name} is a "
            f"{type(src).__name__}. Use fit(), or gaf_optax.data.subset().")
    if isinstance(self._model, _nnx.NNXFunctional):
      raise ValueError(
          "fit_seeds draws each seed's initial parameters, but an NNX module "
          "is created with its parameters; train one NNX model per seed "
          "with fit(), or pass the Linen model.")

  def _seeds_program(self, probe: Probe | None):
    """``fit_seeds``' pure pieces for one seed: ``init(seed) -> state`` and
    ``epoch(state, rows, train_images, train_labels, test_batch) -> (state,
    record)``."""
    model, tx, shape = self._model, self.tx, self.dataset.image_shape

    def init(seed):
      return _step.init_state(model, tx, seed, shape)

    def epoch(state, rows, xtr, ytr, test_batch):
      def train_step(state, rows):
        return self.step_fn(state, {"image": xtr[rows], "label": ytr[rows]})

      state, metrics = jax.lax.scan(train_step, state, rows)
      # Steps with a non-finite loss add nothing to the sums; an epoch
      # without a finite step has no train loss (NaN, not 0).
      count = state.sums["count"]
      seen = jnp.where(count > 0, count, jnp.nan)
      totals = self.eval_fn(state, test_batch)
      record = {"train_loss": state.sums["loss"] / seen,
                "train_accuracy": state.sums["correct"] / seen,
                "test_loss": totals["loss"] / totals["count"],
                "test_accuracy": totals["correct"] / totals["count"],
                **{k: jnp.mean(v, 0) for k, v in metrics.items()},
                "steps": metrics,
                "finite": _guard.all_finite(state)}
      state = state.replace(sums=_step.zero_sums())
      if probe is not None:
        record.update(probe(state))
      return state, record

    return init, epoch


def _warn_diverged(seeds: list[int], finite: np.ndarray) -> None:
  bad = [(s, int(np.argmin(f)) + 1) for s, f in zip(seeds, finite)
         if not f.all()]
  if bad:
    warnings.warn(
        "fit_seeds: the state of seed(s) " + ", ".join(
            f"{s} (from epoch {e})" for s, e in bad) + " is non-finite: "
        "their records hold NaN from there on; see the 'finite' key.",
        RuntimeWarning, stacklevel=3)


def train_and_evaluate(config, workdir: str, *, mesh: Mesh | None = None,
                       max_steps: int | None = None) -> dict[str, Any]:
  """``Trainer.from_config(config).fit(workdir, ...)`` with the config's
  checkpoint and logging fields.

  Args:
    config: the run's ``ml_collections.ConfigDict``.
    workdir: output directory: ``metrics.jsonl``, ``tensorboard/``,
      ``checkpoints/``. A checkpoint there is resumed.
    mesh: device mesh (default: ``config.num_devices`` devices).
    max_steps: stop after this global step without a final checkpoint.

  Returns:
    :meth:`Trainer.fit`'s summary.

  Raises:
    WorkdirLocked: another run is using ``workdir`` (found before any data
      are read).
  """
  _build.validate_config(config)
  _check_workdir(workdir)
  initialize_distributed(config)
  with _lock.WorkdirLock(workdir, process_index=jax.process_index()):
    trainer = Trainer.from_config(config, mesh)
    return trainer.fit(
        workdir, max_steps=max_steps,
        checkpoint_every_steps=config.checkpoint_every_steps,
        checkpoint_at_end=config.checkpoint_at_end,
        keep_checkpoints=config.keep_checkpoints,
        restore_step=config.restore_step, tensorboard=config.tensorboard,
        log_to_stdout=config.log_to_stdout, progress=config.progress,
        check_every=config.check_every)
