"""Quickstart: every method against its baseline on a small problem.

    python -m experiments.quickstart                 # digits, no download
    python -m experiments.quickstart --dataset=folder:PATH --epochs=2

Trains the same small model with plain SGD, SGD at the matched learning
rate (``lr * alpha * beta``, GAF's slope at 0, see METHODS.md), SGD+GAF,
Adam, Adam+GAF, GAAF and ANAct activations, and gradient amplification,
for several seeds, through the library's training system
(:func:`gaf_optax.training.train_and_evaluate`). Prints a table of final and
best test accuracy, final train loss and wall time (mean +- std over seeds),
and writes ``results.json`` and ``curves.png`` to ``--out``.

On the defaults this is a smoke-scale comparison (a 4-layer MLP on 8x8
digits for a few epochs): it shows the methods working end to end, not the
papers' claims; see experiments/README.md for the studies.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time

import numpy as np

from experiments.configs import default
from gaf_optax import training

# name -> (overrides of the base config, description)
ARMS = {
    "sgd": ({}, "SGD with momentum (baseline)"),
    "sgd_matched_lr": (
        {"learning_rate_scale": "alpha_beta"},
        "SGD at lr * alpha * beta (GAF's slope at 0)"),
    "sgd_gaf": ({"optimizer": "sgd_gaf"}, "SGD_atanMom (GAF on momentum)"),
    "adam": ({"optimizer": "adam", "learning_rate": 1e-3},
             "Adam (baseline for adam_gaf)"),
    "adam_gaf": ({"optimizer": "adam_gaf", "learning_rate": 1e-3},
                 "Adam_atan (GAF on the gradient)"),
    "gaaf": ({"act": "gaaf_relu"}, "GAAF ReLU activations"),
    "anact": ({"act": "nrelu"}, "ANAct ReLU (our reconstruction)"),
    "amplification": (
        {"amplification.enabled": True, "amplification.selection": "cv",
         "amplification.factor": 2.0},
        "gradient amplification, cv selection (ours for the 2023 paper)"),
}


def base_config(args):
  c = default.get_config()
  c.dataset = args.dataset
  c.data_dir = args.data_dir
  c.model = args.model
  if args.model == "mlp":
    c.model_kwargs.features = (64, 64, 64, 64)
  else:
    c.model_kwargs = {}
  c.augment = not args.dataset == "digits"
  c.num_epochs = args.epochs
  c.batch_size = args.batch_size
  c.eval_batch_size = 512
  c.learning_rate = args.lr
  c.weight_decay = 1e-4
  c.gaf.alpha, c.gaf.beta = 0.3, 4.5
  c.checkpoint_at_end = False  # throw-away runs
  c.progress = False
  c.tensorboard = False
  c.log_to_stdout = False
  return c


def arm_config(base, overrides, seed):
  c = base.copy_and_resolve_references()
  c.seed = seed
  for key, value in overrides.items():
    if key == "learning_rate_scale":
      c.learning_rate = base.learning_rate * base.gaf.alpha * base.gaf.beta
      continue
    target = c
    *path, leaf = key.split(".")
    for part in path:
      target = target[part]
    target[leaf] = value
  return c


def _mean_std(values):
  values = np.asarray(values, np.float64)
  return float(values.mean()), float(values.std(ddof=1)) if len(
      values) > 1 else 0.0


def run(args) -> dict:
  base = base_config(args)
  arms = [a for a in ARMS if not args.arms or a in args.arms]
  results = {}
  for arm in arms:
    overrides, description = ARMS[arm]
    runs = []
    for seed in range(args.seeds):
      with tempfile.TemporaryDirectory() as workdir:
        t0 = time.perf_counter()
        summary = training.train_and_evaluate(
            arm_config(base, overrides, seed), workdir)
        seconds = time.perf_counter() - t0
      records = summary["records"]
      runs.append({
          "seed": seed,
          "seconds": seconds,
          "final_test_accuracy": summary["last_test_accuracy"],
          "best_test_accuracy": summary["best_test_accuracy"],
          "final_train_loss": summary["final_train_loss"],
          "curve": {k: [r[k] for r in records]
                    for k in ("epoch", "train_loss", "test_accuracy")},
      })
      print(f"  {arm:15s} seed {seed}: final test acc "
            f"{runs[-1]['final_test_accuracy']:.4f} "
            f"({seconds:.1f} s)", flush=True)
    results[arm] = {"description": description, "runs": runs}
  return {"config": base.to_dict(), "arms": results,
          "seeds": args.seeds, "epochs": args.epochs}


def table(results) -> str:
  lines = [
      "| method | final test acc | best test acc | final train loss | "
      "time/run (s) |",
      "|---|---|---|---|---|"]
  for arm, res in results["arms"].items():
    cells = []
    for key in ("final_test_accuracy", "best_test_accuracy",
                "final_train_loss", "seconds"):
      m, s = _mean_std([r[key] for r in res["runs"]])
      cells.append(f"{m:.4f} +- {s:.4f}" if key != "seconds" else f"{m:.1f}")
    lines.append(f"| {arm} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot(results, path) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for arm, res in results["arms"].items():
    epochs = res["runs"][0]["curve"]["epoch"]
    for ax, key in zip(axes, ("train_loss", "test_accuracy")):
      curves = np.array([r["curve"][key] for r in res["runs"]], np.float64)
      mean = curves.mean(axis=0)
      line, = ax.plot(epochs, mean, label=arm)
      if len(curves) > 1:
        ax.fill_between(epochs, curves.min(0), curves.max(0), alpha=0.15,
                        color=line.get_color())
  axes[0].set(xlabel="epoch", ylabel="train loss", yscale="log")
  axes[1].set(xlabel="epoch", ylabel="test accuracy")
  axes[1].legend(fontsize=8)
  fig.suptitle(f"{results['config']['dataset']}, "
               f"{results['config']['model']}, {results['seeds']} seeds "
               "(band: min-max)")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--dataset", default="digits",
                 help="digits (default, embedded), cifar10, folder:PATH, ...")
  p.add_argument("--data_dir", default=None)
  p.add_argument("--model", default="mlp")
  p.add_argument("--epochs", type=int, default=8)
  p.add_argument("--batch_size", type=int, default=64)
  p.add_argument("--lr", type=float, default=0.02)
  p.add_argument("--seeds", type=int, default=3)
  p.add_argument("--arms", nargs="*", default=None, choices=list(ARMS))
  p.add_argument("--out", default="quickstart_results")
  return p.parse_args(argv)


def main(argv=None) -> dict:
  args = parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  t0 = time.perf_counter()
  results = run(args)
  results["total_seconds"] = time.perf_counter() - t0
  text = table(results)
  print()
  print(f"{args.dataset}, {args.model}, {args.epochs} epochs, "
        f"{args.seeds} seeds (mean +- std), {results['total_seconds']:.0f} s")
  print(text)
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(results, f, indent=1, default=lambda o: None if isinstance(
        o, float) and not math.isfinite(o) else str(o))
  plot(results, os.path.join(args.out, "curves.png"))
  print(f"\nwrote {args.out}/results.json and {args.out}/curves.png")
  return results


if __name__ == "__main__":
  main()
