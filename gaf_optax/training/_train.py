"""Data-parallel training: state, steps and the epoch loop.

``jax.jit`` over a one-axis device ``Mesh``: the state is replicated
(``P()``), the batch is sharded over ``"data"``, and XLA inserts the gradient
all-reduce. The same code runs on 1..N devices and on several hosts: each
process reads its own slice of every global batch and the global array is
assembled with ``jax.make_array_from_process_local_data``.

Exact resumption: the data order depends only on ``(seed, epoch)``, random
augmentation and dropout keys on ``(seed, step)``, and the checkpoint holds the whole
state (params, BN/ANAct statistics, optimizer and amplification-controller
state, and the current epoch's metric sums), so a resumed run continues with
the same batches and reports the same metrics as an uninterrupted one.
"""

from __future__ import annotations

import os
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import gaf_optax
from gaf_optax import data as data_lib
from gaf_optax.nn import signal_norms
from gaf_optax.training import _build
from gaf_optax.training._checkpoint import Checkpointer
from gaf_optax.training._metrics import MetricWriter

__all__ = [
    "TrainState",
    "Trainer",
    "initialize_distributed",
    "make_mesh",
    "train_and_evaluate",
]


@flax.struct.dataclass
class TrainState:
  """Everything a step changes; a pytree of arrays (checkpointed whole)."""

  step: jax.Array
  params: Any
  model_state: Any  # batch_stats (BatchNorm, ANAct) and other collections
  opt_state: Any
  sums: Any  # this epoch's train loss/correct/count sums


def _zero_sums():
  return {"loss": jnp.zeros((), jnp.float32),
          "correct": jnp.zeros((), jnp.float32),
          "count": jnp.zeros((), jnp.float32)}


def _own_buffers(tree):
  """A copy in which no two leaves share a buffer (the step donates them).

  Initializers may return one array for several leaves (equal zeros, say);
  donating such a state fails, so every leaf gets its own copy.
  """
  return jax.tree.map(lambda x: x.copy(), tree)


