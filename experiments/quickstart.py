"""Quickstart: every method against its baseline on a small problem.

    python -m experiments.quickstart                 # digits, no download
    python -m experiments.quickstart --dataset=folder:PATH --epochs=2

Trains the same small model with plain SGD, SGD at the matched learning
rate (``lr * alpha * beta``, GAF's slope at 0, see docs/methods/gaf.md), SGD+GAF,
Adam, Adam+GAF, GAAF and ANAct activations, and gradient amplification,
for several seeds, through the library's training system
(``gaf_optax.training.Trainer.from_config(config).fit()``, the path of
``experiments/main.py``; each arm is a few fields of the locked default
config, so a misspelled field is an error). Prints a table of final and
best test accuracy, final train loss and wall time (mean +- std over seeds),
and writes ``results.md`` (the command, the setting and that table: the file
the docs quote), ``results.json`` and ``curves.png`` to ``--out``.

On the defaults this is a smoke-scale comparison (a 4-layer MLP on 8x8
digits for a few epochs): it shows the methods working end to end, not the
papers' claims; see experiments/README.md for the studies.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time

import numpy as np

from experiments import cli
from experiments import common
from experiments.configs import default
from gaf_optax import data
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
  c.image_size = args.image_size
  c.model = args.model
  if args.model == "mlp":
    c.model_kwargs.features = (64, 64, 64, 64)
  else:
    c.model_kwargs = {}
  c.augment = not args.dataset == "digits"
  c.num_epochs = args.epochs
  c.batch_size = args.batch_size
  c.eval_batch_size = 512
  c.num_devices = args.num_devices
  c.learning_rate = args.lr
  c.weight_decay = 1e-4
  c.gaf.alpha, c.gaf.beta = 0.3, 4.5
  c.progress = False
  c.tensorboard = False
  c.log_to_stdout = False
  return c


def arm_config(base, overrides, seed):
  """The base config with an arm's overrides (dotted names) and seed.

  Raises:
    AttributeError: an override names a field the config does not have.
  """
  c = base.copy_and_resolve_references()
  c.lock()
  c.seed = seed
  for key, value in overrides.items():
    if key == "learning_rate_scale":
      c.learning_rate = base.learning_rate * base.gaf.alpha * base.gaf.beta
      continue
    target = c
    *path, leaf = key.split(".")
    for part in path:
      target = getattr(target, part)
    setattr(target, leaf, value)  # locked: an unknown field raises
  return c


def describe_images(ds, args) -> str:
  """The image shape the models see, and how to change it.

  An image folder of mixed sizes (or too large to hold decoded) is read
  lazily and cropped to 224x224 (:func:`gaf_optax.data.folder`), which a
  user would not guess from the command line.
  """
  h, w, c = ds.image_shape
  line = (f"{ds.name}: {ds.num_train} train / {ds.num_test} test images, "
          f"fed as {h}x{w}x{c}")
  if args.image_size is None and args.dataset.startswith("folder:"):
    lazy = not isinstance(ds.train, data.ArraySource)
    line += (" (images of mixed sizes, or too many to hold decoded: cropped "
             "to 224x224 on the host)" if lazy else " (as stored)")
    line += "; --image_size N resizes them to NxN"
  return line


def run(args) -> dict:
  base = base_config(args)
  arms = [a for a in ARMS if not args.arms or a in args.arms]
  results = {}
  for arm in arms:
    overrides, description = ARMS[arm]
    runs = []
    for seed in range(args.seeds):
      t0 = time.perf_counter()
      # No workdir: throw-away runs write no files or checkpoints.
      trainer = training.Trainer.from_config(arm_config(base, overrides,
                                                        seed))
      if not results and not runs:
        print(describe_images(trainer.dataset, args), flush=True)
      summary = trainer.fit(progress=False, log_to_stdout=False)
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
  """Mean +- std over seeds (``common.mean_std``); accuracies in %."""
  rows = []
  for arm, res in results["arms"].items():
    runs = res["runs"]
    rows.append([
        arm,
        common.mean_std([100 * r["final_test_accuracy"] for r in runs], 2),
        common.mean_std([100 * r["best_test_accuracy"] for r in runs], 2),
        common.mean_std([r["final_train_loss"] for r in runs], 4),
        f"{np.mean([r['seconds'] for r in runs]):.1f}"])
  return "\n".join(common.table(
      ["method", "final test acc %", "best test acc %", "final train loss",
       "time/run (s)"], rows))


def results_markdown(results, argv) -> str:
  """The run as a results file: command, setting, table (what docs cite)."""
  c = results["config"]
  command = " ".join(["python -m experiments.quickstart", *argv])
  optimizer = (f"SGD momentum {c['momentum']} lr {c['learning_rate']:g} "
               f"(Adam arms lr 1e-3)")
  return "\n".join([
      f"# Quickstart: every method on {c['dataset']} ({c['model']})",
      "",
      f"Command: `{command}`  ",
      f"Seeds: {list(range(results['seeds']))} (seed s keys initialization "
      "and batch order; every arm sees the same)  ",
      f"Setting: {c['model']} {tuple(c['model_kwargs'].get('features', ()))}"
      f" on {c['dataset']}, {results['epochs']} epochs, batch "
      f"{c['batch_size']}, {optimizer}, weight decay {c['weight_decay']:g}, "
      f"GAF (alpha, beta) = ({c['gaf']['alpha']:g}, {c['gaf']['beta']:g}); "
      "through `Trainer.from_config(...).fit()`  ",
      f"Total wall time: {results['total_seconds']:.0f} s "
      f"({os.cpu_count()}-core {platform.machine()} CPU; the time column "
      "depends on the machine's load)",
      "",
      "Mean +- std over seeds (ddof 0); accuracies in %, on the test split.",
      "",
      table(results),
      "",
      "![curves](curves.png)",
      ""])


def plot(results, path) -> None:
  plt = common.pyplot()
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
  p = cli.parser(__doc__)
  p.add_argument("--dataset", default="digits",
                 help="digits (default, embedded), digits28, shapes28 (generated), "
                 "cifar10, folder:PATH, ...")
  p.add_argument("--data_dir", default=None,
                 help="TFDS data directory (TFDS sets only)")
  p.add_argument("--image_size", type=int, default=None,
                 help="resize images to NxN (default: as stored; a folder of "
                 "mixed sizes is cropped to 224x224)")
  p.add_argument("--model", default="mlp",
                 help="a gaf_optax.models name, e.g. mlp, lenet, resnet8")
  p.add_argument("--epochs", type=int, default=8, help="epochs per run")
  p.add_argument("--batch_size", type=int, default=64, help="global batch")
  p.add_argument("--lr", type=float, default=0.02,
                 help="peak learning rate (Adam arms: 1e-3)")
  p.add_argument("--seeds", type=int, default=3, help="seeds per arm")
  p.add_argument("--num_devices", type=int, default=None,
                 help="devices of the data-parallel mesh (default: all)")
  p.add_argument("--arms", nargs="*", default=None, choices=list(ARMS),
                 help="the arms to run (default: all)")
  p.add_argument("--out", default="quickstart_results",
                 help="where results.json and curves.png go")
  return p.parse_args(argv)


def main(argv=None) -> dict:
  argv = sys.argv[1:] if argv is None else list(argv)
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
  with open(os.path.join(args.out, "results.md"), "w") as f:
    f.write(results_markdown(results, argv))
  plot(results, os.path.join(args.out, "curves.png"))
  print(f"\nwrote {args.out}/results.json, results.md and curves.png")
  return results


if __name__ == "__main__":
  sys.exit(cli.run(main))
