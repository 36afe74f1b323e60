"""Study 7: why ANAct's batch rule killed networks, and its later rules.

    python -m experiments.studies.anact_robustness --data DATASET [--smoke]
        [--seeds N] [--out DIR] [--skip-grid] [--skip-mechanism]
        [--datasets digits,cifar] [--arms half_backward] [--reuse DIR1,DIR2]

``--datasets`` runs part B on some of its datasets and ``--arms`` with some
of its arms; ``--reuse`` takes the part-B results other runs wrote
(``DIR/grid_partial.json``, else ``DIR/results.json``) for what this run
does not compute, so part B can be split over processes, or a new arm added
to earlier results.

Part A, the mechanism: the quickstart's ANAct model and optimizer (a
4 x 64 NReLU MLP, SGD momentum 0.9, lr 0.02, weight decay 1e-4, batch 64;
no augmentation) on ``digits28``
(:func:`gaf_optax.data.digits28`, 28x28 grey), once with the earlier rule
(``NReLU(rule="batch")``) and once with the running rule (lambda within
a factor 1.5 of lambda_0, the bound of its first version), both with the
whole gain in the backward pass (``backward_exponent=1``), same seed and
batches, through :class:`gaf_optax.training.Trainer`.
Recorded at every one of the first steps and per hidden layer: the lambda
the forward pass used, the batch's ``rho`` and ``rho'``, the pre-activations'
standard deviation and mean, the share of dead units (no positive
pre-activation in the batch) and the kernel gradient's norm (the trainer's
telemetry). Plot ``mechanism.png``.

Part B, robustness (:meth:`Trainer.fit_seeds`, every seed in one program):
MLPs of width 64 and depth {4, 10, 20} with ReLU, the batch rule and the
running rule (both ``backward_exponent=1``, lambda within a factor
1.5 of lambda_0), the running rule with half the gain in the backward pass
(``half_backward``, ``backward_exponent=0.5``, same bound), and the
default since, the same with lambda within a factor 1.05 of lambda_0
(``narrow_bound``, ``NReLU()``), on {digits, digits28, shapes28, a CIFAR-10
subset (``--data``, 4,000 train / 2,000 test images, flattened)}, under
SGD (momentum 0.9) at learning rates {0.003, 0.01, 0.03} and Adam at
{3e-4, 1e-3, 3e-3}; batch 64, no weight decay, no augmentation.
``shapes28`` was not looked at while the running rule was designed
(digits28 and study 4's digits were; the CIFAR subset was, for the
bound of 1.05). A run has collapsed when its final test accuracy is
below 20% (chance is 10%) or its last epoch had no finite step.
Reported: the share of collapsed runs per arm, the collapsed runs of
each ANAct rule in settings where ReLU trains (at least 2 of its seeds
not collapsed), every setting's mean final test accuracy, and each seed
of the default's collapsed runs where ReLU trains, beside ReLU's.

Part C, a control: ReLU MLPs with He init (the running rule's function at
initialization, with the gain in the weights instead of the activation) in
the deep, large-learning-rate SGD settings where the running rule
collapsed (digits and digits28, depth 10 and 20, lr 0.01 and 0.03); runs
with part B.

Writes ``results.md``, ``results.json`` and ``mechanism.png`` to ``--out``.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
import re
import sys
import time

import flax.linen as nn
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
from gaf_optax import training

MODULE = "experiments.studies.anact_robustness"
DEFAULT_OUT = common.results_dir("anact_robustness")
# The rules as they were (the gain fully in the backward pass,
# backward_exponent=1; then half of it in log terms, with lambda within a
# factor 1.5 of lambda_0) and the default since (within a factor 1.05).
WIDE = 1.5  # the running rule's max_ratio before the default became 1.05
ARMS = {"relu": nn.relu,
        "batch_rule": functools.partial(gnn.NReLU, rule="batch",
                                        backward_exponent=1.0),
        "running_rule": functools.partial(gnn.NReLU, backward_exponent=1.0,
                                          max_ratio=WIDE),
        "half_backward": functools.partial(gnn.NReLU, max_ratio=WIDE),
        "narrow_bound": gnn.NReLU}
DEFAULT_ARM = "narrow_bound"  # NReLU() as the library defines it now
CHANCE_LIMIT = 0.2  # final test accuracy below this: collapsed (10 classes)


@dataclasses.dataclass(frozen=True)
class Mechanism:
  """Part A's run: the quickstart's ANAct model and optimizer, first
  ``steps`` steps."""
  dataset: str = "digits28"
  depth: int = 4
  width: int = 64
  lr: float = 0.02
  weight_decay: float = 1e-4
  batch_size: int = 64
  steps: int = 150
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class Grid:
  """Part B's settings."""
  datasets: tuple[str, ...] = ("digits28", "shapes28", "cifar", "digits")
  depths: tuple[int, ...] = (4, 10, 20)
  sgd_lrs: tuple[float, ...] = (0.003, 0.01, 0.03)
  adam_lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
  width: int = 64
  batch_size: int = 64
  steps: int = 400  # per run; epochs = ceil(steps / steps per epoch)
  cifar_train: int = 4000
  cifar_test: int = 2000

  def optimizers(self):
    return ([("sgd", lr) for lr in self.sgd_lrs]
            + [("adam", lr) for lr in self.adam_lrs])


