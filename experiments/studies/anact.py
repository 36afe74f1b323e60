"""Study 4: ANAct's gains and factors through training; Swish vs NSwish.

    python -m experiments.studies.anact --data DATASET [--smoke] [--seeds N]
        [--out DIR] [--skip-cnn]

Part A (digits, :meth:`gaf_optax.training.Trainer.fit_seeds`): a 20-layer Swish MLP (width 64,
LeCun-normal init) with plain Swish vs ``gaf_optax.nn.NSwish`` (ANAct, our
reconstruction: geometric lambda, running-average momentum 0.99). SGD
momentum 0.9, batch 64, 30 epochs, learning rates 0.001, 0.003 and 0.01
for both arms (plots at 0.003). Recorded per epoch and hidden layer: ANAct's
forward and backward gains of the layer's activation, ``rho`` and ``rho'``,
at the training set's pre-activations (an epoch-end probe), the running
``lambda`` and the variance of the kernel gradient's entries (the trainer's
telemetry: ``anact_lambda`` after the epoch's last step, the epoch mean of
``layer_grad_var``). The effective gains of NSwish's output ``lambda * f``
are ``lambda^2 rho`` and ``lambda^2 rho'`` (plain Swish: ``lambda = 1``);
ANAct's aim is to keep them near 1, and so the gradient variance even
across layers.

Part B (CIFAR-10, :meth:`gaf_optax.training.Trainer.fit`): Swish vs NSwish as the activation
of the ResNet-8 of study 1 (same subsets, 3 epochs, SGD momentum 0.9 lr 0.1,
weight decay 5e-4 on all parameters, cosine decay), the CPU-scale stand-in
for the paper's ResNet-50 runs (+1.4 top-1 for NSwish on Tiny ImageNet).

Writes ``results.md``, ``results.json``, ``mlp.png`` and ``cnn.png`` to
``--out``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

import flax.linen as nn
import numpy as np
import optax

from experiments import cli
from experiments import common
from experiments import studies
from gaf_optax import data
from gaf_optax import models
from gaf_optax import nn as gnn
from gaf_optax import training

MODULE = "experiments.studies.anact"
DEFAULT_OUT = common.results_dir("anact")
ARMS = {"swish": nn.swish, "nswish": gnn.NSwish}
CNN_LR, CNN_WD = 0.1, 5e-4


@dataclasses.dataclass(frozen=True)
class MlpSetting:
  depth: int = 20
  width: int = 64
  epochs: int = 30
  batch_size: int = 64
  lrs: tuple[float, ...] = (0.001, 0.003, 0.01)
  plot_lr: float = 0.003

  def describe(self) -> str:
    return (f"Swish MLP, {self.depth} hidden x {self.width}, LeCun-normal "
            f"init; SGD momentum 0.9, batch {self.batch_size}, "
            f"{self.epochs} epochs")


MLP, SMOKE_MLP = MlpSetting(), MlpSetting(depth=4, width=16, epochs=2,
                                          batch_size=256, lrs=(0.01,))
SMOKE_CNN = common.CnnSetting(train_size=320, test_size=200, epochs=2,
                              batch_size=64)


def run_mlp(setting: MlpSetting, seeds, fast_compile=False) -> dict:
  """``{lr: {arm: history}}`` with effective gains added."""
  ds = data.get("digits")
  results = {}
  for lr in setting.lrs:
    results[lr] = {}
    for arm, act in ARMS.items():
      model = models.MLP(features=(setting.width,) * setting.depth, act=act)
      h = common.fit_mlp_seeds(
          model, optax.sgd(lr, momentum=0.9), seeds, ds=ds,
          epochs=setting.epochs, batch_size=setting.batch_size,
          telemetry=training.Telemetry(),
          probe=common.preactivation_probe(model, ds, nn.swish, np.inf),
          fast_compile=fast_compile)
      steps = h["steps"]
      lam = (steps["anact_lambda"][:, :, -1] if "anact_lambda" in steps
             else np.ones_like(h["rho"]))  # after each epoch's last step
      out = {"test_accuracy": h["test_accuracy"],
             "train_loss": h["train_loss"], "rho": h["rho"],
             "rho_prime": h["rho_prime"], "lambda": lam,
             "grad_var": common.hidden(h, "layer_grad_var")}
      out["rho_eff"] = lam ** 2 * h["rho"]
      out["rho_prime_eff"] = lam ** 2 * h["rho_prime"]
      results[lr][arm] = out
  return results


def run_cnn(cfg: common.CnnSetting, dataset: str, seeds, data_dir=None,
            fast_compile=False) -> dict:
  ds = cfg.dataset(dataset, data_dir)
  tx = optax.chain(optax.add_decayed_weights(CNN_WD),
                   optax.sgd(cfg.cosine(CNN_LR), 0.9))
  results = {}
  for arm, act in ARMS.items():
    model = common.cnn_model(cfg, ds.num_classes, act=act)
    results[arm] = [common.fit_cnn(cfg, ds, model, tx, seed,
                                   fast_compile=fast_compile)
                    for seed in seeds]
  return results


def _geo(x, axis=0):
  return np.exp(np.mean(np.log(np.maximum(x, 1e-30)), axis))


def plot_mlp(setting: MlpSetting, histories: dict, lr: float,
             path: str) -> None:
  plt = common.pyplot()
  fig, axes = plt.subplots(1, 5, figsize=(24, 4.2))
  colors = {"swish": "tab:blue", "nswish": "tab:orange"}
  for arm, h in histories.items():
    c = colors[arm]
    acc = 100 * h["test_accuracy"]
    axes[0].plot(np.arange(1, acc.shape[1] + 1), acc.mean(0), color=c,
                 label=arm)
    layers = np.arange(1, h["rho"].shape[-1] + 1)
    for key, ax in (("rho_eff", axes[1]), ("rho_prime_eff", axes[2]),
                    ("grad_var", axes[4])):
      for e, style in ((0, ":"), (-1, "-")):
        ax.plot(layers, _geo(h[key][:, e]), style + "o", color=c, ms=3,
                label=f"{arm}, epoch {1 if e == 0 else h[key].shape[1]}")
    if arm == "nswish":
      lam = h["lambda"].mean(0)  # [epochs, layers]
      cmap = plt.get_cmap("viridis")
      for e in range(lam.shape[0]):
        axes[3].plot(layers, lam[e], color=cmap(e / max(lam.shape[0] - 1, 1)),
                     lw=1)
  axes[0].set(xlabel="epoch", ylabel="test accuracy % (seed mean)",
              title="test accuracy")
  axes[1].set(xlabel="hidden layer", yscale="log",
              title="forward gain lambda^2 rho (1 = preserved)")
  axes[2].set(xlabel="hidden layer", yscale="log",
              title="backward gain lambda^2 rho' (1 = preserved)")
  axes[3].set(xlabel="hidden layer", title="NSwish running lambda "
              "(epoch 1 purple -> last yellow)")
  axes[4].set(xlabel="hidden layer", yscale="log",
              title="variance of dL/dW entries")
  for ax in (axes[0], axes[1], axes[2], axes[4]):
    ax.legend(fontsize=7)
  fig.suptitle(f"{setting.describe()}, lr {lr:g} (geometric means over "
               "seeds)", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def report_mlp(setting: MlpSetting, results: dict, seconds: float):
  rows = []
  for lr, arms in results.items():
    for arm, h in arms.items():
      gvar = _geo(h["grad_var"][:, -1])  # [layers]
      rows.append([
          f"{lr:g}", arm,
          common.mean_std(100 * h["test_accuracy"][:, -1], 1),
          common.mean_std(h["train_loss"][:, -1], 3),
          f"{_geo(h['rho_eff'][:, -1]).min():.2f} .. "
          f"{_geo(h['rho_eff'][:, -1]).max():.2f}",
          f"{_geo(h['rho_prime_eff'][:, -1]).min():.2f} .. "
          f"{_geo(h['rho_prime_eff'][:, -1]).max():.2f}",
          f"{h['lambda'][:, -1].mean(0).min():.2f} .. "
          f"{h['lambda'][:, -1].mean(0).max():.2f}",
          f"{gvar[0] / gvar[-1]:.3g}"])
  return ["## A. 20-layer Swish MLP on digits", "", setting.describe() + ".",
          "", f"Wall time {seconds:.0f} s. Gains and lambdas: range over "
          "the hidden layers at the last epoch (geometric mean over seeds). "
          "Gradient-variance ratio: first over last hidden layer's kernel "
          "gradient variance, last epoch (1 = even across depth).", ""
          ] + common.table(
              ["lr", "arm", "final test acc %", "final train loss",
               "lambda^2 rho (fwd gain)", "lambda^2 rho' (bwd gain)",
               "lambda", f"grad var layer 1 / layer {setting.depth}"], rows) + [
                   "", "![mlp](mlp.png)", ""]


def report_cnn(cfg: common.CnnSetting, results: dict,
               seconds: float) -> list[str]:
  rows = []
  for arm, runs in results.items():
    acc = common.test_accuracies(runs)
    rows.append([arm, common.mean_std(100 * acc[:, -1], 2),
                 common.mean_std(100 * acc.max(1), 2),
                 common.mean_std([r["final_train_loss"] for r in runs], 3),
                 f"{np.mean([r['seconds'] for r in runs]):.0f}"])
  return ["## B. Swish vs NSwish on a CNN (CIFAR-10)", "",
          f"{cfg.describe()}; SGD momentum 0.9, lr {CNN_LR:g}, weight decay "
          f"{CNN_WD:g} on all parameters.", "",
          f"Wall time {seconds:.0f} s.", ""] + common.table(
              ["activation", "final test acc %", "best test acc %",
               "final train loss", "s per run"], rows) + [
                   "", "![cnn](cnn.png)", ""]


def main(argv=None) -> dict:
  parser = common.parser(__doc__, DEFAULT_OUT, data_arg=True)
  parser.add_argument("--skip-cnn", action="store_true",
                      help="run part A only")
  args = parser.parse_args(argv)
  if not args.skip_cnn:
    common.require_data(parser, args)
  setting = SMOKE_MLP if args.smoke else MLP
  cfg = SMOKE_CNN if args.smoke else common.CnnSetting()
  seeds = tuple(range(args.seeds))
  os.makedirs(args.out, exist_ok=True)
  digits = data.get("digits")
  n_train, n_test = digits.num_train, digits.num_test
  t0 = time.time()
  mlp = run_mlp(setting, seeds, fast_compile=args.smoke)
  lr = setting.plot_lr if setting.plot_lr in mlp else setting.lrs[0]
  plot_mlp(setting, mlp[lr], lr, os.path.join(args.out, "mlp.png"))
  lines = ["# " + studies.title("anact"), "",
           f"Command: `{common.command(MODULE, argv)}`  ",
           f"Seeds: {list(seeds)} (seed s keys initialization and batch "
           "order; both arms see the same)  ",
           f"Data: A: scikit-learn digits ({n_train} train / {n_test} test, "
           f"per-channel normalised); B: `{args.data}`. Mean +- std over seeds. ANAct's "
           "rho, rho' and lambda are our reconstruction (see "
           "`gaf_optax/nn/_anact.py`).", ""]
  lines += report_mlp(setting, mlp, time.time() - t0)
  cnn = {}
  if not args.skip_cnn:
    t1 = time.time()
    cnn = run_cnn(cfg, args.data, seeds, args.data_dir,
                  fast_compile=args.smoke)
    common.plot_curves(cnn, cfg.describe() + ", Swish vs NSwish",
                       os.path.join(args.out, "cnn.png"))
    lines += report_cnn(cfg, cnn, time.time() - t1)
  lines.insert(4, f"Total wall time: {time.time() - t0:.0f} s (CPU)  ")
  text = "\n".join(lines)
  common.write(args.out, text, {"mlp": {str(lr): arms
                                        for lr, arms in mlp.items()},
                                "cnn": cnn})
  print(text)
  return {"mlp": mlp, "cnn": cnn}


if __name__ == "__main__":
  sys.exit(cli.run(main))
