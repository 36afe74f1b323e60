"""A small CIFAR training loop shared by the CPU-scale CNN studies.

Class-balanced subsets of a ``gaf_optax.data`` dataset (optionally
downsampled), a jitted train step with crop + flip augmentation and
BatchNorm, an optional amplification controller driven by the model's
amplification points, and per-epoch evaluation. The loop is a Python loop
over the jitted step, not ``lax.scan``: XLA:CPU ran a ResNet step about 30x
slower inside a loop body than as its own computation (measured here with
jax 0.10.2; convolutions in loop bodies are a known slow path of XLA:CPU,
https://github.com/jax-ml/jax/issues/12868).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import gaf_optax
from gaf_optax import data
from gaf_optax import models
from gaf_optax import nn as gnn

DEFAULT_DATA = "folder:" + os.path.normpath(os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data",
    "cifar10-jpeg.tar.gz"))

MODELS = {
    # He et al.'s CIFAR ResNet with one basic block per stage (n = 1).
    "resnet8": functools.partial(models.ResNet, stage_sizes=(1, 1, 1),
                                 block_cls=models.BasicBlock,
                                 widths=(16, 32, 64), shortcut="A"),
    "resnet20": models.ResNet20,
}

# A learning-rate multiplier schedule and the steps per epoch -> optimizer.
MakeOptimizer = Callable[[optax.Schedule, int], optax.GradientTransformation]


@dataclasses.dataclass(frozen=True)
class Config:
  """What is trained on, for how long."""

  model: str = "resnet8"
  train_size: int = 10_000
  test_size: int = 5_000
  epochs: int = 3
  batch_size: int = 128
  image_size: int | None = None  # None: as stored (32 for CIFAR)

  def describe(self) -> str:
    size = (f", downsampled to {self.image_size}x{self.image_size}"
            if self.image_size else "")
    return (f"{self.model}, {self.train_size} train / {self.test_size} test "
            f"images (class-balanced subsets{size}), batch "
            f"{self.batch_size}, {self.epochs} epochs, cosine decay to 0, "
            "crop (pad 4) + flip")


def balanced_subset(labels: np.ndarray, size: int, num_classes: int,
                    seed: int = 0) -> np.ndarray:
  """Sorted indices of ``size // num_classes`` examples of each class."""
  if size % num_classes:
    raise ValueError(f"size {size} must be a multiple of the {num_classes} "
                     "classes.")
  rng = np.random.default_rng(seed)
  per_class = size // num_classes
  picks = []
  for c in range(num_classes):
    members = np.flatnonzero(labels == c)
    if len(members) < per_class:
      raise ValueError(f"size {size} needs {per_class} images of class {c}; "
                       f"the split has {len(members)}.")
    picks.append(rng.choice(members, per_class, replace=False))
  return np.sort(np.concatenate(picks))


def load(dataset: str, cfg: Config):
  """``(train, test, ds)``: the config's subsets as ``ArraySource``s."""
  ds = data.get(dataset)

  def subset(src, size):
    images, labels = src.get_batch(np.arange(len(src)))
    idx = balanced_subset(labels, size, ds.num_classes)
    images = images[idx]
    if cfg.image_size and cfg.image_size != images.shape[1]:
      shape = (len(images), cfg.image_size, cfg.image_size, images.shape[-1])
      images = jax.image.resize(images.astype(np.float32), shape, "linear",
                                antialias=True)
      images = np.asarray(jnp.clip(jnp.round(images), 0, 255), np.uint8)
    return data.ArraySource(images, labels[idx])

  return subset(ds.train, cfg.train_size), subset(ds.test, cfg.test_size), ds


