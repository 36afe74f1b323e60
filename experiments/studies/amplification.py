"""Study 5: gradient amplification over a learning-rate sweep (CIFAR-10).

    python -m experiments.studies.amplification --data DATASET [--smoke]
        [--seeds N] [--out DIR]

The intelligent-amplification paper (Basodi et al. 2023) reports its gains
"notably at higher learning rates", and with BatchNorm an amplified backward
pass acts much like a larger learning rate (docs/methods/amplification.md). This
study sweeps the learning rate and puts every amplified run next to SGD at
``lr * factor``. Network and data: the ResNet-8 of study 1
(``gaf_optax.models.ResNet8``, trained by ``Trainer.fit``; amplification
points after each BN of the residual
branches and the stem, 7 points) on a class-balanced 5,000-image CIFAR-10
training subset and 2,000 test images, downsampled to 16x16 (4x cheaper, so
that 17 configurations x 3 seeds fit half an hour here), batch 128, 6
epochs, SGD momentum 0.9, weight decay 5e-4 on all parameters, cosine decay.

Arms, each at lr in (0.05, 0.1, 0.2, 0.4), factor 2 during epochs [1, 4)
(epoch 0 measures; the last two epochs are not amplified):

- ``sgd``: no amplification (also run at lr 0.8);
- ``random``: the 2020 method, a random quarter of the points, redrawn each
  epoch (``selection="random"``);
- ``cv``: the 2023 method as we reconstruct it, the points whose
  coefficient of variation of the per-step signal norm over the previous
  epoch exceeds the mean across points (``selection="cv"``; the measure and
  threshold are our design);
- ``weights``: our weight-gradient variant (``labels=``, one label per
  top-level module, ``cv`` selection on the modules' gradient norms): scales
  the selected modules' updates, without compounding;
- ``sgd x factor``: plain SGD at ``2 * lr``, i.e. the ``sgd`` row of the next
  learning rate (the control for "amplification is a larger learning rate").

Writes ``results.md``, ``results.json`` and ``sweep.png`` to ``--out``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import textwrap
import time

import jax
import numpy as np
import optax

import gaf_optax
from experiments import cli
from experiments import common
from experiments import studies
from gaf_optax import training

MODULE = "experiments.studies.amplification"
DEFAULT_OUT = common.results_dir("amplification")
LRS = (0.05, 0.1, 0.2, 0.4)
FACTOR, START, END = 2.0, 1, 4
WD = 5e-4
ARMS = {
    "sgd": "SGD, no amplification",
    "random": "random points (2020), ratio 0.25",
    "cv": "cv-selected points (2023, our measure)",
    "weights": "weight-gradient variant (ours), cv",
}
CONFIG = common.CnnSetting(train_size=5000, test_size=2000, epochs=6,
                           image_size=16)
SMOKE = common.CnnSetting(train_size=320, test_size=200, epochs=3,
                          batch_size=64)


def make_optimizer(cfg: common.CnnSetting, arm: str, lr: float, params,
                   num_points: int, end_epoch: int):
  """An arm's optimizer: SGD with cosine decay, the controller first."""
  sgd = optax.chain(optax.add_decayed_weights(WD),
                    optax.sgd(cfg.cosine(lr), 0.9))
  if arm == "sgd":
    return sgd
  kwargs = dict(factor=FACTOR, start_epoch=START, end_epoch=end_epoch)
  if arm == "weights":
    labels, num_layers = training.layer_labels(params)
    controller = gaf_optax.gradient_amplification(
        num_layers, cfg.steps_per_epoch(), selection="cv", labels=labels,
        **kwargs)
  else:
    controller = gaf_optax.gradient_amplification(
        num_points, cfg.steps_per_epoch(), selection=arm, **kwargs)
  return optax.chain(controller, sgd)


