"""Study: plain vs GAAF vs ANAct activations in a deep narrow MLP on digits.

    python -m experiments.activations_digits [--smoke]

scikit-learn's bundled 8x8 digits (1,797 images, no download), a fixed
75/25 train/test split (``train_test_split(random_state=0)``), pixels
standardized with the training set's statistics. A deep narrow MLP is trained
full batch for a fixed number of steps; every arm of a comparison uses the
same optimizer, learning rate, initialization scale, steps and seeds, and
differs only in the activation (plain, GAAF, or ANAct). The whole training
run is one jitted ``lax.scan``, vmapped over seeds and learning rates.

Prints a markdown table of final training loss, test loss and test accuracy,
mean +- std over seeds. ``--smoke`` runs a tiny version in seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from gaf_optax import nn as gnn

ACTIVATIONS = {"tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid,
               "relu": jax.nn.relu, "swish": jax.nn.swish}
GAAF = {"tanh": gnn.gaaf_tanh, "sigmoid": gnn.gaaf_sigmoid,
        "relu": gnn.gaaf_relu}


@functools.cache
def digits(test_size: float = 0.25, random_state: int = 0):
  """``(x_train, y_train, x_test, y_test)``, standardized with train stats."""
  x, y = load_digits(return_X_y=True)
  xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_size,
                                        random_state=random_state)
  mean, std = xtr.mean(0), xtr.std(0)
  std = np.where(std > 0, std, 1.0)
  xtr, xte = (xtr - mean) / std, (xte - mean) / std
  return (xtr.astype(np.float32), ytr.astype(np.int32),
          xte.astype(np.float32), yte.astype(np.int32))


@dataclasses.dataclass(frozen=True)
class Arm:
  """One network: activation, method, and the method's settings."""

  activation: str = "tanh"
  method: str = "plain"  # "plain", "gaaf" or "anact"
  amplitude: float = 1.0  # GAAF
  momentum: float = 0.9  # ANAct running average
  init_scale: float = 1.0  # kernel variance = init_scale / fan_in

  @property
  def name(self) -> str:
    act = self.activation
    if self.method == "gaaf":
      act = f"gaaf_{act}(amp={self.amplitude:g})"
    elif self.method == "anact":
      act = f"ANAct({act})"
    return f"{act}, init x{self.init_scale:g}"


class _Layer(nn.Module):
  """Dense + activation; returns ``(x, None)`` to be scanned over depth."""

  arm: Arm
  width: int
  train: bool

  @nn.compact
  def __call__(self, x, _=None):
    arm = self.arm
    kernel_init = nn.initializers.variance_scaling(
        arm.init_scale, "fan_in", "truncated_normal")
    x = nn.Dense(self.width, kernel_init=kernel_init)(x)
    if arm.method == "plain":
      x = ACTIVATIONS[arm.activation](x)
    elif arm.method == "gaaf":
      x = GAAF[arm.activation](x, amplitude=arm.amplitude)
    elif arm.method == "anact":
      x = gnn.ANAct(ACTIVATIONS[arm.activation], momentum=arm.momentum)(
          x, use_running_average=not self.train)
    else:
      raise ValueError(f"unknown method {arm.method!r}")
    return x, None


class MLP(nn.Module):
  """``depth`` hidden layers of ``width`` units, then a linear read-out.

  Layers 2..depth are one ``nn.scan`` (stacked parameters), so compiling
  does not grow with depth.
  """

  arm: Arm
  depth: int = 16
  width: int = 32
  classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool):
    x, _ = _Layer(self.arm, self.width, train)(x)
    stack = nn.scan(_Layer, variable_axes={"params": 0, "batch_stats": 0},
                    split_rngs={"params": True}, length=self.depth - 1)
    x, _ = stack(self.arm, self.width, train)(x, None)
    kernel_init = nn.initializers.variance_scaling(
        self.arm.init_scale, "fan_in", "truncated_normal")
    return nn.Dense(self.classes, kernel_init=kernel_init)(x)


