"""End-to-end train-step cost of each method, and data-parallel scaling.

    python -m experiments.benchmarks.methods --model resnet20 --batch 64
    python -m experiments.benchmarks.methods --scaling --model resnet20

Methods: the library's train step (``gaf_optax.training.Trainer``: forward,
backward, optimizer update, donated state) for plain SGD, SGD+GAF (``sgd_gaf``), the amplification controller
with points after every BN (per-point statistics from the same backward
pass), GAAF ReLU and ANAct ReLU activations. Steps are timed interleaved,
round by round, so machine noise hits every method alike; the script prints
medians, ratios to the baseline (from this one run) and peak RSS.

``--scaling`` times the baseline step on a mesh of 1, 2, 4 and 8 simulated
CPU devices (same global batch): on one CPU this shows the sharded path works
and what its overhead is, not a speed-up (the simulated devices share the
same cores).
"""

from __future__ import annotations

import resource
import sys
import time

import numpy as np

from experiments import cli


def _peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _random_dataset(size: int, count: int):
  """Random uint8 images and labels as a ``gaf_optax.data.Dataset``."""
  from gaf_optax import data  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  src = data.ArraySource(
      rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8),
      rng.integers(0, 10, count))
  return data.Dataset("random", 10, (size, size, 3), src, src,
                      np.full(3, 0.5, np.float32), np.full(3, 0.25, np.float32))


def build_steps(model_name: str, batch: int, methods, mesh=None):
  """One :class:`gaf_optax.training.Trainer` per method, and its batch.

  The timed call is ``Trainer.train_step``: the library's jitted step
  (forward, backward, optimizer update, donated state) on a global batch,
  without augmentation.
  """
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  import gaf_optax  # pylint: disable=g-import-not-at-top
  from gaf_optax import models  # pylint: disable=g-import-not-at-top
  from gaf_optax import nn as gnn  # pylint: disable=g-import-not-at-top
  from gaf_optax import training  # pylint: disable=g-import-not-at-top

  size = 224 if model_name.startswith("imagenet") else 32
  ds = _random_dataset(size, batch)
  acts = {"gaaf": gnn.gaaf_relu, "anact": gnn.NReLU}
  steps = {}
  for method in methods:
    model = models.get(model_name, num_classes=10,
                       act=acts.get(method, flax.linen.relu))
    sgd = optax.sgd(0.1, momentum=0.9)
    points = method == "amplification"
    if method == "sgd_gaf":
      tx = gaf_optax.sgd_gaf(0.1, momentum=0.9)
    elif points:
      tx = optax.chain(gaf_optax.gradient_amplification(
          model.num_amplification_points, 100, start_epoch=0,
          selection="random", ratio=0.5), sgd)
    else:
      tx = sgd
    trainer = training.Trainer(
        model, tx, ds, batch_size=batch, mesh=mesh or training.make_mesh(1),
        preprocess=training.Preprocess.for_dataset(ds, augment=False),
        amplification_points=points)
    (local,) = list(trainer.train_batches(0))
    t0 = time.perf_counter()  # the first call compiles
    jax.block_until_ready(trainer.train_step(local)["loss"])
    compile_s = time.perf_counter() - t0
    steps[method] = dict(trainer=trainer, batch=local, compile_s=compile_s,
                         times=[])
  return steps


def time_steps(steps, rounds: int):
  import jax  # pylint: disable=g-import-not-at-top
  for s in steps.values():  # warm-up
    jax.block_until_ready(s["trainer"].train_step(s["batch"])["loss"])
  for _ in range(rounds):
    for s in steps.values():
      t0 = time.perf_counter()
      loss = s["trainer"].train_step(s["batch"])["loss"]
      jax.block_until_ready(loss)
      s["times"].append(time.perf_counter() - t0)
      s["loss"] = float(loss)
  return {m: float(np.median(s["times"])) for m, s in steps.items()}


METHODS = ("sgd", "sgd_gaf", "amplification", "gaaf", "anact")


def main(argv=None):
  p = cli.parser(__doc__)
  p.add_argument("--model", default="resnet20")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--rounds", type=int, default=7)
  p.add_argument("--methods", default=",".join(METHODS))
  p.add_argument("--scaling", action="store_true")
  args = p.parse_args(argv)
  methods = args.methods.split(",")
  if set(methods) - set(METHODS):
    p.error(f"--methods must be from {METHODS}; got {args.methods!r}")
  import jax  # pylint: disable=g-import-not-at-top
  if args.scaling:
    try:
      jax.config.update("jax_num_cpu_devices", 8)
    except RuntimeError:  # backend already up (e.g. under pytest): keep it
      pass
    if jax.device_count() < 8:
      p.error(f"--scaling needs 8 devices; have {jax.device_count()}")
  from gaf_optax import models  # pylint: disable=g-import-not-at-top
  if args.model not in models.names():
    p.error(f"unknown --model {args.model!r}; known: {models.names()}")
  print(f"{args.model}, batch {args.batch}, {args.rounds} interleaved rounds, "
        f"jax {jax.__version__}, {jax.devices()[0].device_kind}")
  results = {}
  if args.scaling:
    from gaf_optax.training import make_mesh  # pylint: disable=g-import-not-at-top
    steps = {}
    for n in (1, 2, 4, 8):
      if args.batch % n:
        p.error(f"--batch must be divisible by {n}")
      (s,) = build_steps(args.model, args.batch, ["sgd"],
                         mesh=make_mesh(n)).values()
      steps[f"{n} devices"] = s
    med = time_steps(steps, args.rounds)
    base = med["1 devices"]
    print("| devices | compile s | median step ms | vs 1 device |")
    print("|---|---|---|---|")
    for k, v in med.items():
      print(f"| {k.split()[0]} | {steps[k]['compile_s']:.1f} | {v * 1e3:.0f} "
            f"| {v / base:.2f} |")
    results = med
  else:
    steps = build_steps(args.model, args.batch, methods)
    med = time_steps(steps, args.rounds)
    base = med[methods[0]]
    print(f"| method | compile s | median step ms | images/s | vs {methods[0]} |")
    print("|---|---|---|---|---|")
    for m, v in med.items():
      print(f"| {m} | {steps[m]['compile_s']:.1f} | {v * 1e3:.0f} | "
            f"{args.batch / v:.0f} | {v / base:.3f} |")
    results = med
  print(f"peak RSS {_peak_rss_mib():.0f} MiB (all variants in one process)")
  return results


if __name__ == "__main__":
  sys.exit(cli.run(main))