@dataclasses.dataclass(frozen=True)
class Control:
  """Part C: ReLU with He init where the running rule collapsed."""
  datasets: tuple[str, ...] = ("digits", "digits28")
  depths: tuple[int, ...] = (10, 20)
  sgd_lrs: tuple[float, ...] = (0.01, 0.03)


MECHANISM, SMOKE_MECHANISM = Mechanism(), Mechanism(steps=12)
CONTROL, SMOKE_CONTROL = Control(), Control(datasets=("digits",),
                                            depths=(4,), sgd_lrs=(0.01,))
GRID = Grid()
SMOKE_GRID = Grid(datasets=("cifar",), depths=(4,),
                  sgd_lrs=(0.01,), adam_lrs=(1e-3,), width=16, steps=40,
                  cifar_train=400, cifar_test=200)


def _tx(name: str, lr: float) -> optax.GradientTransformation:
  return optax.sgd(lr, momentum=0.9) if name == "sgd" else optax.adam(lr)


# --------------------------------------------------------------------------
# Part A


def run_mechanism(setting: Mechanism, rule: str,
                  fast_compile: bool = False) -> dict:
  """Per-step, per-hidden-layer diagnostics of one ANAct run.

  Returns:
    ``{key: float array [steps, layers]}`` for ``lambda`` (the value the
    forward pass used), ``rho``, ``rho_prime``, ``pre_std``, ``pre_mean``,
    ``dead`` and ``grad_norm``; ``loss`` ``[steps]``.
  """
  ds = data.get(setting.dataset)
  model = models.MLP(features=(setting.width,) * setting.depth,
                     act=functools.partial(gnn.NReLU, rule=rule,
                                           backward_exponent=1.0,
                                           max_ratio=WIDE))
  tx = optax.chain(optax.add_decayed_weights(setting.weight_decay),
                   optax.sgd(setting.lr, momentum=0.9))
  epochs = -(-setting.steps // data.steps_per_epoch(ds, setting.batch_size))
  trainer = training.Trainer(
      model, tx, ds, batch_size=setting.batch_size, num_epochs=epochs,
      seed=setting.seed, mesh=training.make_mesh(1),
      telemetry=training.Telemetry(), skip_nonfinite_steps=10**9,
      compiler_options=common.fast_compile_options(fast_compile))

  @jax.jit
  def diagnose(state, images):
    # The step's own forward pass, repeated to read what it used.
    x = trainer.preprocess(images, jax.random.key(0), train=True)
    _, out = model.apply(
        {"params": state.params, **state.model_state}, x, train=True,
        mutable=["intermediates", *state.model_state],
        capture_intermediates=lambda m, _: isinstance(m, nn.Dense))
    inter = out["intermediates"]
    fcs = sorted((n for n in inter if re.fullmatch(r"fc\d+", n)),
                 key=lambda n: int(n[2:]))
    acts = sorted((n for n in inter if "rho" in inter[n]),
                  key=lambda n: [int(t) for t in re.findall(r"\d+", n)])
    ys = [inter[n]["__call__"][0] for n in fcs]
    batch_lam = jnp.stack([inter[n]["lambda"][0] for n in acts])
    running = jnp.stack([out["batch_stats"][n]["lambda"] for n in acts])
    return {
        "lambda": batch_lam if rule == "batch" else running,
        "rho": jnp.stack([inter[n]["rho"][0] for n in acts]),
        "rho_prime": jnp.stack([inter[n]["rho_prime"][0] for n in acts]),
        "pre_std": jnp.stack([jnp.std(y) for y in ys]),
        "pre_mean": jnp.stack([jnp.mean(y) for y in ys]),
        "dead": jnp.stack([jnp.mean(jnp.max(y, 0) <= 0) for y in ys])}

  records = []
  for batch in itertools.islice(
      (b for e in range(epochs) for b in trainer.train_batches(e)),
      setting.steps):
    record = diagnose(trainer.state, batch["image"])
    metrics = trainer.train_step(batch)
    record["grad_norm"] = metrics["layer_grad_norm"][:-1]  # hidden layers
    record["loss"] = metrics["loss"]
    records.append(jax.device_get(record))
  return {k: np.stack([r[k] for r in records]).astype(np.float64)
          for k in records[0]}


def plot_mechanism(results: dict, setting: Mechanism, path: str) -> None:
  plt = common.pyplot()
  keys = (("loss", "train loss", "log"),
          ("lambda", "lambda used by the forward pass", "log"),
          ("rho", "rho (batch)", "log"),
          ("rho_prime", "rho' (batch)", "log"),
          ("pre_std", "pre-activation std", "log"),
          ("pre_mean", "pre-activation mean", "linear"),
          ("dead", "share of dead units", "linear"),
          ("grad_norm", "kernel gradient norm", "log"))
  fig, axes = plt.subplots(len(results), len(keys),
                           figsize=(3.1 * len(keys), 3.0 * len(results)),
                           squeeze=False)
  for row, (rule, res) in enumerate(results.items()):
    steps = np.arange(1, len(res["loss"]) + 1)
    for col, (key, title, scale) in enumerate(keys):
      ax = axes[row, col]
      values = res[key]
      if values.ndim == 1:
        ax.plot(steps, values, color="k", lw=1)
      else:
        for layer in range(values.shape[1]):
          ax.plot(steps, values[:, layer], lw=1, label=f"layer {layer + 1}")
      ax.set_yscale(scale)
      ax.set_title(f"{rule} rule: {title}", fontsize=8)
      ax.set_xlabel("step", fontsize=8)
      ax.tick_params(labelsize=7)
    axes[row, 1].legend(fontsize=6)
  fig.suptitle(
      f"ANAct (NReLU) MLP {setting.depth} x {setting.width} on "
      f"{setting.dataset}, SGD momentum 0.9 lr {setting.lr:g}, weight decay "
      f"{setting.weight_decay:g}, batch {setting.batch_size}, seed "
      f"{setting.seed}", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def report_mechanism(results: dict, setting: Mechanism) -> list[str]:
  rows = []
  for rule, res in results.items():
    finite = np.isfinite(res["loss"])
    first_bad = (int(np.argmin(finite)) + 1) if not finite.all() else None
    dead = np.nan_to_num(res["dead"], nan=1.0)
    all_dead = np.flatnonzero((dead >= 1.0).any(1))
    rows.append([
        rule, f"{np.nanmax(res['lambda']):.3g}",
        f"{np.nanmax(res['pre_std']):.3g}",
        str(int(all_dead[0]) + 1) if all_dead.size else "never",
        str(first_bad) if first_bad else "never",
        f"{res['loss'][-1]:.4f}"])
  return ([f"## A. Mechanism: the first {setting.steps} steps", "",
           f"NReLU MLP {setting.depth} x {setting.width} on "
           f"`{setting.dataset}`, SGD momentum 0.9 lr {setting.lr:g}, weight "
           f"decay {setting.weight_decay:g}, batch {setting.batch_size}, "
           f"seed {setting.seed}, no augmentation (the quickstart's ANAct "
           "model and optimizer).", ""]
          + common.table(
              ["rule", "largest lambda used", "largest pre-activation std",
               "first step with a layer all dead", "first non-finite step",
               "last loss"], rows)
          + ["", "![mechanism](mechanism.png)", ""])


# --------------------------------------------------------------------------
# Part B


def load(name: str, setting: Grid, cifar: str | None,
         data_dir: str | None) -> data.Dataset:
  if name == "cifar":
    return data.get(cifar, data_dir=data_dir, train_size=setting.cifar_train,
                    test_size=setting.cifar_test)
  return data.get(name)


def run_grid(setting: Grid, seeds, cifar: str | None, data_dir=None,
             fast_compile=False, log=print, save=None,
             arms: tuple[str, ...] = tuple(ARMS)) -> dict:
  """``{dataset: {depth: {"sgd@0.01": {arm: {...}}}}}``: per seed, final
  test accuracy and whether the last epoch's train loss is finite.

  ``save(results)`` is called after every dataset (partial results)."""
  results = {}
  for name in setting.datasets:
    if name == "cifar" and cifar is None:
      continue
    ds = load(name, setting, cifar, data_dir)
    epochs = -(-setting.steps // data.steps_per_epoch(ds, setting.batch_size))
    results[name] = {}
    for depth in setting.depths:
      results[name][depth] = {}
      for opt, lr in setting.optimizers():
        cell = {}
        for arm in arms:
          act = ARMS[arm]
          model = models.MLP(features=(setting.width,) * depth, act=act)
          h = common.fit_mlp_seeds(model, _tx(opt, lr), seeds, ds=ds,
                                   epochs=epochs,
                                   batch_size=setting.batch_size,
                                   fast_compile=fast_compile)
          acc = np.asarray(h["test_accuracy"][:, -1], np.float64)
          finite = np.isfinite(np.asarray(h["train_loss"][:, -1]))
          cell[arm] = {"test_accuracy": acc, "finite": finite,
                       "collapsed": (acc < CHANCE_LIMIT) | ~finite}
        results[name][depth][f"{opt}@{lr:g}"] = cell
        log(f"  {name} depth {depth} {opt} lr {lr:g}: " + ", ".join(
            f"{arm} {100 * c['test_accuracy'].mean():.1f}%"
            f" ({int(c['collapsed'].sum())} collapsed)"
            for arm, c in cell.items()), flush=True)
    if save is not None:
      save(results)
  return results


def cells(results: dict):
  for name, by_depth in results.items():
    for depth, by_opt in by_depth.items():
      for opt, cell in by_opt.items():
        yield name, depth, opt, cell


def plain_trains(cell: dict) -> bool:
  return int(np.sum(~cell["relu"]["collapsed"])) >= 2


def summary(results: dict) -> dict:
  """Per arm: runs, collapsed runs, and those where ReLU trains."""
  out = {arm: {"runs": 0, "collapsed": 0, "runs_where_relu_trains": 0,
               "collapsed_where_relu_trains": 0} for arm in ARMS}
  for *_, cell in cells(results):
    trains = plain_trains(cell)
    for arm, res in cell.items():
      n, c = res["collapsed"].size, int(res["collapsed"].sum())
      out[arm]["runs"] += n
      out[arm]["collapsed"] += c
      if trains:
        out[arm]["runs_where_relu_trains"] += n
        out[arm]["collapsed_where_relu_trains"] += c
  return out


def _acc(res: dict) -> str:
  ok = ~res["collapsed"]
  text = (f"{100 * res['test_accuracy'][ok].mean():.1f}" if ok.any()
          else "-")
  bad = int(res["collapsed"].sum())
  return text + (f" ({bad}c)" if bad else "")


def report_grid(setting: Grid, results: dict, seconds: float,
                seeds) -> list[str]:
  s = summary(results)
  rows = [[arm, f"{v['collapsed']} / {v['runs']}",
           f"{v['collapsed_where_relu_trains']} / "
           f"{v['runs_where_relu_trains']}"] for arm, v in s.items()]
  lines = ["## B. Robustness", "",
           f"MLPs of width {setting.width}, depths {list(setting.depths)}; "
           f"SGD momentum 0.9 at {list(setting.sgd_lrs)}, Adam at "
           f"{list(setting.adam_lrs)}; batch {setting.batch_size}, about "
           f"{setting.steps} steps per run (whole epochs), {len(seeds)} "
           f"seeds; cifar: {setting.cifar_train} train / {setting.cifar_test}"
           " test images. Collapsed: final test accuracy below "
           f"{100 * CHANCE_LIMIT:.0f}% or a last epoch without a finite "
           f"step. Compiled with XLA's fast-compile options. Wall time "
           f"{seconds:.0f} s.", ""]
  lines += common.table(
      ["arm", "collapsed runs", "collapsed where ReLU trains"], rows)
  lines += ["", "Mean final test accuracy % of the runs that did not "
            "collapse, and how many collapsed (`c`):", ""]
  header = ["dataset", "depth", "optimizer"] + list(ARMS)
  rows = [[name, str(depth), opt] + [_acc(cell[a]) if a in cell else "-"
                                     for a in ARMS]
          for name, depth, opt, cell in cells(results)]
  lines += common.table(header, rows) + [""]
  bad = [[name, str(depth), opt, _per_seed(cell[DEFAULT_ARM]),
          _per_seed(cell["relu"])]
         for name, depth, opt, cell in cells(results)
         if DEFAULT_ARM in cell and plain_trains(cell)
         and cell[DEFAULT_ARM]["collapsed"].any()]
  lines += [f"Collapsed runs of `{DEFAULT_ARM}` (the default) where ReLU "
            "trains, final test accuracy % per seed:"
            + (" none." if not bad else ""), ""]
  if bad:
    lines += common.table(["dataset", "depth", "optimizer", DEFAULT_ARM,
                           "relu"], bad) + [""]
  return lines


def _per_seed(res: dict) -> str:
  return ", ".join(f"{100 * a:.1f}" + ("" if f else " (NaN)") for a, f in
                   zip(res["test_accuracy"], res["finite"]))


def reused_run(directory: str) -> str:
  """The command and wall time another run wrote into its results.md."""
  try:
    with open(os.path.join(directory, "results.md")) as f:
      text = f.read()
  except FileNotFoundError:
    return f"`{directory}` (no results.md)"
  command = re.search(r"Command: `([^`]*)`", text)
  wall = re.search(r"Total wall time: (\d+) s", text)
  return (f"`{command.group(1) if command else '?'}` "
          f"({wall.group(1) if wall else '?'} s)")


def load_partial(directory: str) -> dict:
  """Part-B results written by another run: its ``grid_partial.json`` or,
  when that is absent, the ``grid`` of its ``results.json``."""
  partial = os.path.join(directory, "grid_partial.json")
  if os.path.exists(partial):
    with open(partial) as f:
      raw = json.load(f)
  else:
    with open(os.path.join(directory, "results.json")) as f:
      raw = json.load(f)["grid"]
  return {name: {int(depth): {opt: {arm: {k: np.asarray(v) for k, v in
                                          res.items()}
                                    for arm, res in cell.items()}
                              for opt, cell in by_opt.items()}
                 for depth, by_opt in by_depth.items()}
          for name, by_depth in raw.items()}


def _has_arms(by_depth: dict | None, arms: set[str]) -> bool:
  """Whether every cell of one dataset's results has these arms."""
  if by_depth is None:
    return not arms
  return all(arms <= set(cell) for by_opt in by_depth.values()
             for cell in by_opt.values())


def _merge(old: dict | None, new: dict | None) -> dict:
  """One dataset's cells: ``new``'s arms over ``old``'s."""
  if old is None or new is None:
    return new if old is None else old
  return {depth: {opt: {**old[depth][opt], **cell}
                  for opt, cell in by_opt.items()}
          for depth, by_opt in new.items()}


# --------------------------------------------------------------------------
# Part C


def run_control(setting: Control, grid_setting: Grid, seeds,
                fast_compile=True) -> dict:
  """``{dataset: {depth: {lr: final test accuracies}}}`` of ReLU MLPs with
  He init (twice LeCun's variance, ``init_scale=2``): the ANAct net's
  function at initialization, with the gain in the weights."""
  results = {}
  for name in setting.datasets:
    ds = data.get(name)
    epochs = -(-grid_setting.steps
               // data.steps_per_epoch(ds, grid_setting.batch_size))
    results[name] = {}
    for depth in setting.depths:
      results[name][depth] = {}
      for lr in setting.sgd_lrs:
        model = models.MLP(features=(grid_setting.width,) * depth,
                           act=nn.relu, init_scale=2.0)
        h = common.fit_mlp_seeds(model, _tx("sgd", lr), seeds, ds=ds,
                                 epochs=epochs,
                                 batch_size=grid_setting.batch_size,
                                 fast_compile=fast_compile)
        results[name][depth][lr] = np.asarray(h["test_accuracy"][:, -1],
                                              np.float64)
  return results


CONTROL_ARMS = ("running_rule", "half_backward", "narrow_bound")


def report_control(setting: Control, control: dict, grid: dict
                   ) -> list[str]:
  rows = []
  for name, by_depth in control.items():
    for depth, by_lr in by_depth.items():
      for lr, acc in by_lr.items():
        cell = grid.get(name, {}).get(depth, {}).get(f"sgd@{lr:g}")
        rows.append([name, str(depth), f"{lr:g}"] + (
            [common.mean_std(100 * cell[a]["test_accuracy"], 1)
             if a in cell else "-"
             for a in ("relu",) + CONTROL_ARMS]
            if cell else ["-"] * (1 + len(CONTROL_ARMS)))
                    + [common.mean_std(100 * acc, 1)])
  return ["## C. Control: the gain in the weights", "",
          "ReLU MLPs with He init (twice LeCun's variance): at "
          "initialization the same function as the running rule's NReLU "
          "net (lambda_0 = sqrt 2), with the gain in the weights instead of "
          "the activation. Same settings as part B, SGD momentum 0.9; final "
          "test accuracy % (mean +- std over seeds, collapsed runs "
          "included).", ""] + common.table(
              ["dataset", "depth", "lr", "ReLU (LeCun)"]
              + [f"NReLU {a.replace('_', ' ')}" for a in CONTROL_ARMS]
              + ["ReLU (He init)"], rows) + [""]


def main(argv=None) -> dict:
  parser = common.parser(__doc__, DEFAULT_OUT, data_arg=True)
  parser.add_argument("--skip-grid", action="store_true",
                      help="run part A only")
  parser.add_argument("--skip-mechanism", action="store_true",
                      help="run part B only")
  parser.add_argument("--datasets", default=None,
                      help="comma-separated part-B datasets (default: all)")
  parser.add_argument("--reuse", default=None,
                      help="comma-separated output directories whose part-B "
                      "results to reuse (per arm: arms --arms computes are "
                      "taken from this run)")
  parser.add_argument("--arms", default=",".join(ARMS),
                      help="comma-separated part-B arms to compute "
                      f"(default: all of {list(ARMS)})")
  args = parser.parse_args(argv)
  mech_setting = SMOKE_MECHANISM if args.smoke else MECHANISM
  grid_setting = SMOKE_GRID if args.smoke else GRID
  reused = {}
  for directory in (args.reuse.split(",") if args.reuse else []):
    reused.update(load_partial(directory))
  if args.datasets is not None:
    names = tuple(n for n in args.datasets.split(",") if n)
    unknown = sorted(set(names) - set(GRID.datasets))
    if unknown:
      parser.error(f"--datasets: unknown {unknown}; known: {GRID.datasets}")
    grid_setting = dataclasses.replace(grid_setting, datasets=names)
  arms = tuple(a for a in args.arms.split(",") if a)
  unknown_arms = sorted(set(arms) - set(ARMS))
  if unknown_arms:
    parser.error(f"--arms: unknown {unknown_arms}; known: {list(ARMS)}")
  # A dataset is computed (the arms in --arms) unless a reused run has all
  # of its arms; the arms not computed come from the reused runs.
  todo = tuple(n for n in grid_setting.datasets
               if not _has_arms(reused.get(n), set(ARMS)))
  for name in todo:
    if not _has_arms(reused.get(name), set(ARMS) - set(arms)):
      parser.error(f"--arms {','.join(arms)} leaves out arms that no --reuse "
                   f"run has for dataset {name!r}; arms: {list(ARMS)}")
  if not args.skip_grid and "cifar" in todo:
    common.require_data(parser, args)
  seeds = tuple(range(args.seeds))
  os.makedirs(args.out, exist_ok=True)
  t0 = time.time()
  mech = {}
  if not args.skip_mechanism:
    mech = {rule: run_mechanism(mech_setting, rule, fast_compile=args.smoke)
            for rule in ("batch", "running")}
    plot_mechanism(mech, mech_setting,
                   os.path.join(args.out, "mechanism.png"))
  lines = ["# " + studies.title("anact_robustness"), "",
           f"Command: `{common.command(MODULE, argv)}`  ",
           f"Seeds: {list(seeds)} (part B; seed s keys initialization and "
           "batch order, the same for every arm)  ",
           f"Data: digits, digits28, shapes28 (gaf_optax.data, generated), "
           f"cifar = `{args.data}`. ANAct's rules are our design (see "
           "`gaf_optax/nn/_anact.py`).", ""]
  if mech:
    lines += report_mechanism(mech, mech_setting)
  grid, control = {}, {}
  if not args.skip_grid:
    t1 = time.time()
    # XLA's fast-compile options: compiling dominates these small runs.
    computed = run_grid(
        dataclasses.replace(grid_setting, datasets=todo), seeds, args.data,
        args.data_dir, fast_compile=True, arms=arms,
        save=lambda g: common.write_json(
            os.path.join(args.out, "grid_partial.json"), g))
    grid = {n: _merge(reused.get(n), computed.get(n))
            for n in grid_setting.datasets if n in reused or n in computed}
    lines += report_grid(grid_setting, grid, time.time() - t1, seeds)
    control = run_control(SMOKE_CONTROL if args.smoke else CONTROL,
                          grid_setting, seeds)
    lines += report_control(SMOKE_CONTROL if args.smoke else CONTROL,
                            control, grid)
    if reused:
      kept = [a for a in ARMS if a not in arms]
      lines += [f"Part B: this run computed the arms {list(arms)} of "
                f"{sorted(todo)}; the other results ({kept} there, every "
                f"arm of {sorted(set(grid) - set(todo))}) come from other "
                f"runs of this module (`--reuse {args.reuse}`); the wall "
                "time above is this run's. Those runs:", ""]
      lines += [f"- {reused_run(d)}" for d in args.reuse.split(",")] + [""]
  lines.insert(4, f"Total wall time: {time.time() - t0:.0f} s (CPU)  ")
  text = "\n".join(lines)
  common.write(args.out, text, {
      "mechanism": mech,
      "grid": {n: {str(d): o for d, o in by.items()} for n, by in grid.items()},
      "summary": summary(grid) if grid else {},
      "control": {n: {str(d): {str(lr): a for lr, a in by_lr.items()}
                      for d, by_lr in by.items()}
                  for n, by in control.items()}})
  print(text)
  return {"mechanism": mech, "grid": grid, "control": control}


if __name__ == "__main__":
  sys.exit(cli.run(main))
