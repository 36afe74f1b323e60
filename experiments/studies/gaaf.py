"""Study 3: GAAF against its motivation, dropout, on tanh MLPs (digits).

    python -m experiments.studies.gaaf [--smoke] [--seeds N] [--out DIR]

Hahn & Choi motivate GAAF by dropout: dropout keeps gradients flowing in the
saturated region of the activation, GAAF does it directly with an extra
backward term. Their MNIST tanh MLP reports base 98.23, dropout 98.40, GAAF
98.35 (architecture and schedule not given). This study runs the same three
arms on scikit-learn's digits (``gaf_optax.data.get("digits")``: its split
and per-channel normalisation) with ``gaf_optax.models.MLP`` (5 hidden tanh
layers of width 100, our choice), every seed at once through
:meth:`gaf_optax.training.Trainer.fit_seeds`:

- ``base``: tanh;
- ``dropout``: tanh with dropout 0.2 after every hidden layer (the rate is
  ours; the paper's is not given);
- ``gaaf``: ``gaf_optax.nn.gaaf_tanh`` (amplitude 1, the paper's).

Two initializations: LeCun-normal (``init x1``), and a saturating one with 4x
the kernel variance (``init x4``: pre-activations of standard deviation about
2, where tanh saturates). Every arm trains with SGD momentum 0.9, batch 64,
30 epochs, on the same learning-rate grid (0.01, 0.03, 0.1), and every lr's
result is reported. Recorded per epoch: test accuracy, per-layer mean
``|dL/dW|`` (the trainer's telemetry, ``layer_grad_mean_abs``, epoch mean),
and per layer the share of saturated pre-activations on the training set,
``|tanh(y)| > 0.99`` (``|y| > 2.65``; the threshold is ours; an epoch-end
probe).
Writes ``results.md``, ``results.json`` and one ``<setting>.png`` per
setting (at lr 0.03) to ``--out``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time

import jax.numpy as jnp
import numpy as np
import optax

from experiments import cli
from experiments import common
from experiments import studies
from gaf_optax import data
from gaf_optax import models
from gaf_optax import nn as gnn
from gaf_optax import training

MODULE = "experiments.studies.gaaf"
DEFAULT_OUT = common.results_dir("gaaf")
SATURATION = math.atanh(0.99)  # |y| beyond which |tanh(y)| > 0.99
DROPOUT = 0.2
ARMS = {
    "base": "tanh",
    "dropout": f"tanh + dropout {DROPOUT:g}",
    "gaaf": "gaaf_tanh (amplitude 1)",
}


@dataclasses.dataclass(frozen=True)
class Setting:
  name: str
  init_scale: float
  depth: int = 5
  width: int = 100
  epochs: int = 30
  batch_size: int = 64
  lrs: tuple[float, ...] = (0.01, 0.03, 0.1)
  plot_lr: float = 0.03

  def describe(self) -> str:
    return (f"tanh MLP, {self.depth} hidden x {self.width}, LeCun-normal "
            f"init x{self.init_scale:g} variance; SGD momentum 0.9, batch "
            f"{self.batch_size}, {self.epochs} epochs")


SETTINGS = (Setting("init_x1", 1.0), Setting("init_x4", 4.0))
SMOKE = (Setting("init_x4", 4.0, depth=3, width=16, epochs=2,
                 batch_size=256, lrs=(0.03,)),)


def model_for(setting: Setting, arm: str) -> models.MLP:
  return models.MLP(features=(setting.width,) * setting.depth,
                    act=gnn.gaaf_tanh if arm == "gaaf" else jnp.tanh,
                    dropout_rate=DROPOUT if arm == "dropout" else 0.0,
                    init_scale=setting.init_scale)


def run_setting(setting: Setting, seeds, fast_compile=False) -> dict:
  """``{lr: {arm: history}}``: ``test_accuracy``, ``train_loss``,
  ``grad_abs`` (hidden layers) and ``saturated``, ``[seeds, epochs, ...]``."""
  ds = data.get("digits")
  results = {}
  for lr in setting.lrs:
    results[lr] = {}
    for arm in ARMS:
      model = model_for(setting, arm)
      h = common.fit_mlp_seeds(
          model, optax.sgd(lr, momentum=0.9), seeds, ds=ds,
          epochs=setting.epochs, batch_size=setting.batch_size,
          telemetry=training.Telemetry(),
          probe=common.preactivation_probe(model, ds, jnp.tanh, SATURATION),
          fast_compile=fast_compile)
      results[lr][arm] = {
          "test_accuracy": h["test_accuracy"], "train_loss": h["train_loss"],
          "grad_abs": common.hidden(h, "layer_grad_mean_abs"),
          "saturated": h["saturated"]}
  return results


def plot(setting: Setting, histories: dict, lr: float, path: str) -> None:
  plt = common.pyplot()
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  for (arm, h), color in zip(histories.items(), ("C0", "C1", "C2")):
    acc = 100 * h["test_accuracy"]
    epochs = np.arange(1, acc.shape[1] + 1)
    axes[0].plot(epochs, acc.mean(0), color=color, label=ARMS[arm])
    axes[0].fill_between(epochs, acc.mean(0) - acc.std(0),
                         acc.mean(0) + acc.std(0), color=color, alpha=0.2)
    layers = np.arange(1, h["grad_abs"].shape[-1] + 1)
    for e, style in ((0, ":"), (-1, "-")):
      axes[1].plot(layers, h["grad_abs"][:, e].mean(0), style + "o",
                   color=color,
                   label=f"{arm}, epoch {'1' if e == 0 else 'last'}")
    axes[2].plot(layers, 100 * h["saturated"][:, -1].mean(0), "-o",
                 color=color, label=arm)
  for ax in axes[1:]:
    ax.set_xticks(layers)
  axes[0].set(xlabel="epoch", ylabel="test accuracy % (mean +- std)",
              title="test accuracy")
  axes[1].set(xlabel="hidden layer", ylabel="mean |dL/dW|", yscale="log",
              title="per-layer gradient (epoch 1 dotted, last solid)")
  axes[2].set(xlabel="hidden layer", ylabel="% of pre-activations",
              title="saturated: |tanh(y)| > 0.99 (last epoch, train set)")
  for ax in axes:
    ax.legend(fontsize=7)
  fig.suptitle(f"{setting.describe()}, lr {lr:g}", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def report(setting: Setting, results: dict, seconds: float) -> list[str]:
  rows = []
  for lr, arms in results.items():
    for arm, h in arms.items():
      rows.append([
          f"{lr:g}", ARMS[arm],
          common.mean_std(100 * h["test_accuracy"][:, -1], 1),
          common.mean_std(100 * h["test_accuracy"].max(1), 1),
          common.mean_std(h["train_loss"][:, -1], 3),
          common.mean_std(100 * h["saturated"][:, -1].mean(-1), 1),
          f"{h['grad_abs'][:, -1, 0].mean():.2e}",
          f"{h['grad_abs'][:, -1, -1].mean():.2e}"])
  return [f"## {setting.name}", "", setting.describe() + ".", "",
          f"Wall time {seconds:.0f} s.", ""] + common.table(
              ["lr", "arm", "final test acc %", "best test acc %",
               "final train loss", "saturated % (all layers, last epoch)",
               "mean abs dL/dW, layer 1 (last epoch)",
               "mean abs dL/dW, last hidden layer"], rows) + [
                   "", f"![{setting.name}]({setting.name}.png)", ""]


def main(argv=None) -> dict:
  parser = common.parser(__doc__, DEFAULT_OUT)
  args = parser.parse_args(argv)
  settings = SMOKE if args.smoke else SETTINGS
  seeds = tuple(range(args.seeds))
  os.makedirs(args.out, exist_ok=True)
  ds = data.get("digits")
  n_train, n_test = ds.num_train, ds.num_test
  t0 = time.time()
  lines = ["# " + studies.title("gaaf"), "",
           f"Command: `{common.command(MODULE, argv)}`  ",
           f"Seeds: {list(seeds)} (seed s keys the initialization, batch "
           "order and dropout masks; every arm sees the same)  ",
           f"Data: scikit-learn digits (gaf_optax.data), {n_train} train / "
           f"{n_test} test, per-channel normalised. Mean +- std over seeds; "
           "gradient columns are seed means.", ""]
  everything = {}
  for setting in settings:
    t1 = time.time()
    results = run_setting(setting, seeds, fast_compile=args.smoke)
    lr = setting.plot_lr if setting.plot_lr in results else setting.lrs[0]
    plot(setting, results[lr], lr,
         os.path.join(args.out, f"{setting.name}.png"))
    lines += report(setting, results, time.time() - t1)
    everything[setting.name] = results
    print(f"{setting.name}: {time.time() - t1:.0f} s", flush=True)
  lines.insert(4, f"Total wall time: {time.time() - t0:.0f} s (CPU)  ")
  text = "\n".join(lines)
  common.write(args.out, text, {
      s: {str(lr): arms for lr, arms in r.items()}
      for s, r in everything.items()})
  print(text)
  return everything


if __name__ == "__main__":
  sys.exit(cli.run(main))
