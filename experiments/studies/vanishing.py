"""Study: vanishing gradients, SGD vs GAF vs GAAF vs ANAct vs amplification.

    python -m experiments.studies.vanishing [--smoke] [--seeds N] [--out DIR]

Networks where plain SGD stalls because gradients vanish: the sigmoid LeNet
(the GAF code's vanishing-gradient model, ``gaf_optax.models.SigmoidLeNet``)
and deep plain MLPs (``gaf_optax.models.MLP``) with saturating activations.
Data: scikit-learn's 8x8 digits (no download; ``gaf_optax.data.get("digits")``
with its split and per-channel normalisation); LeNet needs 32x32 input, so
the images are upsampled to 32x32 (``image_size=32``; CIFAR-10 would not fit
this study's CPU time budget with several seeds and six arms). Every seed
trains at once through :meth:`gaf_optax.training.Trainer.fit_seeds`.

Arms, all with SGD momentum 0.9, the same batches (seeded), the same
initialization per seed and the same learning rate ``lr`` per setting:

- ``sgd``: plain SGD at ``lr``;
- ``sgd_matched``: SGD at ``lr * alpha * beta`` (GAF's slope at 0);
- ``sgd_gaf``: ``gaf_optax.sgd_gaf`` (SGD_atanMom, alpha 0.3, beta 4.5);
- ``gaaf``: the GAAF activation (``gaaf_sigmoid`` / ``gaaf_tanh``,
  amplitude 1), SGD at ``lr``;
- ``anact``: ``gaf_optax.nn.ANAct`` around the activation, SGD at ``lr``;
- ``amplification``: ``gaf_optax.gradient_amplification`` (factor 2,
  coefficient-of-variation selection, median threshold, from epoch 1) on the
  model's amplification points, SGD at ``lr``.

Recorded per epoch: mean training loss, test accuracy, and per layer the
norm of the kernel gradient the optimizer receives (averaged over the
epoch's steps; for ``amplification`` it includes the amplification) and the
backpropagated signal norm at each amplification point: the trainer's
telemetry (``layer_grad_norm``, ``signal_norms`` with ``signals=True``).
Writes ``results.md`` (tables, mean +- std over seeds, the command),
``results.json`` and one ``grad_norms_<setting>.png`` per setting (one panel
per arm, one line per layer, mean over seeds) to ``--out``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import time

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import optax

import gaf_optax
from experiments import cli
from experiments import common
from experiments import studies
from gaf_optax import data
from gaf_optax import models
from gaf_optax import nn as gnn
from gaf_optax import training

DEFAULT_OUT = common.results_dir("vanishing")
ALPHA, BETA = 0.3, 4.5  # sgd_gaf's defaults (SGD_atanMom)
MOMENTUM = 0.9

ACTIVATIONS = {"sigmoid": nn.sigmoid, "tanh": jnp.tanh}
GAAF = {"sigmoid": gnn.gaaf_sigmoid, "tanh": gnn.gaaf_tanh}
ARMS = ("sgd", "sgd_matched", "sgd_gaf", "gaaf", "anact", "amplification")
DESCRIPTIONS = {
    "sgd": "SGD(lr)",
    "sgd_matched": f"SGD(lr*{ALPHA * BETA:g}) (matched)",
    "sgd_gaf": f"sgd_gaf(lr, alpha {ALPHA:g}, beta {BETA:g})",
    "gaaf": "GAAF activation, SGD(lr)",
    "anact": "ANAct activation, SGD(lr)",
    "amplification": "amplification x2 (cv, median), SGD(lr)",
}


@dataclasses.dataclass(frozen=True)
class Setting:
  """A network, its learning rate and training length."""

  name: str
  model: str  # "lenet" or "mlp"
  activation: str  # "sigmoid" or "tanh"
  lr: float
  epochs: int
  depth: int = 0  # MLP hidden layers
  width: int = 64  # MLP width
  init_scale: float = 1.0  # kernel variance multiplier over the default
  batch_size: int = 64

  def describe(self) -> str:
    if self.model == "lenet":
      net = (f"{self.activation} LeNet-5 (conv 6, conv 16, fc 120, fc 84; "
             "default init: He-normal fan-out convs, LeCun Dense)")
    else:
      net = (f"{self.activation} MLP, {self.depth} hidden x {self.width}, "
             f"LeCun-normal init x{self.init_scale:g} variance")
    return (f"{net}; SGD momentum {MOMENTUM}, lr {self.lr:g}, batch "
            f"{self.batch_size}, {self.epochs} epochs")


# lr: the GAF code's 0.1 for the sigmoid LeNet, 0.1 for the sigmoid MLP and
# 0.01 for the tanh MLPs, fixed before the other arms were run; every arm of
# a setting uses it (and sgd_matched its alpha*beta multiple).
SETTINGS = (
    Setting("sigmoid_lenet", "lenet", "sigmoid", lr=0.1, epochs=16),
    Setting("tanh_mlp_small_init", "mlp", "tanh", lr=0.01, epochs=30,
            depth=20, init_scale=0.5),
    Setting("tanh_mlp", "mlp", "tanh", lr=0.01, epochs=30, depth=20,
            init_scale=0.8),
    Setting("sigmoid_mlp", "mlp", "sigmoid", lr=0.1, epochs=30, depth=8),
)
# The smoke version has no LeNet: its convolutions compile and run too
# slowly on a CPU for a test of a few seconds.
SMOKE = (
    Setting("tanh_mlp", "mlp", "tanh", lr=0.01, epochs=2, depth=4,
            width=16, init_scale=0.8, batch_size=256),
)


def build_model(setting: Setting, arm: str) -> nn.Module:
  """The setting's network with the arm's activation."""
  base = ACTIVATIONS[setting.activation]
  if arm == "gaaf":
    act = GAAF[setting.activation]
  elif arm == "anact":
    # backward_exponent=1: the form these results were measured with (the
    # whole gain in the backward pass; the default is 0.5 since).
    act = functools.partial(gnn.ANAct, activation=base, backward_exponent=1.0)
  else:
    act = base
  if setting.model == "lenet":
    return models.LeNet(act=act)
  return models.MLP(features=(setting.width,) * setting.depth, act=act,
                    init_scale=setting.init_scale)


def build_optimizer(setting: Setting, arm: str, num_points: int,
                    steps_per_epoch: int):
  lr = setting.lr
  if arm == "sgd_matched":
    return optax.sgd(lr * ALPHA * BETA, momentum=MOMENTUM)
  if arm == "sgd_gaf":
    return gaf_optax.sgd_gaf(lr, momentum=MOMENTUM, alpha=ALPHA, beta=BETA)
  sgd = optax.sgd(lr, momentum=MOMENTUM)
  if arm == "amplification":
    return optax.chain(
        gaf_optax.gradient_amplification(
            num_points, steps_per_epoch, factor=2.0, selection="cv",
            threshold="median", start_epoch=1), sgd)
  return sgd


@functools.cache
def dataset(model: str) -> data.Dataset:
  """Digits as the model wants them: 8x8 (the MLP flattens) or 32x32."""
  return data.get("digits", image_size=32 if model == "lenet" else None)


def train(setting: Setting, arm: str, seeds, fast_compile: bool = False):
  """Per-epoch history, arrays ``[seeds, epochs, ...]``, and layer names.

  Every seed at once through :meth:`gaf_optax.training.Trainer.fit_seeds`;
  the per-layer kernel gradient norms and the points' signal norms are the
  trainer's telemetry (epoch means), the factors its ``amp_factors``.
  """
  ds = dataset(setting.model)
  model = build_model(setting, arm)
  steps = data.steps_per_epoch(ds, setting.batch_size)
  tx = build_optimizer(setting, arm, model.num_amplification_points, steps)
  h = common.fit_mlp_seeds(
      model, tx, seeds, ds=ds, epochs=setting.epochs,
      batch_size=setting.batch_size,
      amplification_points=arm == "amplification",
      telemetry=training.Telemetry(signals=True), fast_compile=fast_compile)
  history = {"train_loss": h["train_loss"], "test_acc": h["test_accuracy"],
             "grad_norms": h["layer_grad_norm"],
             "signal_norms": h["signal_norms"],
             "factors": h.get("amp_factors", np.ones_like(h["signal_norms"]))}
  return history, h["telemetry_names"]["layer"]


def epochs_to(acc: np.ndarray, level: float) -> str:
  """Mean +- std of the first epoch (1-based) with test acc >= level."""
  hit = acc >= level
  first = np.where(hit.any(-1), hit.argmax(-1) + 1, -1)
  ok = first > 0
  if not ok.any():
    return f"never ({acc.shape[-1]})"
  text = f"{first[ok].mean():.1f} +- {first[ok].std():.1f}"
  if not ok.all():
    text += f" ({(~ok).sum()}/{ok.size} never)"
  return text


def plot(setting: Setting, results: dict, path: str) -> None:
  """One panel per arm: per-layer kernel gradient norm over epochs."""
  plt = common.pyplot()

  arms = list(results)
  cols = 3
  rows = -(-len(arms) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows),
                           sharey=True, squeeze=False)
  for ax, arm in zip(axes.flat, arms):
    history, names = results[arm]
    norms = history["grad_norms"]  # [seeds, epochs, layers]
    epochs = np.arange(1, norms.shape[1] + 1)
    cmap = plt.get_cmap("viridis")
    for l, name in enumerate(names):
      mean = np.exp(np.mean(np.log(np.maximum(norms[..., l], 1e-30)), 0))
      ax.plot(epochs, mean, color=cmap(l / max(len(names) - 1, 1)),
              label=name if (len(names) <= 8 or l in (0, len(names) - 1)
                             or l % 5 == 0) else None)
    acc = history["test_acc"].mean(0)[-1]
    ax.set(yscale="log", xlabel="epoch", title=(
        f"{DESCRIPTIONS[arm]}\nfinal test acc {100 * acc:.1f}%"))
    ax.title.set_fontsize(9)
  for ax in axes.flat[len(arms):]:
    ax.axis("off")
  for ax in axes[:, 0]:
    ax.set_ylabel("|dL/dW| per layer (geo. mean over seeds)")
  axes.flat[0].legend(fontsize=7, ncol=2)
  fig.suptitle(setting.describe(), fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def report_setting(setting: Setting, results: dict, seconds: float) -> list[str]:
  """Markdown section for one setting."""
  lines = [f"## {setting.name}", "", setting.describe() + ".", "",
           f"Wall time {seconds:.0f} s. Chance is about 10%. Gradient "
           "norms: first / last layer kernel, mean over epoch 1 and over the "
           "last epoch (geometric mean over seeds; 1.00e-30 is the floor, "
           "i.e. zero).", "",
           "| arm | final train loss | final test acc % | best test acc % | "
           "epochs to 50% test acc | first-layer grad, ep 1 -> last | "
           "last-layer grad, ep 1 -> last |",
           "|---|---|---|---|---|---|---|"]
  for arm, (history, _) in results.items():
    acc = history["test_acc"]
    g = history["grad_norms"]
    geo = lambda v: float(np.exp(np.mean(np.log(np.maximum(v, 1e-30)))))
    lines.append(
        f"| {DESCRIPTIONS[arm]} | {common.mean_std(history['train_loss'][:, -1], 3)} | "
        f"{common.mean_std(100 * acc[:, -1], 1)} | {common.mean_std(100 * acc.max(1), 1)} | "
        f"{epochs_to(acc, 0.5)} | {geo(g[:, 0, 0]):.2e} -> "
        f"{geo(g[:, -1, 0]):.2e} | {geo(g[:, 0, -1]):.2e} -> "
        f"{geo(g[:, -1, -1]):.2e} |")
  lines += ["", f"![grad norms](grad_norms_{setting.name}.png)", ""]
  return lines


def main(argv=None) -> dict:
  parser = common.parser(__doc__, DEFAULT_OUT)
  parser.add_argument("--settings", default="",
                      help="comma-separated setting names (default: all)")
  args = parser.parse_args(argv)
  settings = SMOKE if args.smoke else SETTINGS
  if args.settings:
    wanted = args.settings.split(",")
    settings = tuple(s for s in settings if s.name in wanted)
  seeds = tuple(range(args.seeds))
  command = common.command("experiments.studies.vanishing", argv)
  os.makedirs(args.out, exist_ok=True)
  digits = dataset("mlp")
  t0 = time.time()
  lines = ["# " + studies.title("vanishing"), "",
           f"Command: `{command}`  ",
           f"Seeds: {list(seeds)} (seed s keys the initialization "
           "and the batch order; every arm sees the same)  ",
           "Data: scikit-learn digits (gaf_optax.data), "
           f"{digits.num_train} train / {digits.num_test} test, per-channel "
           "normalised; LeNet input upsampled to 32x32 (image_size=32). "
           "Mean +- std over seeds.", ""]
  everything = {}
  for setting in settings:
    t1 = time.time()
    results = {}
    for arm in ARMS:
      results[arm] = train(setting, arm, seeds, fast_compile=args.smoke)
      acc = results[arm][0]["test_acc"][:, -1]
      print(f"{setting.name} {arm}: test acc {acc} ({time.time() - t1:.0f} s)",
            flush=True)
    plot(setting, results, os.path.join(args.out,
                                         f"grad_norms_{setting.name}.png"))
    lines += report_setting(setting, results, time.time() - t1)
    everything[setting.name] = results
  lines.insert(4, f"Total wall time: {time.time() - t0:.0f} s (CPU)  ")
  text = "\n".join(lines)
  with open(os.path.join(args.out, "results.md"), "w") as f:
    f.write(text)
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump({s: {arm: {"layers": list(names),
                         **{k: np.asarray(v).tolist() for k, v in h.items()}}
                   for arm, (h, names) in r.items()}
               for s, r in everything.items()}, f)
  print(text)
  return everything


if __name__ == "__main__":
  sys.exit(cli.run(main))