def initialize_distributed(config) -> None:
  """``jax.distributed.initialize`` when ``config.distributed`` asks for it."""
  dist = config.get("distributed", None)
  if dist is None or not dist.get("coordinator_address"):
    return
  jax.distributed.initialize(
      coordinator_address=dist.coordinator_address,
      num_processes=dist.num_processes,
      process_id=dist.process_id,
      local_device_ids=dist.get("local_device_ids"))


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A one-axis ``("data",)`` mesh over all (or the first n) devices."""
  devices = jax.devices()
  if num_devices is not None:
    if not 1 <= num_devices <= len(devices):
      raise ValueError(f"num_devices must be in [1, {len(devices)}]; got "
                       f"{num_devices}.")
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), ("data",))


class Trainer:
  """Builds a run from a config and owns its jitted steps.

  Args:
    config: an ``ml_collections.ConfigDict`` (see
      ``experiments/configs/default.py``).
    mesh: the device mesh (default: all devices).
  """

  def __init__(self, config, mesh: Mesh | None = None):
    self.config = config
    self.mesh = mesh or make_mesh(config.get("num_devices"))
    self.dataset = data_lib.get(config.dataset, data_dir=config.get("data_dir"))
    num_devices = self.mesh.devices.size
    for name in ("batch_size", "eval_batch_size"):
      size = config.get(name) or config.batch_size
      if size % num_devices or size % jax.process_count():
        raise ValueError(
            f"config.{name}={size} must be divisible by the number of devices "
            f"({num_devices}) and processes ({jax.process_count()}).")
    self.steps_per_epoch = data_lib.steps_per_epoch(self.dataset,
                                                    config.batch_size)
    if self.steps_per_epoch < 1:
      raise ValueError(
          f"config.batch_size={config.batch_size} is larger than the "
          f"training set ({self.dataset.num_train} examples).")
    self.total_steps = config.num_epochs * self.steps_per_epoch
    self.model = _build.build_model(config, self.dataset.num_classes)
    self.num_points = getattr(self.model, "num_amplification_points", 0)
    self.rng = jax.random.PRNGKey(config.seed)
    self.replicated = NamedSharding(self.mesh, P())
    self.batch_sharding = NamedSharding(self.mesh, P("data"))
    self.mean = np.asarray(self.dataset.mean, np.float32)
    self.std = np.asarray(self.dataset.std, np.float32)
    self._init_state()
    self._train_step = jax.jit(self._train_step_fn, donate_argnums=0,
                               out_shardings=(self.replicated, None))
    self._eval_step = jax.jit(self._eval_step_fn)

  # --------------------------------------------------------------- state
  def _init_state(self):
    shape = (1,) + tuple(self.dataset.image_shape)
    init_key = jax.random.fold_in(self.rng, -1 % 2**31)

    def init(key):
      variables = self.model.init(key, jnp.zeros(shape, jnp.float32),
                                  train=False)
      return flax.core.unfreeze(variables)

    variables = jax.jit(init)(init_key)
    params = variables.pop("params")
    self.tx, self.uses_points = _build.build_optimizer(
        self.config, steps_per_epoch=self.steps_per_epoch, params=params,
        num_points=self.num_points)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                       model_state=variables,
                       opt_state=self.tx.init(params), sums=_zero_sums())
    self.state = _own_buffers(jax.device_put(state, self.replicated))

  # --------------------------------------------------------------- steps
  def _apply(self, params, model_state, images, train, factors=None,
             dropout_key=None):
    variables = {"params": params, **model_state}
    # Models with dropout draw their masks from this key (others ignore it).
    rngs = {"dropout": dropout_key} if dropout_key is not None else {}
    if train and model_state:
      logits, new_state = self.model.apply(
          variables, images, train=True, amp_factors=factors,
          mutable=list(model_state), rngs=rngs)
      return logits, flax.core.unfreeze(new_state)
    logits = self.model.apply(variables, images, train=train,
                              amp_factors=factors, rngs=rngs)
    return logits, model_state

  def _images(self, batch, key, *, train: bool):
    """Normalized (and, when ``train``, augmented) images in compute dtype."""
    images = data_lib.preprocess(
        batch["image"], key, mean=self.mean, std=self.std, train=train,
        crop_padding=self.config.get("crop_padding", 4),
        flip=self.config.get("flip", True))
    if self.config.get("half_precision", False):
      images = images.astype(jnp.bfloat16)
    return images

  def _train_step_fn(self, state: TrainState, batch):
    key = jax.random.fold_in(self.rng, state.step)
    images = self._images(batch, key, train=self.config.get("augment", True))
    labels = batch["label"]
    factors = (gaf_optax.amplification_factors(state.opt_state)
               if self.uses_points else None)

    def loss_fn(params, factors):
      logits, model_state = self._apply(
          params, state.model_state, images, True, factors,
          dropout_key=jax.random.fold_in(key, 1))
      logits = logits.astype(jnp.float32)
      loss = optax.softmax_cross_entropy_with_integer_labels(
          logits, labels).mean()
      return loss, (logits, model_state)

    if self.uses_points:
      (loss, (logits, model_state)), (grads, factor_grads) = (
          jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
              state.params, factors))
      updates, opt_state = self.tx.update(
          grads, state.opt_state, state.params,
          layer_stats=signal_norms(factor_grads))
    else:
      (loss, (logits, model_state)), grads = jax.value_and_grad(
          loss_fn, has_aux=True)(state.params, None)
      updates, opt_state = self.tx.update(grads, state.opt_state,
                                          state.params)
    params = optax.apply_updates(state.params, updates)
    n = jnp.float32(labels.shape[0])
    correct = jnp.sum(jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    sums = {"loss": state.sums["loss"] + loss * n,
            "correct": state.sums["correct"] + correct,
            "count": state.sums["count"] + n}
    new_state = TrainState(step=state.step + 1, params=params,
                           model_state=model_state, opt_state=opt_state,
                           sums=sums)
    grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32)))
                             for g in jax.tree.leaves(grads)))
    return new_state, {"loss": loss, "grad_norm": grad_norm}

  def _eval_step_fn(self, state: TrainState, batch):
    images = self._images(batch, None, train=False)
    logits, _ = self._apply(state.params, state.model_state, images, False)
    logits = logits.astype(jnp.float32)
    mask = batch["mask"].astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(
        logits, batch["label"])
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    return {"loss": jnp.sum(loss * mask), "correct": jnp.sum(correct * mask),
            "count": jnp.sum(mask)}

  # --------------------------------------------------------------- data
  def _global(self, local_batch):
    return {k: jax.make_array_from_process_local_data(self.batch_sharding, v)
            for k, v in local_batch.items()}

  def train_batches(self, epoch: int, start_batch: int = 0):
    return data_lib.batches(
        self.dataset.train, self.config.batch_size, seed=self.config.seed,
        epoch=epoch, shuffle=True, drop_remainder=True,
        process_index=jax.process_index(),
        process_count=jax.process_count(), start_batch=start_batch)

  def train_step(self, local_batch):
    """One step on a process-local batch; returns the step's metrics."""
    self.state, metrics = self._train_step(self.state,
                                           self._global(local_batch))
    return metrics

  def evaluate(self) -> dict[str, float]:
    size = self.config.get("eval_batch_size") or self.config.batch_size
    totals = None
    for batch in data_lib.batches(
        self.dataset.test, size, seed=0, epoch=0, shuffle=False,
        drop_remainder=False, process_index=jax.process_index(),
        process_count=jax.process_count()):
      out = self._eval_step(self.state, self._global(batch))
      totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    totals = jax.device_get(totals)
    count = max(float(totals["count"]), 1.0)
    return {"test_loss": float(totals["loss"]) / count,
            "test_accuracy": float(totals["correct"]) / count}

  def take_epoch_sums(self) -> dict[str, float]:
    """Train loss/accuracy of the epoch so far; resets the sums."""
    sums = jax.device_get(self.state.sums)
    count = max(float(sums["count"]), 1.0)
    self.state = self.state.replace(
        sums=_own_buffers(jax.device_put(_zero_sums(), self.replicated)))
    return {"train_loss": float(sums["loss"]) / count,
            "train_accuracy": float(sums["correct"]) / count}