def _xent(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def train(arm: Arm, seeds, lrs, *, depth: int = 16, width: int = 32,
          steps: int = 300, optimizer: str = "sgd", fast_compile: bool = False):
  """Trains one net per (seed, lr); returns metrics of shape [seeds, lrs].

  Full-batch training on the digits training split; the seed sets the
  initialization. Returns a dict of ``first_loss`` (step 0), ``train_loss``
  (final, training mode), ``test_loss`` and ``test_acc`` (evaluation mode:
  ANAct's running lambda). SGD has momentum 0.9.
  """
  # The data are arguments, not constants: XLA compiles much faster.
  # fast_compile: XLA backend optimization level 0, for short runs (tests),
  # about 3x faster to compile and 2x slower to run on CPU.
  fn = _train_fast_compile if fast_compile else _train
  return fn(arm, jnp.asarray(seeds), jnp.asarray(lrs, jnp.float32),
            *map(jnp.asarray, digits()), depth=depth, width=width,
            steps=steps, optimizer=optimizer)


def _train_impl(arm, seeds, lrs, xtr, ytr, xte, yte, *, depth, width, steps,
                optimizer):
  model = MLP(arm, depth=depth, width=width)

  def run(seed, lr):
    variables = model.init(jax.random.key(seed), xtr, train=True)
    params, stats = variables["params"], variables.get("batch_stats", {})
    if optimizer == "sgd":
      opt = optax.sgd(lr, momentum=0.9)
    elif optimizer == "adam":
      opt = optax.adam(lr)
    else:
      raise ValueError(f"unknown optimizer {optimizer!r}")

    def loss_fn(params, stats):
      logits, updates = model.apply({"params": params, "batch_stats": stats},
                                    xtr, train=True, mutable=["batch_stats"])
      return _xent(logits, ytr), updates.get("batch_stats", {})

    def step(carry, _):
      params, stats, opt_state = carry
      (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          params, stats)
      updates, opt_state = opt.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), stats, opt_state), loss

    (params, stats, _), losses = jax.lax.scan(
        step, (params, stats, opt.init(params)), None, length=steps)
    logits = model.apply({"params": params, "batch_stats": stats}, xte,
                         train=False)
    train_loss, _ = loss_fn(params, stats)
    return {"train_loss": train_loss, "test_loss": _xent(logits, yte),
            "test_acc": jnp.mean(jnp.argmax(logits, -1) == yte),
            "first_loss": losses[0]}

  return jax.vmap(jax.vmap(run, (None, 0)), (0, None))(seeds, lrs)


_STATIC = ("arm", "depth", "width", "steps", "optimizer")
_train = jax.jit(_train_impl, static_argnames=_STATIC)
_train_fast_compile = jax.jit(
    _train_impl, static_argnames=_STATIC,
    compiler_options={"xla_backend_optimization_level": 0})


@dataclasses.dataclass(frozen=True)
class Study:
  """A group of arms trained with the same depth, optimizer, lrs and steps."""

  title: str
  arms: tuple[Arm, ...]
  lrs: tuple[float, ...]
  depth: int = 16
  width: int = 32
  steps: int = 300
  optimizer: str = "sgd"


# lambda of ANAct(swish) for y ~ N(0, 1) (METHODS.md section 3): the init
# scale lambda**2 folds a fixed lambda into the weights (the static match).
_SWISH_LAMBDA = 1.650

