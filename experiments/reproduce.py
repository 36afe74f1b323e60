"""The papers' comparisons on full CIFAR-10 with ResNet-18, in a time budget.

    python -m experiments.reproduce --data DATA [--data_dir DIR]
        [--budget-minutes 10] [--seeds 1] [--arms a,b,...] [--epochs E]
        [--workdir runs/reproduce] [--out experiments/results/reproduce]
        [--smoke]

For a machine you keep (checkpoints per arm, resumed by running the
command again). For a one-shot accelerator machine (a hard time limit,
only a few small files coming back), use ``python -m
experiments.accelerator``: the same arms (:func:`make_arm`), three seeds
vmapped per arm, a deadline that is kept and results after every epoch.

One command for one accelerator. Every arm is a
:class:`gaf_optax.training.Trainer` run (``fit``) of the CIFAR ResNet-18
(``gaf_optax.models.get("resnet18")``, 11.2M parameters) on all 50,000
training images, evaluated on all 10,000 test images after each epoch:

======================  =====================================================
arm                     what (GAF: docs/methods/gaf.md; SGD 0.9, lr 0.1, coupled
                        weight decay 5e-4, cosine decay, batch 256)
======================  =====================================================
``sgd``                 SGD, the papers' baseline
``sgd_matched``         SGD at lr * alpha * beta = 0.2 (GAF's slope at 0),
                        which is also SGD at lr * factor (amplification's
                        control): both are 2 here
``sgd_gaf``             ``sgd_gaf`` alpha 0.1, beta 20, arctan on the
                        momentum (SGD_atanMom)
``sgd_gaf_gradient``    the same on the gradient (SGD_atan)
``amp_random``          amplification points after each BN, factor 2 in
                        epochs [1, E/2), a random quarter (2020)
``amp_cv``              the same, points chosen by gradient fluctuation
                        (2023; the measure is our reconstruction)
``swish``, ``nswish``   the ResNet-18 with Swish / ANAct's NSwish, SGD
======================  =====================================================

Accelerator recipe: bf16 compute with float32 parameters and optimizer state
(``--precision``, default bf16 off the CPU), the uint8 training set held on
the device (``Trainer(device_data=True)``: a step receives only row indices)
and the crop + flip done there, in the step.

The budget sets the epochs. The first arm's step is compiled and 20 steps
are timed (in a run of its own, not kept); then every arm gets the same
number of epochs ``E``, the most for which the arms' compiles and epochs fit
``--budget-minutes`` (at least 1; ``--epochs`` sets it instead). The plan is
written to ``WORKDIR/plan.json`` and reused, each arm checkpoints in
``WORKDIR/ARM_sSEED`` and leaves its summary there when done, so a cut run
resumes where it stopped when the command is run again (finished arms are
not run again). Writes ``results.md`` (with the command, device,
epochs and wall times), ``results.json`` and ``curves.png`` to ``--out``.

``--smoke`` runs the same code on a tiny ResNet-8, 320 training images and
2 epochs (for the test suite, on the CPU).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

import gaf_optax
from experiments import cli
from experiments import common
from gaf_optax import data
from gaf_optax import models
from gaf_optax import nn as gnn
from gaf_optax import training

MODULE = "experiments.reproduce"
DEFAULT_OUT = common.results_dir("reproduce")
LR, MOMENTUM, WD, BATCH = 0.1, 0.9, 5e-4, 256
ALPHA, BETA = 0.1, 20.0
FACTOR, RATIO = 2.0, 0.25
CALIBRATION_STEPS = 20

ARMS = {
    "sgd": "SGD(0.1)",
    "sgd_matched": "SGD(0.2) = lr x alpha x beta = lr x factor",
    "sgd_gaf": "sgd_gaf(0.1), alpha 0.1, beta 20, on the momentum",
    "sgd_gaf_gradient": "sgd_gaf(0.1), alpha 0.1, beta 20, on the gradient",
    "amp_random": "amplification x2, random quarter of the points (2020)",
    "amp_cv": "amplification x2, cv-selected points (2023, our measure)",
    "swish": "Swish activations, SGD(0.1)",
    "nswish": "NSwish (ANAct) activations, SGD(0.1)",
}
PAPERS = {
    "GAF (Liu et al. 2021)": ("sgd", "sgd_matched", "sgd_gaf",
                              "sgd_gaf_gradient"),
    "Gradient amplification (Basodi et al. 2020, 2023)": (
        "sgd", "amp_random", "amp_cv", "sgd_matched"),
    "ANAct (2022)": ("swish", "nswish"),
}


@dataclasses.dataclass(frozen=True)
class Setting:
  model: str = "resnet18"
  model_kwargs: tuple = ()  # (name, value) pairs for models.get
  train_size: int | None = None  # None: all
  test_size: int | None = None
  batch_size: int = BATCH
  smoke: bool = False


SMOKE = Setting(model="resnet8", train_size=320, test_size=100,
                batch_size=64, smoke=True)


def make_arm(setting: Setting, arm: str, ds: data.Dataset, epochs: int,
             seed: int, precision: str) -> training.Trainer:
  """The arm's Trainer (model, optimizer, data on the device)."""
  dtype = jnp.bfloat16 if precision == "bf16" else jnp.float32
  act = {"swish": nn.swish, "nswish": gnn.NSwish}.get(arm, nn.relu)
  model = models.get(setting.model, num_classes=ds.num_classes, act=act,
                     dtype=dtype, **dict(setting.model_kwargs))
  spe = data.steps_per_epoch(ds, setting.batch_size)
  lr = LR * ALPHA * BETA if arm == "sgd_matched" else LR
  schedule = optax.cosine_decay_schedule(lr, epochs * spe)
  if arm.startswith("sgd_gaf"):
    tx = gaf_optax.sgd_gaf(
        schedule, MOMENTUM, weight_decay=WD, alpha=ALPHA, beta=BETA,
        position="gradient" if arm.endswith("gradient") else "momentum")
  else:
    tx = optax.chain(optax.add_decayed_weights(WD),
                     optax.sgd(schedule, MOMENTUM))
  points = arm.startswith("amp_")
  if points:
    tx = optax.chain(gaf_optax.gradient_amplification(
        model.num_amplification_points, spe, factor=FACTOR, start_epoch=1,
        end_epoch=max(2, epochs // 2), selection=arm[len("amp_"):],
        ratio=RATIO, seed=seed), tx)
  return training.Trainer(
      model, tx, ds, batch_size=setting.batch_size, num_epochs=epochs,
      seed=seed, eval_batch_size=1000 if not setting.smoke else 100,
      preprocess=training.Preprocess.for_dataset(ds, augment=True,
                                                 dtype=dtype),
      amplification_points=points, learning_rate=schedule,
      mesh=training.make_mesh(1), device_data=True,
      compiler_options=common.fast_compile_options(setting.smoke))


def calibrate(setting: Setting, arm: str, ds: data.Dataset, precision: str,
              epochs: int = 1) -> dict[str, float]:
  """Compile time and step time of ``arm`` (seconds).

  With the run's ``epochs`` (when known before the plan) the timed step is
  the arm's own program, which a persistent compilation cache then serves.
  """
  trainer = make_arm(setting, arm, ds, epochs, 0, precision)
  rows = trainer.train_batches(0)
  t0 = time.perf_counter()
  metrics = jax.block_until_ready(trainer.train_step(next(rows)))
  compile_s = time.perf_counter() - t0
  steps = min(CALIBRATION_STEPS, trainer.steps_per_epoch - 1)
  t0 = time.perf_counter()
  for _ in range(steps):
    metrics = trainer.train_step(next(rows))
  jax.block_until_ready(metrics)
  # With one step per epoch there is nothing left to time: the first
  # (compiling) step is the estimate, an upper bound.
  step_s = ((time.perf_counter() - t0) / steps if steps else compile_s)
  t0 = time.perf_counter()
  trainer.evaluate()  # compiles the eval step too
  return {"compile_s": compile_s, "step_s": step_s,
          "eval_s": time.perf_counter() - t0,
          "steps_per_epoch": trainer.steps_per_epoch}


def plan_epochs(cal: dict, runs: int, budget_s: float) -> int:
  """The most epochs for which ``runs`` runs fit ``budget_s`` (>= 1).

  Each run pays its compile (the first arm's, timed) and an evaluation per
  epoch (the first one's time, which includes compiling it, as an upper
  bound); an epoch is ``steps_per_epoch`` timed steps.
  """
  fixed = runs * cal["compile_s"]
  per_epoch = runs * (cal["steps_per_epoch"] * cal["step_s"] + cal["eval_s"])
  return max(1, int((budget_s - fixed) // per_epoch))


def _load_or_write_plan(workdir: str, plan: dict) -> dict:
  path = os.path.join(workdir, "plan.json")
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  os.makedirs(workdir, exist_ok=True)
  with open(path, "w") as f:
    json.dump(plan, f, indent=1)
  return plan


def _train_seconds(summary) -> float:
  """The run's epochs' wall time (also right for a run resumed when done)."""
  return float(sum(r["epoch_seconds"] for r in summary["records"]))


def report(plan, results, seeds, command, seconds, device) -> str:
  lines = ["# The papers' comparisons on CIFAR-10 in one budget", "",
           f"Command: `{command}`  ",
           f"Device: {device}  ",
           f"Setting: {plan['model']}, {plan['num_train']} train / "
           f"{plan['num_test']} test images, batch {plan['batch_size']}, "
           f"{plan['epochs']} epochs per arm (budget "
           f"{plan['budget_minutes']:g} min; calibration: compile "
           f"{plan['calibration']['compile_s']:.1f} s, step "
           f"{1000 * plan['calibration']['step_s']:.1f} ms), "
           f"{plan['precision']} compute, cosine decay, crop + flip on the "
           "device, SGD momentum 0.9, weight decay 5e-4.  ",
           f"Seeds: {list(seeds)}. Total wall time: {seconds:.0f} s.", "",
           "Mean +- std over seeds (population std); accuracies in %.", ""]
  for paper, arms in PAPERS.items():
    rows = []
    for arm in arms:
      if arm not in results:
        continue
      runs = results[arm]
      test = common.test_accuracies(runs)
      rows.append([f"`{arm}`: {ARMS[arm]}",
                   common.mean_std(100 * test[:, -1], 2),
                   common.mean_std(100 * test.max(1), 2),
                   common.mean_std([r["final_train_loss"] for r in runs], 3),
                   f"{np.mean([_train_seconds(r) for r in runs]):.0f}"])
    if rows:
      lines += [f"## {paper}", ""]
      lines += common.table(["arm", "final test acc", "best test acc",
                             "final train loss", "train s per run"], rows)
      lines += [""]
  lines += ["![curves](curves.png)", ""]
  return "\n".join(lines)


def main(argv=None) -> dict:
  p = common.parser(__doc__, DEFAULT_OUT, seeds=1, data_arg=True)
  p.add_argument("--budget-minutes", type=float, default=10.0)
  p.add_argument("--epochs", type=int, default=None,
                 help="epochs per arm (default: from the budget)")
  p.add_argument("--arms", default=",".join(ARMS))
  p.add_argument("--precision", choices=("bf16", "f32"), default=None,
                 help="compute dtype (default: bf16, f32 on the CPU)")
  p.add_argument("--workdir", default=os.path.join("runs", "reproduce"))
  args = p.parse_args(argv)
  common.require_data(p, args)
  arms = args.arms.split(",")
  unknown = sorted(set(arms) - set(ARMS))
  if unknown:
    p.error(f"--arms: unknown {unknown}; known: {', '.join(ARMS)}")
  for name, value in (("--budget-minutes", args.budget_minutes),
                      ("--seeds", args.seeds)):
    if value <= 0:
      p.error(f"{name} must be positive; got {value}")
  if args.epochs is not None and args.epochs < 1:
    p.error(f"--epochs must be >= 1; got {args.epochs}")
  setting = SMOKE if args.smoke else Setting()
  precision = args.precision or (
      "f32" if jax.default_backend() == "cpu" else "bf16")
  ds = data.in_memory(data.get(  # resident on the device: read it whole
      args.data, data_dir=args.data_dir, train_size=setting.train_size,
      test_size=setting.test_size))
  seeds = tuple(range(args.seeds))
  start = time.perf_counter()
  plan_path = os.path.join(args.workdir, "plan.json")
  if os.path.exists(plan_path):
    plan = _load_or_write_plan(args.workdir, {})
    if args.epochs is not None and args.epochs != plan["epochs"]:
      p.error(f"--epochs {args.epochs}: {plan_path} holds the plan of an "
              f"earlier run ({plan['epochs']} epochs) whose checkpoints "
              "are resumed; use another --workdir for a new plan")
    print(f"resuming the plan in {plan_path}: {plan['epochs']} epochs")
  else:
    fixed = args.epochs or (2 if args.smoke else None)
    cal = calibrate(setting, arms[0], ds, precision, epochs=fixed or 1)
    budget_s = 60 * args.budget_minutes - (time.perf_counter() - start)
    epochs = fixed or plan_epochs(cal, len(arms) * len(seeds), budget_s)
    plan = _load_or_write_plan(args.workdir, {
        "model": setting.model, "num_train": ds.num_train,
        "num_test": ds.num_test, "batch_size": setting.batch_size,
        "epochs": epochs, "budget_minutes": args.budget_minutes,
        "precision": precision, "calibration": cal})
    print(f"calibration: compile {cal['compile_s']:.1f} s, step "
          f"{1000 * cal['step_s']:.1f} ms, {cal['steps_per_epoch']} steps "
          f"per epoch; {epochs} epochs per arm", flush=True)
  results = {}
  for arm in arms:
    results[arm] = []
    for seed in seeds:
      run_dir = os.path.join(args.workdir, f"{arm}_s{seed}")
      done = os.path.join(run_dir, "summary.json")
      if os.path.exists(done):  # finished by an earlier call
        with open(done) as f:
          results[arm].append(json.load(f))
        continue
      trainer = make_arm(setting, arm, ds, plan["epochs"], seed,
                         plan["precision"])
      summary = trainer.fit(run_dir, progress=False, log_to_stdout=False)
      summary = {k: summary[k] for k in (
          "records", "last_test_accuracy", "best_test_accuracy",
          "final_train_loss", "step_loss")}
      common.write_json(done, summary)
      results[arm].append(summary)
      print(f"{arm} seed {seed}: test acc "
            f"{summary['last_test_accuracy']:.4f} "
            f"({time.perf_counter() - start:.0f} s)", flush=True)
  seconds = time.perf_counter() - start
  device = f"{jax.devices()[0].device_kind} ({jax.default_backend()})"
  os.makedirs(args.out, exist_ok=True)
  common.plot_curves(results, f"{setting.model}, CIFAR-10, "
                     f"{plan['epochs']} epochs",
                     os.path.join(args.out, "curves.png"))
  text = report(plan, results, seeds, common.command(MODULE, argv), seconds,
                device)
  common.write(args.out, text, {"plan": plan, "device": device,
                                "seeds": list(seeds), "runs": results,
                                "data": args.data})
  print(text)
  return {"plan": plan, "results": results}


if __name__ == "__main__":
  sys.exit(cli.run(main))
