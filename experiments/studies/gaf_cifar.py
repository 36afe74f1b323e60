"""Study 1: GAF on CIFAR-10 with a small ResNet, against every baseline.

    python -m experiments.studies.gaf_cifar --data DATASET [--smoke]
        [--seeds N] [--out DIR] [--model resnet8|resnet20] [--train-size N]
        [--test-size N] [--epochs E]

The official GAF setup (docs/methods/gaf.md: SGD momentum 0.9, lr 0.1,
batch 128-256, coupled weight decay 5e-4 on every parameter, cosine decay,
random crop with padding 4 + flip, alpha/beta = 0.1/20), shrunk to fit about
half an hour on a 2-core CPU: a ResNet-8 (the CIFAR ResNet of He et al. with
one basic block per stage, widths 16/32/64, option-A shortcuts, 75k
parameters) on a class-balanced 10,000-image subset of the CIFAR-10 training
set for 3 epochs, tested on a class-balanced 5,000-image subset of the test
set after every epoch. The cosine decay runs over those 3 epochs, without
the official 1-epoch warm-up. ``--model resnet20 --train-size 50000
--epochs 30`` is the same study at a size that takes hours here.

Arms (each with the same initialization, batch order and augmentation per
seed):

- ``sgd``: SGD(0.1), the paper's baseline;
- ``sgd_matched``: SGD(0.2) = SGD(lr * alpha * beta), GAF's slope at 0 (the
  fair control docs/methods/gaf.md explains; not in the paper);
- ``clip_norm`` / ``clip_value``: the official code's clipping baselines
  (global norm 0.1*pi/2, value 0.01*pi/2) before SGD(0.1);
- ``sgd_gaf``: ``gaf_optax.sgd_gaf(0.1, alpha=0.1, beta=20)`` =
  SGD_atanMom, arctan on the momentum buffer's output;
- ``sgd_gaf_gradient``: the same with ``position="gradient"`` = SGD_atan,
  arctan on the raw gradient before momentum;
- ``adam`` / ``adam_gaf``: Adam(1e-3) and ``gaf_optax.adam_gaf(1e-3)``
  (Adam_atan, official defaults alpha 0.1, beta 15).

Every run is :meth:`gaf_optax.training.Trainer.fit` (one device). Writes
``results.md``, ``results.json`` and ``curves.png`` to ``--out``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time

import numpy as np
import optax

import gaf_optax
from experiments import cli
from experiments import common
from experiments import studies

MODULE = "experiments.studies.gaf_cifar"
DEFAULT_OUT = common.results_dir("gaf_cifar")
MODELS = ("resnet8", "resnet20")
LR, MOMENTUM, WD = 0.1, 0.9, 5e-4
ALPHA, BETA = 0.1, 20.0  # the paper's first pair; slope alpha*beta = 2
ADAM_LR = 1e-3
CLIP_NORM, CLIP_VALUE = 0.1 * math.pi / 2, 0.01 * math.pi / 2  # official


def _sgd(lr):
  return optax.chain(optax.add_decayed_weights(WD), optax.sgd(lr, MOMENTUM))


# name -> (description, optimizer from the learning-rate multiplier schedule)
ARMS = {
    "sgd": ("SGD(0.1)", lambda s: _sgd(lambda t: LR * s(t))),
    "sgd_matched": (f"SGD({LR * ALPHA * BETA:g}) = SGD(lr*alpha*beta)",
                    lambda s: _sgd(lambda t: LR * ALPHA * BETA * s(t))),
    "clip_norm": (f"clip_by_global_norm({CLIP_NORM:.4f}) + SGD(0.1)",
                  lambda s: optax.chain(optax.clip_by_global_norm(CLIP_NORM),
                                        _sgd(lambda t: LR * s(t)))),
    "clip_value": (f"clip({CLIP_VALUE:.4f}) + SGD(0.1)",
                   lambda s: optax.chain(optax.clip(CLIP_VALUE),
                                         _sgd(lambda t: LR * s(t)))),
    "sgd_gaf": (f"sgd_gaf(0.1, alpha {ALPHA:g}, beta {BETA:g}) (SGD_atanMom)",
                lambda s: gaf_optax.sgd_gaf(
                    lambda t: LR * s(t), MOMENTUM, weight_decay=WD,
                    alpha=ALPHA, beta=BETA)),
    "sgd_gaf_gradient": (
        f"sgd_gaf(0.1, alpha {ALPHA:g}, beta {BETA:g}, position='gradient') "
        "(SGD_atan)",
        lambda s: gaf_optax.sgd_gaf(
            lambda t: LR * s(t), MOMENTUM, weight_decay=WD, alpha=ALPHA,
            beta=BETA, position="gradient")),
    "adam": ("Adam(1e-3)", lambda s: optax.chain(
        optax.add_decayed_weights(WD), optax.adam(lambda t: ADAM_LR * s(t)))),
    "adam_gaf": ("adam_gaf(1e-3, alpha 0.1, beta 15) (Adam_atan)",
                 lambda s: gaf_optax.adam_gaf(lambda t: ADAM_LR * s(t),
                                              weight_decay=WD)),
}


SMOKE = common.CnnSetting(train_size=320, test_size=200, epochs=2,
                          batch_size=64)


def summarize(results: dict) -> dict:
  """Per arm: arrays over seeds of the reported numbers."""
  summary = {}
  for arm, runs in results.items():
    test = common.test_accuracies(runs)
    summary[arm] = {
        "final_test_acc": test[:, -1], "best_test_acc": test.max(1),
        "final_train_loss": np.array([r["final_train_loss"] for r in runs]),
        "seconds": np.array([r["seconds"] for r in runs])}
  return summary


def report(cfg, seeds, summary, command, seconds) -> str:
  rows = []
  for arm, s in summary.items():
    rows.append([f"`{arm}`: {ARMS[arm][0]}",
                 common.mean_std(100 * s["final_test_acc"], 2),
                 common.mean_std(100 * s["best_test_acc"], 2),
                 common.mean_std(s["final_train_loss"], 3),
                 f"{s['seconds'].mean():.0f}"])
  lines = ["# " + studies.title("gaf_cifar", cfg.epochs), "",
           f"Command: `{command}`  ",
           f"Seeds: {list(seeds)} (seed s keys the initialization, the "
           "batch order and the augmentation; every arm sees the same)  ",
           f"Setting: {cfg.describe()}, coupled weight decay {WD:g} on all "
           "parameters.  ",
           f"Total wall time: {seconds:.0f} s (2-core CPU).", "",
           "Mean +- std over seeds; accuracies in %, on the test subset. "
           "The train loss is the mean over the last epoch's batches "
           "(augmented, in training mode).", ""]
  lines += common.table(["arm", "final test acc", "best test acc",
                         "final train loss", "s per run"], rows)
  lines += ["", "![curves](curves.png)", ""]
  return "\n".join(lines)


def main(argv=None) -> dict:
  parser = common.parser(__doc__, DEFAULT_OUT, data_arg=True)
  parser.add_argument("--model", choices=MODELS, default=None)
  parser.add_argument("--train-size", type=int, default=None)
  parser.add_argument("--test-size", type=int, default=None)
  parser.add_argument("--epochs", type=int, default=None)
  parser.add_argument("--arms", default=",".join(ARMS),
                      help="comma-separated arms (default: all)")
  args = parser.parse_args(argv)
  common.require_data(parser, args)
  cfg = SMOKE if args.smoke else common.CnnSetting()
  overrides = {k: v for k, v in (("model", args.model),
                                 ("train_size", args.train_size),
                                 ("test_size", args.test_size),
                                 ("epochs", args.epochs)) if v is not None}
  cfg = dataclasses.replace(cfg, **overrides)
  arms = args.arms.split(",")
  unknown = sorted(set(arms) - set(ARMS))
  if unknown:
    parser.error(f"--arms: unknown {unknown}; known: {', '.join(ARMS)}")
  seeds = tuple(range(args.seeds))
  ds = cfg.dataset(args.data, args.data_dir)
  model = common.cnn_model(cfg, ds.num_classes)
  multiplier = cfg.cosine(1.0)  # from 1 to 0 over the run
  t0 = time.time()
  results = {}
  for arm in arms:
    results[arm] = []
    for seed in seeds:
      results[arm].append(common.fit_cnn(
          cfg, ds, model, ARMS[arm][1](multiplier), seed,
          fast_compile=args.smoke))
      e = results[arm][-1]["records"][-1]
      print(f"{arm} seed {seed}: test acc {e['test_accuracy']:.4f}, train "
            f"loss {e['train_loss']:.4f} ({time.time() - t0:.0f} s)",
            flush=True)
  summary = summarize(results)
  os.makedirs(args.out, exist_ok=True)
  common.plot_curves(results, cfg.describe(),
                     os.path.join(args.out, "curves.png"))
  text = report(cfg, seeds, summary, common.command(MODULE, argv),
                time.time() - t0)
  common.write(args.out, text, {"config": dataclasses.asdict(cfg),
                                "data": args.data, "seeds": list(seeds),
                                "runs": results})
  print(text)
  return {"config": cfg, "results": results, "summary": summary}


if __name__ == "__main__":
  sys.exit(cli.run(main))
