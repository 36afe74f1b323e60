"""Study: plain vs GAAF vs ANAct activations in a deep narrow MLP on digits.

    python -m experiments.studies.activations_digits [--smoke]

scikit-learn's bundled 8x8 digits (1,797 images, no download) as
``gaf_optax.data.get("digits")`` serves them (its fixed split, per-channel
normalisation). A deep narrow ``gaf_optax.models.MLP`` is trained full batch
for a fixed number of steps; every arm of a comparison uses the same
optimizer, learning rate, initialization scale, steps and seeds, and differs
only in the activation (plain, GAAF, or ANAct). Each learning rate's runs
are one :meth:`gaf_optax.training.Trainer.fit_seeds` (vmap over seeds, scan
over steps).

Prints a markdown table of final training loss, test loss and test accuracy,
mean +- std over seeds. ``--smoke`` runs a tiny version in seconds.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import cli
from experiments import common
from experiments import studies
from gaf_optax import data
from gaf_optax import models
from gaf_optax import nn as gnn

ACTIVATIONS = {"tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid,
               "relu": jax.nn.relu, "swish": jax.nn.swish}
GAAF = {"tanh": gnn.gaaf_tanh, "sigmoid": gnn.gaaf_sigmoid,
        "relu": gnn.gaaf_relu}


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

  def act(self):
    """What ``gaf_optax.models.MLP(act=...)`` takes for this arm."""
    if self.method == "plain":
      return ACTIVATIONS[self.activation]
    if self.method == "gaaf":
      return functools.partial(GAAF[self.activation],
                               amplitude=self.amplitude)
    if self.method == "anact":
      # backward_exponent=1: the form these results were measured with
      # (the whole gain in the backward pass; the default is 0.5 since).
      return functools.partial(gnn.ANAct,
                               activation=ACTIVATIONS[self.activation],
                               momentum=self.momentum, backward_exponent=1.0)
    raise ValueError(f"unknown method {self.method!r}")


def train(arm: Arm, seeds, lrs, *, depth: int = 16, width: int = 32,
          steps: int = 300, optimizer: str = "sgd",
          fast_compile: bool = False) -> dict[str, np.ndarray]:
  """Trains one net per (seed, lr); returns metrics of shape [seeds, lrs].

  Full-batch training on the digits training split (``gaf_optax.data``),
  one :meth:`gaf_optax.training.Trainer.fit_seeds` per learning rate: a
  full batch is one step per epoch, so ``steps`` epochs. Returns
  ``first_loss`` (step 0), ``train_loss`` (the last step's, training mode),
  ``test_loss`` and ``test_acc`` (evaluation mode: ANAct's running lambda).
  SGD has momentum 0.9.
  """
  ds = data.get("digits")
  model = models.MLP(features=(width,) * depth, act=arm.act(),
                     init_scale=arm.init_scale)
  out = {k: [] for k in ("first_loss", "train_loss", "test_loss",
                         "test_acc")}
  for lr in lrs:
    if optimizer == "sgd":
      tx = optax.sgd(lr, momentum=0.9)
    elif optimizer == "adam":
      tx = optax.adam(lr)
    else:
      raise ValueError(f"unknown optimizer {optimizer!r}")
    h = common.fit_mlp_seeds(model, tx, seeds, ds=ds, epochs=steps,
                             batch_size=ds.num_train,
                             fast_compile=fast_compile)
    loss = h["steps"]["loss"][:, :, 0]  # [seeds, steps]
    out["first_loss"].append(loss[:, 0])
    out["train_loss"].append(loss[:, -1])
    out["test_loss"].append(h["test_loss"][:, -1])
    out["test_acc"].append(h["test_accuracy"][:, -1])
  return {k: np.stack(v, 1) for k, v in out.items()}


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


# lambda of ANAct(swish) for y ~ N(0, 1) (docs/methods/anact.md): the init
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


def run_study(study: Study, seeds, fast_compile: bool = False) -> list[str]:
  """Markdown rows ``| arm | lr | train loss | test loss | test acc |``."""
  rows = []
  for arm in study.arms:
    metrics = train(arm, tuple(seeds), study.lrs, depth=study.depth,
                    width=study.width, steps=study.steps,
                    optimizer=study.optimizer, fast_compile=fast_compile)
    for j, lr in enumerate(study.lrs):
      acc = metrics["test_acc"][:, j]
      rows.append(f"| {arm.name} | {lr:g} | "
                  f"{common.mean_std(metrics['train_loss'][:, j], 3)} | "
                  f"{common.mean_std(metrics['test_loss'][:, j], 3)} | "
                  f"{common.mean_std(100 * acc, 1)} |")
  return rows


def main(argv=None) -> None:
  parser = cli.parser(__doc__)
  parser.add_argument("--smoke", action="store_true",
                      help="a tiny version (two arms each, 20 steps)")
  parser.add_argument("--seeds", type=int, default=3)
  args = parser.parse_args(argv)
  selected = SMOKE if args.smoke else STUDIES
  seeds = range(1 if args.smoke else args.seeds)
  t0 = time.time()
  ds = data.get("digits")
  command = common.command("experiments.studies.activations_digits", argv)
  print(f"# {studies.title('activations_digits')}\n")
  print(f"Command: `{command}`\n\ndigits (gaf_optax.data): {ds.num_train} "
        f"train / {ds.num_test} test, full batch, seeds {list(seeds)}")
  for study in selected:
    print(f"\n### {study.title}\n\ndepth {study.depth}, width {study.width}, "
          f"{study.steps} steps, {study.optimizer}; mean +- std over "
          f"{len(seeds)} seed(s)\n")
    print("| arm | lr | train loss | test loss | test acc % |")
    print("|---|---|---|---|---|")
    for row in run_study(study, seeds, fast_compile=args.smoke):
      print(row, flush=True)
  print(f"\ndone in {time.time() - t0:.0f} s")


if __name__ == "__main__":
  sys.exit(cli.run(main))