STUDIES = (
    Study("ANAct, the test's setting: Swish, depth 10, 100 steps, SGD 0.9",
          (Arm("swish"), Arm("swish", "anact"),
           Arm("swish", init_scale=_SWISH_LAMBDA**2)),
          lrs=(0.01, 0.03, 0.1), depth=10, steps=100),
    Study("ANAct: deep Swish/ReLU, default (LeCun) init, SGD momentum 0.9",
          (Arm("swish"), Arm("swish", "anact"),
           Arm("swish", init_scale=_SWISH_LAMBDA**2),
           Arm("relu"), Arm("relu", "anact"), Arm("relu", init_scale=2.0)),
          lrs=(0.01, 0.03, 0.1)),
    Study("GAAF: deep tanh, default init, SGD momentum 0.9",
          (Arm("tanh"), Arm("tanh", "gaaf", 1.0), Arm("tanh", "gaaf", 0.3),
           Arm("tanh", "anact")),
          lrs=(0.01, 0.03, 0.1)),
    Study("GAAF: tanh, small init (ordered phase), depth 10, SGD momentum 0.9",
          (Arm("tanh", init_scale=0.1),
           Arm("tanh", "gaaf", 1.0, init_scale=0.1),
           Arm("tanh", init_scale=0.25),
           Arm("tanh", "gaaf", 1.0, init_scale=0.25)),
          lrs=(0.03, 0.1, 0.3), depth=10),
    Study("GAAF: deep sigmoid, Adam",
          (Arm("sigmoid"), Arm("sigmoid", "gaaf", 1.0),
           Arm("sigmoid", "anact")),
          lrs=(0.001, 0.003, 0.01), optimizer="adam"),
)

SMOKE = (
    Study("smoke: ANAct", (Arm("swish"), Arm("swish", "anact")), lrs=(0.01,),
          depth=10, width=16, steps=20),
    Study("smoke: GAAF", (Arm("tanh"), Arm("tanh", "gaaf", 1.0)), lrs=(0.03,),
          depth=10, width=16, steps=20),
)


def _fmt(values: np.ndarray, digits: int) -> str:
  if not np.all(np.isfinite(values)):
    bad = int(np.sum(~np.isfinite(values)))
    return f"diverged ({bad}/{values.size})"
  return f"{values.mean():.{digits}f} +- {values.std():.{digits}f}"


def run_study(study: Study, seeds, fast_compile: bool = False) -> list[str]:
  """Markdown rows ``| arm | lr | train loss | test loss | test acc |``."""
  rows = []
  for arm in study.arms:
    metrics = train(arm, tuple(seeds), study.lrs, depth=study.depth,
                    width=study.width, steps=study.steps,
                    optimizer=study.optimizer, fast_compile=fast_compile)
    metrics = jax.tree.map(np.asarray, metrics)
    for j, lr in enumerate(study.lrs):
      acc = metrics["test_acc"][:, j]
      rows.append(f"| {arm.name} | {lr:g} | "
                  f"{_fmt(metrics['train_loss'][:, j], 3)} | "
                  f"{_fmt(metrics['test_loss'][:, j], 3)} | "
                  f"{_fmt(100 * acc, 1)} |")
  return rows


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--smoke", action="store_true",
                      help="a tiny version (two arms each, 20 steps)")
  parser.add_argument("--seeds", type=int, default=3)
  args = parser.parse_args(argv)
  studies = SMOKE if args.smoke else STUDIES
  seeds = range(1 if args.smoke else args.seeds)
  t0 = time.time()
  xtr, _, xte, _ = digits()
  print(f"digits: {len(xtr)} train / {len(xte)} test (random_state=0), "
        f"full batch, seeds {list(seeds)}")
  for study in studies:
    print(f"\n### {study.title}\n\ndepth {study.depth}, width {study.width}, "
          f"{study.steps} steps, {study.optimizer}; mean +- std over "
          f"{len(seeds)} seed(s)\n")
    print("| arm | lr | train loss | test loss | test acc % |")
    print("|---|---|---|---|---|")
    for row in run_study(study, seeds, fast_compile=args.smoke):
      print(row, flush=True)
  print(f"\ndone in {time.time() - t0:.0f} s")


if __name__ == "__main__":
  main()