def run(cfg: common.CnnSetting, dataset: str, seeds, lrs=LRS, data_dir=None,
        fast_compile=False) -> dict:
  """``{arm: {lr: [run per seed]}}``."""
  ds = cfg.dataset(dataset, data_dir)
  model = common.cnn_model(cfg, ds.num_classes)
  params = jax.eval_shape(lambda: model.init(
      jax.random.key(0), np.zeros((1, *ds.image_shape), np.float32),
      train=False))["params"]
  end_epoch = min(END, cfg.epochs - 1)
  results = {arm: {} for arm in ARMS}
  t0 = time.time()
  for arm in ARMS:
    arm_lrs = tuple(lrs) + ((FACTOR * lrs[-1],) if arm == "sgd" else ())
    for lr in arm_lrs:
      tx = make_optimizer(cfg, arm, lr, params,
                          model.num_amplification_points, end_epoch)
      points = arm in ("random", "cv")
      # Points arms record the controller's factors at every step.
      telemetry = training.Telemetry(layers=False) if points else None
      results[arm][lr] = [
          common.fit_cnn(cfg, ds, model, tx, seed,
                         amplification_points=points, telemetry=telemetry,
                         fast_compile=fast_compile) for seed in seeds]
      acc = common.test_accuracies(results[arm][lr])[:, -1]
      print(f"{arm} lr {lr:g}: test acc {np.round(acc, 4)} "
            f"({time.time() - t0:.0f} s)", flush=True)
  return results


def _final(runs) -> np.ndarray:
  return 100 * common.test_accuracies(runs)[:, -1]


def report(cfg, results: dict, lrs) -> list[str]:
  header = ["arm"] + [f"lr {lr:g}" for lr in lrs]
  rows = []
  for arm, by_lr in results.items():
    rows.append([ARMS[arm]] + [common.mean_std(_final(by_lr[lr]), 2)
                               for lr in lrs])
  sgd = results["sgd"]
  rows.append([f"SGD at lr x {FACTOR:g} (matched)"] + [
      common.mean_std(_final(sgd[FACTOR * lr]), 2) if FACTOR * lr in sgd
      else "-" for lr in lrs])
  return common.table(header, rows)


def plot(cfg, results: dict, lrs, path: str) -> None:
  plt = common.pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.8))
  for arm, by_lr in results.items():
    xs = sorted(by_lr)
    acc = [_final(by_lr[lr]) for lr in xs]
    ax.errorbar(xs, [a.mean() for a in acc], yerr=[a.std() for a in acc],
                fmt="-o", capsize=3, label=ARMS[arm])
  sgd = results["sgd"]
  matched = [lr for lr in lrs if FACTOR * lr in sgd]
  acc = [_final(sgd[FACTOR * lr]) for lr in matched]
  ax.errorbar(matched, [a.mean() for a in acc], yerr=[a.std() for a in acc],
              fmt="k:s", capsize=3, label=f"SGD at lr x {FACTOR:g}")
  title = textwrap.fill(f"{cfg.describe()}; amplification x{FACTOR:g} in "
                        f"epochs [{START}, {END})", 90)
  ax.set(xscale="log", xlabel="learning rate", ylabel="final test accuracy %",
         title=title)
  ticks = sorted(results["sgd"])
  ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
  ax.minorticks_off()
  ax.title.set_fontsize(8)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv=None) -> dict:
  parser = common.parser(__doc__, DEFAULT_OUT, data_arg=True)
  args = parser.parse_args(argv)
  common.require_data(parser, args)
  cfg = SMOKE if args.smoke else CONFIG
  lrs = (0.1,) if args.smoke else LRS
  seeds = tuple(range(args.seeds))
  t0 = time.time()
  results = run(cfg, args.data, seeds, lrs, args.data_dir,
                fast_compile=args.smoke)
  os.makedirs(args.out, exist_ok=True)
  plot(cfg, results, lrs, os.path.join(args.out, "sweep.png"))
  lines = ["# " + studies.title("amplification"), "",
           f"Command: `{common.command(MODULE, argv)}`  ",
           f"Seeds: {list(seeds)} (seed s keys initialization, batch order "
           "and augmentation; every arm sees the same; the random selection "
           "uses the controller's own seed 0)  ",
           f"Setting: {cfg.describe()}; SGD momentum 0.9, weight decay "
           f"{WD:g}; amplification factor {FACTOR:g} in epochs "
           f"[{START}, {min(END, cfg.epochs - 1)}).  ",
           f"Total wall time: {time.time() - t0:.0f} s (2-core CPU).", "",
           "Final test accuracy %, mean +- std over seeds:", ""]
  lines += report(cfg, results, lrs)
  lines += ["", "![sweep](sweep.png)", ""]
  text = "\n".join(lines)
  common.write(args.out, text, {
      "config": dataclasses.asdict(cfg), "seeds": list(seeds),
      "runs": {arm: {str(lr): r for lr, r in by_lr.items()}
               for arm, by_lr in results.items()}})
  print(text)
  return {"config": cfg, "results": results}


if __name__ == "__main__":
  sys.exit(cli.run(main))
