"""What the studies and benchmarks share: arguments, data, reporting, plots.

Nothing here trains: every run goes through :class:`gaf_optax.training.
Trainer`. The metric vocabulary is the trainer's (``train_loss``,
``train_accuracy``, ``test_loss``, ``test_accuracy``, per-step ``loss`` and
the :class:`~gaf_optax.training.Telemetry` keys); tables show accuracies in
percent and every spread as ``mean +- std`` over seeds (population std,
``ddof=0``), see :func:`mean_std`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np
import optax

from experiments import cli
from gaf_optax import data
from gaf_optax import models
from gaf_optax import training

RESULTS = os.path.join(os.path.dirname(__file__), "results")

DATA_HELP = (
    "the dataset, a gaf_optax.data name: 'cifar10' (a TFDS copy prepared "
    "with `tfds build cifar10 --file_format=array_record "
    "--data_dir=DIR`, then --data_dir DIR) or 'folder:PATH' (PATH/train/"
    "<class>/*, PATH/test/<class>/*, or a .tar.gz of that layout)")


def results_dir(name: str) -> str:
  """The default output folder of a study: ``experiments/results/NAME``."""
  return os.path.join(RESULTS, name)


def command(module: str, argv) -> str:
  """The command line that ran ``module`` (``argv`` None: ``sys.argv``)."""
  args = sys.argv[1:] if argv is None else argv
  return " ".join(["python -m", module, *map(shlex.quote, args)])


def mean_std(values, decimals: int) -> str:
  """``mean +- std`` over seeds, or how many runs were not finite."""
  values = np.asarray(values, np.float64)
  if not np.all(np.isfinite(values)):
    return f"diverged ({int(np.sum(~np.isfinite(values)))}/{values.size})"
  return f"{values.mean():.{decimals}f} +- {values.std():.{decimals}f}"


def table(header, rows) -> list[str]:
  """A markdown table's lines."""
  lines = ["| " + " | ".join(header) + " |",
           "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return lines


def _jsonable(x):
  if isinstance(x, (np.ndarray, np.generic)):
    return x.tolist()
  if hasattr(x, "__array__"):
    return np.asarray(x).tolist()
  raise TypeError(f"not JSON serializable: {type(x).__name__}")


def write_json(path: str, obj) -> None:
  """``obj`` as JSON (arrays as lists), written whole or not at all."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, default=_jsonable)
  os.replace(tmp, path)


def write(out: str, markdown: str, results: dict) -> None:
  """Writes ``results.md`` and ``results.json`` to ``out``."""
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write(markdown.rstrip() + "\n")
  write_json(os.path.join(out, "results.json"), results)


def pyplot():
  """matplotlib.pyplot on the non-interactive Agg backend."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def parser(doc: str, default_out: str, *, seeds: int = 3,
           data_arg: bool = False) -> argparse.ArgumentParser:
  """The arguments every study takes: ``--smoke``, ``--seeds``, ``--out``
  (and ``--data``/``--data_dir`` for the CIFAR studies, which have no
  default: the data are an argument)."""
  p = cli.parser(doc)
  p.add_argument("--smoke", action="store_true",
                 help="a tiny version in seconds (for tests)")
  p.add_argument("--seeds", type=int, default=seeds, help="seeds per arm")
  p.add_argument("--out", default=default_out,
                 help="where results.md, results.json and plots go")
  if data_arg:
    p.add_argument("--data", default=None, help=DATA_HELP)
    p.add_argument("--data_dir", default=None,
                   help="TFDS data directory (TFDS sets only)")
  return p


def require_data(p: argparse.ArgumentParser, args) -> str:
  """``args.data``, or a usage error saying how to get the data."""
  if not args.data:
    p.error(f"--data is required: {DATA_HELP}.")
  return args.data


# --------------------------------------------------------------------------
# CNN studies: class-balanced CIFAR subsets through the Trainer's fit()


@dataclasses.dataclass(frozen=True)
class CnnSetting:
  """What a CNN study trains on, for how long."""

  model: str = "resnet8"
  train_size: int = 10_000
  test_size: int = 5_000
  epochs: int = 3
  batch_size: int = 128
  image_size: int | None = None  # None: as stored (32 for CIFAR)

  def describe(self) -> str:
    size = (f", downsampled to {self.image_size}x{self.image_size}"
            if self.image_size else "")
    return (f"{self.model}, {self.train_size} train / {self.test_size} test "
            f"images (class-balanced subsets{size}), batch "
            f"{self.batch_size}, {self.epochs} epochs, cosine decay to 0, "
            "crop (pad 4) + flip")

  def dataset(self, name: str, data_dir: str | None = None) -> data.Dataset:
    return data.get(name, data_dir=data_dir, train_size=self.train_size,
                    test_size=self.test_size, image_size=self.image_size)

  def steps_per_epoch(self) -> int:
    return self.train_size // self.batch_size

  def cosine(self, peak: float) -> optax.Schedule:
    """Cosine decay from ``peak`` to 0 over the run."""
    return optax.cosine_decay_schedule(peak,
                                       self.epochs * self.steps_per_epoch())


def fast_compile_options(fast_compile: bool) -> dict | None:
  """XLA options that halve CPU compile times (smoke tests), or None."""
  return {"xla_backend_optimization_level": 0} if fast_compile else None