def train(cfg: Config, model: nn.Module, make_optimizer: MakeOptimizer,
          seed: int, train_src, test_src, ds, *, amplification: bool = False,
          fast_compile: bool = False) -> dict:
  """Trains one model for one seed.

  Args:
    cfg: sizes and epochs.
    model: a Flax model taking ``train=`` and ``amp_factors=``.
    make_optimizer: builds the optimizer from a learning-rate multiplier
      (cosine from 1 to 0 over the run) and the steps per epoch.
    seed: keys the initialization, batch order and augmentation.
    train_src, test_src, ds: from :func:`load`.
    amplification: the optimizer chain contains
      ``gaf_optax.gradient_amplification`` over the model's amplification
      points: its factors drive the forward pass and the step passes it the
      per-point signal norms.
    fast_compile: compile with XLA's backend optimizations off (tests).

  Returns:
    ``step_loss`` (per step), ``epochs`` (per epoch: ``train_loss``,
    ``train_acc``, ``test_acc`` and, with amplification, the mean
    ``factors``) and ``seconds``.
  """
  steps_per_epoch = len(train_src) // cfg.batch_size
  multiplier = optax.cosine_decay_schedule(1.0, cfg.epochs * steps_per_epoch)
  tx = make_optimizer(multiplier, steps_per_epoch)
  init_key, aug_key = jax.random.split(jax.random.key(seed))
  variables = model.init(init_key, jnp.zeros((1, *train_src.images.shape[1:])),
                         train=False)
  params, stats = variables["params"], variables.get("batch_stats", {})
  opt_state = tx.init(params)
  norm = dict(mean=ds.mean, std=ds.std)
  options = {"xla_backend_optimization_level": 0} if fast_compile else None

  @functools.partial(jax.jit, donate_argnums=(0, 1, 2),
                     compiler_options=options)
  def step(params, stats, opt_state, images, labels, step_key):
    x = data.preprocess(images, step_key, train=True, **norm)
    # Without a controller the model runs without amplification points.
    factors = (gaf_optax.amplification_factors(opt_state) if amplification
               else None)

    def loss_fn(params, factors):
      logits, updates = model.apply(
          {"params": params, "batch_stats": stats}, x, train=True,
          amp_factors=factors, mutable=["batch_stats"])
      loss = optax.softmax_cross_entropy_with_integer_labels(
          logits, labels).mean()
      return loss, (updates["batch_stats"],
                    jnp.mean(jnp.argmax(logits, -1) == labels))

    if amplification:
      (loss, (stats, acc)), (grads, factor_grads) = jax.value_and_grad(
          loss_fn, argnums=(0, 1), has_aux=True)(params, factors)
      extra = {"layer_stats": gnn.signal_norms(factor_grads)}
    else:
      (loss, (stats, acc)), grads = jax.value_and_grad(
          loss_fn, has_aux=True)(params, None)
      extra = {}
    updates, opt_state = tx.update(grads, opt_state, params, **extra)
    return (optax.apply_updates(params, updates), stats, opt_state, loss, acc,
            jnp.ones(()) if factors is None else factors)

  @functools.partial(jax.jit, compiler_options=options)
  def correct(params, stats, images, labels, mask):
    x = data.preprocess(images, None, train=False, **norm)
    logits = model.apply({"params": params, "batch_stats": stats}, x,
                         train=False)
    return jnp.sum((jnp.argmax(logits, -1) == labels) & mask)

  losses, history = [], []
  start = time.time()
  for epoch in range(cfg.epochs):
    accs, factors = [], []
    for i, batch in enumerate(data.batches(train_src, cfg.batch_size,
                                           seed=seed, epoch=epoch)):
      k = jax.random.fold_in(aug_key, epoch * steps_per_epoch + i)
      params, stats, opt_state, loss, acc, f = step(
          params, stats, opt_state, batch["image"], batch["label"], k)
      losses.append(loss)
      accs.append(acc)
      factors.append(f)
    hits = sum(int(correct(params, stats, b["image"], b["label"], b["mask"]))
               for b in data.batches(test_src, 1000, seed=0, epoch=0,
                                     shuffle=False, drop_remainder=False))
    record = {"train_loss": float(np.asarray(losses[-steps_per_epoch:],
                                             np.float64).mean()),
              "train_acc": float(np.mean(accs)),
              "test_acc": hits / len(test_src)}
    if amplification:
      record["factors"] = np.mean(factors, 0).tolist()
    history.append(record)
  return {"step_loss": np.asarray(losses, np.float64).tolist(),
          "epochs": history, "seconds": time.time() - start}


def test_accuracies(runs) -> np.ndarray:
  """``[seeds, epochs]`` test accuracies of :func:`train` results."""
  return np.array([[e["test_acc"] for e in r["epochs"]] for r in runs])


def plot_curves(results: dict, title: str, path: str) -> None:
  """Training loss over steps (moving mean) and test accuracy per epoch."""
  from experiments import _study  # pylint: disable=import-outside-toplevel
  plt = _study.pyplot()
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(13, 4.8))
  cmap = plt.get_cmap("tab10")
  for i, (arm, runs) in enumerate(results.items()):
    loss = np.array([r["step_loss"] for r in runs])  # [seeds, steps]
    window = max(1, loss.shape[1] // 30)
    kernel = np.ones(window) / window
    smooth = np.array([np.convolve(l, kernel, "valid") for l in loss])
    steps = np.arange(window, loss.shape[1] + 1)
    style = "--" if i >= 10 or arm.startswith("adam") else "-"
    ax_loss.plot(steps, smooth.mean(0), style, color=cmap(i % 10), label=arm)
    acc = 100 * test_accuracies(runs)
    epochs = np.arange(1, acc.shape[1] + 1)
    ax_acc.errorbar(epochs + 0.03 * (i - len(results) / 2), acc.mean(0),
                    yerr=acc.std(0), fmt=style + "o", color=cmap(i % 10),
                    capsize=3, label=arm)
  ax_loss.set(xlabel="step", ylabel="train loss (moving mean, seed mean)",
              title="training loss")
  ax_acc.set(xlabel="epoch", ylabel="test accuracy % (mean +- std)",
             title="test accuracy")
  ax_loss.legend(fontsize=8)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