def _progress(total, desc, enabled):
  if not enabled:
    return None
  try:
    from tqdm import auto as tqdm  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return tqdm.tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def train_and_evaluate(config, workdir: str, *, mesh: Mesh | None = None,
                       max_steps: int | None = None) -> dict[str, Any]:
  """Trains and evaluates; checkpoints and resumes from ``workdir``.

  Args:
    config: the run's ``ml_collections.ConfigDict``.
    workdir: output directory: ``metrics.jsonl``, ``tensorboard/``,
      ``checkpoints/``. A checkpoint there is resumed.
    mesh: device mesh (default: all devices).
    max_steps: stop after this global step without a final checkpoint, as a
      preempted job would (for time-boxed runs and resume tests).

  Returns:
    A summary: the per-epoch records, best and last test accuracy, the final
    train loss, and timing.
  """
  initialize_distributed(config)
  os.makedirs(workdir, exist_ok=True)
  trainer = Trainer(config, mesh)
  writer = MetricWriter(workdir, tensorboard=config.get("tensorboard", True),
                        stdout=config.get("log_to_stdout", True))
  ckpt = Checkpointer(workdir, max_to_keep=config.get("keep_checkpoints", 3))
  every = config.get("checkpoint_every_steps", 0) or 0
  at_end = config.get("checkpoint_at_end", True)
  stop = trainer.total_steps if max_steps is None else min(
      max_steps, trainer.total_steps)
  records = []
  step = 0
  if ckpt.latest_step() is not None:
    step, state = ckpt.restore(trainer.state, config.get("restore_step"))
    trainer.state = _own_buffers(jax.device_put(state, trainer.replicated))
    records = writer.truncate_after(step)
  spe = trainer.steps_per_epoch
  show = config.get("progress", True) and jax.process_index() == 0
  try:
    while step < stop:
      epoch, start_batch = divmod(step, spe)
      bar = _progress(spe, f"epoch {epoch + 1}/{config.num_epochs}", show)
      if bar is not None:
        bar.update(start_batch)
      t0 = time.perf_counter()
      steps_run = 0
      for batch in trainer.train_batches(epoch, start_batch):
        if step == stop:
          break
        trainer.train_step(batch)
        step += 1
        steps_run += 1
        if bar is not None:
          bar.update(1)
        if every and step % every == 0 and step % spe:
          ckpt.save(step, trainer.state)
      jax.block_until_ready(trainer.state)
      seconds = time.perf_counter() - t0
      if bar is not None:
        bar.close()
      if step % spe:  # stopped inside the epoch (max_steps)
        break
      record = {"step": step, "epoch": epoch + 1, **trainer.take_epoch_sums(),
                **trainer.evaluate()}
      best = max([r["test_accuracy"] for r in records] +
                 [record["test_accuracy"]])
      record.update(
          best_test_accuracy=best, epoch_seconds=seconds,
          images_per_second=steps_run * config.batch_size / max(seconds,
                                                                 1e-9),
          learning_rate=float(_build.build_schedule(config, spe)(step - 1)))
      records.append(record)
      writer.write(record)
      if (every and step % every == 0) or (
          at_end and step == trainer.total_steps):
        ckpt.save(step, trainer.state)
  finally:
    ckpt.close()
    writer.close()
  last = records[-1] if records else {}
  return {
      "records": records,
      "last_test_accuracy": last.get("test_accuracy"),
      "best_test_accuracy": max((r["test_accuracy"] for r in records),
                                default=None),
      "final_train_loss": last.get("train_loss"),
      "state": trainer.state,
  }