def fit_cnn(setting: CnnSetting, ds: data.Dataset, model,
            tx: optax.GradientTransformation, seed: int, *,
            amplification_points: bool = False,
            telemetry: training.Telemetry | None = None,
            fast_compile: bool = False) -> dict:
  """One seed of a CNN study through :meth:`gaf_optax.training.Trainer.fit`.

  One device: on this CPU sharding a small net over simulated devices only
  adds overhead. CIFAR's crop (pad 4) + flip in training. Returns the fit summary without its state, with the run's
  wall time in ``seconds``.
  """
  trainer = training.Trainer(
      model, tx, ds, batch_size=setting.batch_size, num_epochs=setting.epochs,
      seed=seed, eval_batch_size=1000, mesh=training.make_mesh(1),
      preprocess=training.Preprocess.for_dataset(ds, augment=True),
      amplification_points=amplification_points, telemetry=telemetry,
      compiler_options=fast_compile_options(fast_compile))
  start = time.perf_counter()
  summary = trainer.fit(progress=False, log_to_stdout=False)
  summary["seconds"] = time.perf_counter() - start
  summary.pop("state")
  return summary


def cnn_model(setting: CnnSetting, num_classes: int, **kwargs):
  return models.get(setting.model, num_classes=num_classes, **kwargs)


def test_accuracies(runs: Sequence[dict]) -> np.ndarray:
  """``[seeds, epochs]`` test accuracies of :meth:`Trainer.fit` summaries."""
  return np.array([[r["test_accuracy"] for r in run["records"]]
                   for run in runs])


def plot_curves(results: dict, title: str, path: str) -> None:
  """Training loss over steps (moving mean) and test accuracy per epoch.

  Args:
    results: ``{arm: [fit summary per seed]}``.
    title: the figure's title.
    path: the PNG to write.
  """
  plt = pyplot()
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(13, 4.8))
  cmap = plt.get_cmap("tab10")
  for i, (arm, runs) in enumerate(results.items()):
    loss = np.array([r["step_loss"] for r in runs])  # [seeds, steps]
    window = max(1, loss.shape[1] // 30)
    kernel = np.ones(window) / window
    smooth = np.array([np.convolve(l, kernel, "valid") for l in loss])
    steps = np.arange(window, loss.shape[1] + 1)
    style = "--" if i >= 10 or arm.startswith("adam") else "-"
    ax_loss.plot(steps, smooth.mean(0), style, color=cmap(i % 10), label=arm)
    acc = 100 * test_accuracies(runs)
    epochs = np.arange(1, acc.shape[1] + 1)
    ax_acc.errorbar(epochs + 0.03 * (i - len(results) / 2), acc.mean(0),
                    yerr=acc.std(0), fmt=style + "o", color=cmap(i % 10),
                    capsize=3, label=arm)
  ax_loss.set(xlabel="step", ylabel="train loss (moving mean, seed mean)",
              title="training loss")
  ax_acc.set(xlabel="epoch", ylabel="test accuracy % (mean +- std)",
             title="test accuracy")
  ax_loss.legend(fontsize=8)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


# --------------------------------------------------------------------------
# MLP studies on digits: every seed at once through Trainer.fit_seeds


def fit_mlp_seeds(model, tx: optax.GradientTransformation, seeds, *,
                  epochs: int, batch_size: int, ds: data.Dataset | None = None,
                  amplification_points: bool = False,
                  telemetry: training.Telemetry | None = None,
                  probe: Callable | None = None,
                  fast_compile: bool = False) -> dict:
  """Every seed of a small-model study via :meth:`Trainer.fit_seeds`.

  Digits by default (the library's split and normalisation), no
  augmentation.
  """
  ds = ds or data.get("digits")
  trainer = training.Trainer(
      model, tx, ds, batch_size=batch_size, num_epochs=epochs,
      mesh=training.make_mesh(1),
      amplification_points=amplification_points, telemetry=telemetry,
      compiler_options=fast_compile_options(fast_compile))
  return trainer.fit_seeds(seeds, probe=probe)


def preactivation_probe(model, ds: data.Dataset, activation,
                        saturation: float) -> Callable:
  """An epoch-end probe of an MLP's hidden pre-activations on the train set.

  In evaluation mode, for every hidden Dense layer ``fcK`` of a
  ``gaf_optax.models.MLP``: ``saturated``, the share of pre-activations
  ``y`` with ``|y| > saturation``; ``rho`` and ``rho_prime``, the plain
  activation's forward and backward gains at those ``y``
  (:func:`gaf_optax.nn.anact_lambda`: ``E[f(y)^2] / Var[y]`` and
  ``E[f'(y)^2]``). For :meth:`Trainer.fit_seeds`' ``probe``.
  """
  import re  # pylint: disable=import-outside-toplevel
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from gaf_optax import nn as gnn  # pylint: disable=import-outside-toplevel
  pre = training.Preprocess.for_dataset(ds, augment=False)
  x = pre(ds.train.images, None, train=False)

  def probe(state):
    _, inter = model.apply(
        {"params": state.params, **state.model_state}, x, train=False,
        mutable=["intermediates"],
        capture_intermediates=lambda m, _: isinstance(m, nn.Dense))
    names = sorted((n for n in inter["intermediates"]
                    if re.fullmatch(r"fc\d+", n)), key=lambda n: int(n[2:]))
    ys = [inter["intermediates"][n]["__call__"][0] for n in names]
    gains = [gnn.anact_lambda(activation, y) for y in ys]
    return {"saturated": jnp.stack([jnp.mean(jnp.abs(y) > saturation)
                                    for y in ys]),
            "rho": jnp.stack([g[1] for g in gains]),
            "rho_prime": jnp.stack([g[2] for g in gains])}

  return probe


def hidden(history: dict, key: str) -> np.ndarray:
  """A per-layer telemetry array without its last entry (the head)."""
  return np.asarray(history[key])[..., :-1]
